"""One cluster, one voice: a leader lease in the database, Kubernetes-style.

A row per lease name holds the holder and until when. A node takes the lease when it is
free or expired, and the holder renews it every few seconds; every write is an
`UPDATE … WHERE …` checked by its row count, so two nodes can never both succeed. The
holder stops acting the moment it cannot prove it holds the lease: `holds()` is false once
a renewal has not succeeded within the renew deadline (the lease less one renew interval),
so it gives up before any other node may take over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from loguru import logger
from sqlalchemy import Column, Integer, String, Table, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from services.clock import Clock
from services.database import Database, UTCDateTime, metadata, shielded

log = logger.bind(component="cluster")

cluster_leases = Table(
    "cluster_leases",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("holder", String(40), nullable=False),
    Column("until", UTCDateTime, nullable=False),
    Column("term", Integer, nullable=False, default=1),
)


class LeaseStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @shielded
    async def hold(self, name: str, holder: str, now: datetime, lease: timedelta) -> int | None:
        """Take or renew the lease; the term held (it grows with each new holder), or None
        when another holder's lease is live."""
        c = cluster_leases.c
        async with self.db.engine.begin() as conn:
            renewed = await conn.execute(
                update(cluster_leases)
                .where(c.name == name, c.holder == holder, c.until >= now)
                .values(until=now + lease)
                .returning(c.term)
            )
            row = renewed.first()
            if row is not None:
                return int(row.term)
            taken = await conn.execute(
                update(cluster_leases)
                .where(c.name == name, or_(c.until < now, c.holder == holder))
                .values(holder=holder, until=now + lease, term=c.term + 1)
                .returning(c.term)
            )
            row = taken.first()
            if row is not None:
                return int(row.term)
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    insert(cluster_leases).values(
                        name=name, holder=holder, until=now + lease, term=1
                    )
                )
        except IntegrityError:
            return None  # another node inserted it first: its lease is live
        return 1

    @shielded
    async def release(self, name: str, holder: str, now: datetime) -> bool:
        """Let it go (at shutdown): another node may take it at once."""
        c = cluster_leases.c
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(cluster_leases)
                .where(c.name == name, c.holder == holder)
                .values(until=now - timedelta(seconds=1))
            )
        return bool(result.rowcount == 1)

    @shielded
    async def holder(self, name: str, now: datetime) -> str | None:
        c = cluster_leases.c
        query = select(c.holder).where(c.name == name, c.until >= now)
        async with self.db.engine.connect() as conn:
            found = (await conn.execute(query)).scalar_one_or_none()
        return str(found) if found is not None else None


class Leadership:
    """This node's view of one leader lease: renewed by `renew_once()` (the node's loop
    calls it every renew interval), read by `holds()` before a cluster-wide job acts."""

    def __init__(
        self,
        store: LeaseStore,
        holder: str,
        clock: Clock,
        *,
        lease: timedelta,
        renew_every: timedelta,
        name: str = "leader",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.holder = holder
        self.clock = clock
        self.name = name
        self.lease = lease
        self.renew_deadline = (lease - renew_every).total_seconds()
        self._monotonic = monotonic
        self._held_since: float | None = None
        self.term: int | None = None
        # The holder as last read (for the log and /api/metrics).
        self.leader: str | None = None

    async def renew_once(self) -> bool:
        """Try to take or keep the lease; True when this node holds it now."""
        started = self._monotonic()
        # A failure raises: nothing is proved, and holds() turns false by itself once the
        # renew deadline passes.
        term = await self.store.hold(self.name, self.holder, self.clock.now(), self.lease)
        was = self.holds()
        if term is None:
            self._held_since, self.term = None, None
            if was:
                log.warning("Lost the {} lease to another node", self.name)
            self.leader = await self.store.holder(self.name, self.clock.now())
            return False
        # Counted from before the query: a slow answer does not stretch the proof.
        self._held_since, self.term, self.leader = started, term, self.holder
        if not was:
            log.info("This node leads the cluster's jobs now (term {})", term)
        return True

    def holds(self) -> bool:
        """True only while the last successful renewal is within the renew deadline."""
        if self._held_since is None:
            return False
        return self._monotonic() - self._held_since < self.renew_deadline

    async def release(self) -> None:
        if self._held_since is None:
            return
        self._held_since = None
        await self.store.release(self.name, self.holder, self.clock.now())
