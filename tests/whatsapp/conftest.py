"""Real Chromium, the real driver and bridge, and the simulator in place of web.whatsapp.com."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.engines.base import EngineEvent, EventKind
from bot.engines.simulator import Behaviour, Simulator
from bot.engines.whatsapp.browser import ChromiumChoice
from bot.engines.whatsapp.driver import BridgeTimings, DriverOptions, WhatsAppEngine
from bot.engines.whatsapp.profile import ProfileVault
from config import DEFAULT_USER_AGENT
from tests.support import chromium_for_tests

# A bound, not a pause: room for a loaded 2-core machine starting Chromium.
WAIT = 30.0


class Events:
    """What one session reported, with waits that fail fast instead of hanging."""

    def __init__(self) -> None:
        self.seen: list[EngineEvent] = []
        self._changed = asyncio.Event()

    async def __call__(self, event: EngineEvent) -> None:
        self.seen.append(event)
        self._changed.set()

    def of(self, kind: EventKind) -> list[EngineEvent]:
        return [e for e in self.seen if e.kind is kind]

    async def wait_for(self, kind: EventKind, count: int = 1, timeout: float = WAIT) -> EngineEvent:
        async with asyncio.timeout(timeout):
            while len(self.of(kind)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.of(kind)[count - 1]


# A service worker registered by the simulator page (/sw.js) answers with what its first
# script read (userAgent, brands, platform) and the Sec-CH-UA header its first fetch carried.
SERVICE_WORKER_IDENTITY = """async () => {
  const reg = await navigator.serviceWorker.register("/sw.js");
  const sw = reg.installing || reg.waiting || reg.active;
  await new Promise((resolve) => {
    if (sw.state === "activated") resolve();
    sw.addEventListener("statechange", () => sw.state === "activated" && resolve());
  });
  return await new Promise((resolve) => {
    navigator.serviceWorker.onmessage = (e) => resolve(e.data);
    sw.postMessage("who are you?");
  });
}"""
# The page's side of the same comparison.
PAGE_IDENTITY = """async () => ({
  userAgent: navigator.userAgent,
  brands: navigator.userAgentData.brands,
  platform: navigator.userAgentData.platform,
  secChUa: (await (await fetch("/__sim/client-hints")).json()).secChUa,
})"""
# A bound, not a pause: a service worker installs on a loaded 2-core machine.
WAIT_SW = 20.0

# The bridge gives up on a missing module after 60 s of a quiet module list on the real site;
# the simulator defines its modules within a second or two.
TEST_BRIDGE = BridgeTimings(give_up_ms=4000)


def options(profiles: Path, **values: Any) -> DriverOptions:
    values.setdefault("chromium", ChromiumChoice(Path(chromium_for_tests()), "tests"))
    values.setdefault("bridge", TEST_BRIDGE)
    return DriverOptions(profiles_dir=profiles, user_agent=DEFAULT_USER_AGENT, **values)


MakeEngine = Callable[..., WhatsAppEngine]


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[MakeEngine]:
    engines: list[WhatsAppEngine] = []

    def make(
        *,
        qr_every: float = 20.0,
        vault: ProfileVault | None = None,
        simulator: Simulator | None = None,
        behaviour: Behaviour | None = None,
        **values: Any,
    ) -> WhatsAppEngine:
        sim = simulator or Simulator(
            qr_every=timedelta(seconds=qr_every), record_dir=tmp_path, behaviour=behaviour
        )
        engine = WhatsAppEngine(
            options(tmp_path / "profiles", **values), vault=vault, simulator=sim
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await asyncio.wait_for(engine.close(), 30)
