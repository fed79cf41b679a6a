"""Who runs which bot: the node registry and each bot's lease, in the database.

Each server process is a node with an id chosen at start. A running bot has one owner node,
recorded with a lease (`owner_node`, `lease_until`) and an `epoch` that grows with every new
owner. Every concurrent writer is guarded with `UPDATE … WHERE …` and the row count, like the
outbox's claims: a node acquires a bot only when no live lease is held by another node,
renews only the rows it still owns, and releases only under the epoch it holds. Writes about
a bot (its state, history, backups, outbox claims) carry that epoch and are refused once it
is stale (bot.store), so a node that lost a bot can never overwrite the node that has it.

Times are the writers' clocks: nodes are expected to agree on the time to well within a
lease (NTP on every platform does).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    String,
    Table,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from bot.outbox import outbox_messages
from bot.store import SessionRecord, bot_sessions
from services.database import Database, UTCDateTime, metadata, shielded

cluster_nodes = Table(
    "cluster_nodes",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("draining", Boolean, nullable=False, default=False),
    Column("capacity", Integer, nullable=True),
    Column("bots", Integer, nullable=False, default=0),
)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    id: str
    host: str
    pid: int
    started_at: datetime
    seen_at: datetime
    expires_at: datetime
    draining: bool
    capacity: int | None
    bots: int

    def alive(self, now: datetime) -> bool:
        return self.expires_at >= now

    def room(self) -> int | None:
        """Bots it may still take (None: no fixed limit)."""
        if self.capacity is None:
            return None
        return max(self.capacity - self.bots, 0)


def _node(row: Any) -> NodeRecord:
    return NodeRecord(**{c.name: getattr(row, c.name) for c in cluster_nodes.c})


def lease_is_free(owner: Any, until: Any, now: datetime) -> Any:
    """No owner, or an owner whose lease ran out (it died, or stopped renewing)."""
    return or_(owner.is_(None), until.is_(None), until < now)


class OwnershipStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Nodes -----------------------------------------------------------------------------

    @shielded
    async def join(
        self, node: str, host: str, pid: int, now: datetime, ttl: timedelta, capacity: int | None
    ) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                insert(cluster_nodes).values(
                    id=node,
                    host=host,
                    pid=pid,
                    started_at=now,
                    seen_at=now,
                    expires_at=now + ttl,
                    draining=False,
                    capacity=capacity,
                    bots=0,
                )
            )

    @shielded
    async def beat(
        self, node: str, now: datetime, ttl: timedelta, bots: int, draining: bool
    ) -> bool:
        """The node is alive; False when its row is gone (another node judged it dead)."""
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(cluster_nodes)
                .where(cluster_nodes.c.id == node)
                .values(seen_at=now, expires_at=now + ttl, bots=bots, draining=draining)
            )
        return bool(result.rowcount == 1)

    @shielded
    async def leave(self, node: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(delete(cluster_nodes).where(cluster_nodes.c.id == node))

    @shielded
    async def nodes(self) -> list[NodeRecord]:
        query = select(cluster_nodes).order_by(cluster_nodes.c.started_at, cluster_nodes.c.id)
        async with self.db.engine.connect() as conn:
            return [_node(row) for row in (await conn.execute(query)).all()]

    @shielded
    async def forget_nodes(self, dead: list[str]) -> int:
        """Nodes known to be dead (a previous process on this host): their rows go and their
        leases end now, so their bots are adopted at once instead of after the lease."""
        if not dead:
            return 0
        async with self.db.engine.begin() as conn:
            freed = await conn.execute(
                update(bot_sessions)
                .where(bot_sessions.c.owner_node.in_(dead))
                .values(owner_node=None, lease_until=None)
            )
            await conn.execute(delete(cluster_nodes).where(cluster_nodes.c.id.in_(dead)))
        return int(freed.rowcount)

    @shielded
    async def prune_nodes(self, now: datetime, keep_for: timedelta) -> int:
        """Rows of nodes silent for `keep_for` past their expiry (long gone) are removed."""
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                delete(cluster_nodes).where(cluster_nodes.c.expires_at < now - keep_for)
            )
        return int(result.rowcount)

    # Leases ----------------------------------------------------------------------------

    @shielded
    async def acquire(
        self, session_id: str, node: str, now: datetime, lease: timedelta
    ) -> SessionRecord | None:
        """Become the bot's owner (epoch + 1) when no other node holds a live lease on it.
        Returns the bot as stored now, or None when another node holds it (or it is gone).

        Taken from a node that let its lease run out (it died, or was cut off and stopped
        acting at its renew deadline, before the lease ended): the messages it was sending
        are claimable at once, not when their own claims (a minute) run out. Whether such a
        message reached WhatsApp is unknowable either way; waiting only delays it."""
        c = bot_sessions.c
        async with self.db.engine.begin() as conn:
            previous = (
                await conn.execute(select(c.owner_node).where(c.id == session_id))
            ).scalar_one_or_none()
            taken = await conn.execute(
                update(bot_sessions)
                .where(
                    c.id == session_id,
                    or_(c.owner_node == node, lease_is_free(c.owner_node, c.lease_until, now)),
                )
                .values(owner_node=node, lease_until=now + lease, epoch=c.epoch + 1)
            )
            if taken.rowcount != 1:
                return None
            if previous is not None and previous != node:
                o = outbox_messages.c
                await conn.execute(
                    update(outbox_messages)
                    .where(o.session_id == session_id, o.status == "sending", o.lease_until > now)
                    .values(lease_until=now)
                )
            row = (await conn.execute(select(bot_sessions).where(c.id == session_id))).one()
        return SessionRecord.from_row(row)

    @shielded
    async def renew(self, node: str, now: datetime, lease: timedelta) -> dict[str, int]:
        """Extend every lease this node still holds; {bot id: epoch} of those it holds.

        A row another node took is no longer `owner_node = node`, so it is not renewed and
        not returned: the caller learns it lost that bot and stops acting for it."""
        c = bot_sessions.c
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(bot_sessions)
                .where(c.owner_node == node)
                .values(lease_until=now + lease)
                .returning(c.id, c.epoch)
            )
            return {row.id: int(row.epoch) for row in result}

    @shielded
    async def release(self, session_id: str, node: str, epoch: int) -> bool:
        """Give the bot up (only under the epoch held); another node may take it at once."""
        c = bot_sessions.c
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(bot_sessions)
                .where(c.id == session_id, c.owner_node == node, c.epoch == epoch)
                .values(owner_node=None, lease_until=None)
            )
        return bool(result.rowcount == 1)

    @shielded
    async def release_all(self, node: str) -> list[str]:
        c = bot_sessions.c
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(bot_sessions)
                .where(c.owner_node == node)
                .values(owner_node=None, lease_until=None)
                .returning(c.id)
            )
            return [row.id for row in result]

    @shielded
    async def adoptable(self, now: datetime, limit: int) -> list[SessionRecord]:
        """Bots that should run and that no node holds: released by a node that left, or
        whose owner stopped renewing. Oldest first."""
        c = bot_sessions.c
        query = (
            select(bot_sessions)
            .where(c.want_running.is_(True), lease_is_free(c.owner_node, c.lease_until, now))
            .order_by(c.created_at, c.id)
            .limit(limit)
        )
        async with self.db.engine.connect() as conn:
            return [SessionRecord.from_row(row) for row in (await conn.execute(query)).all()]

    @shielded
    async def owned_counts(self, now: datetime) -> dict[str, int]:
        """Live leases per node."""
        c = bot_sessions.c
        query = (
            select(c.owner_node, func.count())
            .where(and_(c.owner_node.is_not(None), c.lease_until >= now))
            .group_by(c.owner_node)
        )
        async with self.db.engine.connect() as conn:
            return {str(node): int(n) for node, n in (await conn.execute(query)).all()}

    @shielded
    async def owners(self) -> dict[str, tuple[str | None, datetime | None, int, str]]:
        """{bot id: (owner node, lease until, epoch, state)}: a cheap look at every bot, to
        see what changed since the last look."""
        c = bot_sessions.c
        query = select(c.id, c.owner_node, c.lease_until, c.epoch, c.state)
        async with self.db.engine.connect() as conn:
            return {
                row.id: (row.owner_node, row.lease_until, int(row.epoch), str(row.state))
                for row in (await conn.execute(query)).all()
            }
