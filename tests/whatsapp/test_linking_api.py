"""Linking through the HTTP API, in-process, with the real WhatsApp engine in real Chromium
and the simulator in place of web.whatsapp.com (demo mode): the QR in every format, the
pairing code, chat commands, and what a bot does when the phone or the browser lets it down.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.qrcodes import qr_png
from tests.support import chromium_for_tests
from tests.web.test_sessions_api import (
    ADMIN,
    Api,
    assert_problem,
    history,
    make_settings,
    running,
)

WAIT = 20.0


def demo_settings(tmp_path: Path, **values: Any) -> Any:
    return make_settings(
        tmp_path,
        **{
            "bot_engine": "whatsapp",
            "whatsapp_simulator": True,
            "chromium_path": chromium_for_tests(),
            "reconnect_base_delay": "200ms",
            "reconnect_max_delay": "1s",
            "profile_backup_delay": "1h",
            "send_rate": 6000,
            **values,
        },
    )


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Api]:
    async with running(demo_settings(tmp_path)) as api:
        yield api


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


async def simulate(api: Api, bot: str, action: str, **data: Any) -> dict[str, Any]:
    response = await api.client.post(
        f"/api/sessions/{bot}/simulator", json={"action": action, **data}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def sent(api: Api, bot: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/api/sessions/{bot}/simulator/sent", headers=ADMIN)
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


async def wait_sent(api: Api, bot: str, count: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        while len(messages) < count:
            await asyncio.sleep(0.05)
            messages = await sent(api, bot)
    return messages


async def linked_bot(api: Api) -> str:
    bot = str((await api.new_session())["id"])
    await wait_state(api, bot, "SCAN_QR")
    result = await simulate(api, bot, "scan")
    assert result["session"]["state"] == "CONNECTED", result
    return bot


async def test_the_qr_in_every_format(demo: Api):
    bot = (await demo.new_session())["id"]
    await wait_state(demo, bot, "SCAN_QR")
    url = f"/api/sessions/{bot}/qr"

    as_json = await demo.client.get(url, headers={**ADMIN, "Accept": "application/json"})
    assert as_json.status_code == 200, as_json.text
    doc = as_json.json()
    raw = doc["qr"]
    assert raw.startswith("2@") and raw.endswith(",Chrome")
    assert base64.b64decode(doc["image"]) == qr_png(raw)
    generated = datetime.fromisoformat(doc["generatedAt"])
    assert datetime.fromisoformat(doc["expiresAt"]) - generated <= timedelta(minutes=2)

    png = await demo.client.get(url, headers=ADMIN)
    assert png.headers["content-type"] == "image/png"
    assert png.headers["cache-control"] == "no-store"
    assert png.content == qr_png(raw)  # the image encodes exactly the string WhatsApp gave

    svg = await demo.client.get(url, params={"format": "svg"}, headers=ADMIN)
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.content.lstrip().startswith(b"<svg") and b"</svg>" in svg.content

    text = await demo.client.get(url, params={"format": "raw"}, headers=ADMIN)
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == raw

    bad = await demo.client.get(url, params={"format": "gif"}, headers=ADMIN)
    problem = assert_problem(bad, 422)
    assert problem["errors"][0]["field"] == "format"

    assert (await demo.act(bot, "stop")).status_code == 200
    gone = assert_problem(await demo.client.get(url, headers=ADMIN), 404)
    assert "STOPPED; start it to get a QR code" in gone["detail"]


async def test_link_by_qr_and_the_qr_route_says_so(demo: Api):
    bot = await linked_bot(demo)
    body = await demo.get(bot)
    assert body["linkedAs"].startswith("+1555")
    assert body["qrAvailable"] is False
    assert 20 < body["browserMemoryMb"] < 2000  # measured, PSS of the browser's processes
    moves = [(frm, to) for frm, to, _ in history(body)]
    assert moves[-3:] == [
        ("CONNECTING", "SCAN_QR"),
        ("SCAN_QR", "SYNCING"),
        ("SYNCING", "CONNECTED"),
    ]
    problem = assert_problem(await demo.client.get(f"/api/sessions/{bot}/qr", headers=ADMIN), 404)
    assert f"already linked as {body['linkedAs']}" in problem["detail"]


async def test_qr_rotation_is_debounced(tmp_path: Path):
    """WhatsApp here rotates the QR every 150 ms; people see at most one per QR_DEBOUNCE."""
    settings = demo_settings(tmp_path, simulator_qr_every="150ms", qr_debounce="1s")
    async with running(settings) as api:
        shown: list[tuple[float, str]] = []

        async def record(session: Any, event: str, data: dict[str, Any]) -> None:
            if event == "qr":
                shown.append((asyncio.get_running_loop().time(), data["qr"]))

        api.manager.add_listener(record)
        bot = (await api.new_session())["id"]
        await wait_state(api, bot, "SCAN_QR")
        await asyncio.sleep(3.2)
        assert 2 <= len(shown) <= 5, shown
        assert len({qr for _, qr in shown}) == len(shown), "the same QR was shown twice"
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(shown)]
        assert min(gaps) >= 0.95, gaps
        # The route serves the newest shown QR.
        raw = await api.client.get(f"/api/sessions/{bot}/qr?format=raw", headers=ADMIN)
        assert raw.text == api.manager.sessions[bot].qr


async def test_an_unscanned_qr_times_out_into_backoff_and_a_new_qr(tmp_path: Path):
    async with running(demo_settings(tmp_path, qr_timeout="2s")) as api:
        bot = (await api.new_session())["id"]
        await wait_state(api, bot, "SCAN_QR")
        down = await wait_state(api, bot, "DISCONNECTED")
        assert down["stateReason"] == "QR code not scanned within 2s"
        assert down["reconnectAttempts"] == 1
        assert down["nextRetryAt"] is not None
        again = await wait_state(api, bot, "SCAN_QR")
        assert again["qrAvailable"] is True


async def test_pairing_code_instead_of_a_scan(demo: Api):
    bot = (await demo.new_session())["id"]
    await wait_state(demo, bot, "SCAN_QR")
    url = f"/api/sessions/{bot}/pair"
    for phone in ("12", "not a number", "0123456789", "+1234567890123456"):
        problem = assert_problem(
            await demo.client.post(url, json={"phone": phone}, headers=ADMIN), 422
        )
        assert problem["errors"][0]["field"] == "phone", phone
        assert "international form" in problem["errors"][0]["message"]
    assert_problem(await demo.client.post(url, json={}, headers=ADMIN), 422)

    response = await demo.client.post(url, json={"phone": "+1 (555) 765-4321"}, headers=ADMIN)
    assert response.status_code == 200, response.text
    code = response.json()
    assert len(code["code"]) == 8 and code["code"].isalnum()
    assert code["display"] == f"{code['code'][:4]}-{code['code'][4:]}"
    assert code["phone"] == "+15557654321"

    wrong = await demo.client.post(
        f"/api/sessions/{bot}/simulator", json={"action": "pair", "code": "ZZZZZZZZ"}, headers=ADMIN
    )
    assert "wrong pairing code" in assert_problem(wrong, 409)["detail"]
    linked = await simulate(demo, bot, "pair", code=code["code"], phone="+15557654321")
    assert linked["session"]["state"] == "CONNECTED"
    assert linked["session"]["linkedAs"] == "+15557654321"

    again = assert_problem(
        await demo.client.post(url, json={"phone": "+15557654321"}, headers=ADMIN), 409
    )
    assert "SCAN_QR" in again["detail"]


async def test_ping_and_status_answer_in_the_chat(demo: Api):
    bot = await linked_bot(demo)
    await simulate(demo, bot, "message", **{"from": "+15550001234", "body": "!ping"})
    (pong,) = await wait_sent(demo, bot, 1)
    # The sender's account is LID-migrated: the answer goes to its LID chat.
    simulator = demo.manager.engine.simulator  # type: ignore[union-attr]
    lid = await simulator.lid_of(bot, "15550001234")
    assert (pong["to"], pong["body"]) == (lid, "pong")

    await simulate(demo, bot, "message", **{"from": "+15550009999", "body": "  !STATUS "})
    status = (await wait_sent(demo, bot, 2))[1]
    assert status["to"] == await simulator.lid_of(bot, "15550009999")
    assert "CONNECTED" in status["body"]
    assert "connected for 0m" in status["body"]
    assert "keep-alive: off (no public URL is known" in status["body"]

    await simulate(demo, bot, "message", **{"from": "+15550001234", "body": "hello"})
    await asyncio.sleep(1.0)
    assert len(await sent(demo, bot)) == 2, "an ordinary message got an answer"


async def test_commands_can_be_turned_off(tmp_path: Path):
    async with running(demo_settings(tmp_path, bot_commands=False)) as api:
        bot = await linked_bot(api)
        await simulate(api, bot, "message", **{"from": "+15550001234", "body": "!ping"})
        await asyncio.sleep(1.5)
        assert await sent(api, bot) == []
        # The message still counts as activity.
        assert (await api.get(bot))["lastActivity"] is not None


async def test_phone_logout_and_owner_logout_delete_the_profile(demo: Api, tmp_path: Path):
    by_phone = await linked_bot(demo)
    profile = tmp_path / "profiles" / by_phone
    assert profile.is_dir()
    result = await simulate(demo, by_phone, "logout")
    assert result["session"]["state"] == "LOGGED_OUT"
    assert "logged out from the phone" in result["session"]["stateReason"]
    assert result["session"]["linkedAs"] is None
    assert not profile.exists()
    # A new link needs a new QR.
    assert (await demo.act(by_phone, "start")).status_code == 200
    await wait_state(demo, by_phone, "SCAN_QR")

    by_owner = await linked_bot(demo)
    response = await demo.act(by_owner, "logout")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "LOGGED_OUT"
    assert not (tmp_path / "profiles" / by_owner).exists()


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ("conflict", "conflict: WhatsApp Web was opened in another browser"),
        # One process a bot (BOT_SINGLE_PROCESS): the page's crash ends the browser.
        ("crash", "crash: the browser ended (closed, or its page crashed)"),
        ("drop", "socket state TIMEOUT"),
    ],
)
async def test_the_bot_recovers_through_backoff_without_a_new_qr(
    demo: Api, action: str, reason: str
):
    bot = await linked_bot(demo)
    await simulate(demo, bot, action)
    await wait_state(demo, bot, "DISCONNECTED")
    back = await wait_state(demo, bot, "CONNECTED")
    moves = history(back)
    assert ("CONNECTED", "DISCONNECTED", reason) in moves
    after = moves[[m[2] for m in moves].index(reason) :]
    assert all(to != "SCAN_QR" for _, to, _ in after), after
    # And it works: a command is answered after the recovery.
    await simulate(demo, bot, "message", **{"from": "+15550001234", "body": "!ping"})
    assert (await wait_sent(demo, bot, 1))[0]["body"] == "pong"


async def test_simulator_controls_exist_only_in_demo_mode(tmp_path: Path):
    async with running(make_settings(tmp_path)) as api:  # the scripted engine, no simulator
        bot = (await api.new_session())["id"]
        problem = assert_problem(
            await api.client.post(
                f"/api/sessions/{bot}/simulator", json={"action": "scan"}, headers=ADMIN
            ),
            404,
        )
        assert "WHATSAPP_SIMULATOR=1" in problem["detail"]


async def test_simulator_actions_are_validated(demo: Api):
    bot = (await demo.new_session())["id"]
    url = f"/api/sessions/{bot}/simulator"
    bad = assert_problem(await demo.client.post(url, json={"action": "fly"}, headers=ADMIN), 422)
    assert bad["errors"][0]["field"] == "action"
    missing = assert_problem(
        await demo.client.post(url, json={"action": "message"}, headers=ADMIN), 422
    )
    assert [e["field"] for e in missing["errors"]] == ["body"]
    await wait_state(demo, bot, "SCAN_QR")
    early = await demo.client.post(url, json={"action": "message", "body": "hi"}, headers=ADMIN)
    assert "not connected" in assert_problem(early, 409)["detail"]
