"""Incidents across a restart: stored when opened, reloaded at start, resolved once, with the
downtime counted from the first failure (on SQLite and on Postgres)."""

from __future__ import annotations

from datetime import timedelta

import httpx

from services.alerts import Alerter
from services.database import Database
from services.incidents import IncidentStore
from services.keepalive import KeepAlive, KeepAliveConfig
from tests.support import FakeClock, Receiver

CONFIG = KeepAliveConfig(
    url="https://bot.example.test/health",
    interval=timedelta(minutes=10),
    timeout=timedelta(seconds=10),
    start_delay=timedelta(seconds=5),
)


async def boot(
    database_url: str, clock: FakeClock, receiver: Receiver, health_status: int
) -> tuple[Database, Alerter, KeepAlive]:
    """What the lifespan does: the store, the open incidents, then the keep-alive."""
    db = Database(database_url)
    await db.migrate()
    alerter = Alerter([receiver.url("json")], clock, source="my-bot")
    alerter.use_store(IncidentStore(db))
    await alerter.load()
    peer = httpx.MockTransport(lambda request: httpx.Response(health_status))
    client = httpx.AsyncClient(transport=peer)
    keepalive = KeepAlive(CONFIG, client=client, alerter=alerter, clock=clock)
    keepalive.close_stale_incident()
    return db, alerter, keepalive


async def test_an_incident_open_at_a_restart_is_resolved_once_after_it(
    database_url: str, clock: FakeClock
) -> None:
    with Receiver() as receiver:
        db, alerter, keepalive = await boot(database_url, clock, receiver, 503)
        for _ in range(3):  # failures at 0, 10 and 20 min: the alert at the third
            await keepalive.ping_once()
            clock.advance(timedelta(minutes=10))
        await alerter.drain(grace=10)
        await db.dispose()
        assert [r["json"]["type"] for r in receiver.requests] == ["failure"]

        # The fix is deployed: a new process on the same database, 10 minutes later.
        db, alerter, keepalive = await boot(database_url, clock, receiver, 200)
        assert alerter.is_open("keepalive")
        await keepalive.ping_once()
        clock.advance(timedelta(minutes=10))
        await keepalive.ping_once()
        await alerter.drain(grace=10)
        assert await IncidentStore(db).all_open() == []
        await db.dispose()

    notes = [r["json"] for r in receiver.requests]
    assert [n["type"] for n in notes] == ["failure", "success"]
    resolved = notes[1]
    assert resolved["title"] == "[my-bot] keep-alive recovered"
    # From the first failure (0 min) to the first good ping after the restart (30 min).
    assert resolved["message"].endswith("succeed again after a restart (down 30m 0s)")


async def test_a_stored_incident_of_a_keep_alive_now_off_is_closed_with_a_notice(
    database_url: str, clock: FakeClock
) -> None:
    with Receiver() as receiver:
        db = Database(database_url)
        await db.migrate()
        store = IncidentStore(db)
        await store.open("keepalive", "keep-alive failing", "3 failures", clock.now())
        alerter = Alerter([receiver.url("json")], clock)
        alerter.use_store(store)
        assert [i.key for i in await alerter.load()] == ["keepalive"]
        off = KeepAliveConfig(
            url=None,
            interval=timedelta(minutes=10),
            timeout=timedelta(seconds=10),
            start_delay=timedelta(seconds=5),
            enabled=False,
            disabled_reason="KEEP_ALIVE_ENABLED=false",
        )
        async with httpx.AsyncClient() as client:
            KeepAlive(off, client=client, alerter=alerter, clock=clock).close_stale_incident()
        await alerter.drain(grace=10)
        assert await store.all_open() == []
        await db.dispose()
    (note,) = (r["json"] for r in receiver.requests)
    assert note["type"] == "success"
    assert "the keep-alive is off now (KEEP_ALIVE_ENABLED=false)" in note["message"]


async def test_opening_twice_keeps_the_first_start(database_url: str, clock: FakeClock) -> None:
    db = Database(database_url)
    await db.migrate()
    store = IncidentStore(db)
    first = clock.now()
    assert await store.open("database", "database unreachable", "refused", first)
    clock.advance(timedelta(minutes=5))
    # Open already (another node, or this one before a restart): not this call's to announce.
    assert not await store.open("database", "database unreachable", "timeout", clock.now())
    (stored,) = await store.all_open()
    assert stored.opened_at == first
    assert stored.message == "timeout"
    assert await store.close("database")
    assert not await store.close("database")
    assert await store.all_open() == []
    await db.dispose()


async def test_one_incident_seen_by_two_nodes_alerts_once_and_resolves_once(
    database_url: str, clock: FakeClock
) -> None:
    """Two live nodes ping the same public URL and both see it fail, then recover: people
    get one ALERT and one RESOLVED, whichever node saw it first."""
    with Receiver() as receiver:
        db_a, alerter_a, ping_a = await boot(database_url, clock, receiver, 503)
        db_b, alerter_b, ping_b = await boot(database_url, clock, receiver, 503)
        for _ in range(3):
            await ping_a.ping_once()
            await ping_b.ping_once()
            clock.advance(timedelta(minutes=10))
        await alerter_a.drain(grace=10)
        await alerter_b.drain(grace=10)
        assert alerter_a.is_open("keepalive") and alerter_b.is_open("keepalive")
        assert [r["json"]["type"] for r in receiver.requests] == ["failure"]

        # The fix is live: both nodes' pings pass again.
        for keepalive in (ping_a, ping_b):
            keepalive._client = httpx.AsyncClient(
                transport=httpx.MockTransport(lambda request: httpx.Response(200))
            )
        await ping_b.ping_once()
        await ping_a.ping_once()
        await alerter_a.drain(grace=10)
        await alerter_b.drain(grace=10)
        assert not alerter_a.is_open("keepalive") and not alerter_b.is_open("keepalive")
        assert await IncidentStore(db_a).all_open() == []
        await db_a.dispose()
        await db_b.dispose()
    assert [r["json"]["type"] for r in receiver.requests] == ["failure", "success"]
