"""Check a pooled Postgres connection before use only when it may have gone stale.

SQLAlchemy's `pool_pre_ping` tests every connection at every checkout; on asyncpg that is a
BEGIN, an empty query and a ROLLBACK: three round trips before every transaction, 6 % of the
server's CPU while it accepts messages (profiled with py-spy, `bench/outbox.py` on
Postgres). Most of what the ping is for is known without asking: asyncpg reads every
connection's socket all the time, so a connection the database closed (a restart, a
failover, an administrator's `pg_terminate_backend`, a proxy that resets it) is already
marked closed when it is checked out. What local state cannot show is a peer that went away
without a word, which takes idleness (a proxy's or a NAT's idle timeout). So a closed
connection is replaced at once, one idle for longer than `idle_after` is pinged first, and one
in steady use is used as it is.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine

LAST_RETURNED = "wakeful_last_returned"  # monotonic seconds, in the pool record's info


def check_stale_connections(engine: Engine, idle_after: float) -> None:
    """Install the checks on `engine` (the sync engine behind an AsyncEngine)."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def returned(_dbapi_connection: Any, record: Any) -> None:
        record.info[LAST_RETURNED] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def taken(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # A DisconnectionError here makes the pool drop this one and take another (3 tries).
        driver = getattr(dbapi_connection, "driver_connection", None)
        is_closed = getattr(driver, "is_closed", None)
        if callable(is_closed) and is_closed():
            raise exc.DisconnectionError("the database closed this connection")
        returned_at = record.info.get(LAST_RETURNED)
        if returned_at is None or time.monotonic() - returned_at < idle_after:
            return  # just opened, or in steady use
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as failed:
            raise exc.DisconnectionError(f"an idle connection did not answer: {failed}") from failed
