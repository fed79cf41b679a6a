"""Group commit of accepted messages (bot/acceptbatch.py) on SQLite and on Postgres: accepts
made together share transactions, every caller's row is committed when it is answered, an
idempotency key repeated inside one batch stores one message, and one caller's bad row never
fails the others' messages."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from bot.outbox import OutboxStore, outbox_messages
from tests.bot.test_outbox_store import BOT, OTHER, T0, outbox  # noqa: F401 - the fixture


async def stored_ids(store: OutboxStore) -> set[str]:
    async with store.db.engine.connect() as conn:
        return {r.id for r in (await conn.execute(select(outbox_messages.c.id))).all()}


async def test_concurrent_accepts_share_transactions_and_each_is_committed_when_answered(
    outbox: OutboxStore,  # noqa: F811
) -> None:
    async def accept(n: int) -> str:
        message, created = await outbox.enqueue(
            BOT if n % 2 else OTHER, "15550001111", f"#{n}", None, T0
        )
        assert created
        # Answered: the row is there for any other connection to read.
        assert message.id in await stored_ids(outbox)
        return message.id

    ids = await asyncio.gather(*(accept(n) for n in range(60)))
    assert len(set(ids)) == 60
    assert await stored_ids(outbox) == set(ids)
    # Together, not one transaction each.
    assert 1 <= outbox.accepts.batches < 10


async def test_a_key_repeated_inside_one_batch_stores_one_message(
    outbox: OutboxStore,  # noqa: F811
) -> None:
    results = await asyncio.gather(
        outbox.enqueue(BOT, "15550001111", "hi", "order-1", T0),
        outbox.enqueue(BOT, "15550001111", "hi", "order-1", T0),
        outbox.enqueue(BOT, "15550001111", "other", None, T0),
        outbox.enqueue(OTHER, "15550001111", "hi", "order-1", T0),  # another bot: its own key
    )
    (a, a_new), (b, b_new), (_, c_new), (d, d_new) = results
    assert sorted([a_new, b_new]) == [False, True]
    assert a.id == b.id  # the repeat gets the stored one
    assert c_new and d_new and d.id != a.id
    async with outbox.db.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(outbox_messages))).scalar()
    assert count == 3


async def test_one_bad_row_fails_its_caller_only(outbox: OutboxStore) -> None:  # noqa: F811
    good = [outbox.enqueue(BOT, "15550001111", f"#{n}", None, T0) for n in range(5)]
    bad = outbox.enqueue("bot_does_not_exist", "15550001111", "lost?", None, T0)
    *answers, refused = await asyncio.gather(*good, bad, return_exceptions=True)
    assert isinstance(refused, IntegrityError)  # no such bot: its caller hears so
    assert all(isinstance(a, tuple) and a[1] for a in answers)
    assert await stored_ids(outbox) == {a[0].id for a in answers}  # type: ignore[index]


@pytest.mark.parametrize("size", [1, 3])
async def test_a_batch_never_exceeds_its_bound(outbox: OutboxStore, size: int) -> None:  # noqa: F811
    outbox.accepts.max_batch = size
    await asyncio.gather(*(outbox.enqueue(BOT, "1555", f"#{n}", None, T0) for n in range(9)))
    assert outbox.accepts.batches >= 9 // size
    assert len(await stored_ids(outbox)) == 9
