"""The database: an async SQLAlchemy engine (SQLite in WAL mode, or Postgres), the shared
metadata, and Alembic migrations applied at start.

SQLite is the embedded default (a file under DATA_DIR); Postgres is used when DATABASE_URL
says so, which is also what lets several replicas, or a PaaS with an ephemeral disk, share
state.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

from services.filemodes import private_database
from services.poolcheck import check_stale_connections

CONNECT_TIMEOUT = 10.0
# SQLite: SQLAlchemy's default pool keeps 5 connections and opens up to 10 more for a burst,
# closing each of those as soon as it is returned. On aiosqlite every connection is a thread
# and a SQLite handle, so under steady load the server opened and closed one every few
# seconds (CPU and threads spent for nothing: bench/db_pool_churn.py; its memory was not
# shown to grow with it). The same ceiling (15), kept once opened: the pool grows to the
# busiest moment and stays there (at most 15 page caches then, instead of 5: see below).
SQLITE_POOL_SIZE = 15
# Each SQLite connection keeps a page cache of its own, 2 MB by default, filled as the
# database grows past it: up to 30 MB at the pool's 15 connections, arriving over hours, which
# looked like a leak in the soak. The file's pages stay in the kernel's page cache (shared,
# reclaimable), so a read the small cache misses costs a copy, not a disk read.
SQLITE_PAGE_CACHE_KIB = 512
# A pooled Postgres connection idle this long is pinged before use: idle timeouts of proxies
# and NATs that drop a connection without a word are minutes, not seconds.
IDLE_PING_AFTER = 10.0
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on both backends.

    SQLite has no time zone type and hands back naive values; storing UTC and re-attaching
    the zone on the way out keeps comparisons in Python correct everywhere.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


P = ParamSpec("P")
T = TypeVar("T")


class _UsesDatabase(Protocol):
    db: Database


Owner = TypeVar("Owner", bound=_UsesDatabase)


def shielded(
    method: Callable[Concatenate[Owner, P], Awaitable[T]],
) -> Callable[Concatenate[Owner, P], Awaitable[T]]:
    """Run a store call to its end even if the caller is cancelled.

    A query cancelled half-way leaves its connection to the garbage collector (and, on
    aiosqlite, a close that can hang the loop); a state change must be stored whole or not
    at all. The call runs in its own task, which `Database.dispose()` waits for.
    """

    async def run_whole(self: Owner, /, *args: P.args, **kwargs: P.kwargs) -> T:
        task = asyncio.ensure_future(method(self, *args, **kwargs))
        self.db.track(task)
        return await asyncio.shield(task)

    run_whole.__name__ = method.__name__
    run_whole.__qualname__ = method.__qualname__
    run_whole.__doc__ = method.__doc__
    return run_whole


class DatabaseError(Exception):
    """The database cannot be reached or prepared; the message is one line for a person."""


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        connect_args: dict[str, Any] = {}
        pool_args: dict[str, Any] = {}
        self._sqlite_path = (
            Path(parsed.database)
            if self.dialect == "sqlite" and parsed.database and parsed.database != ":memory:"
            else None
        )
        if self.dialect == "sqlite":
            # Wait for the other writer instead of failing at once with "database is locked".
            connect_args["timeout"] = 15
            if self._sqlite_path is not None:  # `:memory:` has a single connection already
                pool_args = {"pool_size": SQLITE_POOL_SIZE, "max_overflow": 0}
        else:
            query = dict(parsed.query)
            # Platforms hand out libpq URLs; asyncpg takes `ssl` instead of `sslmode`.
            sslmode = query.pop("sslmode", None)
            if sslmode and sslmode != "disable":
                connect_args["ssl"] = sslmode
            parsed = parsed.set(query=query)
            # asyncpg waits 60 s for an address that drops packets; a start that fails,
            # or a request that gets its 503, should not wait that long.
            connect_args["timeout"] = CONNECT_TIMEOUT
        self.engine: AsyncEngine = create_async_engine(
            parsed,
            connect_args=connect_args,
            # LIFO keeps the busy connections busy and lets the rest idle. Postgres: the idle
            # ones are pinged together when used again (services/poolcheck.py). SQLite: each
            # connection keeps its own page cache and prepared statements, so round-robin use
            # would, over hours, fill every connection the pool kept after a burst.
            pool_use_lifo=True,
            # A request waiting for a pooled connection gives up (a 503) before a client or
            # a proxy gives up on it (SQLAlchemy's default is 30 s).
            pool_timeout=CONNECT_TIMEOUT,
            **pool_args,
        )
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            check_stale_connections(self.engine.sync_engine, IDLE_PING_AFTER)
        self._inflight: set[asyncio.Future[Any]] = set()

    def track(self, task: asyncio.Future[Any]) -> None:
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    @property
    def display_name(self) -> str:
        """The URL without its password, for the log."""
        return make_url(self.url).render_as_string(hide_password=True)

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (a no-op when it is already there)."""
        try:
            if self._sqlite_path is not None:
                private_database(self._sqlite_path)
            async with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    # Two replicas starting together must not both run the same migration.
                    await conn.execute(text("SELECT pg_advisory_xact_lock(7251982311)"))
                await conn.run_sync(_upgrade_to_head)
        except Exception as exc:
            raise DatabaseError(describe_database_error(exc, self.display_name)) from exc

    async def dispose(self) -> None:
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=5)
        await self.engine.dispose()
        if self.dialect == "sqlite":
            await _sqlite_workers_finished()


async def _sqlite_workers_finished(bound: float = 2.0) -> None:
    """Wait (bounded) for aiosqlite's connection threads to end while the loop still runs.

    A connection that failed to open (an unwritable path) hands its last answer back to the
    event loop from its thread; if `asyncio.run` has closed the loop by then, the thread dies
    with a traceback on stderr, after the one line a refused start promises."""
    workers = [
        thread
        for thread in threading.enumerate()
        if thread.name.endswith("(_connection_worker_thread)") and thread.is_alive()
    ]
    deadline = asyncio.get_running_loop().time() + bound
    for worker in workers:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return
        await asyncio.to_thread(worker.join, left)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_PAGE_CACHE_KIB}")
    cursor.close()


def _upgrade_to_head(connection: Connection) -> None:
    # Imported here: Alembic is ~10 MB of a process that only needs it at start, and
    # `python server.py` migrates in a child process (services/migrate.py) and never loads it.
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def describe_database_error(exc: BaseException, where: str) -> str:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc) else ""
    reason = reason or type(exc).__name__
    return f"Database unavailable ({where}): {reason}"
