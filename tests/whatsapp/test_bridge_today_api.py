"""A bot against WhatsApp Web as it is today (issue 16), through the HTTP API: the real
server in-process, the real WhatsApp engine in real Chromium, the simulator in place of
web.whatsapp.com. What a user sees: the state, the alert, the message's status and id, the
webhook. Each test here failed with the bridge that waited for `window.Debug`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.engines.simulator import Behaviour, Simulator
from bot.engines.whatsapp.driver import BridgeTimings, WhatsAppEngine
from tests.support import Receiver
from tests.web.test_messages_api import eventually, message, send, wait_status
from tests.web.test_sessions_api import ADMIN, Api, assert_problem, history, running
from tests.whatsapp.test_linking_api import demo_settings

# Room for a loaded 2-core machine: a browser start and WhatsApp's module loader take longer.
WAIT = 45.0


async def wait_state(api: Api, bot: str, state: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    try:
        async with asyncio.timeout(WAIT):
            while body.get("state") != state:
                await asyncio.sleep(0.05)
                body = await api.get(bot)
    except TimeoutError:
        pytest.fail(f"{bot} never reached {state}; last seen {body.get('state')}")
    return body


def simulator_of(api: Api) -> Simulator:
    engine = api.manager.engine
    assert isinstance(engine, WhatsAppEngine) and engine.simulator is not None
    return engine.simulator


def quick_bridge(api: Api) -> None:
    """The bridge's bound for a missing module, 60 s on the real site, made short."""
    engine = api.manager.engine
    assert isinstance(engine, WhatsAppEngine)
    engine.options = replace(engine.options, bridge=BridgeTimings(give_up_ms=3000))


async def states_until(
    api: Api, bot: str, final: str, timeout: float = WAIT
) -> list[dict[str, Any]]:
    """Every document seen while polling, up to the one in `final`."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not seen or seen[-1]["state"] != final:
            seen.append(await api.get(bot))
            await asyncio.sleep(0.05)
    return seen


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Api]:
    async with running(
        demo_settings(tmp_path, max_retry_attempts=2, retry_base_delay="50ms")
    ) as api:
        quick_bridge(api)
        yield api


async def linked(api: Api, **body: Any) -> str:
    bot = str((await api.new_session(**body))["id"])
    await wait_state(api, bot, "SCAN_QR")
    await simulator_of(api).scan(bot)
    await wait_state(api, bot, "CONNECTED")
    return bot


async def test_a_long_first_sync_after_a_late_scan_is_not_cut_by_the_qr_timeout(tmp_path: Path):
    """Scaled down 30×: a QR timeout of 2 minutes is 4 s, a scan at 1:50 is 0.33 s before it,
    a first sync of 3 minutes is 6 s. The session leaves SCAN_QR the moment the phone has
    linked (authenticated), shows the sync's progress, and connects when it is done."""
    async with running(demo_settings(tmp_path, qr_timeout="4s")) as api:
        simulator_of(api).behaviour = Behaviour(sync_ms=6000)
        bot = str((await api.new_session())["id"])
        await wait_state(api, bot, "SCAN_QR")
        qr = await api.client.get(
            f"/api/sessions/{bot}/qr", headers={**ADMIN, "Accept": "application/json"}
        )
        expires = datetime.fromisoformat(qr.json()["expiresAt"])
        await asyncio.sleep(max((expires - datetime.now(UTC)).total_seconds() - 0.33, 0))
        await simulator_of(api).scan(bot)
        await wait_state(api, bot, "SYNCING")
        no_qr = assert_problem(await api.client.get(f"/api/sessions/{bot}/qr", headers=ADMIN), 404)
        assert "linked and loading its chats" in no_qr["detail"]

        seen = await states_until(api, bot, "CONNECTED")
        syncing = [d for d in seen if d["state"] == "SYNCING"]
        assert syncing, [d["state"] for d in seen]
        assert syncing[0]["stateReason"] == "linked; syncing chats"
        progress = [d["syncProgress"] for d in syncing]
        assert progress == sorted(progress) and max(progress) > 0, progress
        moves = [(frm, to) for frm, to, _ in history(seen[-1])]
        assert moves[-2:] == [("SCAN_QR", "SYNCING"), ("SYNCING", "CONNECTED")]
        assert all(to != "DISCONNECTED" for _, to in moves), moves
        assert seen[-1]["syncProgress"] is None


async def test_a_module_that_never_appears_suspends_the_bot_with_an_alert_naming_it(demo: Api):
    simulator_of(demo).behaviour = Behaviour(withhold=("WAWebCmd",))
    bot = str((await demo.new_session())["id"])
    suspended = await wait_state(demo, bot, "SUSPENDED")
    reason = suspended["stateReason"]
    assert reason.startswith("WhatsApp Web changed; the bridge needs an update: missing WAWebCmd")
    assert "2.3000.1044999999" in reason
    assert suspended["nextRetryAt"] is None  # no retry: an update of wakeful is needed
    assert suspended["health"] == "critical"
    assert demo.app.state.alerter.is_open(f"session:{bot}:bridge")
    await asyncio.sleep(1.0)
    assert (await demo.get(bot))["state"] == "SUSPENDED"


async def test_an_error_send_result_ends_dead_with_whatsapps_reason(demo: Api):
    bot = await linked(demo)
    await simulator_of(demo).set_send_result(bot, "15550009999", "ERROR_UNKNOWN")
    mid = (await send(demo, bot, to="+15550009999", text="refused")).json()["id"]
    dead = await wait_status(demo, bot, mid, "dead")
    assert dead["attempts"] == 2
    assert dead["lastError"] == "WhatsApp did not send the message: ERROR_UNKNOWN"
    assert [m.result for m in simulator_of(demo).sent(bot)] == ["ERROR_UNKNOWN"] * 2


async def test_a_sent_message_stores_whatsapps_real_id(demo: Api):
    bot = await linked(demo)
    mid = (await send(demo, bot, to="+15550001111", text="hello")).json()["id"]
    sent = await wait_status(demo, bot, mid, "sent")
    (delivered,) = simulator_of(demo).sent(bot)
    assert sent["whatsappId"] == delivered.id
    assert delivered.id.startswith("true_") and "3EB0" in delivered.id
    assert (await message(demo, bot, mid))["whatsappId"] not in ("None", "undefined", "")


async def test_the_webhook_gets_a_lid_sender_by_phone_number_and_no_status_or_revocation(
    demo: Api,
):
    with Receiver() as receiver:
        bot = await linked(demo, webhookUrl=receiver.url(), webhookEvents=["message.received"])
        sim = simulator_of(demo)
        lid = await sim.lid_of(bot, "15550002222")
        await sim.incoming(bot, "+15550002222", "my holiday", kind="status")
        await sim.incoming(bot, "+15550002222", "", kind="revoked")
        await sim.incoming(bot, "+15550002222", "hello bot")

        def received() -> list[dict[str, Any]]:
            return [r["json"]["data"] for r in receiver.requests]

        (data,) = await eventually(received, "message.received", timeout=WAIT)
        assert data["body"] == "hello bot"
        assert (data["from"], data["phone"], data["lid"]) == (
            "15550002222@c.us",
            "+15550002222",
            lid,
        )
        assert data["isGroup"] is False
        await asyncio.sleep(0.5)
        assert len(received()) == 1
