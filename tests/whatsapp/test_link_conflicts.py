"""One connection per linked device, as on the real service: two processes' simulators share
their phone side through one folder, so a second browser opening a linked device (a copy of
its profile, as a deploy's new node restores it) conflicts the first one, the conflict is
counted, and `Socket.takeover()` takes the link back. A browser closed before the next one
opens (the handover) is no conflict. Real Chromium, the real driver and bridge."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from bot.engines.base import EventKind
from bot.engines.simulator import Simulator
from bot.engines.simulator.links import STALE_AFTER_S, Holder, LinkRegistry
from bot.engines.whatsapp.driver import WhatsAppEngine, WhatsAppSession
from bot.engines.whatsapp.profile import pack, unpack
from tests.web.test_sessions_api import ADMIN, history, running
from tests.whatsapp.conftest import WAIT, Events, options
from tests.whatsapp.test_linking_api import demo_settings, linked_bot
from tests.whatsapp.test_linking_api import wait_state as wait_state_api

BOT = "bot_00000000c0f1"


@contextlib.asynccontextmanager
async def two_nodes(tmp_path: Path) -> AsyncIterator[tuple[WhatsAppEngine, WhatsAppEngine]]:
    """Two engines as two nodes would run them: their own profiles, one shared phone side."""
    shared = tmp_path / "whatsapp"
    engines = tuple(
        WhatsAppEngine(
            options(tmp_path / name / "profiles"),
            simulator=Simulator(qr_every=timedelta(seconds=20), record_dir=shared),
        )
        for name in ("old", "new")
    )
    try:
        yield engines[0], engines[1]
    finally:
        for engine in engines:
            await asyncio.wait_for(engine.close(), 30)


def sim(engine: WhatsAppEngine) -> Simulator:
    assert engine.simulator is not None
    return engine.simulator


async def linked(engine: WhatsAppEngine) -> tuple[WhatsAppSession, Events]:
    events = Events()
    session = await engine.start(BOT, events)
    await events.wait_for(EventKind.QR)
    await sim(engine).scan(BOT)
    await events.wait_for(EventKind.READY)
    return session, events


async def restored(
    engine: WhatsAppEngine, source: WhatsAppEngine, bot: str = BOT
) -> tuple[WhatsAppSession, Events]:
    """The bot started from a copy of the other node's profile: linked, no QR."""
    packed = pack(source.profile_dir(bot), None)
    assert packed is not None
    unpack(packed.blob, False, engine.profile_dir(bot), None)
    events = Events()
    session = await engine.start(bot, events)
    await events.wait_for(EventKind.READY)
    assert not events.of(EventKind.QR)
    return session, events


async def wait_state(events: Events, state: str, count: int = 1) -> None:
    async with asyncio.timeout(WAIT):
        while [e.data.get("state") for e in events.of(EventKind.STATE)].count(state) < count:
            await events.wait_for(EventKind.STATE, len(events.of(EventKind.STATE)) + 1)


async def test_a_second_browser_on_a_linked_device_conflicts_the_first_and_is_counted(
    tmp_path: Path,
):
    async with two_nodes(tmp_path) as (old, new):
        first, first_events = await linked(old)
        assert sim(old).conflicts(BOT) == []

        second, second_events = await restored(new, old)
        # WhatsApp keeps the newest connection: the old browser hears `conflict`.
        await wait_state(first_events, "CONFLICT")
        assert (await sim(old).status(BOT))["state"] == "CONFLICT"
        assert (await first.heartbeat()).ok is False
        assert (await second.heartbeat()).ok is True
        # Counted once, in the folder both processes share.
        conflicts = sim(new).conflicts(BOT)
        assert len(conflicts) == 1
        assert conflicts[0].takeover is False
        assert [c.replaced for c in sim(old).conflicts()] == [conflicts[0].replaced]
        assert len(LinkRegistry(tmp_path / "whatsapp").conflicts()) == 1

        # whatsapp-web.js's takeoverOnConflict: the old page takes the link back, and the
        # new one gets the conflict in turn.
        assert first.page is not None
        await first.page.evaluate("window.require('WAWebSocketModel').Socket.takeover()")
        await wait_state(second_events, "CONFLICT")
        assert (await sim(old).status(BOT))["state"] == "CONNECTED"
        assert (await sim(new).status(BOT))["state"] == "CONFLICT"
        conflicts = sim(old).conflicts(BOT)
        assert [c.takeover for c in conflicts] == [False, True]
        assert conflicts[1].replaced == conflicts[0].by


