"""The durable outbox: a message is accepted only once its row is committed, and leaves only
through a claim with a lease, so a crash anywhere re-sends it rather than losing it.

States: `queued` (waiting, or due again after a failure) → `sending` (claimed; the lease
says until when) → `sent`, or back to `queued` with a later `due_at` after a failure, or
`dead` after MAX_RETRY_ATTEMPTS. A `sending` row whose lease ran out (the process died
between the claim and the mark) is claimable again: at-least-once, never lost.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from bot.acceptbatch import AcceptBatcher
from bot.content import public_fields
from bot.store import bot_sessions
from services.database import Database, UTCDateTime, metadata, shielded

STATUSES = ("queued", "sending", "sent", "dead")
MAX_TEXT = 4096

outbox_messages = Table(
    "outbox_messages",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    Column(
        "session_id",
        String(32),
        ForeignKey("bot_sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("idempotency_key", String(200), nullable=True),
    Column("to", String(100), nullable=False),
    Column("text", Text, nullable=False),
    Column("status", String(10), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", String(500), nullable=True),
    Column("engine_message_id", String(200), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    # What the message is besides text, and its fields as JSON (bot.content; 0009).
    Column("kind", String(16), nullable=False, server_default="text"),
    Column("payload", Text, nullable=True),
    UniqueConstraint("session_id", "idempotency_key", name="uq_outbox_messages_idempotency"),
    Index("ix_outbox_messages_claim", "session_id", "status", "due_at"),
)


def claimable(table: Table, now: datetime) -> Any:
    """Rows a worker may take now: queued and due, or leased by a holder whose lease ran out.
    Shared by the outbox and the webhook deliveries (both have these columns)."""
    c = table.c
    return or_(
        and_(c.status == "queued", c.due_at <= now),
        and_(c.status == "sending", c.lease_until < now),
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base: timedelta = timedelta(seconds=5)
    cap: timedelta = timedelta(minutes=10)
    lease: timedelta = timedelta(seconds=60)


def retry_delay(policy: RetryPolicy, attempts: int, jitter: float) -> timedelta:
    """After the n-th failed attempt: base × 2^(n-1), capped, ± 20 % (`jitter` in [0, 1))."""
    exponent = min(max(attempts - 1, 0), 30)
    delay: timedelta = min(policy.base * (2**exponent), policy.cap)
    return delay * (0.8 + 0.4 * jitter)


@dataclass(slots=True)
class OutboxMessage:
    id: str
    session_id: str
    to: str
    text: str
    status: str
    attempts: int
    created_at: datetime
    due_at: datetime
    updated_at: datetime
    idempotency_key: str | None = None
    last_error: str | None = None
    engine_message_id: str | None = None
    lease_until: datetime | None = None
    sent_at: datetime | None = None
    kind: str = "text"
    payload: str | None = None

    def as_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id,
            "sessionId": self.session_id,
            "to": self.to,
            "text": self.text,
            "status": self.status,
            "attempts": self.attempts,
            "lastError": self.last_error,
            "idempotencyKey": self.idempotency_key,
            "whatsappId": self.engine_message_id,
            "createdAt": iso(self.created_at),
            "dueAt": iso(self.due_at) if self.status == "queued" else None,
            "sentAt": iso(self.sent_at),
            "updatedAt": iso(self.updated_at),
            "kind": self.kind,
            **public_fields(self.kind, self.payload),
        }


_COLUMNS = [c for c in outbox_messages.c if c.name != "seq"]


def _message(row: Any) -> OutboxMessage:
    return OutboxMessage(**{c.name: getattr(row, c.name) for c in _COLUMNS})


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(8)


def queued_row(
    session_id: str, to: str, text: str, key: str | None, now: datetime
) -> dict[str, Any]:
    """A new message's row, queued and due now (text; other kinds add `kind`/`payload`)."""
    return {
        "id": new_message_id(),
        "session_id": session_id,
        "idempotency_key": key,
        "to": to,
        "text": text,
        "status": "queued",
        "attempts": 0,
        "created_at": now,
        "due_at": now,
        "updated_at": now,
    }


class OutboxStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Concurrent accepts share one transaction (group commit): bot/acceptbatch.py.
        self.accepts = AcceptBatcher(db, outbox_messages)

    @shielded
    async def enqueue(
        self, session_id: str, to: str, text: str, key: str | None, now: datetime
    ) -> tuple[OutboxMessage, bool]:
        """Store a message; with a known idempotency key, the stored one (and False)."""
        values = queued_row(session_id, to, text, key, now)
        if await self.accepts.insert(values):
            return OutboxMessage(**values), True
        # A unique constraint refused it: the key was used before (or, in theory, the id).
        existing = await self._by_key(session_id, key) if key is not None else None
        if existing is None:
            raise IntegrityError("INSERT INTO outbox_messages", None, Exception("not unique"))
        return existing, False

    async def _by_key(self, session_id: str, key: str) -> OutboxMessage | None:
        query = select(outbox_messages).where(
            outbox_messages.c.session_id == session_id, outbox_messages.c.idempotency_key == key
        )
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _message(row) if row else None

    @shielded
    async def get(self, session_id: str, message_id: str) -> OutboxMessage | None:
        query = select(outbox_messages).where(
            outbox_messages.c.session_id == session_id, outbox_messages.c.id == message_id
        )
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _message(row) if row else None

    @shielded
    async def list_for(
        self, session_id: str, status: str | None, limit: int, offset: int
    ) -> tuple[list[OutboxMessage], int]:
        where = [outbox_messages.c.session_id == session_id]
        if status is not None:
            where.append(outbox_messages.c.status == status)
        query = (
            select(outbox_messages)
            .where(*where)
            .order_by(outbox_messages.c.seq.desc())
            .limit(limit)
            .offset(offset)
        )
        count = select(func.count()).select_from(outbox_messages).where(*where)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            total = int((await conn.execute(count)).scalar_one())
        return [_message(r) for r in rows], total

    @shielded
    async def counts(self, session_id: str | None = None) -> dict[str, int]:
        query = select(outbox_messages.c.status, func.count()).group_by(outbox_messages.c.status)
        if session_id is not None:
            query = query.where(outbox_messages.c.session_id == session_id)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = dict.fromkeys(STATUSES, 0)
        found.update({status: int(n) for status, n in rows})
        return found

    @shielded
    async def claim(
        self, session_id: str, now: datetime, lease: timedelta, epoch: int | None = None
    ) -> OutboxMessage | None:
        """The oldest due message of this bot, leased to the caller; None if none is due.

        Guarded like every concurrent writer here: `UPDATE … WHERE <still claimable>` and the
        row count says whether this caller won it. With `epoch`, only while the bot is still
        under that epoch: a node that lost the bot claims nothing more for it."""
        c = outbox_messages.c
        fence = (
            []
            if epoch is None
            else [exists().where(bot_sessions.c.id == session_id, bot_sessions.c.epoch == epoch)]
        )
        for _ in range(5):
            async with self.db.engine.begin() as conn:
                row = (
                    await conn.execute(
                        select(c.seq)
                        .where(c.session_id == session_id, claimable(outbox_messages, now))
                        .order_by(c.seq)
                        .limit(1)
                    )
                ).first()
                if row is None:
                    return None
                claimed = await conn.execute(
                    update(outbox_messages)
                    .where(c.seq == row.seq, claimable(outbox_messages, now), *fence)
                    .values(
                        status="sending",
                        lease_until=now + lease,
                        attempts=c.attempts + 1,
                        updated_at=now,
                    )
                )
                if claimed.rowcount == 1:
                    found = (
                        await conn.execute(select(outbox_messages).where(c.seq == row.seq))
                    ).one()
                    return _message(found)
        return None

    @shielded
    async def next_due(self, session_id: str) -> datetime | None:
        """When this bot next has something to claim: a queued message falling due, or a
        lease running out (its holder died between the claim and the mark)."""
        c = outbox_messages.c
        queued = select(func.min(c.due_at)).where(c.session_id == session_id, c.status == "queued")
        leased = select(func.min(c.lease_until)).where(
            c.session_id == session_id, c.status == "sending"
        )
        async with self.db.engine.connect() as conn:
            times = [
                (await conn.execute(queued)).scalar_one_or_none(),
                (await conn.execute(leased)).scalar_one_or_none(),
            ]
        found = [t for t in times if t is not None]
        return min(found) if found else None

    @shielded
    async def mark_sent(self, message_id: str, claim: int, engine_id: str, now: datetime) -> bool:
        """Only the current claim may mark (`claim` is the attempt number it got): a worker
        whose lease ran out and was claimed again must not overwrite the new claim."""
        c = outbox_messages.c
        async with self.db.engine.begin() as conn:
            done = await conn.execute(
                update(outbox_messages)
                .where(c.id == message_id, c.status == "sending", c.attempts == claim)
                .values(
                    status="sent",
                    engine_message_id=engine_id[:200],
                    sent_at=now,
                    lease_until=None,
                    last_error=None,
                    updated_at=now,
                )
            )
        return bool(done.rowcount == 1)

    @shielded
    async def mark_failed(
        self, message_id: str, claim: int, error: str, retry_at: datetime | None, now: datetime
    ) -> bool:
        """Back to the queue at `retry_at`, or `dead` when there is none (current claim only)."""
        c = outbox_messages.c
        values: dict[str, Any] = {"last_error": error[:500], "lease_until": None, "updated_at": now}
        if retry_at is None:
            values["status"] = "dead"
        else:
            values.update(status="queued", due_at=retry_at)
        async with self.db.engine.begin() as conn:
            done = await conn.execute(
                update(outbox_messages)
                .where(c.id == message_id, c.status == "sending", c.attempts == claim)
                .values(**values)
            )
        return bool(done.rowcount == 1)

    @shielded
    async def requeue_dead(self, session_id: str, now: datetime) -> int:
        c = outbox_messages.c
        async with self.db.engine.begin() as conn:
            done = await conn.execute(
                update(outbox_messages)
                .where(c.session_id == session_id, c.status == "dead")
                .values(status="queued", attempts=0, due_at=now, updated_at=now)
            )
        return int(done.rowcount)

    @shielded
    async def sessions_waiting(self) -> set[str]:
        """Bots with messages waiting to be sent (an expired one is woken for them)."""
        c = outbox_messages.c
        query = select(c.session_id).where(c.status.in_(("queued", "sending"))).distinct()
        async with self.db.engine.connect() as conn:
            return {row.session_id for row in (await conn.execute(query)).all()}


Jitter = Callable[[], float]
