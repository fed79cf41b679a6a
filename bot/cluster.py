"""This process as a node of the cluster: its id, its row in the node registry, its leases,
and how it hears of the others (Postgres LISTEN/NOTIFY, or polling on SQLite).

The holder stops acting the moment it cannot prove it holds a lease (Kubernetes' leader
election): a renewal that fails for longer than the renew deadline (the lease less one
renew interval, so it gives up before any other node may take over) counts as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psutil
from loguru import logger
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bot.ownership import OwnershipStore
from bot.store import SessionRecord
from config import format_duration
from services.clock import Clock

log = logger.bind(component="cluster")
CHANNEL = "wakeful_cluster"
# Node rows silent this long past their expiry are removed (kept a while for /api/metrics).
FORGET_NODES_AFTER = timedelta(hours=1)
# Nodes joined in this process and not yet left (tests run several in one process).
_JOINED_HERE: set[str] = set()


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    lease: timedelta = timedelta(seconds=15)
    renew_every: timedelta = timedelta(seconds=3)
    capacity: int | None = None

    @property
    def renew_deadline(self) -> float:
        return (self.lease - self.renew_every).total_seconds()


def new_node_id() -> str:
    host = "".join(ch for ch in socket.gethostname() if ch.isalnum() or ch in "-.")[:20]
    return f"{host or 'node'}-{os.getpid()}-{secrets.token_hex(3)}"


class Node:
    def __init__(
        self,
        store: OwnershipStore,
        clock: Clock,
        config: ClusterConfig | None = None,
        node_id: str | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.config = config or ClusterConfig()
        self.id = node_id or new_node_id()
        self.host = socket.gethostname()[:255]
        self.pid = os.getpid()
        self.draining = False
        self.joined = False
        # Set when another node says something changed (a release, a create, a delete).
        self.wakeup = asyncio.Event()
        self.on_message: list[Callable[[str], None]] = []
        self._last_renewed: float | None = None
        # When each bot's lease was last acquired here (monotonic): a renewal's answer is
        # read before an acquire that commits while it runs, and must not call it lost.
        self._acquired_at: dict[str, float] = {}
        self._listener: Any = None
        # Notices said while one NOTIFY transaction is under way go out together in the next
        # (a burst of accepts for stopped bots was one transaction each).
        self._notes: dict[str, asyncio.Future[None]] = {}
        self._notifier: asyncio.Task[None] | None = None

    # Membership ------------------------------------------------------------------------

    async def join(self) -> None:
        """Register; first end the leases of this host's dead predecessors (a process that
        was killed and is being restarted), so their bots come back at once rather than
        after their leases run out. A live process on this host keeps its leases."""
        dead = [
            node.id
            for node in await self.store.nodes()
            if node.id != self.id
            and node.host == self.host
            and node.id not in _JOINED_HERE
            and not _alive(node.pid, self.pid)
        ]
        if dead:
            freed = await self.store.forget_nodes(dead)
            log.info("Released {} bot(s) of {} ended process(es) on this host", freed, len(dead))
        now = self.clock.now()
        await self.store.join(
            self.id, self.host, self.pid, now, self.config.lease, self.config.capacity
        )
        await self.store.prune_nodes(now, FORGET_NODES_AFTER)
        self._last_renewed = time.monotonic()
        self.joined = True
        _JOINED_HERE.add(self.id)
        log.info(
            "Node {} joined the cluster (lease {}, renewed every {})",
            self.id,
            format_duration(self.config.lease),
            format_duration(self.config.renew_every),
        )

    async def beat(self, bots: int) -> None:
        now = self.clock.now()
        if not await self.store.beat(self.id, now, self.config.lease, bots, self.draining):
            # Another node judged this one dead and removed its row: be listed again.
            await self.store.join(
                self.id, self.host, self.pid, now, self.config.lease, self.config.capacity
            )

    async def leave(self) -> list[str]:
        """Give every bot up and leave; the others are told at once."""
        released = await self.store.release_all(self.id)
        await self.store.leave(self.id)
        _JOINED_HERE.discard(self.id)
        await self.notify("released")
        return released

    # Leases ----------------------------------------------------------------------------

    async def acquire(self, session_id: str) -> SessionRecord | None:
        record = await self.store.acquire(session_id, self.id, self.clock.now(), self.config.lease)
        if record is not None:
            self._acquired_at[session_id] = time.monotonic()
        return record

    def acquired_since(self, session_id: str, since: float) -> bool:
        """Whether this node acquired the bot at or after `since` (monotonic)."""
        return self._acquired_at.get(session_id, float("-inf")) >= since

    async def release(self, session_id: str, epoch: int) -> bool:
        released = await self.store.release(session_id, self.id, epoch)
        if released:
            await self.notify("released")
        return released

    async def renew(self) -> tuple[dict[str, int], datetime]:
        """{bot id: epoch} of the bots this node still holds, and until when."""
        now = self.clock.now()
        held = await self.store.renew(self.id, now, self.config.lease)
        self._last_renewed = time.monotonic()
        # Only the acquisitions a later renewal could still miss are worth remembering.
        forget_before = self._last_renewed - self.config.lease.total_seconds()
        self._acquired_at = {b: t for b, t in self._acquired_at.items() if t >= forget_before}
        return held, now + self.config.lease

    def can_prove_hold(self) -> bool:
        """False once renewals have failed for longer than the renew deadline."""
        if self._last_renewed is None:
            return False
        return time.monotonic() - self._last_renewed < self.config.renew_deadline

    # Messages between nodes --------------------------------------------------------------

    async def notify(self, message: str) -> None:
        """Tell the other nodes (Postgres); on SQLite they poll, and a failure only delays.
        Returns once the notice is sent: with the others said meanwhile, in one transaction
        (a notice already waiting is not said twice)."""
        db = self.store.db
        if db.dialect != "postgresql":
            return
        loop = asyncio.get_running_loop()
        sent = self._notes.get(message)
        if sent is None:
            sent = self._notes[message] = loop.create_future()
        if self._notifier is None:
            self._notifier = loop.create_task(self._notify_all())
            db.track(self._notifier)
        await asyncio.shield(sent)

    async def _notify_all(self) -> None:
        try:
            while self._notes:
                notes, self._notes = self._notes, {}
                try:
                    async with self.store.db.engine.begin() as conn:
                        await conn.execute(
                            text("SELECT pg_notify(:channel, :message)"),
                            [{"channel": CHANNEL, "message": m} for m in notes],
                        )
                except Exception as exc:
                    log.debug("NOTIFY failed: {}", exc)
                for sent in notes.values():
                    if not sent.done():
                        sent.set_result(None)
        finally:
            self._notifier = None
            for sent in self._notes.values():  # only if this task was cancelled mid-way
                if not sent.done():
                    sent.set_result(None)
            self._notes.clear()

    async def listen(self) -> None:
        """Hear the others' notices at once (Postgres only): a LISTEN on its own connection."""
        db = self.store.db
        if db.dialect != "postgresql":
            return
        import asyncpg

        url = make_url(db.url)
        query = dict(url.query)
        ssl = query.pop("sslmode", None)
        dsn = url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)
        try:
            self._listener = await asyncpg.connect(
                dsn, ssl=ssl if ssl and ssl != "disable" else None, timeout=10
            )
            await self._listener.add_listener(CHANNEL, self._heard)
        except Exception as exc:
            log.warning("Cannot LISTEN for other nodes ({}); polling instead", exc)
            self._listener = None

    @property
    def listening(self) -> bool:
        """Whether the others' notices reach this node at once (a live LISTEN)."""
        return self._listener is not None

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        # Requests and answers between nodes (bot.actions) change nothing the keeper reads.
        if not payload.startswith(("action:", "done:")):
            self.wakeup.set()
        for callback in self.on_message:
            callback(payload)

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await listener.close()


def _alive(pid: int, own_pid: int) -> bool:
    """Whether the process of a node registered from this host may still be running. Our
    own pid is a predecessor's (a container restarts with the same pid)."""
    if pid == own_pid:
        return False
    try:
        process = psutil.Process(pid)
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
