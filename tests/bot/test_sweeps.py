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
from bot.policy import Policy
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

    async def build() -> tuple[BotManager, ScriptedEngine, list[str]]:
        engine = ScriptedEngine()
        manager = BotManager(
            store=BotStore(db),
            engine=engine,
            policy=Policy(heartbeat_every=timedelta(hours=1)),
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
        "reasons": {"inactive": 2},
    }
    assert old.state is S.EXPIRED  # also idle: it had no activity either
    assert stopped.state is S.IDLE
    assert "✅ Session cleanup complete: 2/3 sessions removed" in logs
    assert idle.record.want_running is False
    # A week after its start, even a busy bot is closed.
    for _ in range(7):
        clock.advance(timedelta(hours=23))
        await busy.touch()
    result = await manager.cleanup_once()
    assert result["reasons"] == {"max_age": 1}
    assert "running for more than 7d" in (busy.record.state_reason or "")
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
