"""Telling "the database is away" from "the query is wrong", and the monitor's probe step,
against real databases (a refused Postgres port, a SQLite file)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.alerts import Alerter
from services.database import Database
from services.dbhealth import DatabaseMonitor, is_database_unavailable
from tests.support import FakeClock, Receiver, free_port
from web.errors import EXCEPTION_HANDLERS


async def raised_by(db: Database, sql: str) -> BaseException:
    try:
        async with db.engine.connect() as conn:
            await conn.execute(text(sql))
    except Exception as exc:
        return exc
    raise AssertionError(f"{sql!r} did not fail")


async def test_a_refused_connection_is_unavailable_a_bad_query_is_not(tmp_path: Path):
    refused = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    sqlite = Database(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    try:
        assert is_database_unavailable(await raised_by(refused, "SELECT 1"))
        bad_query = await raised_by(sqlite, "SELECT * FROM no_such_table")
        assert isinstance(bad_query, sa_exc.OperationalError)
        assert not is_database_unavailable(bad_query)
        assert not is_database_unavailable(ValueError("not a database problem"))
        locked = sa_exc.OperationalError(
            "UPDATE x", {}, sqlite3.OperationalError("database is locked")
        )
        assert is_database_unavailable(locked)
    finally:
        await refused.dispose()
        await sqlite.dispose()


async def test_the_monitor_warns_alerts_once_and_resolves(tmp_path: Path, clock: FakeClock):
    with Receiver() as receiver:
        alerter = Alerter([receiver.url("json")], clock)
        port = free_port()
        down = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x")
        monitor = DatabaseMonitor(down, clock, alerter)
        recovered: list[datetime] = []
        monitor.on_recovery.append(lambda: recovered.append(clock.now()))
        assert monitor.health_check() == (
            "pass",
            {"componentType": "datastore", "observedValue": None, "observedUnit": "ms"},
        )
        away_from = clock.now()
        for _ in range(5):
            assert await monitor.check_once() is False
            clock.advance(timedelta(seconds=5))
        status, details = monitor.health_check()
        assert status == "warn"
        assert details["unreachableSince"] == away_from.isoformat()
        assert details["observedValue"] is None
        assert "refused" in details["output"].lower()
        # Back: the same monitor over a database that answers (as the pool reconnecting).
        monitor._db = Database(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
        assert await monitor.check_once() is True
        assert monitor.health_check()[0] == "pass"
        # The workers backing off are told once, when it comes back (not at every probe).
        assert await monitor.check_once() is True
        assert recovered == [clock.now()]
        await alerter.drain(grace=10)
        async with asyncio.timeout(10):
            while len(receiver.requests) < 2:
                await asyncio.sleep(0.02)
        kinds = [r["json"]["type"] for r in receiver.requests]
        assert kinds == ["failure", "success"]
        assert "unreachable for 3 checks" in receiver.requests[0]["json"]["message"]
        await down.dispose()
        await monitor._db.dispose()


async def test_a_request_that_finds_it_away_gets_503_and_a_real_bug_stays_500(tmp_path: Path):
    refused = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    sqlite = Database(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")

    async def away(request: Request) -> Response:
        await raised_by(refused, "SELECT 1")
        raise await raised_by(refused, "SELECT 1")

    async def bug(request: Request) -> Response:
        raise await raised_by(sqlite, "SELECT * FROM no_such_table")

    async def file_error(request: Request) -> Response:
        raise PermissionError(13, "Permission denied", "/data/profiles/x")

    app = Starlette(
        routes=[Route("/away", away), Route("/bug", bug), Route("/file", file_error)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/away")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "5"
        assert "database is unreachable" in response.json()["detail"]
        response = await client.get("/bug")
        assert response.status_code == 500
        assert "no_such_table" not in response.text  # no SQL to the client
        # An OSError from anything but the database is a bug to see, not an outage.
        response = await client.get("/file")
        assert response.status_code == 500
    await refused.dispose()
    await sqlite.dispose()
