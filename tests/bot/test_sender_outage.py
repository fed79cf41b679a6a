"""The outbox worker through a database outage: it backs off from the errors, and looks
again as soon as the database is back (or a message is accepted), not when its back-off
ends (up to 30 s later, with the messages queued meanwhile waiting)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

import bot.sender
from bot.outbox import OutboxMessage, OutboxStore, RetryPolicy
from bot.sender import OutboxSender
from bot.session import BotSession
from bot.states import SessionState
from services.database import Database
from services.metrics import Metrics
from tests.support import FakeClock


class AwayOutbox(OutboxStore):
    """A real outbox whose database refuses every look while `away`."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.away = True
        self.looks = 0

    async def claim(
        self, session_id: str, now: datetime, lease: timedelta, epoch: int | None = None
    ) -> OutboxMessage | None:
        self.looks += 1
        if self.away:
            raise ConnectionRefusedError(111, "Connection refused")
        return None

    async def next_due(self, session_id: str) -> datetime | None:
        return None


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[AwayOutbox]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    await db.migrate()
    yield AwayOutbox(db)
    await db.dispose()


def connected_bot() -> BotSession:
    stub: Any = SimpleNamespace(
        id="bot_000000000001",
        state=SessionState.CONNECTED,
        engine_session=object(),
        held=lambda: True,
        record=SimpleNamespace(epoch=1),
    )
    return cast(BotSession, stub)


async def looked_again(outbox: AwayOutbox, after: int, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            while outbox.looks <= after:
                await asyncio.sleep(0.01)
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("back_by", ["database seen back", "message accepted"])
async def test_a_worker_backing_off_looks_again_once_the_database_is_back(
    outbox: AwayOutbox, monkeypatch: pytest.MonkeyPatch, back_by: str
):
    # A long first pause: the worker would sleep through the whole test without a wake-up.
    monkeypatch.setattr(bot.sender, "ERROR_BACKOFF", (30.0, 30.0))
    sender = OutboxSender(
        outbox,
        policy=RetryPolicy(),
        per_minute=60,
        clock=FakeClock(datetime(2026, 11, 30, 10, 0, tzinfo=UTC)),
        metrics=Metrics(),
        rand=random.random,
    )
    session = connected_bot()
    sender.start(session)
    try:
        assert await looked_again(outbox, 0, 10)  # it looked, and ran into the outage
        looks = outbox.looks
        assert not await looked_again(outbox, looks, 0.3)  # backing off
        outbox.away = False
        if back_by == "database seen back":
            sender.wake_all()  # what the database monitor calls when a probe answers
        else:
            sender.wake(session.id)  # what an accepted message does
        assert await looked_again(outbox, looks, 10)
    finally:
        await sender.shutdown(within=5)
    assert sender.active == 0
