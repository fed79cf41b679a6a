"""The last messages a bot received (bot.inbox), on SQLite and on Postgres: kept as the
session emits them, the newest 50 per bot, text bounded, files described and never stored,
a repeat kept once, and gone with the bot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from loguru import logger

from bot.inbox import BODY_LIMIT, KEEP, Inbox
from bot.states import SessionState
from bot.store import BotStore, SessionRecord
from services.database import Database
from tests.support import FakeClock

T0 = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
BOT, OTHER = "bot_000000000001", "bot_000000000002"


@dataclass
class Bot:
    id: str


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.migrate()
    for bot in (BOT, OTHER):
        await BotStore(database).insert_session(
            SessionRecord(
                id=bot,
                user_id=None,
                name=bot,
                state=SessionState.CONNECTED,
                state_changed_at=T0,
                created_at=T0,
            ),
            "created",
        )
    yield database
    await database.dispose()


def text(n: int, body: str = "hello") -> dict[str, object]:
    return {
        "id": f"false_1020@lid_SIM{n:04d}",
        "chat": "1020@lid",
        "from": "15550002222@c.us",
        "phone": "+15550002222",
        "type": "chat",
        "body": body,
        "media": None,
    }


async def test_a_received_image_is_kept_described_with_its_link_and_no_bytes(db: Database):
    clock = FakeClock(T0)
    inbox = Inbox(db, clock)
    image = {
        **text(1, "receipt"),
        "type": "image",
        "media": {
            "mimetype": "image/png",
            "size": 68,
            "filename": None,
            "caption": "receipt",
            "url": "/ignored/the/server/builds/it",
            "data": "bytes must never be stored",
        },
    }
    await inbox(Bot(BOT), "message.received", image)
    await inbox(Bot(BOT), "session.status", {"from": "SYNCING", "to": "CONNECTED"})
    await inbox.drain()
    (kept,), total = await inbox.list_for(BOT)
    assert total == 1
    assert kept.as_json() == {
        "id": "false_1020@lid_SIM0001",
        "chat": "1020@lid",
        "from": "15550002222@c.us",
        "phone": "+15550002222",
        "type": "image",
        "body": "receipt",
        "media": {
            "mimetype": "image/png",
            "size": 68,
            "filename": None,
            "caption": "receipt",
            "url": f"/api/sessions/{BOT}/messages/false_1020%40lid_SIM0001/media",
        },
        "receivedAt": T0.isoformat(),
    }
    assert await inbox.list_for(OTHER) == ([], 0)


async def test_only_the_newest_messages_of_each_bot_are_kept_and_text_is_bounded(db: Database):
    clock = FakeClock(T0)
    inbox = Inbox(db, clock)
    for n in range(KEEP + 7):
        clock.advance(timedelta(seconds=1))
        await inbox(Bot(BOT), "message.received", text(n, f"message {n}"))
        await inbox.drain()
    await inbox(Bot(OTHER), "message.received", text(0, "x" * (BODY_LIMIT + 100)))
    await inbox.drain()
    kept, total = await inbox.list_for(BOT)
    assert total == KEEP
    assert [m.body for m in kept] == [f"message {n}" for n in range(KEEP + 6, 6, -1)]
    page, _ = await inbox.list_for(BOT, limit=2, offset=1)
    assert [m.body for m in page] == [f"message {KEEP + 5}", f"message {KEEP + 4}"]
    # One bot's traffic never pushes out another's.
    (other,), _ = await inbox.list_for(OTHER)
    assert len(other.body) == BODY_LIMIT


async def test_a_repeat_is_kept_once_and_a_burst_lands_in_order(db: Database):
    inbox = Inbox(db, FakeClock(T0))
    await asyncio.gather(
        *(inbox(Bot(BOT), "message.received", text(n)) for n in (1, 1, 2, 3, 4, 5))
    )
    await inbox.drain()
    kept, total = await inbox.list_for(BOT)
    assert total == 5
    # Written in the order they came, whatever the database's pace: newest first.
    assert [m.message_id for m in kept] == [f"false_1020@lid_SIM{n:04d}" for n in (5, 4, 3, 2, 1)]


async def test_messages_go_with_their_bot_and_a_late_one_is_logged_not_raised(db: Database):
    inbox = Inbox(db, FakeClock(T0))
    await inbox(Bot(BOT), "message.received", text(1))
    await inbox.drain()
    await BotStore(db).delete_session(BOT)
    assert await inbox.list_for(BOT) == ([], 0)
    # A message that arrives as the bot is deleted: its write fails, logged, not raised.
    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR", format="{message}")
    try:
        await inbox(Bot(BOT), "message.received", text(2))
        await inbox.drain()
    finally:
        logger.remove(sink)
    assert any("false_1020@lid_SIM0002" in line and "not kept" in line for line in lines)
    assert await inbox.list_for(BOT) == ([], 0)
