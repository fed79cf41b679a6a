"""The outbox store on SQLite and on Postgres, and its pure maths."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from bot.outbox import OutboxStore, RetryPolicy, retry_delay
from bot.sender import send_gap
from bot.states import SessionState
from bot.store import BotStore, SessionRecord
from services.database import Database

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
BOT = "bot_0000000000b1"
OTHER = "bot_0000000000b2"
LEASE = timedelta(seconds=60)


@pytest.fixture
async def outbox(database_url: str) -> AsyncIterator[OutboxStore]:
    db = Database(database_url)
    await db.migrate()
    store = BotStore(db)
    for bot_id in (BOT, OTHER):
        record = SessionRecord(
            id=bot_id,
            user_id=None,
            name=bot_id,
            state=SessionState.IDLE,
            state_changed_at=T0,
            created_at=T0,
        )
        await store.insert_session(record, "created")
    yield OutboxStore(db)
    await db.dispose()


def test_retry_delays_double_up_to_the_cap_with_twenty_percent_jitter():
    policy = RetryPolicy(base=timedelta(seconds=5), cap=timedelta(minutes=10))
    middle = [retry_delay(policy, n, 0.5) for n in range(1, 10)]
    assert [d.total_seconds() for d in middle] == [5, 10, 20, 40, 80, 160, 320, 600, 600]
    assert retry_delay(policy, 1, 0.0) == timedelta(seconds=4)
    assert retry_delay(policy, 1, 0.999999) < timedelta(seconds=6)
    assert retry_delay(policy, 200, 0.5) == timedelta(minutes=10)


def test_send_gap_averages_sixty_over_the_rate():
    assert send_gap(20, 0.5) == 3.0
    assert send_gap(20, 0.0) == 1.5
    assert send_gap(20, 0.999) == pytest.approx(4.497)
    assert send_gap(0, 0.5) == 0.0  # unpaced


async def test_enqueue_is_idempotent_per_bot(outbox: OutboxStore):
    first, created = await outbox.enqueue(BOT, "15550001111", "hi", "order-42", T0)
    assert created and first.status == "queued" and first.id.startswith("msg_")
    again, created_again = await outbox.enqueue(BOT, "15550001111", "hi", "order-42", T0)
    assert not created_again and again.id == first.id
    # The same key on another bot is another message.
    other, created_other = await outbox.enqueue(OTHER, "15550001111", "hi", "order-42", T0)
    assert created_other and other.id != first.id
    # No key: every call is a new message.
    a, _ = await outbox.enqueue(BOT, "15550001111", "hi", None, T0)
    b, _ = await outbox.enqueue(BOT, "15550001111", "hi", None, T0)
    assert a.id != b.id
    assert (await outbox.counts(BOT))["queued"] == 3


async def test_claims_go_oldest_first_and_only_when_due(outbox: OutboxStore):
    first, _ = await outbox.enqueue(BOT, "1555000001", "one", None, T0)
    second, _ = await outbox.enqueue(BOT, "1555000002", "two", None, T0)
    claimed = await outbox.claim(BOT, T0, LEASE)
    assert claimed is not None and claimed.id == first.id
    assert claimed.status == "sending" and claimed.attempts == 1
    assert claimed.lease_until == T0 + LEASE
    assert await outbox.claim(OTHER, T0, LEASE) is None  # per bot
    assert await outbox.mark_failed(first.id, 1, "boom", T0 + timedelta(seconds=30), T0)
    nxt = await outbox.claim(BOT, T0, LEASE)
    assert nxt is not None and nxt.id == second.id
    assert await outbox.claim(BOT, T0 + timedelta(seconds=29), LEASE) is None  # not due yet
    retried = await outbox.claim(BOT, T0 + timedelta(seconds=30), LEASE)
    assert retried is not None and retried.id == first.id and retried.attempts == 2
    assert retried.last_error == "boom"


async def test_an_expired_lease_is_claimed_again_a_live_one_is_not(outbox: OutboxStore):
    """The process that claimed it died before marking it: at-least-once."""
    message, _ = await outbox.enqueue(BOT, "15550001111", "hi", None, T0)
    assert await outbox.claim(BOT, T0, LEASE) is not None
    assert await outbox.claim(BOT, T0 + LEASE - timedelta(seconds=1), LEASE) is None
    again = await outbox.claim(BOT, T0 + LEASE + timedelta(seconds=1), LEASE)
    assert again is not None and again.id == message.id and again.attempts == 2
    # The first claimer's late marks do not touch the second claim; the second's counts.
    assert await outbox.mark_sent(message.id, 1, "wa-1", T0 + LEASE) is False
    assert await outbox.mark_failed(message.id, 1, "late", T0, T0 + LEASE) is False
    assert await outbox.mark_sent(message.id, 2, "wa-2", T0 + LEASE) is True
    assert await outbox.mark_sent(message.id, 2, "wa-3", T0 + LEASE) is False
    stored = await outbox.get(BOT, message.id)
    assert stored is not None and stored.status == "sent" and stored.engine_message_id == "wa-2"


async def test_concurrent_claimers_never_take_the_same_message(outbox: OutboxStore):
    ids = {(await outbox.enqueue(BOT, "15550001111", f"m{i}", None, T0))[0].id for i in range(30)}

    async def claimer() -> list[str]:
        taken = []
        while (message := await outbox.claim(BOT, T0, LEASE)) is not None:
            taken.append(message.id)
        return taken

    results = await asyncio.gather(*(claimer() for _ in range(4)))
    taken = [mid for result in results for mid in result]
    assert sorted(taken) == sorted(ids)  # every message once, none twice


async def test_dead_after_the_last_attempt_and_requeued_on_request(outbox: OutboxStore):
    message, _ = await outbox.enqueue(BOT, "15550001111", "hi", None, T0)
    await outbox.claim(BOT, T0, LEASE)
    await outbox.mark_failed(message.id, 1, "refused", None, T0)
    dead = await outbox.get(BOT, message.id)
    assert dead is not None and dead.status == "dead" and dead.last_error == "refused"
    assert await outbox.claim(BOT, T0 + timedelta(days=1), LEASE) is None
    listed, total = await outbox.list_for(BOT, "dead", 10, 0)
    assert total == 1 and listed[0].id == message.id
    assert await outbox.requeue_dead(BOT, T0 + timedelta(hours=1)) == 1
    back = await outbox.get(BOT, message.id)
    assert back is not None and back.status == "queued" and back.attempts == 0
    assert await outbox.counts() == {"queued": 1, "sending": 0, "sent": 0, "dead": 0}


async def test_deleting_a_bot_deletes_its_messages(outbox: OutboxStore):
    await outbox.enqueue(BOT, "15550001111", "hi", None, T0)
    await BotStore(outbox.db).delete_session(BOT)
    assert await outbox.counts() == {"queued": 0, "sending": 0, "sent": 0, "dead": 0}


async def test_next_due_includes_a_lease_running_out(outbox: OutboxStore):
    """A worker with nothing queued must wake when a dead claimer's lease ends."""
    assert await outbox.next_due(BOT) is None
    message, _ = await outbox.enqueue(BOT, "15550001111", "hi", None, T0)
    assert await outbox.next_due(BOT) == T0
    await outbox.claim(BOT, T0, LEASE)
    assert await outbox.next_due(BOT) == T0 + LEASE
    await outbox.enqueue(BOT, "15550001111", "later", None, T0 + timedelta(hours=1))
    assert await outbox.next_due(BOT) == T0 + LEASE
    await outbox.mark_sent(message.id, 1, "wa", T0)
    assert await outbox.next_due(BOT) == T0 + timedelta(hours=1)
