from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support import SETTINGS_ENV, FakeClock

POSTGRES_URL = os.environ.get("TEST_DATABASE_URL")


def pytest_report_header() -> str:
    where = "SQLite and Postgres" if POSTGRES_URL else "SQLite only (set TEST_DATABASE_URL)"
    return f"wakeful store tests: {where}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # The store suite runs on every backend this machine has; Postgres joins in when
    # TEST_DATABASE_URL names a server (.ci/run sets it when one answers on 5432).
    if "database_url" in metafunc.fixturenames:
        backends = ["sqlite"] + (["postgres"] if POSTGRES_URL else [])
        metafunc.parametrize("backend", backends, indirect=False)


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC))


@pytest.fixture
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'wakeful.db'}"
        return
    import asyncpg

    assert POSTGRES_URL is not None
    admin = make_url(POSTGRES_URL).set(drivername="postgresql")
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
