"""SQLAlchemy Core tables of the bot manager and the queries the rest of it uses.

Runs unchanged on SQLite and Postgres. State changes are guarded with
`UPDATE … WHERE state = <the state we saw>` and the row count, so two writers (two replicas,
or a request racing an engine event) can never both move the same session.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
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
    update,
)
from sqlalchemy.exc import IntegrityError

from bot.states import SessionState
from services.database import Database, UTCDateTime, metadata, shielded

ADMIN_OWNER = "admin"
PHONE_LOGOUT_PREFIX = "logged out from the phone"

users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
)

bot_sessions = Table(
    "bot_sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("owner_key", String(32), nullable=False),
    Column("name", String(100), nullable=False),
    Column("webhook_url", String(2000), nullable=True),
    # NULL: every event; else a JSON list of the events the bot's webhook wants.
    Column("webhook_events", Text, nullable=True),
    # Sealed with services.secretbox; shown in clear once, at creation or rotation.
    Column("webhook_secret", Text, nullable=True),
    Column("metadata", Text, nullable=False, default="{}"),
    Column("state", String(20), nullable=False),
    Column("state_reason", String(500), nullable=True),
    Column("state_changed_at", UTCDateTime, nullable=False),
    Column("want_running", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("last_activity_at", UTCDateTime, nullable=True),
    Column("last_connected_at", UTCDateTime, nullable=True),
    Column("last_disconnected_at", UTCDateTime, nullable=True),
    Column("last_heartbeat_at", UTCDateTime, nullable=True),
    Column("next_retry_at", UTCDateTime, nullable=True),
    Column("reconnect_attempts", Integer, nullable=False, default=0),
    Column("error_count", Integer, nullable=False, default=0),
    Column("health", String(20), nullable=False, default="inactive"),
    Column("linked_as", String(100), nullable=True),
    # Who runs it (bot.ownership): the node, until when, and the fencing epoch that grows
    # with every new owner. A write about the bot names the epoch it was decided under.
    Column("owner_node", String(40), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("epoch", Integer, nullable=False, default=0),
    UniqueConstraint("owner_key", "name", name="uq_bot_sessions_owner_name"),
    Index("ix_bot_sessions_owner_node", "owner_node"),
)

session_transitions = Table(
    "session_transitions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "session_id", String(32), ForeignKey("bot_sessions.id", ondelete="CASCADE"), nullable=False
    ),
    Column("at", UTCDateTime, nullable=False),
    Column("from_state", String(20), nullable=True),
    Column("to_state", String(20), nullable=False),
    Column("reason", String(500), nullable=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(100), nullable=False),
    Column("target", String(200), nullable=True),
    Column("detail", Text, nullable=True),
)

app_secrets = Table(
    "app_secrets",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)


class DuplicateNameError(Exception):
    pass


class LimitReachedError(Exception):
    """The user already has as many bots as allowed (counted in the database)."""


@dataclass(slots=True)
class SessionRecord:
    """One bot session as stored; the in-memory session keeps one of these up to date."""

    id: str
    user_id: str | None
    name: str
    state: SessionState
    state_changed_at: datetime
    created_at: datetime
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    webhook_secret: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    state_reason: str | None = None
    want_running: bool = False
    started_at: datetime | None = None
    last_activity_at: datetime | None = None
    last_connected_at: datetime | None = None
    last_disconnected_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    next_retry_at: datetime | None = None
    reconnect_attempts: int = 0
    error_count: int = 0
    health: str = "inactive"
    linked_as: str | None = None
    owner_node: str | None = None
    lease_until: datetime | None = None
    epoch: int = 0

    def state_reason_is_phone(self) -> bool:
        return (self.state_reason or "").startswith(PHONE_LOGOUT_PREFIX)

    @property
    def owner_key(self) -> str:
        return self.user_id or ADMIN_OWNER

    def row(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["metadata"] = json.dumps(self.metadata, separators=(",", ":"))
        values["webhook_events"] = (
            None if self.webhook_events is None else json.dumps(self.webhook_events)
        )
        values["state"] = self.state.value
        values["owner_key"] = self.owner_key
        return values

    @classmethod
    def from_row(cls, row: Any) -> SessionRecord:
        data = dict(row._mapping)
        data.pop("owner_key", None)
        data["metadata"] = json.loads(data["metadata"] or "{}")
        events = data.get("webhook_events")
        data["webhook_events"] = None if events is None else json.loads(events)
        data["state"] = SessionState(data["state"])
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Transition:
    at: datetime
    from_state: str | None
    to_state: str
    reason: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "from": self.from_state,
            "to": self.to_state,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    name: str
    created_at: datetime


def _fenced(epoch: int | None) -> list[Any]:
    """The guard a write about a bot carries: the epoch its writer holds. A writer whose
    epoch is stale (another node took the bot since) changes nothing."""
    return [] if epoch is None else [bot_sessions.c.epoch == epoch]


class BotStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Users -----------------------------------------------------------------------------

    @shielded
    async def create_user(self, user: UserRecord, token_hash: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                insert(users).values(
                    id=user.id, name=user.name, token_hash=token_hash, created_at=user.created_at
                )
            )

    @shielded
    async def user_by_token_hash(self, token_hash: str) -> UserRecord | None:
        query = select(users.c.id, users.c.name, users.c.created_at).where(
            users.c.token_hash == token_hash
        )
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return UserRecord(*row) if row else None

    @shielded
    async def get_user(self, user_id: str) -> UserRecord | None:
        query = select(users.c.id, users.c.name, users.c.created_at).where(users.c.id == user_id)
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return UserRecord(*row) if row else None

    @shielded
    async def list_users(self) -> list[UserRecord]:
        query = select(users.c.id, users.c.name, users.c.created_at).order_by(users.c.created_at)
        async with self.db.engine.connect() as conn:
            return [UserRecord(*row) for row in (await conn.execute(query)).all()]

    @shielded
    async def delete_user(self, user_id: str) -> bool:
        async with self.db.engine.begin() as conn:
            await conn.execute(delete(bot_sessions).where(bot_sessions.c.user_id == user_id))
            result = await conn.execute(delete(users).where(users.c.id == user_id))
        return bool(result.rowcount)

    # Sessions --------------------------------------------------------------------------

    @shielded
    async def insert_session(
        self, record: SessionRecord, reason: str, limit: int | None = None
    ) -> None:
        """Store a new bot; with `limit`, only while its user has fewer bots than that,
        counted in the same transaction (every node creating for that user waits its turn
        on the user's row), so the limit holds across processes."""
        try:
            async with self.db.engine.begin() as conn:
                if limit is not None and record.user_id is not None:
                    # A no-op write on the user's row before counting: it holds the row
                    # (Postgres) or the database (SQLite) until this transaction ends, so
                    # concurrent creates for one user, on any node, count one after another.
                    await conn.execute(
                        update(users).where(users.c.id == record.user_id).values(id=users.c.id)
                    )
                    count = (
                        await conn.execute(
                            select(func.count())
                            .select_from(bot_sessions)
                            .where(bot_sessions.c.user_id == record.user_id)
                        )
                    ).scalar_one()
                    if int(count) >= limit:
                        raise LimitReachedError(limit)
                await conn.execute(insert(bot_sessions).values(record.row()))
                await conn.execute(
                    insert(session_transitions).values(
                        session_id=record.id,
                        at=record.created_at,
                        from_state=None,
                        to_state=record.state.value,
                        reason=reason,
                    )
                )
        except IntegrityError as exc:
            raise DuplicateNameError(record.name) from exc

    @shielded
    async def all_sessions(self) -> list[SessionRecord]:
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(select(bot_sessions))).all()
        return [SessionRecord.from_row(row) for row in rows]

    @shielded
    async def get_session(self, session_id: str) -> SessionRecord | None:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(select(bot_sessions).where(bot_sessions.c.id == session_id))
            ).first()
        return SessionRecord.from_row(row) if row else None

    @shielded
    async def save_fields(
        self, /, session_id: str, *, epoch: int | None = None, **values: Any
    ) -> bool:
        """Write fields that are not the state (activity, heartbeat, counters). With
        `epoch`, only while the bot is still under that epoch; False when refused."""
        if "metadata" in values:
            values["metadata"] = json.dumps(values["metadata"], separators=(",", ":"))
        if values.get("webhook_events") is not None:
            values["webhook_events"] = json.dumps(values["webhook_events"])
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(bot_sessions)
                .where(bot_sessions.c.id == session_id, *_fenced(epoch))
                .values(**values)
            )
        return bool(result.rowcount == 1)

    @shielded
    async def transition(
        self,
        /,
        session_id: str,
        expected: SessionState,
        target: SessionState,
        reason: str,
        at: datetime,
        *,
        epoch: int | None = None,
        **values: Any,
    ) -> bool:
        """Move the state if it is still `expected` (and, with `epoch`, the bot still under
        that epoch); False when another writer moved it or took the bot."""
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(bot_sessions)
                .where(
                    bot_sessions.c.id == session_id,
                    bot_sessions.c.state == expected.value,
                    *_fenced(epoch),
                )
                .values(
                    state=target.value,
                    state_reason=reason[:500],
                    state_changed_at=at,
                    **values,
                )
            )
            if result.rowcount != 1:
                return False
            await conn.execute(
                insert(session_transitions).values(
                    session_id=session_id,
                    at=at,
                    from_state=expected.value,
                    to_state=target.value,
                    reason=reason[:500],
                )
            )
        return True

    @shielded
    async def stop_many(
        self,
        moves: list[tuple[str, SessionState, int]],
        target: SessionState,
        reason: str,
        at: datetime,
    ) -> set[str]:
        """Move many sessions at once (shutdown): one transaction, guarded per row like
        `transition` (state and epoch). Returns the ids that moved."""
        moved: set[str] = set()
        if not moves:
            return moved
        by_guard: dict[tuple[SessionState, int], list[str]] = {}
        for session_id, state, epoch in moves:
            by_guard.setdefault((state, epoch), []).append(session_id)
        async with self.db.engine.begin() as conn:
            for (state, epoch), ids in by_guard.items():
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    result = await conn.execute(
                        update(bot_sessions)
                        .where(
                            bot_sessions.c.id.in_(chunk),
                            bot_sessions.c.state == state.value,
                            bot_sessions.c.epoch == epoch,
                        )
                        .values(
                            state=target.value,
                            state_reason=reason,
                            state_changed_at=at,
                            next_retry_at=None,
                        )
                        .returning(bot_sessions.c.id)
                    )
                    moved.update(row[0] for row in result)
            rows = [
                {
                    "session_id": session_id,
                    "at": at,
                    "from_state": state.value,
                    "to_state": target.value,
                    "reason": reason,
                }
                for session_id, state, _ in moves
                if session_id in moved
            ]
            if rows:
                await conn.execute(insert(session_transitions), rows)
        return moved

    @shielded
    async def history(self, session_id: str, limit: int = 20) -> list[Transition]:
        """The newest `limit` state changes, newest first."""
        query = (
            select(
                session_transitions.c.at,
                session_transitions.c.from_state,
                session_transitions.c.to_state,
                session_transitions.c.reason,
            )
            .where(session_transitions.c.session_id == session_id)
            .order_by(session_transitions.c.id.desc())
            .limit(limit)
        )
        async with self.db.engine.connect() as conn:
            return [Transition(*row) for row in (await conn.execute(query)).all()]

    @shielded
    async def delete_session(self, session_id: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                delete(session_transitions).where(session_transitions.c.session_id == session_id)
            )
            await conn.execute(delete(bot_sessions).where(bot_sessions.c.id == session_id))

    # Audit log and stored secrets ------------------------------------------------------

    @shielded
    async def audit(
        self, at: datetime, actor: str, action: str, target: str | None, detail: str | None
    ) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                insert(audit_log).values(
                    at=at, actor=actor, action=action, target=target, detail=detail
                )
            )

    @shielded
    async def audit_entries(self, limit: int = 100) -> list[dict[str, Any]]:
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "at": row.at.isoformat(),
                "actor": row.actor,
                "action": row.action,
                "target": row.target,
                "detail": row.detail,
            }
            for row in rows
        ]

    @shielded
    async def get_secret(self, key: str) -> str | None:
        query = select(app_secrets.c.value).where(app_secrets.c.key == key)
        async with self.db.engine.connect() as conn:
            value: str | None = (await conn.execute(query)).scalar_one_or_none()
        return value

    @shielded
    async def put_secret_if_absent(self, key: str, value: str, at: datetime) -> bool:
        """Store once; False when another process stored one first (theirs wins)."""
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(insert(app_secrets).values(key=key, value=value, created_at=at))
        except IntegrityError:
            return False
        return True

    @shielded
    async def delete_secret(self, key: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(delete(app_secrets).where(app_secrets.c.key == key))

    @shielded
    async def count_sessions(self) -> int:
        async with self.db.engine.connect() as conn:
            count = (
                await conn.execute(select(func.count()).select_from(bot_sessions))
            ).scalar_one()
        return int(count)
