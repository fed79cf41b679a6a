"""The last messages each bot received, kept so its owner can see them on the dashboard.

The webhook is the record of what a bot received; this is a window on its recent past: the
last KEEP messages per bot (older ones pruned as each new one is written), their text bounded,
a file described (type, size, name, caption) but never stored: it is downloaded on demand
from `GET /api/sessions/{id}/messages/{mid}/media`. Rows go with their bot (ON DELETE CASCADE).

Written by a listener in the background, so a slow or unreachable database never holds up
the bot's event path; a write that fails is logged and lost (the webhook still has it).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loguru import logger
from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError

from bot.received import media_path
from services.clock import Clock
from services.database import Database, UTCDateTime, metadata, shielded

log = logger.bind(component="bot")
KEEP = 50  # messages per bot
BODY_LIMIT = 4096  # characters of text (or caption) kept
# Writes waiting at once; past it new ones are dropped (logged): a flood of messages must not
# grow the process without bound for a convenience view.
MAX_PENDING = 500

received_messages = Table(
    "received_messages",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column(
        "session_id",
        String(32),
        ForeignKey("bot_sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("message_id", String(200), nullable=False),  # WhatsApp's id
    Column("chat", String(100), nullable=False),
    Column("sender", String(100), nullable=False),  # `from`: …@c.us or …@lid
    Column("phone", String(20), nullable=True),  # +digits, when WhatsApp tells it
    Column("type", String(30), nullable=False),
    Column("body", Text, nullable=False),
    Column("media", Text, nullable=True),  # JSON: mimetype, size, filename, caption
    Column("received_at", UTCDateTime, nullable=False),
    UniqueConstraint("session_id", "message_id", name="uq_received_messages_message"),
    Index("ix_received_messages_session_seq", "session_id", "seq"),
)


def _text(value: object, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _media(raw: object) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    size = raw.get("size")
    return {
        "mimetype": _text(raw.get("mimetype"), 100),
        "size": size if isinstance(size, int) and not isinstance(size, bool) else None,
        "filename": _text(raw.get("filename"), 255),
        "caption": _text(raw.get("caption"), BODY_LIMIT),
    }


@dataclass(frozen=True, slots=True)
class Received:
    session_id: str
    message_id: str
    chat: str
    sender: str
    phone: str | None
    type: str
    body: str
    media: dict[str, Any] | None
    received_at: datetime

    def as_json(self) -> dict[str, Any]:
        media = None
        if self.media is not None:
            media = {**self.media, "url": media_path(self.session_id, self.message_id)}
        return {
            "id": self.message_id,
            "chat": self.chat,
            "from": self.sender,
            "phone": self.phone,
            "type": self.type,
            "body": self.body,
            "media": media,
            "receivedAt": self.received_at.isoformat(),
        }


def row_of(session_id: str, data: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """The row for a `message.received` event's data; None when it has no id."""
    message_id = _text(data.get("id"), 200)
    if message_id is None:
        return None
    media = _media(data.get("media"))
    return {
        "session_id": session_id,
        "message_id": message_id,
        "chat": _text(data.get("chat"), 100) or "",
        "sender": _text(data.get("from"), 100) or "",
        "phone": _text(data.get("phone"), 20),
        "type": _text(data.get("type"), 30) or "chat",
        "body": _text(data.get("body"), BODY_LIMIT) or "",
        "media": json.dumps(media) if media is not None else None,
        "received_at": now,
    }


class Inbox:
    """A session listener (see BotManager.add_listener) and the store behind it."""

    def __init__(self, db: Database, clock: Clock, keep: int = KEEP) -> None:
        self.db = db
        self.clock = clock
        self.keep = keep
        self._pending: set[asyncio.Task[None]] = set()
        # One write at a time, in arrival order (the lock is fair): the list's order is the
        # order the messages came in, and a burst takes one connection, not the pool.
        self._writing = asyncio.Lock()

    async def __call__(self, session: Any, event: str, data: dict[str, Any]) -> None:
        if event != "message.received":
            return
        row = row_of(session.id, data, self.clock.now())
        if row is None:
            return
        if len(self._pending) >= MAX_PENDING:
            log.warning("Received message {} not kept: too many writes waiting", row["message_id"])
            return
        task = asyncio.ensure_future(self._write(row))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, row: dict[str, Any]) -> None:
        try:
            async with self._writing:
                await self.record(row)
        except Exception as exc:  # a view of the recent past: lost, not fatal
            log.opt(exception=exc).error(
                "Received message {} of {} not kept: {}", row["message_id"], row["session_id"], exc
            )

    async def drain(self, within: float | None = None) -> None:
        """Wait for the writes under way (shutdown, and tests), at most `within` seconds;
        what is not written by then is left to finish (never cancelled)."""
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        while self._pending:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return
            await asyncio.wait(list(self._pending), timeout=left)

    @shielded
    async def record(self, row: dict[str, Any]) -> bool:
        """Keep one received message and prune the bot's older ones past `keep`; False when
        it was already kept (an event seen twice)."""
        r = received_messages.c
        newest = (
            select(r.seq)
            .where(r.session_id == row["session_id"])
            .order_by(r.seq.desc())
            .limit(self.keep)
        )
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(insert(received_messages).values(**row))
                await conn.execute(
                    delete(received_messages).where(
                        r.session_id == row["session_id"], r.seq.not_in(newest.scalar_subquery())
                    )
                )
        except IntegrityError:
            exists = select(r.seq).where(
                r.session_id == row["session_id"], r.message_id == row["message_id"]
            )
            async with self.db.engine.connect() as conn:
                if (await conn.execute(exists)).first() is None:
                    raise  # not a repeat: the bot is gone, say so in the log
            return False
        return True

    async def list_for(
        self, session_id: str, limit: int = KEEP, offset: int = 0
    ) -> tuple[list[Received], int]:
        """The bot's kept messages, newest first, and how many there are."""
        r = received_messages.c
        query = (
            select(
                r.session_id,
                r.message_id,
                r.chat,
                r.sender,
                r.phone,
                r.type,
                r.body,
                r.media,
                r.received_at,
            )
            .where(r.session_id == session_id)
            .order_by(r.seq.desc())
            .limit(limit)
            .offset(offset)
        )
        count = (
            select(func.count()).select_from(received_messages).where(r.session_id == session_id)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            total = int((await conn.execute(count)).scalar_one())
        found = [
            Received(
                row.session_id,
                row.message_id,
                row.chat,
                row.sender,
                row.phone,
                row.type,
                row.body,
                json.loads(row.media) if row.media else None,
                row.received_at,
            )
            for row in rows
        ]
        return found, total
