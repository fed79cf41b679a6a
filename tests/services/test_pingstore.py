"""The ping store on SQLite and on Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.database import Database
from services.pingstore import PingRecord, PingStore

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


async def test_pings_round_trip_with_aware_utc_times(database_url: str):
    db = Database(database_url)
    try:
        await db.migrate()
        await db.migrate()  # idempotent: a restart finds the schema at head
        store = PingStore(db)
        await store.add(PingRecord(T0, True, 45.2, 200, None))
        await store.add(PingRecord(T0 + timedelta(minutes=10), False, 10000.0, None, "timeout"))
        rows = await store.since(T0 - timedelta(days=1), limit=100)
        assert [r.ok for r in rows] == [True, False]
        assert rows[0].at == T0
        assert rows[0].at.tzinfo is not None
        assert rows[0].latency_ms == 45.2
        assert rows[0].status_code == 200
        assert rows[1].error == "timeout"
        assert await store.since(T0 + timedelta(minutes=5), limit=100) == [rows[1]]
    finally:
        await db.dispose()


async def test_since_returns_the_newest_within_the_limit_oldest_first(database_url: str):
    db = Database(database_url)
    try:
        await db.migrate()
        store = PingStore(db)
        for k in range(10):
            await store.add(PingRecord(T0 + timedelta(minutes=k), True, float(k), 200, None))
        rows = await store.since(T0, limit=3)
        assert [r.latency_ms for r in rows] == [7.0, 8.0, 9.0]
    finally:
        await db.dispose()


async def test_prune_bounds_the_history_by_count_and_age(database_url: str):
    db = Database(database_url)
    try:
        await db.migrate()
        store = PingStore(db)
        for k in range(20):
            await store.add(PingRecord(T0 + timedelta(days=k), True, 1.0, 200, None))
        removed = await store.prune(keep=10, older_than=T0 + timedelta(days=5))
        assert removed == 10
        assert await store.count() == 10
        removed = await store.prune(keep=10, older_than=T0 + timedelta(days=15))
        assert removed == 5
        rows = await store.since(T0, limit=100)
        assert rows[0].at == T0 + timedelta(days=15)
    finally:
        await db.dispose()


async def test_long_errors_are_cut_to_the_column(database_url: str):
    db = Database(database_url)
    try:
        await db.migrate()
        store = PingStore(db)
        await store.add(PingRecord(T0, False, None, None, "x" * 2000))
        (row,) = await store.since(T0, limit=1)
        assert row.error == "x" * 500
    finally:
        await db.dispose()
