"""Messages that are more than text, stored as the outbox stores text: accepted only once
committed, the media's bytes in the same transaction as the message (a table of their own,
so listing messages never reads them), read back only when the message is sent.

Plain text keeps the outbox's own `enqueue`; everything with fields (media, a reply, a
reaction, a location, a contact card) comes in here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError

from bot.content import Content
from bot.outbox import OutboxMessage, OutboxStore, outbox_messages, queued_row
from bot.store import bot_sessions
from services.database import metadata, shielded

outbox_media = Table(
    "outbox_media",
    metadata,
    Column(
        "message_id",
        String(32),
        ForeignKey("outbox_messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("mimetype", String(100), nullable=False),
    Column("filename", String(255), nullable=True),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("data", LargeBinary, nullable=False),
)


@dataclass(frozen=True, slots=True)
class MediaFile:
    data: bytes
    mimetype: str
    filename: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class MediaStore:
    def __init__(self, outbox: OutboxStore) -> None:
        self.outbox = outbox
        self.db = outbox.db

    @shielded
    async def enqueue(
        self,
        session_id: str,
        to: str,
        text: str,
        content: Content,
        media: MediaFile | None,
        key: str | None,
        now: datetime,
    ) -> tuple[OutboxMessage, bool]:
        """Store the message and its media in one transaction; with a known idempotency
        key, the stored message (and False), its media untouched."""
        values = {
            **queued_row(session_id, to, text, key, now),
            "kind": content.kind,
            "payload": content.payload(),
        }
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(insert(outbox_messages).values(**values))
                if media is not None:
                    await conn.execute(
                        insert(outbox_media).values(
                            message_id=values["id"],
                            mimetype=media.mimetype,
                            filename=media.filename,
                            size=len(media.data),
                            sha256=media.sha256,
                            data=media.data,
                        )
                    )
        except IntegrityError:
            if key is None:
                raise
            existing = await self.outbox._by_key(session_id, key)
            if existing is None:
                raise
            return existing, False
        return OutboxMessage(**values), True

    @shielded
    async def by_key(self, session_id: str, key: str) -> OutboxMessage | None:
        return await self.outbox._by_key(session_id, key)

    @shielded
    async def forget(self, message_id: str) -> None:
        """A sent message's file is WhatsApp's now: its bytes leave the database (its hash,
        type and size stay on the message)."""
        async with self.db.engine.begin() as conn:
            await conn.execute(delete(outbox_media).where(outbox_media.c.message_id == message_id))

    @shielded
    async def stored_bytes(self, owner: str) -> int:
        """The size of the files this user's bots hold in the database (not yet sent)."""
        query = (
            select(func.coalesce(func.sum(outbox_media.c.size), 0))
            .select_from(
                outbox_media.join(
                    outbox_messages, outbox_messages.c.id == outbox_media.c.message_id
                ).join(bot_sessions, bot_sessions.c.id == outbox_messages.c.session_id)
            )
            .where(bot_sessions.c.user_id == owner)
        )
        async with self.db.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    @shielded
    async def load(self, message_id: str) -> MediaFile | None:
        c = outbox_media.c
        query = select(c.data, c.mimetype, c.filename).where(c.message_id == message_id)
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return MediaFile(bytes(row.data), row.mimetype, row.filename)
