"""Who runs which bot (bot.ownership), on SQLite and on Postgres:
leases acquired only when free, renewed and released by their holder only, and every write
about a bot refused under a stale epoch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from bot.outbox import OutboxStore
from bot.ownership import OwnershipStore
from bot.states import SessionState
from bot.store import BotStore, SessionRecord
from services.database import Database

S = SessionState
T0 = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
LEASE = timedelta(seconds=15)
BOT = "bot_000000000001"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.migrate()
    await BotStore(database).insert_session(
        SessionRecord(
            id=BOT, user_id=None, name="shop", state=S.IDLE, state_changed_at=T0, created_at=T0
        ),
        "created",
    )
    yield database
    await database.dispose()


async def test_acquire_only_a_free_lease_and_each_new_owner_gets_a_higher_epoch(db: Database):
    leases = OwnershipStore(db)
    first = await leases.acquire(BOT, "node-a", T0, LEASE)
    assert first is not None
    assert (first.owner_node, first.lease_until, first.epoch) == ("node-a", T0 + LEASE, 1)
    # A live lease: another node gets nothing, however often it asks.
    assert await leases.acquire(BOT, "node-b", T0 + timedelta(seconds=14), LEASE) is None
    # The holder may take it again (a restart of the bot): a new epoch.
    again = await leases.acquire(BOT, "node-a", T0 + timedelta(seconds=1), LEASE)
    assert again is not None and again.epoch == 2
    # Expired (node-a stopped renewing): node-b takes it.
    taken = await leases.acquire(BOT, "node-b", T0 + timedelta(seconds=17), LEASE)
    assert taken is not None and (taken.owner_node, taken.epoch) == ("node-b", 3)
    assert await leases.acquire("bot_missing00001", "node-b", T0, LEASE) is None


async def test_concurrent_acquires_exactly_one_wins(db: Database):
    leases = OwnershipStore(db)
    won = await asyncio.gather(*(leases.acquire(BOT, f"node-{n}", T0, LEASE) for n in range(5)))
    winners = [record for record in won if record is not None]
    assert len(winners) == 1
    assert winners[0].epoch == 1


async def test_renew_extends_only_what_the_node_still_holds(db: Database):
    leases = OwnershipStore(db)
    store = BotStore(db)
    second = SessionRecord(
        id="bot_000000000002",
        user_id=None,
        name="b",
        state=S.IDLE,
        state_changed_at=T0,
        created_at=T0,
    )
    await store.insert_session(second, "created")
    assert await leases.acquire(BOT, "node-a", T0, LEASE)
    assert await leases.acquire(second.id, "node-a", T0, LEASE)
    assert await leases.renew("node-a", T0 + timedelta(seconds=3), LEASE) == {
        BOT: 1,
        second.id: 1,
    }
    # node-a stalls past its lease; node-b takes one bot. node-a's next renew tells it so.
    assert await leases.acquire(second.id, "node-b", T0 + timedelta(seconds=19), LEASE)
    assert await leases.renew("node-a", T0 + timedelta(seconds=20), LEASE) == {BOT: 1}
    (row,) = [r for r in await store.all_sessions() if r.id == second.id]
    assert (row.owner_node, row.lease_until) == ("node-b", T0 + timedelta(seconds=19) + LEASE)


async def test_release_only_under_the_epoch_held_and_then_anyone_may_take_it(db: Database):
    leases = OwnershipStore(db)
    held = await leases.acquire(BOT, "node-a", T0, LEASE)
    assert held is not None
    assert not await leases.release(BOT, "node-b", held.epoch)
    assert not await leases.release(BOT, "node-a", held.epoch - 1)
    assert await leases.release(BOT, "node-a", held.epoch)
    taken = await leases.acquire(BOT, "node-b", T0 + timedelta(seconds=1), LEASE)
    assert taken is not None and taken.epoch == held.epoch + 1


async def test_adoptable_is_what_should_run_and_nobody_holds(db: Database):
    leases, store = OwnershipStore(db), BotStore(db)
    assert await leases.adoptable(T0, 10) == []
    await store.save_fields(BOT, want_running=True)
    assert [r.id for r in await leases.adoptable(T0, 10)] == [BOT]
    assert await leases.acquire(BOT, "node-a", T0, LEASE)
    assert await leases.adoptable(T0 + timedelta(seconds=10), 10) == []
    # The holder died: once its lease has run out the bot is adoptable again.
    assert [r.id for r in await leases.adoptable(T0 + timedelta(seconds=16), 10)] == [BOT]
    assert await leases.owned_counts(T0 + timedelta(seconds=1)) == {"node-a": 1}


async def test_a_dead_nodes_leases_end_at_once_when_it_is_forgotten(db: Database):
    leases = OwnershipStore(db)
    await leases.join("node-a", "host", 42, T0, LEASE, None)
    assert await leases.acquire(BOT, "node-a", T0, LEASE)
    assert await leases.beat("node-a", T0 + timedelta(seconds=3), LEASE, 1, False)
    (node,) = await leases.nodes()
    assert (node.id, node.bots, node.alive(T0 + timedelta(seconds=10))) == ("node-a", 1, True)
    assert await leases.forget_nodes(["node-a"]) == 1
    assert await leases.nodes() == []
    assert not await leases.beat("node-a", T0 + timedelta(seconds=4), LEASE, 1, False)
    taken = await leases.acquire(BOT, "node-b", T0 + timedelta(seconds=4), LEASE)
    assert taken is not None and taken.epoch == 2


async def test_a_dead_owner_s_message_in_flight_is_claimable_by_the_next_owner_at_once(
    db: Database,
):
    """node-a claimed a message and died mid-send (its minute-long claim still runs): node-b,
    taking the bot once node-a's lease ran out, may send it at once. A node that takes a bot
    again itself, or after a release, leaves its own claims alone."""
    leases, outbox = OwnershipStore(db), OutboxStore(db)
    a = await leases.acquire(BOT, "node-a", T0, LEASE)
    assert a is not None
    await outbox.enqueue(BOT, "+15550001111", "in flight", None, T0)
    claim = timedelta(seconds=60)
    in_flight = await outbox.claim(BOT, T0, claim, epoch=a.epoch)
    assert in_flight is not None
    again = await leases.acquire(BOT, "node-a", T0 + timedelta(seconds=1), LEASE)
    assert again is not None
    assert await outbox.claim(BOT, T0 + timedelta(seconds=2), claim, epoch=again.epoch) is None

    at = T0 + timedelta(seconds=17)  # node-a's lease ran out at 16 s; its claim runs to 60 s
    b = await leases.acquire(BOT, "node-b", at, LEASE)
    assert b is not None
    retried = await outbox.claim(BOT, at + timedelta(milliseconds=1), claim, epoch=b.epoch)
    assert retried is not None and retried.id == in_flight.id
    assert retried.attempts == 2
    # node-a's late mark of its own attempt changes nothing.
    assert not await outbox.mark_sent(in_flight.id, 1, "late", at)


async def test_stale_epoch_writes_are_refused(db: Database):
    """The old owner (epoch 1) keeps acting after node-b took the bot (epoch 2): its state
    change, its history row, its field writes, its bulk shutdown stop and its outbox claims
    all change nothing, and the new owner's writes stand."""
    leases, store, outbox = OwnershipStore(db), BotStore(db), OutboxStore(db)
    old = await leases.acquire(BOT, "node-a", T0, LEASE)
    assert old is not None
    assert await store.transition(
        BOT, S.IDLE, S.CONNECTING, "started", T0, epoch=old.epoch, want_running=True
    )
    assert await store.transition(BOT, S.CONNECTING, S.CONNECTED, "connected", T0, epoch=1)
    await outbox.enqueue(BOT, "+15550001111", "hello", None, T0)

    new = await leases.acquire(BOT, "node-b", T0 + timedelta(seconds=16), LEASE)
    assert new is not None and new.epoch == 2
    at = T0 + timedelta(seconds=17)
    # node-b recovers the bot under its epoch.
    assert await store.transition(BOT, S.CONNECTED, S.STOPPED, "taken over", at, epoch=2)
    assert await store.transition(BOT, S.STOPPED, S.CONNECTING, "adopted", at, epoch=2)

    # node-a, late: every write refused even where the state guard alone would pass.
    assert not await store.transition(BOT, S.CONNECTING, S.STOPPED, "shutdown", at, epoch=1)
    assert not await store.save_fields(BOT, epoch=1, health="critical", want_running=False)
    assert await store.stop_many([(BOT, S.CONNECTING, 1)], S.STOPPED, "shutdown", at) == set()
    assert await outbox.claim(BOT, at, timedelta(seconds=60), epoch=1) is None

    loaded = await store.get_session(BOT)
    assert loaded is not None
    assert (loaded.state, loaded.want_running, loaded.health) == (S.CONNECTING, True, "inactive")
    assert [t.reason for t in await store.history(BOT, 10)] == [
        "adopted",
        "taken over",
        "connected",
        "started",
        "created",
    ]
    # The current owner's writes go through.
    assert await store.save_fields(BOT, epoch=2, health="warning")
    claimed = await outbox.claim(BOT, at, timedelta(seconds=60), epoch=2)
    assert claimed is not None and claimed.text == "hello"
    assert await store.stop_many([(BOT, S.CONNECTING, 2)], S.STOPPED, "shutdown", at) == {BOT}
