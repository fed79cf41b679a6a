"""The node's one background loop: renew the leases it holds (and stop acting for any it
lost), mirror what other nodes did to the bots it does not run, and adopt the bots nobody
runs (boot restore, a node that left or died). One step, then a wait that another node's
notice cuts short (Postgres NOTIFY; on SQLite the wait is the poll)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from loguru import logger

from bot.ownership import NodeRecord
from bot.session import BotSession, ConcurrentChangeError
from bot.states import IllegalTransitionError
from bot.store import SessionRecord
from config import format_duration
from services.dbhealth import is_database_unavailable

if TYPE_CHECKING:
    from bot.manager import BotManager

log = logger.bind(component="cluster")
# Without a fixed BOTS_PER_NODE, adopt at most this many per step (the next step takes more).
ADOPT_BATCH = 100
# Past a foreign lease's expiry, so that the step that follows finds it free.
EXPIRY_MARGIN = 0.05
# The room of a node without BOTS_PER_NODE: unlimited, less what it runs (fewest bots wins).
UNLIMITED = 1_000_000


def room_of(node: NodeRecord, bots: int | None = None) -> int:
    held = node.bots if bots is None else bots
    return (UNLIMITED if node.capacity is None else node.capacity) - held


def placement(bot_ids: list[str], rooms: dict[str, int]) -> dict[str, str]:
    """Which node takes each bot: one at a time, to the node with the most room (ties to
    the lowest id), its room then one less. Every node computes the same answer from the
    same view, so they take disjoint shares without talking."""
    left = dict(rooms)
    chosen: dict[str, str] = {}
    for bot_id in bot_ids:
        if not left:
            break
        best = min(left, key=lambda node: (-left[node], node))
        if left[best] <= 0:
            break
        chosen[bot_id] = best
        left[best] -= 1
    return chosen


def seconds_to_next_step(every: float, next_expiry: datetime | None, now: datetime) -> float:
    """Until the keeper's next step: the renew interval, or less when another node's lease
    runs out sooner (just after it, so that the bot is adoptable by then)."""
    if next_expiry is None:
        return every
    left = (next_expiry - now).total_seconds()
    return min(every, max(left, 0.0) + EXPIRY_MARGIN)


class ClusterKeeper:
    def __init__(self, manager: BotManager) -> None:
        self.manager = manager
        self.node = manager.node
        self._adopting: asyncio.Task[None] | None = None
        # The boot's adoption has run to its end: later adoptions are takeovers.
        self.restored = False
        # The live nodes as last read (for /api/metrics and /metrics: no query per scrape).
        self.nodes: list[NodeRecord] = []
        # Bots another node changed outside their state (webhook, secret, metadata).
        self._changed: set[str] = set()
        # When each bot was first seen waiting for a node (monotonic): one the placement gave
        # to another node that has not taken it within a lease is taken by whoever has room.
        self._waiting_since: dict[str, float] = {}
        # New bots this node placed (node → bot id → when, monotonic) that this node has
        # not yet seen that node own: a burst of creates spreads instead of piling onto the
        # node that looked emptiest. Forgotten after a lease (the node never took it).
        self._placed: dict[str, dict[str, float]] = {}
        # The soonest another node's lease on a bot runs out, as last read: a node that
        # died (SIGKILL, out of memory) is noticed then, not up to a renew interval later.
        self._next_expiry: datetime | None = None
        self.node.on_message.append(self._heard)

    def _heard(self, message: str) -> None:
        if message.startswith("changed:"):
            self._changed.add(message.removeprefix("changed:"))

    async def run(self) -> None:
        node = self.node
        await node.listen()
        every = node.config.renew_every.total_seconds()
        while True:
            node.wakeup.clear()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_database_unavailable(exc):
                    log.debug("Cluster step failed: {}", exc)
                else:
                    log.opt(exception=exc).warning("Cluster step failed: {}", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._wait_seconds(every)):
                    await node.wakeup.wait()

    def _wait_seconds(self, every: float) -> float:
        return seconds_to_next_step(every, self._next_expiry, self.manager.clock.now())

    async def step(self) -> None:
        await self.renew()
        await self.sync()
        # Read before adopting: where the waiting bots go depends on every node's room.
        now = self.manager.clock.now()
        self.nodes = [n for n in await self.node.store.nodes() if n.alive(now)]
        if not self.node.draining:
            self.adopt()
            try:
                await self.manager.leadership.renew_once()
            except Exception as exc:  # unproved: holds() turns false by itself in time
                log.debug("Renewing the leader lease failed: {}", exc)
        await self.node.beat(self.manager.held_count())

    async def renew(self) -> None:
        """Extend our leases; a bot missing from the answer was taken by another node."""
        sessions = self.manager.sessions
        asked = time.monotonic()
        try:
            held, until = await self.node.renew()
        except Exception:
            if not self.node.can_prove_hold():
                for session in [s for s in sessions.values() if s.held()]:
                    await session.lose("the lease could not be renewed in time")
            raise
        for session in list(sessions.values()):
            if session.held():
                if session.id in held:
                    session.record.lease_until = until
                elif not self.node.acquired_since(session.id, asked):
                    # (One acquired while the renewal ran is simply not in its answer yet.)
                    await session.lose("another node took it")
            elif session.id in held:
                # Given up here (renewals failed for too long) while the database, away,
                # still named this node: release it, so that it can be adopted again.
                await self.node.release(session.id, held[session.id])

    async def sync(self) -> None:
        """Bring the bots this node does not run up to date with the database: created or
        deleted through another node, started, stopped or moved by their owner node."""
        manager = self.manager
        # Known before the look: a bot created here while the look runs is not "deleted".
        known = set(manager.sessions)
        changed, self._changed = self._changed, set()
        stored = await self.node.store.owners()
        now = manager.clock.now()
        self._next_expiry = min(
            (
                until
                for owner, until, _, _ in stored.values()
                if owner is not None and owner != self.node.id and until and until >= now
            ),
            default=None,
        )
        for session_id in [i for i in known if i not in stored and i in manager.sessions]:
            gone = manager.sessions[session_id]
            if gone.held():
                await gone.lose("it was deleted through another node")
            await manager.forget(gone, "deleted through another node")
        for session_id, (owner, _, epoch, state) in stored.items():
            if session_id in manager.deleted:
                continue
            session = manager.sessions.get(session_id)
            if session is not None and session.held() and session_id not in changed:
                continue
            if session is not None and session_id not in changed:
                record = session.record
                # Not the lease's expiry: it moves with every renewal, and means nothing here.
                if (record.owner_node, record.epoch, record.state.value) == (owner, epoch, state):
                    continue
            fresh = await manager.store.get_session(session_id)
            if fresh is None:
                continue
            if session is None:
                manager.add(fresh)
            elif not session.held():
                session.replace_record(fresh)
            elif session_id in changed:
                # Ours: only what an owner may change through any node, not the lifecycle.
                for name in ("webhook_url", "webhook_events", "webhook_secret", "metadata"):
                    setattr(session.record, name, getattr(fresh, name))

    def adopt(self) -> None:
        if self.manager.engine is None:
            return
        if self._adopting is not None and not self._adopting.done():
            return
        at_boot = self._adopting is None  # the node's first look restores its bots
        self._adopting = asyncio.get_running_loop().create_task(self._adopt(at_boot))

    async def _adopt(self, at_boot: bool) -> None:
        try:
            await self._adopt_waiting(at_boot)
        finally:
            if at_boot:
                self.restored = True

    async def _adopt_waiting(self, at_boot: bool) -> None:
        manager, node = self.manager, self.node
        capacity = node.config.capacity
        room = ADOPT_BATCH if capacity is None else capacity - manager.held_count()
        if room <= 0:
            return
        records = await node.store.adoptable(manager.clock.now(), ADOPT_BATCH)
        records = self._my_share(records)[:room]
        if not records:
            return
        # The gap is for a boot: a node that starts restores its bots slowly enough for its
        # health check to pass. A takeover brings back bots whose users are waiting (every
        # deploy hands all of them over, and 5 s apart ten bots would wait 45 s): only the
        # start slots (BOT_START_CONCURRENCY) pace it.
        if at_boot:
            reason = "restored at boot"
            gap = manager.config.start_stagger
            log.info(
                "Adopting {} bot session(s) ({}), {} apart",
                len(records),
                reason,
                format_duration(gap),
            )
        else:
            reason, gap = "taken over from another node", timedelta(0)
            log.info("Adopting {} bot session(s) ({})", len(records), reason)
        for index, record in enumerate(records):
            if node.draining:
                return
            if index and gap:
                await asyncio.sleep(gap.total_seconds())
            session: BotSession | None = manager.sessions.get(record.id)
            if session is None:
                session = manager.add(record)
            elif not session.held():
                session.replace_record(record)
            try:
                await session.start(reason)
            except (IllegalTransitionError, ConcurrentChangeError) as exc:
                log.bind(session=record.id).info("Not adopted: {}", exc)

    def rooms(self) -> dict[str, int]:
        """The room of every live node that takes bots (this one's exact)."""
        me = self.node
        # Each node's bots as this node's copies of the rows say (owner_node), not the
        # count a node stores at its renewal, which lags its starts: with the placements
        # not seen owned yet, nothing is counted twice or missed.
        owned: dict[str, int] = {}
        for session in self.manager.sessions.values():
            owner = session.record.owner_node
            if owner is not None:
                owned[owner] = owned.get(owner, 0) + 1
        rooms = {
            n.id: room_of(n, owned.get(n.id, 0)) - self.pending_placements(n.id)
            for n in self.nodes
            if not n.draining and n.id != me.id
        }
        capacity = me.config.capacity
        held = self.manager.held_count() + self.pending_placements(me.id)
        rooms[me.id] = (UNLIMITED if capacity is None else capacity) - held
        return rooms

    def _my_share(self, records: list[SessionRecord]) -> list[SessionRecord]:
        """The waiting bots this node should start: those the placement gives it, and
        those given to another node that has not taken them within a lease."""
        now = time.monotonic()
        waiting = {record.id for record in records}
        self._waiting_since = {
            bot_id: since for bot_id, since in self._waiting_since.items() if bot_id in waiting
        }
        for bot_id in waiting:
            self._waiting_since.setdefault(bot_id, now)
        # A node that let its leases lapse is dead or cut off (a node that leaves releases
        # them): none of the bots goes back to it, though its own row may still look alive.
        lapsed = {r.owner_node for r in records if r.owner_node} - {self.node.id}
        rooms = {node: room for node, room in self.rooms().items() if node not in lapsed}
        chosen = placement([record.id for record in records], rooms)
        patience = self.node.config.lease.total_seconds()
        return [
            record
            for record in records
            if chosen.get(record.id) == self.node.id
            or now - self._waiting_since[record.id] >= patience
        ]

    def note_placed(self, node_id: str, bot_id: str) -> None:
        """A new bot was sent to `node_id` (this node included) to start."""
        self._placed.setdefault(node_id, {})[bot_id] = time.monotonic()

    def pending_placements(self, node_id: str) -> int:
        """Bots placed on `node_id` within the last lease that it is not yet seen to own."""
        since = time.monotonic() - self.node.config.lease.total_seconds()
        pending = {
            bot_id: at
            for bot_id, at in self._placed.get(node_id, {}).items()
            if at > since
            and (session := self.manager.sessions.get(bot_id)) is not None
            and session.record.owner_node != node_id
        }
        self._placed[node_id] = pending
        return len(pending)

    def best_node(self) -> str:
        """Where a new bot should run: the live node with the most room."""
        rooms = self.rooms()
        return min(rooms, key=lambda node: (-rooms[node], node))

    async def stop(self) -> None:
        if self._adopting is not None:
            self._adopting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._adopting
