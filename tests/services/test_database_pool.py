"""SQLite's connection pool: bursts reuse the connections they opened instead of opening (a
thread and a SQLite handle each, on aiosqlite) and closing new ones every time, and what the
connections it keeps hold in memory."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from services.database import SQLITE_PAGE_CACHE_KIB, SQLITE_POOL_SIZE, Database

ROOT = Path(__file__).resolve().parents[2]

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


def sqlite_memory_used() -> int:
    """Bytes SQLite holds in this process, all connections together, asked of the library
    Python's sqlite3 module runs on (the same shared library, loaded once)."""
    name = ctypes.util.find_library("sqlite3")
    assert name, "libsqlite3 not found"
    library = ctypes.CDLL(name)
    library.sqlite3_memory_used.restype = ctypes.c_int64
    return int(library.sqlite3_memory_used())


async def test_connections_reading_a_large_database_hold_small_page_caches(tmp_path: Path) -> None:
    # A database far larger than any page cache, read through by every connection of a busy
    # moment: each connection's cache fills to its limit and the pool keeps it. With SQLite's
    # default (2 MB a connection) this held ~15 MB for 8 connections, and 30 MB at the pool's 15.
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'wakeful.db'}")
    connections = 8
    try:
        async with db.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE filler (id INTEGER PRIMARY KEY, body TEXT)"))
            await conn.execute(
                text(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                    " WHERE i < 20000) INSERT INTO filler (body)"
                    " SELECT hex(randomblob(200)) FROM n"
                )
            )
        assert (tmp_path / "wakeful.db").stat().st_size + (
            tmp_path / "wakeful.db-wal"
        ).stat().st_size > 4 * 2**20
        before = sqlite_memory_used()
        all_in = asyncio.Barrier(connections)

        async def read_everything() -> None:
            async with db.engine.connect() as conn:
                total = await conn.scalar(text("SELECT sum(length(body)) FROM filler"))
                assert total == 20000 * 400
                await all_in.wait()

        await asyncio.gather(*(read_everything() for _ in range(connections)))
        held = sqlite_memory_used() - before
        # Per connection: its page cache, plus its handle, schema and statements (~0.2 MB).
        ceiling = connections * (SQLITE_PAGE_CACHE_KIB * 1024 + 320 * 1024)
        assert held < ceiling, f"{held / 2**20:.1f} MB held by {connections} connections"
    finally:
        await db.engine.dispose()


async def steady_use_memory(folder: Path) -> tuple[int, int]:
    """SQLite's memory after one round of every statement shape, and after `kept` rounds,
    each over the state after a burst (bytes, against the count before the first round)."""
    db = Database(f"sqlite+aiosqlite:///{folder / 'wakeful.db'}")
    kept = 8
    shapes = 41  # not a multiple of `kept`: round-robin would take each to every connection

    async def run_every_shape() -> None:
        for shape in range(shapes):
            async with db.engine.connect() as conn:
                await conn.execute(text(f"SELECT {shape} AS shape, :n AS n"), {"n": shape})

    try:
        await burst(db, kept)
        before = sqlite_memory_used()
        await run_every_shape()
        prepared_once = sqlite_memory_used() - before
        for _ in range(kept - 1):
            await run_every_shape()
        return prepared_once, sqlite_memory_used() - before
    finally:
        await db.engine.dispose()


def test_steady_use_after_a_burst_fills_one_connection_not_all(tmp_path: Path) -> None:
    # After a burst the pool keeps every connection it opened. Each SQLite connection keeps
    # the statements it ran prepared (a few KiB each) and its own page cache: if steady,
    # one-at-a-time use went round all of them, every kept connection would in time hold
    # every statement the server runs, and the memory grew for hours before it levelled off.
    # Measured in a process of its own: SQLite's count is the whole process's, and in the
    # full suite other tests' connections closing mid-measure moved it (CI: -127 KB).
    script = (
        "import asyncio, json\n"
        "from pathlib import Path\n"
        "from tests.services.test_database_pool import steady_use_memory\n"
        f"print(json.dumps(asyncio.run(steady_use_memory(Path({str(tmp_path)!r})))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    prepared_once, held = json.loads(done.stdout.strip().splitlines()[-1])
    assert prepared_once > 0
    # Round-robin (SQLAlchemy's default FIFO pool) held 8 times as much here.
    assert held < 2 * prepared_once, f"{held} bytes, {prepared_once} after one round"
