"""The bridge against WhatsApp Web as it is today (issue 16): real Chromium, the real driver
and bridge, and a simulator that behaves like the real site: `Debug` never set, modules
arriving over time, LID accounts, minified message keys, send results, notifications,
pairing codes that expire, and the unsupported-browser page for a headless browser. Each
test here failed on the bridge that waited for `window.Debug`."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from bot.engines.base import EngineError, EventKind
from bot.engines.simulator import WHATSAPP_URL, Behaviour, Simulator, SimulatorError
from bot.engines.whatsapp.browser import LEAN_FLAGS, find_chromium
from bot.engines.whatsapp.driver import WhatsAppSession
from config import DEFAULT_USER_AGENT
from tests.whatsapp.conftest import (
    PAGE_IDENTITY,
    SERVICE_WORKER_IDENTITY,
    TEST_BRIDGE,
    WAIT_SW,
    Events,
    MakeEngine,
)

GROUP = "120363041234567890@g.us"


async def linked(
    make_engine: MakeEngine, bot: str, **values: Any
) -> tuple[Simulator, Events, WhatsAppSession]:
    engine = make_engine(**values)
    sim = engine.simulator
    assert sim is not None
    events = Events()
    session = await engine.start(bot, events)
    await events.wait_for(EventKind.QR)
    await sim.scan(bot)
    await events.wait_for(EventKind.READY)
    return sim, events, session


# 1. Attaching without window.Debug ------------------------------------------------------


async def test_links_and_sends_with_debug_never_set_and_modules_arriving_late(
    make_engine: MakeEngine,
):
    slow_loader = Behaviour(debug="never", loader_delay_ms=1500, module_every_ms=400)
    engine = make_engine(behaviour=slow_loader)
    sim = engine.simulator
    assert sim is not None
    events = Events()
    session = await engine.start("bot_0000000000a1", events)
    await events.wait_for(EventKind.QR)
    await sim.scan("bot_0000000000a1")
    ready = await events.wait_for(EventKind.READY)
    assert ready.data["version"] == "2.3000.1044999999"  # from WAWebUpdaterVersion
    assert (await sim.status("bot_0000000000a1"))["debug"] is False
    await session.send_text("+15550001111", "no Debug needed")
    assert [m.body for m in sim.sent("bot_0000000000a1")] == ["no Debug needed"]


async def test_a_login_module_that_never_appears_is_an_outdated_bridge_not_a_silent_fallback(
    make_engine: MakeEngine,
):
    engine = make_engine(behaviour=Behaviour(withhold=("WAWebConnModel",)))
    events = Events()
    session = await engine.start("bot_0000000000a2", events)
    outdated = await events.wait_for(EventKind.BRIDGE_OUTDATED, timeout=30)
    assert outdated.data["missing"] == "WAWebConnModel"
    assert outdated.data["stage"] == "login"
    assert outdated.data["version"] == "2.3000.1044999999"
    assert events.of(EventKind.QR) == []
    assert (await session.heartbeat()).state == "BRIDGE_OUTDATED"


async def test_a_chat_module_that_never_appears_after_the_sync_is_an_outdated_bridge(
    make_engine: MakeEngine,
):
    engine = make_engine(behaviour=Behaviour(withhold=("WAWebFindChatAction",)))
    events = Events()
    await engine.start("bot_0000000000a3", events)
    await events.wait_for(EventKind.QR)
    await engine.simulator.scan("bot_0000000000a3")  # type: ignore[union-attr]
    outdated = await events.wait_for(EventKind.BRIDGE_OUTDATED, timeout=30)
    assert outdated.data["missing"] == "WAWebFindChatAction"
    assert outdated.data["stage"] == "chat"
    assert events.of(EventKind.READY) == []  # not "ready" when it cannot send


# 3. The QR payload ----------------------------------------------------------------------


async def test_the_qr_carries_all_five_parts_with_the_adv_secret_found_by_shape(
    make_engine: MakeEngine,
):
    # WhatsApp moved the ADV secret before (WAWebAdvSignatureApi → WAWebUserPrefsMultiDevice):
    # a module of another name with the same shape is still found.
    engine = make_engine(behaviour=Behaviour(adv_module="WAWebAdvKeysRenamed"))
    sim = engine.simulator
    assert sim is not None
    events = Events()
    await engine.start("bot_0000000000a4", events)
    qr = (await events.wait_for(EventKind.QR)).data["qr"]
    status = await sim.status("bot_0000000000a4")
    assert qr.split(",") == [
        status["ref"],
        status["noiseKey"],
        status["identityKey"],
        status["advSecret"],
        "Chrome",
    ]


async def test_without_the_adv_secret_no_bare_ref_is_shown(make_engine: MakeEngine):
    engine = make_engine(behaviour=Behaviour(withhold=("WAWebUserPrefsMultiDevice",)))
    events = Events()
    await engine.start("bot_0000000000a5", events)
    outdated = await events.wait_for(EventKind.BRIDGE_OUTDATED, timeout=30)
    assert "WAWebUserPrefsMultiDevice" in outdated.data["missing"]
    assert events.of(EventKind.QR) == []  # a ref alone is a QR no phone can use


# 4. Sends -------------------------------------------------------------------------------


async def test_sends_to_a_lid_contact_and_to_a_group_carry_the_right_sender(
    make_engine: MakeEngine,
):
    bot = "bot_0000000000a6"
    engine_sim, events, session = await linked(make_engine, bot)
    me_lid = (await engine_sim.status(bot))["lid"]
    contact_lid = await engine_sim.lid_of(bot, "15550001111")

    direct_id = await session.send_text("+15550001111", "to a LID contact")
    await engine_sim.incoming(bot, "+15550003333", "hello group", group=GROUP)
    await events.wait_for(EventKind.MESSAGE)
    group_id = await session.send_text(GROUP, "to the group")

    direct, group = engine_sim.sent(bot)
    # The stored id is the real, serialized key (a minified property in WhatsApp's builds).
    assert direct.id == direct_id and direct_id.startswith(f"true_{contact_lid}_3EB0")
    assert (direct.to, direct.sender, direct.participant) == (contact_lid, me_lid, None)
    assert direct.sender == direct.expected_sender
    assert group.id == group_id and group_id.endswith(f"_{me_lid}")
    assert (group.to, group.sender, group.participant) == (GROUP, me_lid, me_lid)
    assert group.sender == group.expected_sender


async def test_a_send_to_a_chat_with_disappearing_messages_keeps_its_timer(
    make_engine: MakeEngine,
):
    bot = "bot_0000000000a7"
    sim, _events, session = await linked(make_engine, bot)
    await sim.set_disappearing(bot, "15550001111", 86400)
    await session.send_text("15550001111", "vanishing")
    (sent,) = sim.sent(bot)
    assert sent.ephemeral_duration == sent.chat_ephemeral_duration == 86400


async def test_an_error_send_result_is_a_failed_send_with_whatsapps_reason(
    make_engine: MakeEngine,
):
    bot = "bot_0000000000a8"
    sim, _events, session = await linked(make_engine, bot)
    await sim.set_send_result(bot, "15550009999", "ERROR_UNKNOWN")
    with pytest.raises(EngineError, match="WhatsApp did not send the message: ERROR_UNKNOWN"):
        await session.send_text("+15550009999", "refused")
    assert [m.result for m in sim.sent(bot)] == ["ERROR_UNKNOWN"]


# 5. Receiving ---------------------------------------------------------------------------


async def test_a_lid_sender_arrives_with_its_phone_number_and_a_group_with_its_author(
    make_engine: MakeEngine,
):
    bot = "bot_0000000000a9"
    sim, events, _session = await linked(make_engine, bot)
    lid = await sim.lid_of(bot, "15550002222")
    await sim.incoming(bot, "+15550002222", "hi from a LID")
    direct = (await events.wait_for(EventKind.MESSAGE)).data
    assert (direct["from"], direct["phone"], direct["lid"]) == (
        "15550002222@c.us",
        "+15550002222",
        lid,
    )
    assert (direct["chat"], direct["isGroup"], direct["author"]) == (lid, False, None)

    await sim.incoming(bot, "+15550003333", "hi all", group=GROUP)
    in_group = (await events.wait_for(EventKind.MESSAGE, count=2)).data
    assert (in_group["chat"], in_group["isGroup"]) == (GROUP, True)
    assert in_group["author"] == in_group["from"] == "15550003333@c.us"
    assert in_group["phone"] == "+15550003333"


async def test_status_updates_notifications_and_revoked_messages_are_not_messages(
    make_engine: MakeEngine,
):
    bot = "bot_0000000000b1"
    sim, events, _session = await linked(make_engine, bot)
    await sim.incoming(bot, "+15550002222", "my holiday", kind="status")
    await sim.incoming(bot, "+15550002222", "", kind="gp2", group=GROUP)
    await sim.incoming(bot, "+15550002222", "", kind="notification_template")
    await sim.incoming(bot, "+15550002222", "", kind="e2e_notification")
    await sim.incoming(bot, "+15550002222", "", kind="revoked")
    await sim.incoming(bot, "+15550002222", "deleted", kind="revoked", encrypted=True)
    await sim.incoming(bot, "+15550002222", "the real one")
    message = await events.wait_for(EventKind.MESSAGE)
    assert message.data["body"] == "the real one"
    await asyncio.sleep(0.5)  # the encrypted one turns "revoked" after 200 ms
    assert len(events.of(EventKind.MESSAGE)) == 1


# 6. A browser that says what it is ------------------------------------------------------


async def test_a_headless_browser_gets_the_unsupported_page_and_ours_does_not(
    make_engine: MakeEngine, tmp_path: Path
):
    # The browser a deployment runs (the image has the headless shell): its client hints
    # (navigator.userAgentData, Sec-CH-UA) list HeadlessChrome whatever the user agent says.
    choice = find_chromium(None)
    assert choice.path is not None, "no Chromium found without CHROMIUM_PATH"
    simulator = Simulator(qr_every=timedelta(seconds=20))
    # What the bot did before: Playwright's user agent override, which has no brands.
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "plain"),
            executable_path=choice.path,
            headless=True,
            args=list(LEAN_FLAGS),
            user_agent=DEFAULT_USER_AGENT,
        )
        try:
            await simulator.attach("plain", context)
            plain = context.pages[0]
            await plain.goto(WHATSAPP_URL)
            assert "WhatsApp works with Google Chrome" in await plain.inner_text("body")
        finally:
            await context.close()

    engine = make_engine(simulator=simulator, chromium=choice)
    events = Events()
    session = await engine.start("bot_0000000000b2", events)
    await events.wait_for(EventKind.QR)
    page = session.page
    assert page is not None
    brands = await page.evaluate("navigator.userAgentData.brands.map(b => b.brand)")
    assert brands and not any("Headless" in b for b in brands)
    user_agent = await page.evaluate("navigator.userAgent")
    major = re.search(r"Chrome/(\d+)", user_agent).group(1)  # type: ignore[union-attr]
    assert {"brand": "Chromium", "version": major} in await page.evaluate(
        "navigator.userAgentData.brands"
    )
    assert await page.evaluate("navigator.userAgentData.platform") == "Linux"


async def test_a_service_worker_presents_the_same_identity_as_its_page_from_its_first_script(
    make_engine: MakeEngine,
):
    # The headless shell a deployment runs: left alone, a service worker's client hints are
    # the browser's own, HeadlessChrome among them (Debian's full Chromium lists other brands
    # than the page's). Playwright resumes a service worker the moment it attaches it.
    choice = find_chromium(None)
    assert choice.path is not None, "no Chromium found without CHROMIUM_PATH"
    engine = make_engine(chromium=choice)
    events = Events()
    session = await engine.start("bot_0000000000b7", events)
    await events.wait_for(EventKind.QR)
    page = session.page
    assert page is not None
    in_page = await page.evaluate(PAGE_IDENTITY)
    service_worker = await asyncio.wait_for(page.evaluate(SERVICE_WORKER_IDENTITY), WAIT_SW)
    assert not any("Headless" in b["brand"] for b in service_worker["brands"])
    assert service_worker["brands"] == in_page["brands"]
    assert service_worker["platform"] == in_page["platform"] == "Linux"
    assert service_worker["userAgent"] == in_page["userAgent"]
    # Chromium sends its service workers' fetches without Sec-CH-UA here (measured, with and
    # without the override); one it sends must be the page's, never HeadlessChrome's.
    assert service_worker["secChUa"] in (None, in_page["secChUa"])


async def test_an_installed_service_worker_presents_the_identity_after_a_restart(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
):
    # A bot restarted on its own disk (a crash, SESSION_MAX_AGE's recycle) opens a profile
    # where WhatsApp Web's worker is installed. Nothing holds an installed worker's first
    # script, so an override that is late (a loaded machine; here 3 s late, on purpose) let
    # it read the headless shell's own brands. A takeover never had it: the profile backup
    # carries no workers, so the page registers a new one, which is held.
    from bot.engines.whatsapp.worker_identity import ServiceWorkerIdentity

    on_time = ServiceWorkerIdentity._override_in

    async def late(self: ServiceWorkerIdentity, presenter: Any, target: str) -> None:
        await asyncio.sleep(3)
        await on_time(self, presenter, target)

    monkeypatch.setattr(ServiceWorkerIdentity, "_override_in", late)
    choice = find_chromium(None)
    assert choice.path is not None, "no Chromium found without CHROMIUM_PATH"
    engine = make_engine(chromium=choice)
    bot = "bot_0000000000b8"
    for run in ("first start", "restart on the same profile"):
        events = Events()
        session = await engine.start(bot, events)
        await events.wait_for(EventKind.QR)
        page = session.page
        assert page is not None
        worker = await asyncio.wait_for(page.evaluate(SERVICE_WORKER_IDENTITY), WAIT_SW)
        brands = [b["brand"] for b in worker["brands"]]
        assert brands and not any("Headless" in b for b in brands), (run, brands)
        await session.stop()
        # The worker is installed in the profile the restart opens.
        assert (engine.profile_dir(bot) / "Default/Service Worker/Database").is_dir()


# 7. Pairing codes -----------------------------------------------------------------------


async def test_a_pairing_code_is_replaced_before_it_expires(make_engine: MakeEngine):
    bridge = replace(TEST_BRIDGE, pair_refresh_ms=1500)
    engine = make_engine(behaviour=Behaviour(pair_code_ttl_ms=2500), bridge=bridge)
    sim = engine.simulator
    assert sim is not None
    events = Events()
    session = await engine.start("bot_0000000000b3", events)
    await events.wait_for(EventKind.QR)
    first = await session.request_pair_code("15557654321")
    second = (await events.wait_for(EventKind.PAIR_CODE, count=2)).data["code"]
    assert second != first
    with pytest.raises(SimulatorError, match="wrong pairing code"):
        await sim.enter_code("bot_0000000000b3", first)  # replaced: the phone has the new one
    await sim.enter_code("bot_0000000000b3", second)
    await events.wait_for(EventKind.READY)


async def test_after_its_last_refresh_the_pairing_code_gives_way_to_qr_codes_again(
    make_engine: MakeEngine,
):
    bridge = replace(TEST_BRIDGE, pair_refresh_ms=800, pair_refreshes=1)
    engine = make_engine(qr_every=0.15, bridge=bridge)
    events = Events()
    session = await engine.start("bot_0000000000b4", events)
    await events.wait_for(EventKind.QR)
    await session.request_pair_code("15557654321")
    await events.wait_for(EventKind.PAIR_CODE, count=2)
    qrs_then = len(events.of(EventKind.QR))
    # Nobody typed it: the bridge stops pairing and asks for QR codes again.
    await events.wait_for(EventKind.QR, count=qrs_then + 2, timeout=15)


# 8. Stream modes and the phone's logout -------------------------------------------------


async def test_a_blocking_stream_mode_is_reported(make_engine: MakeEngine):
    bot = "bot_0000000000b5"
    sim, events, _session = await linked(make_engine, bot)
    await sim.set_stream_mode(bot, "TOS_BLOCK")
    async with asyncio.timeout(10):
        while "TOS_BLOCK" not in [e.data["state"] for e in events.of(EventKind.STATE)]:
            await asyncio.sleep(0.05)


async def test_the_phones_logout_from_bridge_is_a_logout(make_engine: MakeEngine):
    bot = "bot_0000000000b6"
    sim, events, _session = await linked(
        make_engine, bot, behaviour=Behaviour(logout_signal="logout_from_bridge")
    )
    await sim.phone_logout(bot)
    logout = await events.wait_for(EventKind.LOGOUT)
    assert "phone" in logout.data["reason"]
