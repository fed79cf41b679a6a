"""The WhatsApp driver in real Chromium against the simulator: the events a bot's page
reports, the calls into it, and what happens when its browser dies."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import psutil
import pytest

from bot.engines.base import EngineError, EventKind
from bot.engines.simulator import SimulatorError
from bot.engines.whatsapp import browser
from bot.engines.whatsapp.browser import browser_flags, find_browser_process
from tests.whatsapp.conftest import Events, MakeEngine

QR_PAYLOAD = re.compile(r"^2@[A-Za-z0-9+/=]+,[A-Za-z0-9+/=]{44},[A-Za-z0-9+/=]{44},[^,]+,Chrome$")


async def test_link_by_qr_then_ready_with_the_linked_number(make_engine: MakeEngine):
    engine = make_engine()
    events = Events()
    session = await engine.start("bot_000000000001", events)
    qr = await events.wait_for(EventKind.QR)
    # The QR carries the ref and the device's keys, as WhatsApp's phone app expects.
    assert QR_PAYLOAD.match(qr.data["qr"]), qr.data
    status = await engine.simulator.status("bot_000000000001")  # type: ignore[union-attr]
    assert qr.data["qr"].startswith(status["ref"] + ",")
    assert (await session.heartbeat()).ok is False

    phone = await engine.simulator.scan("bot_000000000001")  # type: ignore[union-attr]
    ready = await events.wait_for(EventKind.READY)
    assert ready.data["me"] == f"+{phone}"
    assert events.of(EventKind.AUTHENTICATED)
    beat = await session.heartbeat()
    assert beat.ok and beat.state == "CONNECTED"


async def test_the_qr_rotates_and_each_new_one_is_reported_once(make_engine: MakeEngine):
    engine = make_engine(qr_every=0.3)
    events = Events()
    await engine.start("bot_000000000002", events)
    await events.wait_for(EventKind.QR, count=4)
    codes = [e.data["qr"] for e in events.of(EventKind.QR)]
    assert len(set(codes)) == len(codes), "a QR was reported twice"
    # After six refs WhatsApp idles; the bridge asks for more, as a person would click.
    await events.wait_for(EventKind.QR, count=8, timeout=10)
    states = [e.data["state"] for e in events.of(EventKind.STATE)]
    assert "UNPAIRED_IDLE" in states


async def test_pairing_code_links_without_a_camera(make_engine: MakeEngine):
    engine = make_engine()
    events = Events()
    session = await engine.start("bot_000000000003", events)
    await events.wait_for(EventKind.QR)
    code = await session.request_pair_code("15557654321")
    assert re.fullmatch(r"[A-Z0-9]{8}", code)
    assert (await events.wait_for(EventKind.PAIR_CODE)).data["code"] == code
    sim = engine.simulator
    assert sim is not None
    with pytest.raises(SimulatorError, match="wrong pairing code"):
        await sim.enter_code("bot_000000000003", "WRONG123")
    await sim.enter_code("bot_000000000003", code.lower())
    await events.wait_for(EventKind.READY)


async def test_messages_in_and_out(make_engine: MakeEngine):
    engine = make_engine()
    sim = engine.simulator
    assert sim is not None
    events = Events()
    session = await engine.start("bot_000000000004", events)
    await events.wait_for(EventKind.QR)
    with pytest.raises(EngineError, match="not connected"):
        await session.send_text("+15550001111", "too early")
    assert sim.sent() == []

    await sim.scan("bot_000000000004")
    await events.wait_for(EventKind.READY)
    message_id = await session.send_text("+1 555 000 1111".replace(" ", ""), "hello there")
    (sent,) = sim.sent("bot_000000000004")
    # The contact's account is LID-migrated: WhatsApp redirects the number to its LID chat.
    lid = await sim.lid_of("bot_000000000004", "15550001111")
    assert (sent.id, sent.to, sent.body) == (message_id, lid, "hello there")

    await sim.incoming("bot_000000000004", "+15550002222", "hi bot")
    incoming = await events.wait_for(EventKind.MESSAGE)
    assert incoming.data["from"] == "15550002222@c.us"
    assert incoming.data["body"] == "hi bot"
    assert incoming.data["id"] and isinstance(incoming.data["timestamp"], int)
    # The bot's own message is not reported back as incoming.
    assert len(events.of(EventKind.MESSAGE)) == 1


async def test_an_encrypted_message_is_reported_once_decrypted(make_engine: MakeEngine):
    engine = make_engine()
    sim = engine.simulator
    assert sim is not None
    events = Events()
    await engine.start("bot_000000000014", events)
    await events.wait_for(EventKind.QR)
    await sim.scan("bot_000000000014")
    await events.wait_for(EventKind.READY)
    await sim.incoming("bot_000000000014", "+15550002222", "secret hello", encrypted=True)
    message = await events.wait_for(EventKind.MESSAGE)
    assert (message.data["body"], message.data["type"]) == ("secret hello", "chat")
    await asyncio.sleep(0.3)
    assert len(events.of(EventKind.MESSAGE)) == 1


async def test_a_pairing_code_survives_the_qr_going_idle(make_engine: MakeEngine):
    """WhatsApp stops rotating QRs after a few; a new QR would void a code being typed."""
    engine = make_engine(qr_every=0.15)
    sim = engine.simulator
    assert sim is not None
    events = Events()
    session = await engine.start("bot_000000000015", events)
    await events.wait_for(EventKind.QR)
    code = await session.request_pair_code("15557654321")
    async with asyncio.timeout(10):
        while (await sim.status("bot_000000000015"))["state"] != "UNPAIRED_IDLE":
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the bridge would have asked for a new QR by now
    assert (await sim.status("bot_000000000015"))["pairingCode"] == code
    await sim.enter_code("bot_000000000015", code)
    await events.wait_for(EventKind.READY)


async def test_a_restart_on_the_same_profile_needs_no_new_qr(make_engine: MakeEngine):
    engine = make_engine()
    events = Events()
    session = await engine.start("bot_000000000005", events)
    await events.wait_for(EventKind.QR)
    await engine.simulator.scan("bot_000000000005")  # type: ignore[union-attr]
    await events.wait_for(EventKind.READY)
    await session.stop()

    again = Events()
    await engine.start("bot_000000000005", again)
    await again.wait_for(EventKind.READY)
    assert again.of(EventKind.QR) == []


async def test_phone_logout_is_reported_and_the_link_is_gone(make_engine: MakeEngine):
    engine = make_engine()
    sim = engine.simulator
    assert sim is not None
    events = Events()
    await engine.start("bot_000000000006", events)
    await events.wait_for(EventKind.QR)
    await sim.scan("bot_000000000006")
    await events.wait_for(EventKind.READY)
    await sim.phone_logout("bot_000000000006")
    logout = await events.wait_for(EventKind.LOGOUT)
    assert "phone" in logout.data["reason"]
    # The page reloads unpaired and asks for a QR again.
    await events.wait_for(EventKind.QR, count=2)


async def test_conflict_and_drop_are_reported_as_socket_states(make_engine: MakeEngine):
    engine = make_engine()
    sim = engine.simulator
    assert sim is not None
    events = Events()
    await engine.start("bot_000000000007", events)
    await events.wait_for(EventKind.QR)
    await sim.scan("bot_000000000007")
    await events.wait_for(EventKind.READY)
    await sim.conflict("bot_000000000007")
    await sim.drop("bot_000000000007")
    await events.wait_for(EventKind.STATE, count=1)
    async with asyncio.timeout(5):
        while "TIMEOUT" not in [e.data["state"] for e in events.of(EventKind.STATE)]:
            await asyncio.sleep(0.05)
    states = [e.data["state"] for e in events.of(EventKind.STATE)]
    assert states.index("CONFLICT") < states.index("TIMEOUT")


@pytest.mark.parametrize(
    ("single_process", "reason"),
    [
        (True, "the browser ended (closed, or its page crashed)"),
        (False, "the page crashed"),  # BOT_SINGLE_PROCESS=false: the page alone
    ],
)
async def test_a_crashed_page_is_a_crash_event(
    make_engine: MakeEngine, single_process: bool, reason: str
):
    engine = make_engine(flags=browser_flags(single_process=single_process))
    events = Events()
    await engine.start("bot_000000000008", events)
    await events.wait_for(EventKind.QR)
    await engine.simulator.crash("bot_000000000008")  # type: ignore[union-attr]
    crash = await events.wait_for(EventKind.CRASH)
    assert crash.data["reason"] == reason


async def test_a_browser_killed_from_outside_is_a_crash_and_the_next_start_works(
    make_engine: MakeEngine,
):
    engine = make_engine()
    events = Events()
    session = await engine.start("bot_000000000009", events)
    await events.wait_for(EventKind.QR)
    await engine.simulator.scan("bot_000000000009")  # type: ignore[union-attr]
    await events.wait_for(EventKind.READY)
    browser = session.browser
    assert browser is not None and browser.is_running()
    browser.kill()
    crash = await events.wait_for(EventKind.CRASH)
    assert "closed" in crash.data["reason"]
    await session.stop()
    # A killed Chromium leaves its Singleton* locks behind (the headless shell keeps none:
    # plant one), pointing at a process that is gone; the next launch removes them.
    profile = engine.profile_dir("bot_000000000009")
    lock = profile / "SingletonLock"
    if not lock.is_symlink():
        lock.symlink_to("some-other-host-12345")
    stale = os.readlink(lock)
    again = Events()
    await engine.start("bot_000000000009", again)
    await again.wait_for(EventKind.READY)
    assert again.of(EventKind.QR) == []
    # A live Chromium may have made its own lock, pointing at itself.
    assert not lock.is_symlink() or os.readlink(lock) != stale


async def test_an_orphaned_browser_on_the_profile_is_killed_before_launch(
    make_engine: MakeEngine,
):
    """A browser that outlived its server (hung when the server was killed) must not share
    the profile with the next one."""
    first = make_engine()
    events = Events()
    session = await first.start("bot_000000000010", events)
    await events.wait_for(EventKind.QR)
    orphan = session.browser
    assert orphan is not None
    second = make_engine()  # a new process's engine, the old browser still running
    again = Events()
    await second.start("bot_000000000010", again)
    await again.wait_for(EventKind.QR)
    psutil.wait_procs([orphan], timeout=5)
    assert not orphan.is_running()
    live = find_browser_process(second.profile_dir("bot_000000000010"))
    assert live is not None and live.pid != orphan.pid


async def test_the_memory_watchdog_recycles_a_browser_over_the_limit(make_engine: MakeEngine):
    engine = make_engine(max_memory_mb=1)
    events = Events()
    session = await engine.start("bot_000000000011", events)
    await events.wait_for(EventKind.QR)
    assert await engine.memory_check_once() == ["bot_000000000011"]
    crash = await events.wait_for(EventKind.CRASH)
    assert "BOT_MAX_MEMORY_MB=1" in crash.data["reason"]
    assert session.memory_bytes > 20 * 1024 * 1024  # a real measurement of a real browser


def test_chromium_is_found_in_the_documented_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    shell, full = tmp_path / "chromium-headless-shell", tmp_path / "chromium"
    monkeypatch.setattr(browser, "DEBIAN_HEADLESS_SHELL", shell)
    monkeypatch.setattr(browser, "DEBIAN_CHROMIUM", full)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert browser.find_chromium(None) == browser.ChromiumChoice(None, "Playwright's own browser")
    full.touch()
    assert browser.find_chromium(None).path == full
    shell.touch()
    assert browser.find_chromium(None).path == shell
    chosen = tmp_path / "my-chrome"
    assert browser.find_chromium(chosen) == browser.ChromiumChoice(chosen, "CHROMIUM_PATH")


async def test_the_browser_wakeful_picks_by_itself_links_a_bot(make_engine: MakeEngine):
    """CI installs the headless shell too: this is the browser a Docker deployment runs."""
    choice = browser.find_chromium(None)
    assert choice.path is not None, "no Chromium found without CHROMIUM_PATH"
    engine = make_engine(chromium=choice)
    events = Events()
    session = await engine.start("bot_000000000013", events)
    await events.wait_for(EventKind.QR)
    await engine.simulator.scan("bot_000000000013")  # type: ignore[union-attr]
    await events.wait_for(EventKind.READY)
    assert session.browser is not None
    assert Path(session.browser.exe()).resolve() == choice.path.resolve()
    user_agent = await session.page.evaluate("navigator.userAgent")  # type: ignore[union-attr]
    assert "Headless" not in user_agent and "Chrome/" in user_agent
    assert await session.page.evaluate("navigator.webdriver") is False  # type: ignore[union-attr]


async def test_images_fonts_and_avatars_are_refused_by_chromium_itself(make_engine: MakeEngine):
    """BLOCKED_URLS never leave the page (CDP Network.setBlockedURLs); everything else still
    does (here: to the simulator, which answers 404 for what it does not serve)."""
    engine = make_engine()
    events = Events()
    session = await engine.start("bot_000000000001", events)
    await events.wait_for(EventKind.QR)
    outcome = """async (url) => {
        try { return String((await fetch(url)).status); } catch (e) { return "refused"; }
    }"""
    page = session.page
    assert page is not None
    for blocked in ("https://web.whatsapp.com/img/avatar.png", "https://web.whatsapp.com/f.woff2"):
        assert await page.evaluate(outcome, blocked) == "refused", blocked
    assert await page.evaluate(outcome, "https://web.whatsapp.com/__sim/nothing.json") == "404"
