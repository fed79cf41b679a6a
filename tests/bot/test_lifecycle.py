"""The session lifecycle, end to end above the engine: a real store, the scripted engine,
real timers with short policy durations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from bot.engines.base import EventKind
from bot.manager import BotManager, ManagerConfig
from bot.policy import Policy
from bot.session import BotSession
from bot.states import IllegalTransitionError, SessionState
from bot.store import BotStore
from services.alerts import Alerter
from services.clock import SystemClock
from services.database import Database
from services.metrics import Metrics
from tests.engines import ScriptedEngine

S = SessionState
FAST = Policy(
    backoff_base=timedelta(milliseconds=20),
    backoff_cap=timedelta(milliseconds=80),
    backoff_jitter=0.0,
    max_reconnect_attempts=10,
    breaker_threshold=5,
    breaker_window=timedelta(minutes=5),
    breaker_open_for=timedelta(milliseconds=300),
    qr_debounce=timedelta(milliseconds=200),
    qr_timeout=timedelta(milliseconds=300),
    heartbeat_every=timedelta(milliseconds=30),
    heartbeat_stale_after=timedelta(milliseconds=150),
)


class Harness:
    def __init__(self, manager: BotManager, engine: ScriptedEngine, logs: list[str]) -> None:
        self.manager = manager
        self.engine = engine
        self.logs = logs
        self.events: list[tuple[str, str, dict[str, Any]]] = []

        async def record(session: BotSession, event: str, data: dict[str, Any]) -> None:
            self.events.append((session.id, event, data))

        manager.ctx.listeners.append(record)

    async def create(self, name: str = "bot", start: bool = True) -> BotSession:
        return await self.manager.create(
            user_id=None, name=name, webhook_url=None, metadata={}, start=start
        )

    async def wait_state(self, session: BotSession, state: SessionState, within: float = 5) -> None:
        async with asyncio.timeout(within):
            while session.state is not state:
                await asyncio.sleep(0.005)

    async def live(self, session: BotSession, within: float = 5) -> Any:
        async with asyncio.timeout(within):
            while session.id not in self.engine.live or session.engine_session is None:
                await asyncio.sleep(0.005)
        return self.engine.live[session.id]

    async def states(self, session: BotSession) -> list[str]:
        history = await self.manager.store.history(session.id, 100)
        return [t.to_state for t in reversed(history)]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bots.db'}")
    await db.migrate()
    managers: list[BotManager] = []
    logs: list[str] = []
    sink = logger.add(lambda m: logs.append(m.record["message"]), level="DEBUG")

    async def build(
        policy: Policy = FAST, engine: ScriptedEngine | None = None, **config: Any
    ) -> Harness:
        engine = engine or ScriptedEngine()
        manager = BotManager(
            store=BotStore(db),
            engine=engine,
            policy=policy,
            clock=SystemClock(),
            alerter=Alerter([], SystemClock()),
            metrics=Metrics(),
            config=ManagerConfig(**{"start_stagger": timedelta(0), **config}),
            rand=lambda: 0.5,
        )
        await manager.load()
        managers.append(manager)
        return Harness(manager, engine, logs)

    yield build
    for manager in managers:
        await manager.shutdown(within=5)
    logger.remove(sink)
    await db.dispose()


async def test_link_by_qr_then_connected_with_history(make):
    h = await make()
    bot = await h.create()
    page = await h.live(bot)
    await page.emit(EventKind.QR, qr="2@first")
    await h.wait_state(bot, S.SCAN_QR)
    assert bot.qr == "2@first"
    await page.emit(EventKind.AUTHENTICATED, fresh=True)
    await h.wait_state(bot, S.SYNCING)
    assert bot.qr is None  # linked: the QR is gone and its timeout with it
    await page.emit(EventKind.SYNC, percent=40)
    assert bot.sync_progress == 40
    await page.emit(EventKind.READY, me="15551234567")
    await h.wait_state(bot, S.CONNECTED)
    assert bot.record.linked_as == "15551234567"
    assert bot.sync_progress is None
    assert await h.states(bot) == ["IDLE", "CONNECTING", "SCAN_QR", "SYNCING", "CONNECTED"]
    assert [e for _, e, _ in h.events].count("session.status") == 4
    assert any("State: SYNCING → CONNECTED" in line for line in h.logs)


async def test_qr_events_are_debounced(make):
    h = await make()
    bot = await h.create()
    page = await h.live(bot)
    for n in range(5):
        await page.emit(EventKind.QR, qr=f"2@burst-{n}")
    assert [d["qr"] for _, e, d in h.events if e == "qr"] == ["2@burst-0"]
    await asyncio.sleep(FAST.qr_debounce.total_seconds())
    await page.emit(EventKind.QR, qr="2@later")
    assert [d["qr"] for _, e, d in h.events if e == "qr"] == ["2@burst-0", "2@later"]
    assert bot.qr == "2@later"


async def test_qr_not_scanned_in_time_disconnects_and_backs_off(make):
    h = await make()
    bot = await h.create()
    page = await h.live(bot)
    await page.emit(EventKind.QR, qr="2@never-scanned")
    await h.wait_state(bot, S.DISCONNECTED, within=3)
    assert "QR code not scanned" in (bot.record.state_reason or "")
    assert page.stopped  # the browser was closed, not left running
    assert bot.record.next_retry_at is not None
    # The backoff timer starts it again on its own.
    await h.wait_state(bot, S.CONNECTING)
    assert h.engine.starts.count(bot.id) == 2


async def test_each_new_pairing_code_restarts_the_wait_for_the_link(make):
    h = await make(replace(FAST, qr_timeout=timedelta(seconds=1)))
    bot = await h.create()
    page = await h.live(bot)
    await page.emit(EventKind.QR, qr="2@first")
    await h.wait_state(bot, S.SCAN_QR)
    for code in ("AAAA1111", "BBBB2222", "CCCC3333"):
        await asyncio.sleep(0.6)  # well within the timeout of the code before
        await page.emit(EventKind.PAIR_CODE, code=code)
        assert bot.pair_code == code
    assert bot.state is S.SCAN_QR  # 1.8 s after the QR, a moment after the latest code
    await h.wait_state(bot, S.DISCONNECTED, within=3)
    assert "QR code not scanned" in (bot.record.state_reason or "")


async def test_crash_reconnects_through_backoff(make):
    h = await make()
    bot = await h.create()
    page = await h.live(bot)
    await page.emit(EventKind.READY)
    await h.wait_state(bot, S.CONNECTED)
    await page.emit(EventKind.CRASH, reason="browser disconnected")
    assert bot.state is S.DISCONNECTED
    assert bot.record.reconnect_attempts == 1
    second = None
    async with asyncio.timeout(5):
        while second is None or second is page:
            await asyncio.sleep(0.005)
            second = h.engine.live.get(bot.id)
    await second.emit(EventKind.READY)
    await h.wait_state(bot, S.CONNECTED)
    assert bot.record.reconnect_attempts == 0
    states = await h.states(bot)
    assert states[-4:] == ["CONNECTED", "DISCONNECTED", "CONNECTING", "CONNECTED"]


async def test_backoff_grows_between_failed_starts(make):
    h = await make(replace(FAST, breaker_threshold=100, max_reconnect_attempts=4))
    h.engine.fail_starts = 100
    bot = await h.create()
    await h.wait_state(bot, S.SUSPENDED, within=5)
    delays = [line for line in h.logs if line.startswith("Reconnect in") and "attempt" in line]
    assert delays == [
        "Reconnect in 0.0s (attempt 1)",
        "Reconnect in 0.0s (attempt 2)",
        "Reconnect in 0.1s (attempt 3)",
        "Reconnect in 0.1s (attempt 4)",
    ]
    assert "gave up after 4 reconnect attempts" in (bot.record.state_reason or "")
    assert bot.record.want_running is False
    assert h.engine.starts.count(bot.id) == 5


async def test_circuit_breaker_opens_tries_once_then_needs_a_person(make):
    h = await make()
    h.engine.fail_starts = 100
    bot = await h.create()
    await h.wait_state(bot, S.SUSPENDED, within=5)
    assert "circuit breaker open" in (bot.record.state_reason or "")
    assert h.engine.starts.count(bot.id) == 5
    assert bot.record.want_running is True
    # After breaker_open_for, one trial; it fails, so it stays suspended for good.
    async with asyncio.timeout(5):
        while "trial failed" not in (bot.record.state_reason or ""):
            await asyncio.sleep(0.01)
    assert h.engine.starts.count(bot.id) == 6
    assert bot.state is S.SUSPENDED
    assert bot.record.want_running is False
    assert bot.record.health == "critical"
    alerts = [line for line in h.logs if "ALERT:" in line and bot.id in line]
    assert len(alerts) == 2  # critical when suspended; then "needs a restart" once
    assert "stays SUSPENDED until someone restarts it" in alerts[1]
    assert not any("RESOLVED" in line and bot.id in line for line in h.logs)  # no flapping
    await asyncio.sleep(0.5)
    assert h.engine.starts.count(bot.id) == 6  # nothing retries it by itself
    # A person restarts it: counters and breaker are reset.
    h.engine.fail_starts = 0
    await bot.start("restarted by its owner")
    page = await h.live(bot)
    await page.emit(EventKind.READY)
    await h.wait_state(bot, S.CONNECTED)
    assert sum("RESOLVED" in line and bot.id in line for line in h.logs) == 1


async def test_circuit_breaker_trial_that_succeeds_closes_it(make):
    h = await make()
    h.engine.fail_starts = 5
    bot = await h.create()
    await h.wait_state(bot, S.SUSPENDED, within=5)
    page = await h.live(bot, within=5)  # the trial start succeeds
    await page.emit(EventKind.READY)
    await h.wait_state(bot, S.CONNECTED)
    assert any("trial succeeded" in line for line in h.logs)


async def test_logout_from_the_phone_is_never_retried(make):
    h = await make()
    bot = await h.create()
    page = await h.live(bot)
    await page.emit(EventKind.READY)
    await h.wait_state(bot, S.CONNECTED)
    await page.emit(EventKind.LOGOUT, reason="LOGOUT")
    assert bot.state is S.LOGGED_OUT
    assert "logged out from the phone" in (bot.record.state_reason or "")
    assert h.engine.forgotten == [bot.id]
    await asyncio.sleep(0.4)
    assert h.engine.starts.count(bot.id) == 1
    summary = await h.manager.health_sweep_once()
    assert summary["reconnected"] == 0


async def test_stale_heartbeat_restarts_the_session(make):
    h = await make()
    bot = await h.create()
    page = await h.live(bot)
    await page.emit(EventKind.READY)
    await h.wait_state(bot, S.CONNECTED)
    await asyncio.sleep(0.1)
    assert bot.record.last_heartbeat_at is not None
    page.healthy = False
    await h.wait_state(bot, S.DISCONNECTED, within=3)
    assert "stale: no good heartbeat" in (bot.record.state_reason or "")
    await h.wait_state(bot, S.CONNECTING)


async def test_one_start_at_a_time_per_session(make):
    h = await make()
    h.engine.start_delay = 0.2
    bot = await h.create(start=False)
    results = await asyncio.gather(bot.start("first"), bot.start("second"), return_exceptions=True)
    assert sum(r is None for r in results) == 1
    assert sum(isinstance(r, IllegalTransitionError) for r in results) == 1
    await h.live(bot)
    assert h.engine.starts.count(bot.id) == 1


async def test_global_cap_on_concurrent_browser_starts(make):
    h = await make(start_concurrency=2)
    h.engine.start_delay = 0.1
    bots = [await h.create(f"bot{n}") for n in range(6)]
    for bot in bots:
        await h.live(bot)
    assert h.engine.max_concurrent == 2


async def test_stop_start_restart_and_owner_logout(make):
    h = await make()
    bot = await h.create()
    page = await h.live(bot)
    await page.emit(EventKind.READY)
    await h.wait_state(bot, S.CONNECTED)
    await bot.stop("stopped by its owner", by_owner=True)
    assert bot.state is S.STOPPED and page.stopped
    assert bot.record.want_running is False
    with pytest.raises(IllegalTransitionError):
        await bot.stop("again", by_owner=True)
    await bot.restart("restarted by its owner")
    assert bot.state is S.CONNECTING
    page = await h.live(bot)
    await page.emit(EventKind.READY)
    await h.wait_state(bot, S.CONNECTED)
    await bot.logout("logged out by its owner")
    assert bot.state is S.LOGGED_OUT and page.logged_out
    assert h.engine.forgotten == [bot.id]


async def test_late_events_from_a_closed_browser_are_ignored(make):
    h = await make()
    bot = await h.create()
    page = await h.live(bot)
    await bot.stop("stopped by its owner", by_owner=True)
    await page.emit(EventKind.READY)
    await page.emit(EventKind.CRASH, reason="late")
    assert bot.state is S.STOPPED


async def test_shutdown_keeps_bots_wanted_and_the_next_boot_restores_them(make, tmp_path):
    h = await make()
    running = await h.create("running")
    page = await h.live(running)
    await page.emit(EventKind.READY)
    await h.wait_state(running, S.CONNECTED)
    stopped = await h.create("stopped")
    await h.live(stopped)
    await stopped.stop("stopped by its owner", by_owner=True)
    await h.manager.shutdown(within=5)
    assert running.state is S.STOPPED and running.record.want_running is True

    again = await make(start_stagger=timedelta(milliseconds=50))
    again.manager.restore_in_background()
    restored = again.manager.sessions[running.id]
    await again.live(restored)
    assert again.manager.sessions[stopped.id].state is S.STOPPED
    assert again.engine.starts == [running.id]
    history = await again.states(restored)
    assert history[-3:] == ["CONNECTED", "STOPPED", "CONNECTING"]
