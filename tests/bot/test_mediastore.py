"""Messages with fields and files, stored on SQLite and on Postgres: the message and its file
in one transaction, read back byte for byte, idempotent per key, the bytes freed once sent,
and gone with their message."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select

from bot.content import Content, identity, load_content, typing_seconds
from bot.mediastore import MediaFile, MediaStore, outbox_media
from bot.outbox import OutboxStore, outbox_messages
from bot.states import SessionState
from bot.store import BotStore, SessionRecord
from services.database import Database

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
BOT = "bot_0000000000m1"
LEASE = timedelta(seconds=60)


@pytest.fixture
async def media(database_url: str) -> AsyncIterator[MediaStore]:
    db = Database(database_url)
    await db.migrate()
    record = SessionRecord(
        id=BOT,
        user_id=None,
        name=BOT,
        state=SessionState.IDLE,
        state_changed_at=T0,
        created_at=T0,
    )
    await BotStore(db).insert_session(record, "created")
    yield MediaStore(OutboxStore(db))
    await db.dispose()


def image(data: bytes) -> Content:
    digest = hashlib.sha256(data).hexdigest()
    return Content("image", {"caption": "hi", "mimetype": "image/png", "sha256": digest})


async def test_a_message_and_its_file_are_stored_together_and_read_back(media: MediaStore):
    data = os.urandom(300_000) + bytes(range(256))  # every byte value, a few hundred KB
    file = MediaFile(data, "image/png", "cat.png")
    message, created = await media.enqueue(BOT, "15550001111", "hi", image(data), file, None, T0)
    assert created and message.kind == "image"
    claimed = await media.outbox.claim(BOT, T0, LEASE)
    assert claimed is not None and claimed.id == message.id
    assert load_content(claimed.kind, claimed.payload) == image(data)
    loaded = await media.load(message.id)
    assert loaded == file
    await media.forget(message.id)
    assert await media.load(message.id) is None
    kept = await media.outbox.get(BOT, message.id)
    assert kept is not None and kept.as_json()["media"]["sha256"] == file.sha256


async def test_a_known_key_returns_the_stored_message_and_stores_no_second_file(
    media: MediaStore,
):
    data = b"\x89PNG" + bytes(100)
    file = MediaFile(data, "image/png")
    first, created = await media.enqueue(BOT, "1555", "hi", image(data), file, "k-1", T0)
    again, created_again = await media.enqueue(BOT, "1555", "hi", image(data), file, "k-1", T0)
    assert created and not created_again and again.id == first.id
    assert (await media.by_key(BOT, "k-1")) == again
    async with media.db.engine.connect() as conn:
        files = (await conn.execute(select(func.count()).select_from(outbox_media))).scalar_one()
    assert files == 1


async def test_a_file_goes_with_its_message(media: MediaStore):
    data = b"RIFF" + bytes(50)
    file = MediaFile(data, "image/webp")
    message, _ = await media.enqueue(BOT, "1555", "", Content("sticker", {}), file, None, T0)
    async with media.db.engine.begin() as conn:
        await conn.execute(delete(outbox_messages).where(outbox_messages.c.id == message.id))
    assert await media.load(message.id) is None


def test_what_makes_two_sends_the_same_message():
    by_url = Content("image", {"url": "https://x/a.png", "sha256": "1", "size": 3})
    fetched_again = Content("image", {"url": "https://x/a.png", "sha256": "2", "size": 4})
    assert identity("image", by_url.payload()) == identity("image", fetched_again.payload())
    inline = Content("image", {"sha256": "1"})
    assert identity("image", inline.payload()) != identity("image", '{"sha256":"2"}')


def test_typing_grows_with_the_text_within_the_gap():
    assert typing_seconds("", 10) == 1.0
    assert typing_seconds("x" * 60, 10) == 3.0
    assert typing_seconds("x" * 3000, 10) == 8.0  # at most 8 s
    assert typing_seconds("x" * 60, 1.5) == 1.5  # never past the pacing's gap
    assert typing_seconds("hello", 0) == 0.0  # unpaced: no typing
