"""The requests one node stores for another (bot.actions): a row per request, claimed once
by the node it names (`UPDATE … WHERE status = 'pending'` and the row count), answered with
a result the asking node reads, and withdrawn by an asker that stopped waiting."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Index, String, Table, Text, delete, insert, select, update

from services.database import Database, UTCDateTime, metadata, shielded

bot_actions = Table(
    "bot_actions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("node", String(40), nullable=False),
    Column("session_id", String(40), nullable=True),
    Column("action", String(20), nullable=False),
    Column("args", Text, nullable=False),
    Column("status", String(10), nullable=False),
    Column("result", Text, nullable=True),
    Column("asked_by", String(40), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("done_at", UTCDateTime, nullable=True),
    Index("ix_bot_actions_node_status", "node", "status"),
)


@dataclass(frozen=True, slots=True)
class ActionRow:
    id: str
    node: str
    session_id: str | None
    action: str
    args: dict[str, Any]
    created_at: datetime


class ActionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @shielded
    async def ask(
        self,
        node: str,
        session_id: str | None,
        action: str,
        args: dict[str, Any],
        asked_by: str,
        now: datetime,
    ) -> str:
        action_id = secrets.token_hex(16)
        async with self.db.engine.begin() as conn:
            await conn.execute(
                insert(bot_actions).values(
                    id=action_id,
                    node=node,
                    session_id=session_id,
                    action=action,
                    args=json.dumps(args),
                    status="pending",
                    asked_by=asked_by,
                    created_at=now,
                )
            )
        return action_id

    @shielded
    async def claim(self, node: str, now: datetime, max_age: timedelta) -> list[ActionRow]:
        """The requests for `node` that nobody claimed yet, each claimed once (a second
        claimer's update finds it no longer pending). Too old ones are left: their asker
        has stopped waiting."""
        c = bot_actions.c
        query = (
            select(c.id, c.node, c.session_id, c.action, c.args, c.created_at)
            .where(c.node == node, c.status == "pending", c.created_at >= now - max_age)
            .order_by(c.created_at)
            .limit(50)
        )
        claimed = []
        async with self.db.engine.begin() as conn:
            for row in (await conn.execute(query)).all():
                taken = await conn.execute(
                    update(bot_actions)
                    .where(c.id == row.id, c.status == "pending")
                    .values(status="running")
                )
                if taken.rowcount == 1:
                    claimed.append(
                        ActionRow(
                            row.id,
                            row.node,
                            row.session_id,
                            row.action,
                            json.loads(row.args),
                            row.created_at,
                        )
                    )
        return claimed

    @shielded
    async def finish(self, action_id: str, result: dict[str, Any], now: datetime) -> None:
        c = bot_actions.c
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(bot_actions)
                .where(c.id == action_id)
                .values(status="done", result=json.dumps(result), done_at=now)
            )

    @shielded
    async def answer(self, action_id: str) -> dict[str, Any] | None:
        """The owner's result, or None while it has none (pending or running)."""
        c = bot_actions.c
        query = select(c.status, c.result).where(c.id == action_id)
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None or row.status != "done" or row.result is None:
            return None
        found: dict[str, Any] = json.loads(row.result)
        return found

    @shielded
    async def withdraw(self, action_id: str) -> bool:
        """The asker stops waiting: a request not yet claimed is never run. True if withdrawn
        before any node claimed it."""
        c = bot_actions.c
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                delete(bot_actions).where(c.id == action_id, c.status == "pending")
            )
        return bool(result.rowcount == 1)

    @shielded
    async def forget(self, action_id: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(delete(bot_actions).where(bot_actions.c.id == action_id))

    @shielded
    async def prune(self, before: datetime) -> int:
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                delete(bot_actions).where(bot_actions.c.created_at < before)
            )
        return int(result.rowcount)
