"""Postgres connections are not pinged before every transaction (three round trips each on
asyncpg), yet one the database closed is never handed to a request: the next transaction
runs on a new connection, with no error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from services.database import Database
from tests.support import fresh_postgres_database


@pytest.fixture
def database_name(postgres_url: str) -> Iterator[str]:
    with fresh_postgres_database(postgres_url, "wakeful_test") as name:
        yield name


@pytest.fixture
async def postgres_db(postgres_url: str, database_name: str) -> AsyncIterator[tuple[Database, str]]:
    admin = make_url(postgres_url).set(drivername="postgresql")
    url = admin.set(drivername="postgresql+asyncpg", database=database_name)
    db = Database(url.render_as_string(hide_password=False))
    try:
        yield db, admin.render_as_string(hide_password=False)
    finally:
        await db.dispose()


async def backend_pid(db: Database) -> int:
    async with db.engine.begin() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_connection_the_database_closed_is_replaced_without_an_error(
    postgres_db: tuple[Database, str],
) -> None:
    db, admin_url = postgres_db
    async with db.engine.connect() as conn:
        first = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
        driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    assert await backend_pid(db) == first  # in steady use, the same connection again

    # The database ends it while it sits in the pool (a restart, a failover, an admin).
    admin = await asyncpg.connect(admin_url)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
    finally:
        await admin.close()
    async with asyncio.timeout(10):  # asyncpg reads the server's goodbye on its own
        while not driver.is_closed():
            await asyncio.sleep(0.02)

    replaced = await backend_pid(db)
    assert replaced != first
