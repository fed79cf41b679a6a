"""BotManager: the registry of bot sessions, their owners' actions, boot restore, and the
two periodic steps (`cleanup_once`, `health_sweep_once`)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from loguru import logger

from bot.actions import Actions, OwnerSilentError, RemoteFailedError
from bot.cluster import Node
from bot.cluster_jobs import ClusterJobs
from bot.engines.base import Engine
from bot.keeper import ClusterKeeper
from bot.ownership import OwnershipStore
from bot.policy import (
    HealthLevel,
    MaxAgeAction,
    Policy,
    cleanup_verdict,
    link_at_risk,
    link_last_seen,
    link_refresh_due,
)
from bot.session import (
    BotSession,
    ConcurrentChangeError,
    Listener,
    OwnedElsewhereError,
    SessionContext,
)
from bot.states import RUNNING_STATES, IllegalTransitionError, SessionState
from bot.store import BotStore, DuplicateNameError, LimitReachedError, SessionRecord
from config import Settings
from services.alerts import Alerter
from services.clock import Clock
from services.memory import MemoryBudget, MemoryFullError
from services.metrics import Metrics

log = logger.bind(component="bot")
S = SessionState

CLEANUP_REASONS = {
    "inactive": "no activity for {inactive}",
    "max_age": "running for more than {max_age}",
}


class SessionLimitError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ManagerConfig:
    max_sessions_per_user: int = 5
    start_concurrency: int = 2
    start_stagger: timedelta = timedelta(seconds=5)
    start_timeout: timedelta = timedelta(seconds=90)


def policy_from(settings: Settings) -> Policy:
    return Policy(
        backoff_base=settings.reconnect_base_delay,
        backoff_cap=settings.reconnect_max_delay,
        max_reconnect_attempts=settings.reconnect_max_attempts,
        breaker_threshold=settings.breaker_threshold,
        breaker_window=settings.breaker_window,
        breaker_open_for=settings.breaker_open_for,
        qr_debounce=settings.qr_debounce,
        qr_timeout=settings.qr_timeout,
        heartbeat_every=settings.heartbeat_interval,
        heartbeat_stale_after=settings.heartbeat_stale_after,
        offline_alert_after=settings.offline_alert_after,
        inactive_timeout=settings.session_inactive_timeout,
        max_age=settings.session_max_age,
        max_age_action=MaxAgeAction(settings.session_max_age_action),
        link_refresh_every=settings.link_refresh_every,
        link_refresh_for=settings.link_refresh_for,
        link_alert_after=settings.link_alert_after,
    )


def manager_config_from(settings: Settings) -> ManagerConfig:
    return ManagerConfig(
        max_sessions_per_user=settings.max_sessions_per_user,
        start_concurrency=settings.bot_start_concurrency,
        start_stagger=settings.bot_start_stagger,
        start_timeout=settings.bot_start_timeout,
    )


def new_session_id() -> str:
    return "bot_" + secrets.token_hex(6)


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    # Days only from two days on: "24h" reads better than "1d" in a log line.
    for unit, size, minimum in (("d", 86400, 2 * 86400), ("h", 3600, 3600), ("m", 60, 60)):
        if seconds >= minimum and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class BotManager:
    def __init__(
        self,
        *,
        store: BotStore,
        engine: Engine | None,
        policy: Policy,
        clock: Clock,
        alerter: Alerter,
        metrics: Metrics,
        config: ManagerConfig,
        rand: Callable[[], float] = random.random,
        node: Node | None = None,
    ) -> None:
        self.store = store
        # A manager always runs as a node, if only a cluster of one (SQLite, one process).
        self.node = node or Node(OwnershipStore(store.db), clock)
        self.engine = engine
        self.policy = policy
        self.clock = clock
        self.config = config
        self.ctx = SessionContext(
            engine=engine,
            store=store,
            policy=policy,
            clock=clock,
            alerter=alerter,
            metrics=metrics,
            start_slots=asyncio.Semaphore(config.start_concurrency),
            start_timeout=config.start_timeout.total_seconds(),
            random=rand,
            node=self.node,
        )
        self.sessions: dict[str, BotSession] = {}
        # One creation at a time per owner, so concurrent requests cannot pass the limit.
        self._create_locks: dict[str | None, asyncio.Lock] = {}
        # Deleted through this node: never re-added by a look that raced the delete.
        self.deleted: set[str] = set()
        self.keeper = ClusterKeeper(self)
        self._keeper_task: asyncio.Task[None] | None = None
        # Actions reach the owner node (bot.actions); the leader asks every node to sweep.
        self.actions = Actions(self)
        self.actions.node_steps["sweep"] = lambda: self.health_sweep_local(only_held=True)
        self.actions.node_steps["cleanup"] = lambda: self.cleanup_local(only_held=True)
        self._actions_task: asyncio.Task[None] | None = None
        # One cluster, one voice: the cluster-wide jobs run where the leader lease is held.
        self.jobs = ClusterJobs(self)
        self.leadership = self.jobs.leadership
        self.last_cleanup: dict[str, Any] | None = None
        # Bots with messages waiting in the outbox (set by the app): an expired one wakes.
        self.queued_for: Callable[[], Awaitable[set[str]]] | None = None
        # The memory budget (set by the app with a browser engine): a wake must fit in it.
        self.memory_guard: MemoryBudget | None = None
        self.last_sweep: dict[str, Any] | None = None
        metrics.session_counts = self.counts_by_state
        metrics.node_bots = self.bots_by_node
        vault = getattr(engine, "vault", None)
        if vault is not None and hasattr(vault, "fence"):
            vault.fence = self.epoch_held

    def add_listener(self, listener: Listener) -> None:
        """Be told of every session's events (status, QR, incoming messages)."""
        self.ctx.listeners.append(listener)

    # Registry --------------------------------------------------------------------------

    def epoch_held(self, session_id: str) -> int | None:
        """The epoch under which this node runs the bot; None when it does not run it."""
        session = self.sessions.get(session_id)
        return session.record.epoch if session is not None and session.held() else None

    def held_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.held())

    async def load(self) -> None:
        """Read every session from the store; re-adopt open incidents without re-alerting."""
        if not self.node.joined:
            await self.node.join()
        for record in await self.store.all_sessions():
            self.sessions[record.id] = BotSession(record, self.ctx)
            if record.health == HealthLevel.CRITICAL.value:
                self.ctx.alerter.adopt(
                    f"session:{record.id}", record.state_changed_at, record.state_reason or ""
                )
        # Still "running" in storage with no live lease means the node that ran them died
        # (SIGKILL, out of memory). Say so now, before anyone reads a CONNECTED that no
        # browser backs. A bot another live node holds is that node's: left alone.
        now = self.clock.now()
        for session in list(self.sessions.values()):
            lease = session.record.lease_until
            if session.state not in RUNNING_STATES:
                continue
            if session.record.owner_node is not None and lease is not None and lease >= now:
                continue
            try:
                await session.settle_orphan()
            except (IllegalTransitionError, ConcurrentChangeError) as exc:
                log.bind(session=session.id).debug("Orphan not settled: {}", exc)

    def add(self, record: SessionRecord) -> BotSession:
        """A bot this node learned of from the database (created through another node)."""
        existing = self.sessions.get(record.id)
        if existing is not None:  # learned of twice (a look and a request racing)
            return existing
        session = BotSession(record, self.ctx)
        self.sessions[record.id] = session
        return session

    async def forget(self, session: BotSession, why: str) -> None:
        """A bot deleted through another node: gone here too (its local profile as well)."""
        if self.sessions.pop(session.id, None) is None:
            return
        self.ctx.count_move(session.state, None)
        await session.destroy()
        self.ctx.alerter.forget(f"session:{session.id}")
        log.bind(session=session.id).info("Bot session '{}' {}", session.record.name, why)

    def visible(self, session_id: str, owner: str | None) -> BotSession | None:
        """The session if `owner` may see it (None = admin); another's is as good as absent."""
        session = self.sessions.get(session_id)
        if session is None:
            return None
        if owner is not None and session.record.user_id != owner:
            return None
        return session

    def list_visible(self, owner: str | None, user_filter: str | None = None) -> list[BotSession]:
        sessions = sorted(self.sessions.values(), key=lambda s: (s.record.created_at, s.id))
        if owner is not None:
            return [s for s in sessions if s.record.user_id == owner]
        if user_filter is not None:
            wanted = None if user_filter == "admin" else user_filter
            return [s for s in sessions if s.record.user_id == wanted]
        return sessions

    def count_for(self, user_id: str | None) -> int:
        return sum(1 for s in self.sessions.values() if s.record.user_id == user_id)

    def bots_by_node(self) -> dict[str, int]:
        found = {node.id: node.bots for node in self.keeper.nodes}
        found[self.node.id] = self.held_count()  # ours, exact
        return found

    def cluster_summary(self) -> dict[str, Any]:
        """This node, and every live node as last read from the registry."""
        capacity = self.node.config.capacity
        return {
            "node": self.node.id,
            "nodes": [
                {
                    "id": node.id,
                    "bots": self.held_count() if node.id == self.node.id else node.bots,
                    "capacity": node.capacity,
                    "room": node.room(),
                    "draining": node.draining,
                    "startedAt": node.started_at.isoformat(),
                    "seenAt": node.seen_at.isoformat(),
                }
                for node in self.keeper.nodes
            ]
            or [{"id": self.node.id, "bots": self.held_count(), "capacity": capacity}],
        }

    def counts_by_state(self) -> dict[str, int]:
        return dict(self.ctx.state_counts)

    def counts_by_health(self) -> dict[str, int]:
        counts = dict.fromkeys((level.value for level in HealthLevel), 0)
        for session in self.sessions.values():
            counts[session.record.health] = counts.get(session.record.health, 0) + 1
        return counts

    # Owner actions ---------------------------------------------------------------------

    async def create(
        self,
        *,
        user_id: str | None,
        name: str,
        webhook_url: str | None,
        metadata: dict[str, Any],
        start: bool,
        **webhook: Any,
    ) -> BotSession:
        """Create (and start) a bot. `webhook` may hold webhook_events, webhook_secret."""
        lock = self._create_locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            session = await self._create(user_id, name, webhook_url, metadata, webhook)
        if start and self.engine is not None:
            await self._start_where_most_room(session)
        return session

    async def _start_where_most_room(self, session: BotSession) -> None:
        """A new bot starts on the live node with the most room (BOTS_PER_NODE, else the
        fewest bots); here when that is this node, or when that node does not answer."""
        target = self.keeper.best_node()
        self.keeper.note_placed(target, session.id)
        if target != self.node.id:
            try:
                await self.actions.place(session, target)
                return
            except (OwnedElsewhereError, IllegalTransitionError) as exc:
                # Started already (by that node, or taken by another): nothing to do here.
                log.bind(session=session.id).debug("Placed elsewhere: {}", exc)
                return
            except (OwnerSilentError, RemoteFailedError, ConcurrentChangeError) as exc:
                log.bind(session=session.id).warning(
                    "Node {} did not start the new bot ({}); starting it here", target, exc
                )
        try:
            await session.start("started at creation")
        except OwnedElsewhereError as exc:
            # That node started it after all (it answered late): it runs there.
            log.bind(session=session.id).info("Started by another node: {}", exc)

    async def _create(
        self,
        user_id: str | None,
        name: str,
        webhook_url: str | None,
        metadata: dict[str, Any],
        webhook: dict[str, Any],
    ) -> BotSession:
        limit = self.config.max_sessions_per_user
        if user_id is not None and self.count_for(user_id) >= limit:
            raise SessionLimitError(limit)
        if any(
            s.record.user_id == user_id and s.record.name == name for s in self.sessions.values()
        ):
            raise DuplicateNameError(name)
        now = self.clock.now()
        record = SessionRecord(
            id=new_session_id(),
            user_id=user_id,
            name=name,
            state=S.IDLE,
            state_changed_at=now,
            created_at=now,
            webhook_url=webhook_url,
            metadata=metadata,
            **webhook,
        )
        try:
            await self.store.insert_session(record, "created", limit=limit)
        except LimitReachedError:
            raise SessionLimitError(limit) from None
        session = self.add(record)
        await self.node.notify("created")
        log.bind(session=record.id).info("Bot session '{}' created", name)
        return session

    async def delete(self, session: BotSession) -> bool:
        """False when it was already deleted (two deletes racing: one wins)."""
        if self.sessions.pop(session.id, None) is None:
            return False
        self.deleted.add(session.id)
        self.ctx.count_move(session.state, None)
        await session.destroy()
        await self.store.delete_session(session.id)
        await self.node.notify("deleted")
        self.ctx.alerter.forget(f"session:{session.id}")
        log.bind(session=session.id).info("Bot session '{}' deleted", session.record.name)
        return True

    async def delete_user_sessions(self, user_id: str) -> int:
        mine = [s for s in self.sessions.values() if s.record.user_id == user_id]
        for session in mine:
            await self.delete(session)
        return len(mine)

    # Boot and shutdown -----------------------------------------------------------------

    def restore_in_background(self) -> None:
        """Start the node's loop: its first step restores what should run and nobody runs
        (staggered, under the start cap); later steps renew, mirror and adopt."""
        self._keeper_task = asyncio.get_running_loop().create_task(self.keeper.run())
        self._keeper_task.set_name("cluster keeper")
        self._actions_task = asyncio.get_running_loop().create_task(self.actions.serve())
        self._actions_task.set_name("owner actions")

    async def shutdown(self, within: float) -> None:
        """Hand over: take no more bots, close the browsers this node runs (each takes its
        last profile backup under its epoch), store their state under that epoch, then
        release the leases (the other nodes hear of it at once and adopt the bots)."""
        self.node.draining = True
        await self.keeper.stop()
        await self.actions.finish_running(within / 3)
        sessions = [s for s in self.sessions.values() if s.held()]
        try:
            async with asyncio.timeout(within):
                left = await asyncio.gather(
                    *(s.close_for_shutdown() for s in sessions), return_exceptions=True
                )
                moves = [
                    (session.id, state, session.record.epoch)
                    for session, state in zip(sessions, left, strict=True)
                    if isinstance(state, SessionState)
                ]
                for session, state in zip(sessions, left, strict=True):
                    if isinstance(state, Exception):
                        log.bind(session=session.id).warning("Did not close cleanly: {}", state)
                # One transaction for all: thousands of bots must not outlast the bound.
                now = self.clock.now()
                moved = await self.store.stop_many(moves, S.STOPPED, "shutdown", now)
                for session in sessions:
                    if session.id in moved:
                        session.mark_stopped("shutdown", now)
        except TimeoutError:
            log.error("Bot sessions did not all stop within {:.1f}s", within)
        for task in (self._keeper_task, self._actions_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.actions.stop()
        with contextlib.suppress(Exception):
            await self.leadership.release()
        try:
            released = await self.node.leave()
            if released:
                log.info("Released {} bot session(s) to the other nodes", len(released))
        except Exception as exc:
            log.warning("Could not release the leases ({}); they expire by themselves", exc)
        await self.node.close()
        # Cancel what is left (timers, heartbeats, launches) and wait for it to unwind, so no
        # task is still holding a database connection when the engine is disposed.
        leftovers = [task for task in self.ctx.tasks if task is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=max(within / 4, 0.5))
        if self.engine is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(max(within / 2, 1.0)):
                    await self.engine.close()

    # Periodic steps --------------------------------------------------------------------

    async def run_if_leader(self, job: str, step: Callable[[], Any]) -> Any:
        """A cluster-wide job (retention): run here only while this node leads."""
        return await self.jobs.run_if_leader(job, step)

    async def cleanup_once(self) -> dict[str, Any]:
        """The cleanup sweep, once per interval in the cluster (bot.cluster_jobs): recycle
        what runs past SESSION_MAX_AGE (or close it, with SESSION_MAX_AGE_ACTION=expire),
        close what is idle past SESSION_INACTIVE_TIMEOUT (→ EXPIRED; the link is kept),
        wake the expired bots whose link needs refreshing or that have messages waiting,
        and alert on links WhatsApp may soon drop."""
        return await self.jobs.cleanup_once()

    async def _run_elsewhere(self, only_held: bool) -> set[str]:
        """Bots another node holds a live lease on, as stored now (this node's copies may
        be a step behind)."""
        if only_held:
            return set()
        now = self.clock.now()
        return {
            bot_id
            for bot_id, (owner, until, _, _) in (await self.node.store.owners()).items()
            if owner is not None and owner != self.node.id and until is not None and until >= now
        }

    async def cleanup_local(self, *, only_held: bool) -> dict[str, Any]:
        """The cleanup of the bots this node runs (and, on the leader, of those nobody
        runs: the expired ones it wakes, the links it alerts on)."""
        others = await self._run_elsewhere(only_held)
        now = self.clock.now()
        checked = 0
        removed: Counter[str] = Counter()
        recycled = 0
        texts = {
            key: text.format(
                inactive=_duration(self.policy.inactive_timeout),
                max_age=_duration(self.policy.max_age),
            )
            for key, text in CLEANUP_REASONS.items()
        }
        for session in list(self.sessions.values()):
            record = session.record
            # Another node's bot (mirrored here) is that node's to clean up.
            if record.state not in RUNNING_STATES or session.owned_elsewhere():
                continue
            if not session.held() and (only_held or session.id in others):
                continue
            checked += 1
            verdict = cleanup_verdict(
                self.policy, record.state, record.last_activity_at, record.started_at, now
            )
            if verdict is None:
                continue
            text = texts[verdict.reason.value]
            try:
                if verdict.action is MaxAgeAction.RECYCLE:
                    await session.recycle(f"cleanup: {text}")
                else:
                    await session.expire(f"cleanup: {text}")
            except (IllegalTransitionError, ConcurrentChangeError) as exc:
                log.bind(session=session.id).debug("Cleanup skipped: {}", exc)
                continue
            removed[verdict.reason.value] += 1
            self.ctx.metrics.bot_cleanup_removed.labels(reason=verdict.reason.value).inc()
            if verdict.action is MaxAgeAction.RECYCLE:
                recycled += 1
                log.bind(session=session.id).info(
                    "♻️ Session '{}' recycled (browser restarted, link kept): {}",
                    record.name,
                    text,
                )
            else:
                log.bind(session=session.id).info("🧹 Session '{}' closed: {}", record.name, text)
        # Expired bots hold no lease: they are the leader's (only_held=False) to wake and
        # to alert on, so one node does it for the cluster.
        woken: Counter[str] = Counter()
        at_risk = 0
        if not only_held:
            woken = await self._wake_expired(now)
            at_risk = self._alert_links_at_risk(now)
        return {
            "at": now.isoformat(),
            "checked": checked,
            "removed": sum(removed.values()),
            "recycled": recycled,
            "reasons": dict(removed),
            "woken": dict(woken),
            "linksAtRisk": at_risk,
        }

    async def _wake_expired(self, now: datetime) -> Counter[str]:
        """Expired bots with messages waiting (queued while asleep, or before a restart)
        wake; so do those whose link WhatsApp has not seen for LINK_REFRESH_EVERY."""
        woken: Counter[str] = Counter()
        expired = [s for s in self.sessions.values() if s.state is S.EXPIRED]
        if not expired or self.engine is None:
            return woken
        waiting: set[str] = set()
        if self.queued_for is not None:
            try:
                waiting = await self.queued_for()
            except Exception as exc:  # the database away: the refresh still goes on
                log.warning("Could not read which bots have messages waiting: {}", exc)
        for session in expired:
            record = session.record
            if session.id in waiting:
                if await self.wake(session, "a message is waiting to be sent"):
                    woken["message"] += 1
                continue
            seen = link_last_seen(
                record.state, record.last_connected_at, record.last_heartbeat_at, now
            )
            if not link_refresh_due(self.policy, record.state, seen, record.started_at, now):
                continue
            every = _duration(self.policy.link_refresh_every)
            if await self.wake(
                session,
                f"link refresh (unseen by WhatsApp for {every} or more)",
                refresh=True,
            ):
                woken["refresh"] += 1
        return woken

    async def wake(self, session: BotSession, why: str, *, refresh: bool = False) -> bool:
        """Wake an EXPIRED bot (a message queued for it, its owner acting on it, the link
        refresh). False when it is not expired, does not fit in memory, or another node
        took it first; nothing is lost then (a message waits in the queue)."""
        if session.state is not S.EXPIRED or self.engine is None:
            if not refresh:
                session.keep_awake()
            return False
        if self.memory_guard is not None:
            try:
                self.memory_guard.check_room()
            except MemoryFullError as exc:
                log.bind(session=session.id).warning("Not woken ({}): {}", why, exc)
                return False
        try:
            woke = await session.wake(f"woken: {why}", refresh=refresh)
        except (IllegalTransitionError, ConcurrentChangeError) as exc:
            log.bind(session=session.id).debug("Not woken: {}", exc)
            return False
        if woke:
            log.bind(session=session.id).info("⏰ Session '{}' woken: {}", session.record.name, why)
        return woke

    def _alert_links_at_risk(self, now: datetime) -> int:
        """A linked bot WhatsApp has not seen for LINK_ALERT_AFTER: one alert per incident
        (resolved when it connects: bot.session)."""
        count = 0
        after = _duration(self.policy.link_alert_after)
        for session in self.sessions.values():
            record = session.record
            if session.owned_elsewhere():
                continue
            seen = link_last_seen(
                record.state, record.last_connected_at, record.last_heartbeat_at, now
            )
            if not link_at_risk(self.policy, record.state, seen, now):
                continue
            count += 1
            assert seen is not None
            self.ctx.alerter.alert(
                f"session:{session.id}:link",
                f"bot '{record.name}' ({session.id}) has not been connected for {after} or more "
                f"(last seen {seen.isoformat()}, {record.state.value}); WhatsApp unlinks a "
                "device it has not seen for 30 days: start it, or it will need a new QR scan",
                title=f"bot {record.name} may lose its link",
            )
        return count

    async def health_sweep_once(self) -> dict[str, Any]:
        """Level every session, reconnect what is due, alert on entering critical, once per
        interval in the cluster (bot.cluster_jobs)."""
        return await self.jobs.health_sweep_once()

    async def health_sweep_local(self, *, only_held: bool) -> dict[str, Any]:
        """The sweep of the bots this node runs (and, on the leader, of those nobody runs)."""
        others = await self._run_elsewhere(only_held)
        now = self.clock.now()
        summary = {
            "total": 0,
            "healthy": 0,
            "warning": 0,
            "critical": 0,
            "inactive": 0,
            "reconnected": 0,
            "notified": 0,
        }
        for session in list(self.sessions.values()):
            record = session.record
            if session.owned_elsewhere():
                continue  # another node runs it, and sweeps it when the leader asks
            if not session.held() and (only_held or session.id in others):
                continue  # the leader sweeps what nobody runs; its owner sweeps the rest
            try:
                due = record.next_retry_at is None or record.next_retry_at <= now
                if record.state is S.DISCONNECTED and due:
                    reconnected = await session.reconnect_now()
                else:
                    reconnected = session.trial_due(now) and await session.breaker_trial()
                summary["reconnected"] += reconnected
                if await session.update_health(now):
                    summary["notified"] += 1
            except (IllegalTransitionError, ConcurrentChangeError) as exc:
                log.bind(session=session.id).debug("Sweep skipped: {}", exc)
            summary["total"] += 1
            summary[record.health] = summary.get(record.health, 0) + 1
        return {"at": now.isoformat(), **summary}
