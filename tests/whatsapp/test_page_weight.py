"""The simulator with WhatsApp Web's weight (bot/engines/simulator/weight.py), in real
Chromium: the page loads its code from static.whatsapp.net, shows its chat list with profile
pictures, its fonts and its emoji sheet; a bot's browser fetches the code and none of the
rest, and works all the same."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bot.engines.base import EventKind
from bot.engines.simulator import Behaviour, Simulator
from bot.engines.simulator.weight import SETTLED_SCRIPT, Weight
from bot.engines.whatsapp.driver import WhatsAppSession, create_engine
from config import load_settings
from tests.whatsapp.conftest import Events, MakeEngine

BOT = "bot_000000000019"
# Small enough for a test machine; every part of the real page's weight is there.
SMALL = Weight(
    bundles=2, bundle_kb=200, chats=30, messages_per_chat=10, contacts=60, visible_chats=6
)


async def linked_on_the_weighty_page(
    make_engine: MakeEngine, **values: Any
) -> tuple[Simulator, WhatsAppSession]:
    engine = make_engine(behaviour=Behaviour(weight=SMALL), **values)
    assert engine.simulator is not None
    events = Events()
    session = await engine.start(BOT, events)
    await events.wait_for(EventKind.QR)
    await engine.simulator.scan(BOT)
    await events.wait_for(EventKind.READY)
    page = session.page
    assert page is not None
    # The chat list is up, and every picture and font has loaded or failed.
    async with asyncio.timeout(60):
        while not await page.evaluate(SETTLED_SCRIPT):
            await asyncio.sleep(0.1)
    return engine.simulator, session


async def test_a_bot_fetches_the_real_page_s_code_and_none_of_its_pictures_fonts_or_emoji(
    make_engine: MakeEngine,
):
    simulator, session = await linked_on_the_weighty_page(make_engine)
    assert session.page is not None
    assert simulator.assets.fetched["script"] == SMALL.bundles
    assert simulator.assets.fetched["picture"] == 0
    assert simulator.assets.fetched["font"] == 0
    assert simulator.assets.fetched["sprite"] == 0
    # The page runs as it would: its code's modules ran, its store and chat list are there.
    modules = await session.page.evaluate("Object.keys(window.__simWeightModules).length")
    assert modules > 100
    assert await session.page.evaluate("window.__simWeightStore.chats.length") == SMALL.chats
    rows = await session.page.evaluate("document.querySelectorAll('#side .row').length")
    assert rows == SMALL.visible_chats


async def test_without_the_blocked_urls_the_same_page_fetches_them_all(make_engine: MakeEngine):
    """The simulator can fail the test above: a browser that does not refuse them fetches
    every picture of the chat list, the fonts in use and the emoji sheet."""
    simulator, _ = await linked_on_the_weighty_page(make_engine, blocked_urls=())
    assert simulator.assets.fetched["picture"] == SMALL.visible_chats
    assert simulator.assets.fetched["font"] == SMALL.fonts
    assert simulator.assets.fetched["sprite"] == 1


async def test_demo_mode_carries_the_real_page_s_weight_when_told(tmp_path: Path):
    """SIMULATOR_WEIGHT=real: the demo's page is the weighty one; the default, the light one."""
    for value, weighty in (("real", True), ("light", False)):
        settings = load_settings(
            whatsapp_simulator=True, simulator_weight=value, data_dir=tmp_path / value
        )
        engine = create_engine(settings)
        assert engine.simulator is not None
        assert (engine.simulator.behaviour.weight is not None) is weighty
        config = engine.simulator.behaviour.page_config(1000)
        assert (config["weight"] is not None) is weighty
        await engine.close()
