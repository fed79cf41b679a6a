"""SQLite's connection pool: bursts reuse the connections they opened instead of opening (a
thread and a SQLite handle each, on aiosqlite) and closing new ones every time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from services.database import SQLITE_POOL_SIZE, Database

BURST = SQLITE_POOL_SIZE  # every connection the pool may hold, busy at once
BURSTS = 4


def sqlite_worker_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.endswith("(_connection_worker_thread)"))


async def burst(db: Database, size: int) -> None:
    """`size` connections checked out together (each waits for the others before it ends)."""
    all_in = asyncio.Barrier(size)

    async def one() -> None:
        async with db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            await all_in.wait()

    await asyncio.gather(*(one() for _ in range(size)))


def connections_opened(db: Database) -> Callable[[], int]:
    """How many connections the pool has opened since this was called."""
    opened = 0

    def count(_dbapi: Any, _record: Any) -> None:
        nonlocal opened
        opened += 1

    event.listen(db.engine.sync_engine, "connect", count)
    return lambda: opened


async def test_repeated_bursts_open_no_more_connections_than_the_first(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'wakeful.db'}")
    opened = connections_opened(db)
    threads_before = sqlite_worker_threads()
    try:
        await burst(db, BURST)
        after_first = opened()
        assert after_first == BURST
        for _ in range(BURSTS - 1):
            await burst(db, BURST)
        # SQLAlchemy's default (5 kept, 10 more for a burst, closed when returned) opened
        # 10 new connections, and 10 threads, for every burst after the first.
        assert opened() == after_first
        assert sqlite_worker_threads() - threads_before == BURST
    finally:
        await db.dispose()
    assert sqlite_worker_threads() == threads_before


async def test_a_burst_beyond_the_pool_waits_for_a_connection(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'wakeful.db'}")
    opened = connections_opened(db)
    try:
        results = await asyncio.gather(*(select_one(db) for _ in range(3 * SQLITE_POOL_SIZE)))
        assert results == [1] * (3 * SQLITE_POOL_SIZE)
        assert opened() <= SQLITE_POOL_SIZE
    finally:
        await db.dispose()


async def select_one(db: Database) -> int:
    async with db.engine.connect() as conn:
        value = (await conn.execute(text("SELECT 1"))).scalar_one()
        await asyncio.sleep(0)  # hold it across a loop turn, so the calls overlap
        return int(value)