async def test_a_browser_closed_before_the_next_opens_is_no_conflict(tmp_path: Path):
    async with two_nodes(tmp_path) as (old, new):
        first, _ = await linked(old)
        await first.stop(backup=False)  # the handover: the old node closes its browser first
        second, _ = await restored(new, old)
        # Beats go on (a conflict would be heard at one of them) and none comes.
        registry = LinkRegistry(tmp_path / "whatsapp")
        files = list((tmp_path / "whatsapp" / "simulator-links").glob("*.json"))
        assert len(files) == 1
        device = files[0].stem
        beats = {files[0].read_text()}
        async with asyncio.timeout(WAIT):
            while len(beats) < 3:
                await asyncio.sleep(0.2)
                beats.add(files[0].read_text())
        assert (held := registry.held_by(device)) is not None and held.pid == os.getpid()
        assert (await second.heartbeat()).ok is True
        assert registry.conflicts() == []


# The record alone, with an injected clock ---------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_newest_browser_holds_the_device_and_a_live_older_one_is_conflicted(
    tmp_path: Path,
):
    clock = Clock()
    registry = LinkRegistry(tmp_path, now=clock)
    old = registry.holder("sim-a", "p1")
    new = registry.holder("sim-b", "p2")
    assert registry.open("dev", "bot_1", old) is None
    assert registry.open("dev", "bot_1", old) is None  # the same page again: no conflict
    clock.now += 1
    assert registry.open("dev", "bot_1", new) == old
    assert registry.beat("dev", old) is False  # the old page hears it
    assert registry.beat("dev", new) is True
    assert registry.held_by("dev") == new
    assert [(c.session_id, c.replaced, c.by) for c in registry.conflicts()] == [
        ("bot_1", old.label(), new.label())
    ]
    assert registry.conflicts("bot_2") == []
    # The old page closing later does not release the new one's connection.
    registry.release("dev", old)
    assert registry.held_by("dev") == new


def test_a_released_stale_or_dead_holder_is_no_conflict(tmp_path: Path):
    clock = Clock()
    registry = LinkRegistry(tmp_path, now=clock)
    first = registry.holder("sim-a", "p1")
    registry.open("released", "bot_1", first)
    registry.release("released", first)
    assert registry.open("released", "bot_1", registry.holder("sim-b", "p2")) is None

    registry.open("stale", "bot_1", first)
    clock.now += STALE_AFTER_S + 1  # its process froze, or died on another host
    assert registry.open("stale", "bot_1", registry.holder("sim-b", "p2")) is None

    # A SIGKILLed process on this host: its pid is gone at once.
    clock.now += 1
    dead = Holder(first.host, 2**22 + 12345, "sim-a", "p1")  # past any pid_max
    registry.open("dead", "bot_1", dead)
    assert registry.open("dead", "bot_1", registry.holder("sim-b", "p2")) is None
    assert registry.conflicts() == []


# What a demo user sees ------------------------------------------------------------------


async def test_a_second_browser_on_a_demo_bot_s_link_is_a_conflict_the_api_shows(
    tmp_path: Path,
):
    """Another process opens a running bot's link (a copy of its profile): the bot hears the
    conflict, says so in its history, and reconnects, taking the link back from the other
    browser, which gets the conflict in turn: the ping-pong two clients get on the real
    service. `GET …/simulator/sent` counts them."""
    phone_side = tmp_path / "whatsapp"
    settings = demo_settings(tmp_path / "node", whatsapp_simulator_dir=str(phone_side))
    async with running(settings) as api:
        bot = await linked_bot(api)

        async def conflicts() -> int:
            response = await api.client.get(f"/api/sessions/{bot}/simulator/sent", headers=ADMIN)
            assert response.status_code == 200, response.text
            count: int = response.json()["conflicts"]
            return count

        assert await conflicts() == 0
        node = api.manager.engine
        assert isinstance(node, WhatsAppEngine)
        other = WhatsAppEngine(
            options(tmp_path / "other" / "profiles"),
            simulator=Simulator(qr_every=timedelta(seconds=20), record_dir=phone_side),
        )
        try:
            _, events = await restored(other, node, bot)
            await wait_state(events, "CONFLICT")  # the bot took its link back
            assert await conflicts() >= 2
            body = await wait_state_api(api, bot, "CONNECTED")
            reasons = [reason for _, _, reason in history(body)]
            assert "conflict: WhatsApp Web was opened in another browser" in reasons
        finally:
            await asyncio.wait_for(other.close(), 30)


def test_beats_keep_a_holder_live_past_the_stale_time(tmp_path: Path):
    clock = Clock()
    registry = LinkRegistry(tmp_path, now=clock)
    old = registry.holder("sim-a", "p1")
    registry.open("dev", "bot_1", old)
    for _ in range(6):  # 18 s of a page beating every 3 s
        clock.now += 3
        assert registry.beat("dev", old) is True
    assert clock.now - 1_000_000.0 > STALE_AFTER_S
    assert registry.held_by("dev") == old
    assert registry.open("dev", "bot_1", registry.holder("sim-b", "p2")) == old
    assert len(registry.conflicts("bot_1")) == 1
