"""The operator's WEBHOOK_URL is a secret (its path or query is often the receiver's
credential): deliveries to it are queued without it and sent to it as configured."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy import select

from bot.outbox import RetryPolicy
from bot.states import SessionState
from bot.store import BotStore, SessionRecord
from bot.webhooks import DeliveryStore, WebhookConfig, Webhooks, webhook_deliveries
from services.database import Database
from services.metrics import Metrics
from services.secretbox import SecretBox
from tests.support import FakeClock

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
BOT = "bot_0000000000c1"
GLOBAL_URL = "https://hooks.example.test/services/T0/B0/PathSecret-7f3a?token=QuerySecret-91c2"
GLOBAL_SECRET = "global-signing-secret-0123456789"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.migrate()
    record = SessionRecord(
        id=BOT,
        user_id=None,
        name="shop",
        state=SessionState.IDLE,
        state_changed_at=T0,
        created_at=T0,
    )
    await BotStore(database).insert_session(record, "created")
    yield database
    await database.dispose()


def webhooks(
    db: Database, clock: FakeClock, global_url: str | None, sent: list[httpx.Request]
) -> Webhooks:
    def receive(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    return Webhooks(
        DeliveryStore(db),
        # allow_private: no DNS lookup of the example host (the guard has its own tests).
        config=WebhookConfig(
            allow_private=True, global_url=global_url, global_secret=GLOBAL_SECRET
        ),
        policy=RetryPolicy(base=timedelta(seconds=1), cap=timedelta(seconds=5)),
        client=httpx.AsyncClient(transport=httpx.MockTransport(receive)),
        secrets_box=SecretBox("a-key-for-the-webhook-tests", "test"),
        clock=clock,
        metrics=Metrics(),
        rand=lambda: 0.5,
    )


def bot() -> SimpleNamespace:
    record = SimpleNamespace(id=BOT, name="shop", webhook_url=None, webhook_events=None)
    return SimpleNamespace(record=record)


async def stored_rows(db: Database) -> list[str]:
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(webhook_deliveries))).all()
    return [json.dumps([str(v) for v in row]) for row in rows]


async def test_the_global_url_is_not_stored_but_delivered_to(db: Database, clock: FakeClock):
    sent: list[httpx.Request] = []
    hooks = webhooks(db, clock, GLOBAL_URL, sent)
    await hooks(bot(), "session.status", {"to": "CONNECTED"})
    rows = await stored_rows(db)
    assert len(rows) == 1
    assert "Secret" not in rows[0]
    assert "hooks.example.test" not in rows[0]

    assert await hooks.deliver_once(lambda _: None)
    assert [str(r.url) for r in sent] == [GLOBAL_URL]
    request = sent[0]
    stamp = request.headers["X-Wakeful-Timestamp"]
    digest = hmac.new(
        GLOBAL_SECRET.encode(), stamp.encode() + b"." + request.content, hashlib.sha256
    )
    assert request.headers["X-Wakeful-Signature"] == "sha256=" + digest.hexdigest()
    assert "delivered" in (await stored_rows(db))[0]


async def test_a_queued_delivery_whose_global_url_was_unset_is_dead(db: Database, clock: FakeClock):
    await webhooks(db, clock, GLOBAL_URL, [])(bot(), "session.status", {"to": "CONNECTED"})
    sent: list[httpx.Request] = []
    assert await webhooks(db, clock, None, sent).deliver_once(lambda _: None)
    assert sent == []
    row = (await stored_rows(db))[0]
    assert "dead" in row
    assert "WEBHOOK_URL is no longer set" in row


async def test_the_delivery_loop_backing_off_looks_again_once_woken(db: Database, clock: FakeClock):
    """The database away: the loop backs off (1 s, 2 s, ... up to 30 s). Once it is back
    the database monitor wakes the loop, which looks at once, not when its back-off ends."""
    sent: list[httpx.Request] = []
    hooks = webhooks(db, clock, GLOBAL_URL, sent)
    store = hooks.store
    real_due_heads = store.due_heads
    looks = 0
    away = True

    async def due_heads(now: datetime, limit: int) -> list[tuple[int, str, str]]:
        nonlocal looks
        looks += 1
        if away:
            raise ConnectionRefusedError(111, "Connection refused")
        return await real_due_heads(now, limit)

    store.due_heads = due_heads  # type: ignore[method-assign]
    loop = asyncio.get_running_loop().create_task(hooks.run(lambda _: None))
    try:
        async with asyncio.timeout(20):
            while looks < 3:  # the third look comes after pauses of 1 s and 2 s
                await asyncio.sleep(0.01)
        seen = looks
        await asyncio.sleep(0.3)
        assert looks == seen  # backing off (4 s now)
        away = False
        hooks.wake()
        async with asyncio.timeout(3):  # inside the 4 s pause
            while looks == seen:
                await asyncio.sleep(0.01)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
