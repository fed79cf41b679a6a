"""BotSession: one bot's lifecycle, a state machine driven by engine events and its owner.

Every decision (how long to back off, whether the breaker is open, whether a QR is
debounced or expired, whether a heartbeat is stale) comes from `bot.policy`; this class only
carries it out: it starts and stops the engine session, keeps the timers, and stores each
transition (guarded by `UPDATE … WHERE state = old`) before it tells anyone about it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from loguru import logger

from bot.cluster import Node
from bot.engines.base import Engine, EngineEvent, EngineSession, EventKind, MediaFile
from bot.policy import (
    Breaker,
    HealthLevel,
    Policy,
    backoff_delay,
    breaker_verdict,
    health_level,
    heartbeat_stale,
    qr_expired,
    qr_should_emit,
)
from bot.received import RECEIVED_KINDS, webhook_event
from bot.states import (
    RUNNING_STATES,
    STARTABLE_STATES,
    IllegalTransitionError,
    SessionState,
    check_transition,
)
from bot.store import PHONE_LOGOUT_PREFIX, BotStore, SessionRecord
from services.alerts import Alerter
from services.clock import Clock
from services.dbhealth import is_database_unavailable
from services.metrics import Metrics

S = SessionState
STATE_NAMES = tuple(state.value for state in SessionState)
# Listeners get (session, event name, data): webhooks, chat commands, the QR printer.
Listener = Callable[["BotSession", str, dict[str, Any]], Awaitable[None]]
HEARTBEAT_TIMEOUT = 10.0
# A failure that could not be stored (the database away) is tried again this often.
FAIL_RETRY_SECONDS = 5.0
# Activity is written to the database at most this often (it changes on every message).
ACTIVITY_WRITE_EVERY = timedelta(seconds=60)
# A first sync may take minutes; one that reports no progress for this long is stuck.
SYNC_STALL_SECONDS = 300.0
BRIDGE_OUTDATED = "WhatsApp Web changed; the bridge needs an update"
ORPHAN_REASON = "the process ended while it was running"


class ConcurrentChangeError(Exception):
    """Another writer (a replica, or an engine event) moved the session first."""


class OwnedElsewhereError(ConcurrentChangeError):
    """Another node runs this bot (it holds a live lease on it)."""

    def __init__(self, session_id: str, node: str | None) -> None:
        where = f"node {node}" if node else "another node"
        super().__init__(f"bot {session_id} is run by {where}")
        self.node = node


class NotLinkingError(Exception):
    """Pairing asked of a bot that is not waiting for a link."""

    def __init__(self, state: SessionState) -> None:
        super().__init__(f"the bot is {state.value}, not waiting for a link (SCAN_QR)")
        self.state = state


class NotConnectedError(Exception):
    """Something only a connected bot can do (fetch a received file) asked of another."""

    def __init__(self, state: SessionState, *, elsewhere: bool = False) -> None:
        where = "its browser runs in another process" if elsewhere else "not CONNECTED"
        super().__init__(f"the bot is {state.value}, {where}")
        self.state = state
        self.elsewhere = elsewhere


class EngineUnavailableError(Exception):
    """No engine is configured in this process."""


@dataclass
class SessionContext:
    """What every session shares: one object, so an idle session costs little memory."""

    engine: Engine | None
    store: BotStore
    policy: Policy
    clock: Clock
    alerter: Alerter
    metrics: Metrics
    start_slots: asyncio.Semaphore
    start_timeout: float
    random: Callable[[], float]
    node: Node
    listeners: list[Listener] = field(default_factory=list)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Sessions per state, kept up to date on every move: /health reads it on every request.
    state_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATE_NAMES, 0))

    def count_move(self, old: SessionState | None, new: SessionState | None) -> None:
        if old is not None:
            self.state_counts[old.value] -= 1
        if new is not None:
            self.state_counts[new.value] += 1

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """Run in the background, holding a strong reference until it ends."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class BotSession:
    __slots__ = (
        "_breaker_opened_at",
        "_ctx",
        "_engine_session",
        "_error_times",
        "_first_qr_at",
        "_generation",
        "_heartbeat_task",
        "_last_activity_write",
        "_last_heartbeat_write",
        "_launch_task",
        "_lock",
        "_refresh",
        "_start_lock",
        "_timer",
        "_trial",
        "pair_code",
        "qr",
        "qr_at",
        "record",
        "sync_progress",
    )

    def __init__(self, record: SessionRecord, ctx: SessionContext) -> None:
        self.record = record
        self._ctx = ctx
        ctx.count_move(None, record.state)
        self._engine_session: EngineSession | None = None
        # Bumped by every start and stop: events and launches of an older generation are
        # ignored, so a late event from a closed browser cannot move the new one.
        self._generation = 0
        self._lock: asyncio.Lock | None = None  # made on first use: most sessions sit idle
        self._start_lock: asyncio.Lock | None = None
        self._timer: asyncio.Task[Any] | None = None
        self._heartbeat_task: asyncio.Task[Any] | None = None
        self._launch_task: asyncio.Task[Any] | None = None
        self._error_times: list[datetime] = []
        self._breaker_opened_at: datetime | None = None
        self._trial = False
        # Awake only to show WhatsApp the link (LINK_REFRESH_EVERY): asleep again after a while.
        self._refresh = False
        self._first_qr_at: datetime | None = None
        self._last_activity_write: datetime | None = None
        self._last_heartbeat_write: datetime | None = None
        self.qr: str | None = None
        self.qr_at: datetime | None = None
        self.pair_code: str | None = None
        self.sync_progress: int | None = None  # percent, while SYNCING

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def state(self) -> SessionState:
        return self.record.state

    @property
    def engine_session(self) -> EngineSession | None:
        return self._engine_session

    def _log(self) -> Any:
        return logger.bind(component="bot", session=self.id)

    @property
    def state_lock(self) -> asyncio.Lock:
        """Held while a state change is stored and applied: a reader that holds it sees the
        state and the stored history agree."""
        return self._get_lock()

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # Transitions -----------------------------------------------------------------------

    async def _transition(
        self, target: SessionState, reason: str, *, release: bool = False, **values: Any
    ) -> None:
        """Store and apply a move, under the epoch this node holds (a stale one moves
        nothing). `release`: the bot no longer runs here; its lease is given up."""
        async with self._get_lock():
            current = self.record.state
            check_transition(current, target)
            if self.owned_elsewhere():
                raise OwnedElsewhereError(self.id, self.record.owner_node)
            now = self._ctx.clock.now()
            moved = await self._ctx.store.transition(
                self.id, current, target, reason, now, epoch=self.record.epoch, **values
            )
            if not moved:
                raise ConcurrentChangeError(f"session {self.id} changed while moving to {target}")
            if release and self.held():
                self.record.owner_node = None
                self.record.lease_until = None
                await self._ctx.node.release(self.id, self.record.epoch)
            self.record.state = target
            self._ctx.count_move(current, target)
            self.record.state_reason = reason
            self.record.state_changed_at = now
            for name, value in values.items():
                setattr(self.record, name, value)
        self._log().info("State: {} → {} ({})", current.value, target.value, reason)
        self._ctx.metrics.bot_transitions.labels(to=target.value).inc()
        await self.update_health(now)
        await self.emit(
            "session.status", {"from": current.value, "to": target.value, "reason": reason}
        )

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        for listener in self._ctx.listeners:
            try:
                await listener(self, event, data)
            except Exception as exc:  # a listener's bug must not break the lifecycle
                self._log().opt(exception=exc).error("Listener failed on {}: {}", event, exc)

    def offline_since(self) -> datetime | None:
        if self.record.state is S.CONNECTED:
            return None
        r = self.record
        return r.last_disconnected_at or r.started_at or r.created_at

    async def update_health(self, now: datetime) -> bool:
        """Recompute the health level; alert on entering critical. True if it notified."""
        level = health_level(
            self._ctx.policy,
            self.record.state,
            self.record.last_heartbeat_at,
            self.offline_since(),
            now,
            in_breaker_trial=self._trial,
            unlinked_by_owner=not self.record.state_reason_is_phone(),
        )
        previous = self.record.health
        if level.value == previous:
            return False
        self.record.health = level.value
        await self._ctx.store.save_fields(self.id, epoch=self.record.epoch, health=level.value)
        key = f"session:{self.id}"
        label = f"bot '{self.record.name}' ({self.id})"
        if level is HealthLevel.CRITICAL:
            return self._ctx.alerter.alert(
                key,
                f"{label} is critical: {self.record.state.value}, {self.record.state_reason}",
                title=f"bot {self.record.name} needs attention",
            )
        if previous == HealthLevel.CRITICAL.value:
            self._ctx.alerter.resolve(
                key, f"{label} is {level.value} again", title=f"bot {self.record.name} recovered"
            )
            self._ctx.alerter.forget(f"{key}:locked")
        return False

    # Owner actions ---------------------------------------------------------------------

    async def start(self, reason: str, *, refresh: bool = False) -> None:
        """Start (or start again) on a person's request: counters and breaker are reset.
        `refresh`: only to show WhatsApp the link; the bot expires again LINK_REFRESH_FOR
        after it connects."""
        if self._ctx.engine is None:
            raise EngineUnavailableError
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        # One start at a time: a second waits, then finds the bot started (a 409).
        async with self._start_lock:
            await self._start(reason)
            self._refresh = refresh

    def keep_awake(self) -> None:
        """Something else than the link refresh needs the bot: it stays up after it."""
        self._refresh = False

    async def wake(self, reason: str, *, refresh: bool = False) -> bool:
        """An EXPIRED bot comes back by itself (a message queued for it, its owner acting on
        it, the link refresh), through the lease like any start. True if it was started.
        Anything but a refresh also keeps a bot awake that woke for a refresh."""
        if not refresh:
            self.keep_awake()
        if self.record.state is not S.EXPIRED:
            return False
        await self.start(reason, refresh=refresh)
        return True

    async def recycle(self, reason: str) -> None:
        """SESSION_MAX_AGE: close the browser and start it again at once. The profile (the
        link) is kept, so it reconnects with no QR; it is never left EXPIRED for it."""
        if self.record.state in RUNNING_STATES:
            await self.stop(reason, by_owner=False, keep_lease=True)
        await self.start(f"recycled ({reason})")

    async def _start(self, reason: str) -> None:
        if self.held() and self.record.state not in STARTABLE_STATES:
            raise IllegalTransitionError(self.record.state, S.CONNECTING)
        try:
            await self._take()
            if self.record.state not in STARTABLE_STATES:
                raise IllegalTransitionError(self.record.state, S.CONNECTING)
            self._generation += 1
            self._cancel_timers()
            await self._close_engine()
            self._error_times.clear()
            self._breaker_opened_at = None
            self._trial = False
            now = self._ctx.clock.now()
            await self._transition(
                S.CONNECTING,
                reason,
                want_running=True,
                started_at=now,
                last_activity_at=now,
                reconnect_attempts=0,
                next_retry_at=None,
            )
        except BaseException:
            # Never keep a lease on a bot this node is not starting: it would look running
            # here (and to every node) with no browser behind it. Released, it is adopted
            # again (by this node or another) at the next look.
            with contextlib.suppress(Exception):
                await self._give_up()
            raise
        self._spawn_launch()

    async def stop(
        self,
        reason: str,
        *,
        by_owner: bool,
        target: SessionState = S.STOPPED,
        keep_lease: bool = False,
    ) -> None:
        """Close the browser and store the state. Shutdown keeps `want_running`, so the
        next boot brings the bot back; an owner's stop (or cleanup) clears it. The lease
        is released, unless `keep_lease` (a restart: no other node may take it between)."""
        check_transition(self.record.state, target)
        if self.owned_elsewhere():
            raise OwnedElsewhereError(self.id, self.record.owner_node)
        self._generation += 1
        self._cancel_timers()
        await self._close_engine()
        want = False if by_owner else self.record.want_running
        # The last good heartbeat is written only now and then; its latest value is when
        # WhatsApp last saw the link (what the link refresh counts from).
        seen = (
            {"last_heartbeat_at": self.record.last_heartbeat_at}
            if self.record.state is S.CONNECTED
            else {}
        )
        await self._transition(
            target, reason, release=not keep_lease, want_running=want, next_retry_at=None, **seen
        )

    async def expire(self, reason: str) -> None:
        await self.stop(reason, by_owner=True, target=S.EXPIRED)

    async def restart(self, reason: str) -> None:
        if self.record.state in RUNNING_STATES:
            await self.stop(reason, by_owner=False, keep_lease=True)
        await self.start(reason)

    async def logout(self, reason: str) -> None:
        """Unlink from the phone; the profile is deleted, a new link needs a new QR."""
        check_transition(self.record.state, S.LOGGED_OUT)
        if self.owned_elsewhere():
            raise OwnedElsewhereError(self.id, self.record.owner_node)
        self._generation += 1
        self._cancel_timers()
        if self._engine_session is None:
            # No page to log out through: the link's keys are deleted here, but the phone
            # keeps listing the device until someone removes it there.
            reason += "; the phone may still list this device under Linked devices: remove it"
        else:
            try:
                async with asyncio.timeout(15):
                    await self._engine_session.logout()
            except Exception as exc:
                self._log().warning("Logout through the page failed: {}", exc)
        await self._close_engine()
        await self._forget_profile()
        await self._transition(
            S.LOGGED_OUT, reason, release=True, want_running=False, linked_as=None
        )

    async def close_for_shutdown(self) -> SessionState | None:
        """Process shutdown: close the browser, keep `want_running` so the next boot brings
        it back. Returns the state to record as left (the manager writes all at once)."""
        self._generation += 1
        self._cancel_timers()
        await self._close_engine()
        return self.record.state if self.record.state in RUNNING_STATES else None

    def mark_stopped(self, reason: str, at: datetime) -> None:
        """The manager stored the move already (in bulk); mirror it in memory."""
        previous = self.record.state
        self.record.state = S.STOPPED
        self._ctx.count_move(previous, S.STOPPED)
        self.record.state_reason = reason
        self.record.state_changed_at = at
        self.record.next_retry_at = None
        self._ctx.metrics.bot_transitions.labels(to=S.STOPPED.value).inc()
        self._log().info("State: {} → STOPPED ({})", previous.value, reason)

    async def destroy(self) -> None:
        """Before deletion: close everything and delete the profile."""
        self._generation += 1
        self._cancel_timers()
        await self._close_engine()
        await self._forget_profile()

    # Ownership (bot.ownership) ---------------------------------------------------------

    def held(self) -> bool:
        """This node holds the bot's lease (it runs, or is about to run, its browser)."""
        return self.record.owner_node == self._ctx.node.id

    def owned_elsewhere(self) -> bool:
        owner = self.record.owner_node
        return owner is not None and owner != self._ctx.node.id

    def replace_record(self, fresh: SessionRecord) -> None:
        """The bot as stored (read from the database): what another node did to it. Nothing
        changes when the read is older than what this node knows: the bot is held here
        (this node writes every move of it), or the read is of an earlier epoch.
        A status request reads the row while the bot is another node's; if this node takes
        the bot before that answer arrives, the old owner's row must not replace the new
        lease (the start would then refuse to run it, and the bot would stay CONNECTED
        under this node's name with no browser)."""
        if not self.held() and fresh.epoch >= self.record.epoch:
            self._set_record(fresh)

    def _set_record(self, fresh: SessionRecord) -> None:
        self._ctx.count_move(self.record.state, fresh.state)
        self.record = fresh

    async def _take(self) -> None:
        """Acquire the lease before a browser starts (epoch + 1). A bot its last node left
        running (that node died, or stopped renewing) is first recorded as stopped."""
        was_held = self.held()
        fresh = await self._ctx.node.acquire(self.id)
        if fresh is None:
            current = await self._ctx.store.get_session(self.id)
            if current is not None:
                self.replace_record(current)
            raise OwnedElsewhereError(self.id, current.owner_node if current else None)
        if was_held:
            self.record.epoch, self.record.lease_until = fresh.epoch, fresh.lease_until
            self.record.owner_node = fresh.owner_node
            return
        self._set_record(fresh)  # just acquired: the newest there is
        self._clear_qr()
        if fresh.state in RUNNING_STATES:
            await self._transition(S.STOPPED, ORPHAN_REASON, next_retry_at=None)

    async def _give_up(self) -> None:
        if self.held():
            epoch = self.record.epoch
            self.record.owner_node = None
            self.record.lease_until = None
            await self._ctx.node.release(self.id, epoch)

    async def settle_orphan(self) -> bool:
        """At boot: a bot stored as running whose node is gone (no live lease) is recorded
        as stopped before anyone reads a CONNECTED that no browser backs. True if moved."""
        fresh = await self._ctx.node.acquire(self.id)
        if fresh is None:
            return False
        self._set_record(fresh)
        try:
            if fresh.state not in RUNNING_STATES:
                return False
            await self._transition(S.STOPPED, ORPHAN_REASON, next_retry_at=None)
            return True
        finally:
            await self._give_up()

    async def lose(self, why: str) -> None:
        """The lease is gone (another node took the bot, or this one cannot prove it still
        holds it): stop acting at once. The browser is closed; nothing is written, since
        the state is the new owner's to write (and a stale epoch would be refused)."""
        self._generation += 1
        self._cancel_timers()
        self.record.owner_node = None
        self.record.lease_until = None
        running = self._engine_session is not None
        await self._close_engine()
        self._log().warning(
            "Lost the lease on this bot ({}); {}", why, "browser closed" if running else "idle"
        )

    async def request_pair_code(self, phone: str) -> str:
        """An 8-character code to type on the phone instead of scanning the QR."""
        if self.record.state is not S.SCAN_QR or self._engine_session is None:
            raise NotLinkingError(self.record.state)
        code = await self._engine_session.request_pair_code(phone)
        self.pair_code = code
        await self.touch()
        return code

    async def download_media(self, message_id: str) -> MediaFile:
        """A received message's file, fetched and decrypted through WhatsApp Web now."""
        state = self.record.state
        if state is not S.CONNECTED or self._engine_session is None:
            raise NotConnectedError(state, elsewhere=state is S.CONNECTED)
        return await self._engine_session.download_media(message_id)

    @property
    def qr_deadline(self) -> datetime | None:
        """When the bot stops waiting for a scan (and backs off)."""
        if self._first_qr_at is None:
            return None
        return self._first_qr_at + self._ctx.policy.qr_timeout

    async def touch(self) -> None:
        """Record activity (a message in or out, an action on the session)."""
        now = self._ctx.clock.now()
        self.record.last_activity_at = now
        last = self._last_activity_write
        if last is None or now - last >= ACTIVITY_WRITE_EVERY:
            self._last_activity_write = now
            await self._ctx.store.save_fields(
                self.id, epoch=self.record.epoch, last_activity_at=now
            )

    # Engine events ---------------------------------------------------------------------

    def _spawn_launch(self) -> None:
        generation = self._generation
        self._launch_task = self._ctx.spawn(self._launch(generation), f"launch {self.id}")

    async def _launch(self, generation: int) -> None:
        engine = self._ctx.engine
        assert engine is not None

        async def on_event(event: EngineEvent) -> None:
            await self._on_event(generation, event)

        try:
            async with self._ctx.start_slots:
                if generation != self._generation:
                    return
                async with asyncio.timeout(self._ctx.start_timeout):
                    handle = await engine.start(self.id, on_event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if generation == self._generation:
                await self._fail(f"start failed: {_describe(exc)}")
            return
        if generation != self._generation:  # stopped while the browser was starting
            with contextlib.suppress(Exception):
                await handle.stop()
            return
        self._engine_session = handle
        # A page that never shows a QR nor connects is as dead as one that crashed.
        if self.record.state is S.CONNECTING:
            self._set_timer(self._connect_deadline(generation))

    async def _connect_deadline(self, generation: int) -> None:
        await asyncio.sleep(self._ctx.start_timeout)
        if generation == self._generation and self.record.state is S.CONNECTING:
            await self._fail(f"no QR and no connection within {self._ctx.start_timeout:.0f}s")

    async def _on_event(self, generation: int, event: EngineEvent) -> None:
        if generation != self._generation:
            return
        try:
            await self._handle_event(generation, event)
        except (IllegalTransitionError, ConcurrentChangeError) as exc:
            self._log().debug("Ignored {} event: {}", event.kind.value, exc)

    async def _handle_event(self, generation: int, event: EngineEvent) -> None:
        kind, data = event.kind, event.data
        now = self._ctx.clock.now()
        policy = self._ctx.policy
        if kind is EventKind.QR:
            if self.record.state not in (S.CONNECTING, S.SCAN_QR):
                return
            if not qr_should_emit(policy, self.qr_at, now):
                return
            self.qr, self.qr_at = str(data.get("qr", "")), now
            if self._first_qr_at is None:
                self._first_qr_at = now
                self._set_timer(self._qr_deadline(generation))
            if self.record.state is S.CONNECTING:
                await self._transition(S.SCAN_QR, "waiting for the phone to scan the QR code")
            await self.emit("qr", {"qr": self.qr})
        elif kind is EventKind.PAIR_CODE:
            self.pair_code = str(data.get("code", ""))
            if self.record.state is S.SCAN_QR:
                # A new code is a new chance to type it: the wait counts from the latest.
                self._first_qr_at = now
                self._set_timer(self._qr_deadline(generation))
        elif kind is EventKind.AUTHENTICATED:
            # The phone has linked: the QR timeout stops counting, the sync has its own bound.
            # (A page that restores a link it had is CONNECTING until ready, as before.)
            fresh = self.record.state is S.SCAN_QR or bool(data.get("fresh"))
            if fresh and self.record.state in (S.SCAN_QR, S.CONNECTING):
                self._clear_qr()
                self._cancel_timer()
                self.sync_progress = 0
                await self._transition(S.SYNCING, "linked; syncing chats")
                self._set_timer(self._sync_deadline(generation))
        elif kind is EventKind.SYNC:
            if self.record.state is S.SYNCING:
                self.sync_progress = int(data.get("percent") or 0)
                self._set_timer(self._sync_deadline(generation))
        elif kind is EventKind.BRIDGE_OUTDATED:
            await self._bridge_outdated(data)
        elif kind is EventKind.READY:
            await self._on_ready(generation, data, now)
        elif kind in RECEIVED_KINDS:
            await self.touch()
            await self.emit(*webhook_event(self.id, kind, data))
        elif kind is EventKind.STATE:
            await self._on_socket_state(str(data.get("state", "")))
        elif kind is EventKind.LOGOUT:
            await self._on_phone_logout(str(data.get("reason", "unknown")))
        elif kind is EventKind.CRASH:
            await self._fail(f"crash: {data.get('reason', 'unknown')}")

    async def _on_ready(self, generation: int, data: dict[str, Any], now: datetime) -> None:
        if self.record.state not in (S.CONNECTING, S.SCAN_QR, S.SYNCING):
            return
        self.sync_progress = None
        self._ctx.alerter.resolve(
            f"session:{self.id}:bridge",
            f"bot '{self.record.name}' ({self.id}) works with WhatsApp Web again",
            title=f"bot {self.record.name} recovered",
        )
        self._clear_qr()
        self._cancel_timer()
        if self._trial:
            self._log().info("Circuit breaker trial succeeded; breaker closed")
        self._trial = False
        self._breaker_opened_at = None
        self._error_times.clear()
        me = data.get("me")
        await self._transition(
            S.CONNECTED,
            f"connected as {me}" if me else "connected",
            reconnect_attempts=0,
            next_retry_at=None,
            last_connected_at=now,
            last_heartbeat_at=now,
            linked_as=str(me) if me else self.record.linked_as,
        )
        self._last_heartbeat_write = now
        self._heartbeat_task = self._ctx.spawn(
            self._heartbeat_loop(generation), f"heartbeat {self.id}"
        )
        self._ctx.alerter.resolve(
            f"session:{self.id}:link",
            f"bot '{self.record.name}' ({self.id}) is connected: WhatsApp keeps its link",
            title=f"bot {self.record.name} link safe",
        )
        if self._refresh:
            self._set_timer(self._refresh_end(generation))

    async def _refresh_end(self, generation: int) -> None:
        """A bot woken only to refresh its link goes back to sleep (EXPIRED)."""
        await asyncio.sleep(self._ctx.policy.link_refresh_for.total_seconds())
        if generation != self._generation or not self._refresh:
            return
        if self.record.state is not S.CONNECTED:
            return
        self._refresh = False
        try:
            await self.expire("link refreshed; asleep again until the next refresh")
        except (IllegalTransitionError, ConcurrentChangeError) as exc:
            self._log().debug("Not put back to sleep: {}", exc)

    async def _on_socket_state(self, state: str) -> None:
        state = state.upper()
        # A page that opens unpaired is asking for a QR; only a connected one was unlinked.
        linked = self.record.state in (S.CONNECTED, S.SYNCING)
        unlinked = state in ("UNPAIRED", "UNPAIRED_IDLE") and linked
        if unlinked or state == "UNLAUNCHED_LOGOUT":
            await self._on_phone_logout(f"socket state {state}")
        elif state == "CONFLICT" and linked:
            await self._fail("conflict: WhatsApp Web was opened in another browser")
        elif state in ("TIMEOUT", "DEPRECATED_VERSION", "PROXYBLOCK", "TOS_BLOCK", "SMB_TOS_BLOCK"):
            await self._fail(f"socket state {state}")

    async def _on_phone_logout(self, reason: str) -> None:
        if self.record.state is S.LOGGED_OUT:
            return
        self._generation += 1
        self._cancel_timers()
        await self._close_engine()
        await self._forget_profile()
        await self._transition(
            S.LOGGED_OUT,
            f"{PHONE_LOGOUT_PREFIX} ({reason})",
            release=True,
            want_running=False,
            linked_as=None,
        )

    async def _sync_deadline(self, generation: int) -> None:
        await asyncio.sleep(SYNC_STALL_SECONDS)
        if generation == self._generation and self.record.state is S.SYNCING:
            await self._fail(f"the first sync made no progress for {SYNC_STALL_SECONDS:.0f}s")

    async def _bridge_outdated(self, data: dict[str, Any]) -> None:
        """Retrying cannot help: the bot waits, SUSPENDED, for an update of wakeful."""
        if self.record.state not in RUNNING_STATES:
            return
        version = data.get("version") or "version unknown"
        reason = f"{BRIDGE_OUTDATED}: missing {data.get('missing')} (WhatsApp Web {version})"
        self._generation += 1
        self._cancel_timers()
        await self._close_engine()
        self._ctx.alerter.alert(
            f"session:{self.id}:bridge",
            f"bot '{self.record.name}' ({self.id}): {reason}",
            title=BRIDGE_OUTDATED,
        )
        await self._transition(S.SUSPENDED, reason, want_running=False, next_retry_at=None)

    # Failure path: backoff, breaker, give up -----------------------------------------

    async def _fail(self, reason: str, *, again: bool = False) -> None:
        """Something broke: close the engine, then back off, or suspend."""
        try:
            await self._fail_and_recover(reason, count_error=not again)
        except (IllegalTransitionError, ConcurrentChangeError) as exc:
            # Stopped or moved by someone else in the meantime: their move stands.
            self._log().debug("Failure '{}' not applied: {}", reason, exc)
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            # The engine is closed but the move could not be stored: without a retry the bot
            # would stay "CONNECTED" with no browser until someone restarted it.
            self._log().warning(
                "Could not record '{}' (the database is unreachable); trying again in {:.0f}s",
                reason,
                FAIL_RETRY_SECONDS,
            )
            self._set_timer(self._fail_again(self._generation, reason))

    async def _fail_again(self, generation: int, reason: str) -> None:
        await asyncio.sleep(FAIL_RETRY_SECONDS)
        if generation == self._generation:
            await self._fail(reason, again=True)  # the same failure: not one more error

    async def _fail_and_recover(self, reason: str, *, count_error: bool = True) -> None:
        self._generation += 1
        generation = self._generation
        self._cancel_timers()
        await self._close_engine()
        self._clear_qr()
        policy, now = self._ctx.policy, self._ctx.clock.now()
        if count_error:
            self._error_times.append(now)
        del self._error_times[: -policy.breaker_threshold * 2]
        attempts = self.record.reconnect_attempts + 1
        errors = self.record.error_count + 1
        verdict = breaker_verdict(
            policy, self._error_times, self._breaker_opened_at, self._trial, now
        )
        common: dict[str, Any] = {
            "error_count": errors,
            "last_disconnected_at": self._disconnected_at(now),
        }
        if verdict.state is Breaker.LOCKED:
            self._trial = False
            self._ctx.alerter.alert(
                f"session:{self.id}:locked",
                f"bot '{self.record.name}' ({self.id}): the circuit breaker trial failed "
                f"({reason}); it stays SUSPENDED until someone restarts it",
                title=f"bot {self.record.name} needs a restart",
            )
            await self._transition(
                S.SUSPENDED,
                f"{reason}; circuit breaker trial failed: restart it by hand",
                release=True,
                want_running=False,
                next_retry_at=None,
                reconnect_attempts=attempts,
                **common,
            )
            return
        if verdict.state is Breaker.OPEN:
            self._breaker_opened_at = now
            assert verdict.open_until is not None
            self._log().warning(
                "Circuit breaker activated: {} errors within {}",
                policy.breaker_threshold,
                policy.breaker_window,
            )
            await self._transition(
                S.SUSPENDED,
                f"{reason}; circuit breaker open until {verdict.open_until.isoformat()}",
                next_retry_at=verdict.open_until,
                reconnect_attempts=attempts,
                **common,
            )
            self._set_timer(self._trial_after(generation, verdict.open_until))
            return
        if attempts > policy.max_reconnect_attempts:
            await self._transition(
                S.SUSPENDED,
                f"{reason}; gave up after {policy.max_reconnect_attempts} reconnect attempts",
                release=True,
                want_running=False,
                next_retry_at=None,
                reconnect_attempts=attempts,
                **common,
            )
            return
        delay = backoff_delay(policy, attempts, self._ctx.random())
        due = now + delay
        self._log().info("Reconnect in {:.1f}s (attempt {})", delay.total_seconds(), attempts)
        await self._transition(
            S.DISCONNECTED,
            reason,
            next_retry_at=due,
            reconnect_attempts=attempts,
            **common,
        )
        self._set_timer(self._reconnect_after(generation, delay))

    def _disconnected_at(self, now: datetime) -> datetime:
        # A failed retry does not move the moment the bot went offline.
        if self.record.state is S.CONNECTED or self.record.last_disconnected_at is None:
            return now
        return self.record.last_disconnected_at

    async def _reconnect_after(self, generation: int, delay: timedelta) -> None:
        await asyncio.sleep(delay.total_seconds())
        if generation == self._generation:
            await self.reconnect_now()

    async def reconnect_now(self) -> bool:
        """A due reconnect (timer, or the health sweep after a restart lost the timer)."""
        if self.record.state is not S.DISCONNECTED or self._ctx.engine is None:
            return False
        self._generation += 1
        self._cancel_timer()
        attempt = self.record.reconnect_attempts
        try:
            await self._transition(S.CONNECTING, f"reconnect attempt {attempt}", next_retry_at=None)
        except (IllegalTransitionError, ConcurrentChangeError):
            return False
        self._spawn_launch()
        return True

    async def _trial_after(self, generation: int, at: datetime) -> None:
        wait = (at - self._ctx.clock.now()).total_seconds()
        await asyncio.sleep(max(wait, 0))
        if generation == self._generation:
            await self.breaker_trial()

    async def breaker_trial(self) -> bool:
        """The breaker's wait is over: one trial start."""
        if self.record.state is not S.SUSPENDED or self._breaker_opened_at is None:
            return False
        if self._ctx.engine is None:
            return False
        self._generation += 1
        self._cancel_timer()
        self._trial = True
        await self._transition(S.CONNECTING, "circuit breaker trial", next_retry_at=None)
        self._spawn_launch()
        return True

    def trial_due(self, now: datetime) -> bool:
        return (
            self.record.state is S.SUSPENDED
            and self._breaker_opened_at is not None
            and not self._trial
            and now >= self._breaker_opened_at + self._ctx.policy.breaker_open_for
        )

    async def _qr_deadline(self, generation: int) -> None:
        policy = self._ctx.policy
        wait = policy.qr_timeout.total_seconds()
        while True:
            await asyncio.sleep(max(wait, 0.01))
            if generation != self._generation or self.record.state is not S.SCAN_QR:
                return
            now = self._ctx.clock.now()
            if qr_expired(policy, self._first_qr_at, now):
                break
            assert self._first_qr_at is not None
            wait = (self._first_qr_at + policy.qr_timeout - now).total_seconds()
        await self._fail(f"QR code not scanned within {policy.qr_timeout.total_seconds():.0f}s")

    async def _heartbeat_loop(self, generation: int) -> None:
        policy = self._ctx.policy
        while True:
            await asyncio.sleep(policy.heartbeat_every.total_seconds())
            if generation != self._generation or self.record.state is not S.CONNECTED:
                return
            handle = self._engine_session
            ok = False
            if handle is not None:
                try:
                    async with asyncio.timeout(HEARTBEAT_TIMEOUT):
                        beat = await handle.heartbeat()
                    ok = beat.ok
                except Exception as exc:
                    self._log().debug("Heartbeat failed: {}", exc)
            if generation != self._generation:
                return
            now = self._ctx.clock.now()
            if ok:
                self.record.last_heartbeat_at = now
                last = self._last_heartbeat_write
                if last is None or now - last >= policy.heartbeat_stale_after / 2:
                    try:
                        await self._ctx.store.save_fields(
                            self.id, epoch=self.record.epoch, last_heartbeat_at=now
                        )
                        self._last_heartbeat_write = now
                    except Exception as exc:
                        # The database being away must not end the heartbeats: the bot is
                        # fine, and the next beat writes again.
                        if not is_database_unavailable(exc):
                            self._log().opt(exception=exc).warning("Storing a heartbeat failed")
                        else:
                            self._log().debug("Could not store the heartbeat: {}", exc)
                continue
            since = self.record.last_connected_at or now
            if heartbeat_stale(policy, self.record.last_heartbeat_at, since, now):
                self._heartbeat_task = None  # this task is ending; don't let _fail cancel it
                stale_for = policy.heartbeat_stale_after.total_seconds()
                await self._fail(f"stale: no good heartbeat for {stale_for:.0f}s")
                return

    # Helpers ---------------------------------------------------------------------------

    def _set_timer(self, coro: Awaitable[Any]) -> None:
        self._cancel_timer()
        self._timer = self._ctx.spawn(coro, f"timer {self.id}")

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    def _cancel_timers(self) -> None:
        self._cancel_timer()
        beat, self._heartbeat_task = self._heartbeat_task, None
        if beat is not None and beat is not asyncio.current_task():
            beat.cancel()
        launch, self._launch_task = self._launch_task, None
        if launch is not None and launch is not asyncio.current_task():
            launch.cancel()

    def _clear_qr(self) -> None:
        self.qr = None
        self.qr_at = None
        self._first_qr_at = None
        self.pair_code = None

    async def _close_engine(self) -> None:
        handle, self._engine_session = self._engine_session, None
        self._clear_qr()
        if handle is None:
            return
        try:
            async with asyncio.timeout(15):
                await handle.stop()
        except Exception as exc:
            self._log().warning("Closing the engine session failed: {}", _describe(exc))

    async def _forget_profile(self) -> None:
        engine = self._ctx.engine
        forget = getattr(engine, "forget", None)
        if forget is None:
            return
        try:
            await forget(self.id)
        except Exception as exc:
            self._log().warning("Deleting the profile failed: {}", _describe(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
