"""`cleanup_once` and `health_sweep_once` as steps, with an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from bot.engines.base import EventKind
from bot.manager import BotManager, ManagerConfig
from bot.policy import MaxAgeAction, Policy
from bot.session import BotSession
from bot.states import SessionState
from bot.store import BotStore
from services.alerts import Alerter
from services.database import Database
from services.metrics import Metrics
from tests.engines import ScriptedEngine
from tests.support import FakeClock

S = SessionState


@pytest.fixture
async def setup(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Callable[..., Any]]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bots.db'}")
    await db.migrate()
    logs: list[str] = []
    sink = logger.add(lambda m: logs.append(m.record["message"]), level="DEBUG")
    managers: list[BotManager] = []

    async def build(**policy: Any) -> tuple[BotManager, ScriptedEngine, list[str]]:
        engine = ScriptedEngine()
        manager = BotManager(
            store=BotStore(db),
            engine=engine,
            policy=Policy(heartbeat_every=timedelta(hours=1), **policy),
            clock=clock,
            alerter=Alerter([], clock),
            metrics=Metrics(),
            config=ManagerConfig(),
        )
        await manager.load()
        managers.append(manager)
        return manager, engine, logs

    yield build
    for manager in managers:
        await manager.shutdown(within=5)
    logger.remove(sink)
    await db.dispose()


async def connected(manager: BotManager, engine: ScriptedEngine, name: str) -> BotSession:
    bot = await manager.create(user_id=None, name=name, webhook_url=None, metadata={}, start=True)
    for _ in range(200):
        if bot.engine_session is not None:
            break
        await asyncio.sleep(0.005)
    await engine.live[bot.id].emit(EventKind.READY)
    assert bot.state is S.CONNECTED
    return bot


async def test_cleanup_expires_idle_and_old_sessions_and_logs_like_the_seed(setup, clock):
    manager, engine, logs = await setup()
    idle = await connected(manager, engine, "idle")
    busy = await connected(manager, engine, "busy")
    old = await connected(manager, engine, "old")
    stopped = await manager.create(
        user_id=None, name="stopped", webhook_url=None, metadata={}, start=False
    )
    clock.advance(timedelta(hours=23))
    await busy.touch()  # a message at 23 h keeps it
    clock.advance(timedelta(hours=1, seconds=1))
    result = await manager.cleanup_once()
    assert idle.state is S.EXPIRED
    assert "no activity for 24h" in (idle.record.state_reason or "")
    assert busy.state is S.CONNECTED
    assert result == {
        "at": clock.now().isoformat(),
        "checked": 3,
        "removed": 2,
        "recycled": 0,
        "reasons": {"inactive": 2},
        "woken": {},
        "linksAtRisk": 0,
    }
    assert old.state is S.EXPIRED  # also idle: it had no activity either
    assert stopped.state is S.IDLE
    assert "✅ Session cleanup complete: 2/3 sessions removed (0 recycled), 0 woken" in logs
    assert idle.record.want_running is False
    # A week after its start, even a busy bot is recycled: closed and started again at
    # once on the same profile, never EXPIRED.
    starts = engine.starts.count(busy.id)
    for _ in range(7):
        clock.advance(timedelta(hours=23))
        await busy.touch()
    result = await manager.cleanup_once()
    assert result["reasons"] == {"max_age": 1}
    assert result["recycled"] == 1
    assert busy.state is S.CONNECTING
    assert "running for more than 7d" in (busy.record.state_reason or "")
    assert busy.record.want_running is True
    for _ in range(200):
        if engine.starts.count(busy.id) > starts and busy.engine_session is not None:
            break
        await asyncio.sleep(0.005)
    await engine.live[busy.id].emit(EventKind.READY)
    assert busy.state is S.CONNECTED
    moves = [t.to_state for t in await manager.store.history(busy.id, 20)]
    assert "EXPIRED" not in moves
    assert engine.forgotten == []  # the link is kept
    assert any("♻️ Session 'busy' recycled" in line for line in logs)
    text = manager.ctx.metrics.render().decode()
    assert 'bot_cleanup_removed_total{reason="inactive"} 2.0' in text
    assert 'bot_cleanup_removed_total{reason="max_age"} 1.0' in text


async def test_expired_session_restarts_without_a_new_link(setup, clock):
    manager, engine, _ = await setup()
    bot = await connected(manager, engine, "bot")
    engine.link(bot.id)
    clock.advance(timedelta(days=2))
    await manager.cleanup_once()
    assert bot.state is S.EXPIRED
    assert engine.forgotten == []  # the profile (the link) is kept


async def test_health_sweep_levels_reconnects_and_alerts_once(setup, clock):
    manager, engine, logs = await setup()
    good = await connected(manager, engine, "good")
    flaky = await connected(manager, engine, "flaky")
    await engine.live[flaky.id].emit(EventKind.CRASH, reason="page crashed")
    assert flaky.state is S.DISCONNECTED
    summary = await manager.health_sweep_once()
    assert summary["total"] == 2
    assert summary["warning"] == 1
    # Its reconnect timer is real time; the sweep reconnects what is due by the clock.
    clock.advance(timedelta(minutes=1))
    await manager.sessions[flaky.id]._close_engine()
    summary = await manager.health_sweep_once()
    assert summary["reconnected"] == 1
    assert flaky.state is S.CONNECTING
    # Offline for six hours: critical, alerted once, however many sweeps.
    clock.advance(timedelta(hours=6))
    good.record.last_heartbeat_at = clock.now()
    first = await manager.health_sweep_once()
    second = await manager.health_sweep_once()
    assert first["critical"] == 1
    assert first["notified"] == 1
    assert second["notified"] == 0
    assert sum("ALERT:" in line and flaky.id in line for line in logs) == 1
    assert first["healthy"] == 1
    # It connects again: a resolved notice.
    for _ in range(200):
        if flaky.engine_session is not None:
            break
        await asyncio.sleep(0.005)
    await engine.live[flaky.id].emit(EventKind.READY)
    assert sum("RESOLVED" in line and flaky.id in line for line in logs) == 1
    assert "🩺 Session health check complete" in "\n".join(logs)


async def started_again(engine: ScriptedEngine, bot: BotSession, starts: int) -> None:
    """Wait for the browser of a start after the `starts`-th, then connect it."""
    for _ in range(400):
        if engine.starts.count(bot.id) > starts and bot.engine_session is not None:
            break
        await asyncio.sleep(0.005)
    await engine.live[bot.id].emit(EventKind.READY)
    assert bot.state is S.CONNECTED


async def test_max_age_action_expire_keeps_the_seeds_behaviour(setup, clock):
    manager, engine, _ = await setup(max_age_action=MaxAgeAction.EXPIRE)
    bot = await connected(manager, engine, "old")
    for _ in range(8):
        clock.advance(timedelta(hours=23))
        await bot.touch()
        bot.record.last_heartbeat_at = clock.now()  # as its heartbeats would
    result = await manager.cleanup_once()
    assert result["reasons"] == {"max_age": 1}
    assert result["recycled"] == 0
    assert result["woken"] == {}  # just seen by WhatsApp: no refresh due
    assert bot.state is S.EXPIRED


async def test_no_inactivity_timeout_keeps_an_idle_bot_running(setup, clock):
    manager, engine, _ = await setup(inactive_timeout=timedelta(0))
    bot = await connected(manager, engine, "quiet")
    clock.advance(timedelta(days=6))
    result = await manager.cleanup_once()
    assert result["removed"] == 0
    assert bot.state is S.CONNECTED


async def test_an_expired_bot_with_a_message_waiting_wakes(setup, clock):
    manager, engine, logs = await setup()
    bot = await connected(manager, engine, "sleepy")
    clock.advance(timedelta(days=2))
    await manager.cleanup_once()
    assert bot.state is S.EXPIRED
    waiting: set[str] = set()

    async def queued() -> set[str]:
        return waiting

    manager.queued_for = queued
    result = await manager.cleanup_once()
    assert result["woken"] == {}  # nothing waits, and the link was seen two days ago
    waiting.add(bot.id)
    starts = engine.starts.count(bot.id)
    result = await manager.cleanup_once()
    assert result["woken"] == {"message": 1}
    assert bot.state is S.CONNECTING
    assert "woken: a message is waiting to be sent" in (bot.record.state_reason or "")
    await started_again(engine, bot, starts)
    assert any("⏰ Session 'sleepy' woken" in line for line in logs)


async def test_the_link_refresh_wakes_an_expired_bot_for_a_while(setup, clock):
    manager, engine, _ = await setup(link_refresh_for=timedelta(milliseconds=200))
    bot = await connected(manager, engine, "sleepy")
    clock.advance(timedelta(days=2))
    await manager.cleanup_once()
    assert bot.state is S.EXPIRED
    clock.advance(timedelta(days=4))
    assert (await manager.cleanup_once())["woken"] == {}  # seen 6 days ago: not yet
    clock.advance(timedelta(days=1))
    starts = engine.starts.count(bot.id)
    result = await manager.cleanup_once()
    assert result["woken"] == {"refresh": 1}
    assert "link refresh" in (bot.record.state_reason or "")
    await started_again(engine, bot, starts)
    connected_at = bot.record.last_connected_at
    assert connected_at == clock.now()
    # A few minutes connected (here 200 ms), then asleep again: the link is fresh.
    for _ in range(400):
        if bot.state is S.EXPIRED:
            break
        await asyncio.sleep(0.01)
    assert bot.state is S.EXPIRED
    assert "link refreshed" in (bot.record.state_reason or "")
    assert bot.record.want_running is False
    assert engine.forgotten == []
    # Refreshed: the next sweep leaves it asleep, and a week later it refreshes again.
    assert (await manager.cleanup_once())["woken"] == {}
    clock.advance(timedelta(days=7))
    assert (await manager.cleanup_once())["woken"] == {"refresh": 1}


async def test_a_message_keeps_a_refreshing_bot_awake(setup, clock):
    manager, engine, _ = await setup(link_refresh_for=timedelta(milliseconds=200))
    bot = await connected(manager, engine, "sleepy")
    clock.advance(timedelta(days=2))
    await manager.cleanup_once()
    clock.advance(timedelta(days=7))
    starts = engine.starts.count(bot.id)
    await manager.cleanup_once()
    await started_again(engine, bot, starts)
    # A message queued while it is up for the refresh: it stays up after the refresh.
    assert await manager.wake(bot, "a message was queued") is False
    await asyncio.sleep(0.5)
    assert bot.state is S.CONNECTED


async def test_a_link_unseen_for_25_days_alerts_once_and_resolves_on_connect(setup, clock):
    manager, engine, logs = await setup(link_refresh_every=timedelta(0))
    bot = await connected(manager, engine, "forgotten")
    clock.advance(timedelta(days=2))
    await manager.cleanup_once()
    assert bot.state is S.EXPIRED
    clock.advance(timedelta(days=22))  # seen 24 days ago
    assert (await manager.cleanup_once())["linksAtRisk"] == 0
    clock.advance(timedelta(days=1))
    assert (await manager.cleanup_once())["linksAtRisk"] == 1
    assert (await manager.cleanup_once())["linksAtRisk"] == 1
    alerts = [line for line in logs if "ALERT:" in line and bot.id in line]
    assert len(alerts) == 1
    assert "not been connected for 25d" in alerts[0]
    assert "30 days" in alerts[0]
    # Its owner starts it (no QR: the link is kept); connected, the incident resolves.
    starts = engine.starts.count(bot.id)
    await bot.start("started by its owner")
    await started_again(engine, bot, starts)
    assert sum("RESOLVED" in line and bot.id in line for line in logs) == 1
    assert (await manager.cleanup_once())["linksAtRisk"] == 0
