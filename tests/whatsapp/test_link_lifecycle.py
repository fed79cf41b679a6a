"""A link that never lapses, in real Chromium with the simulator in place of WhatsApp Web:
the max-age recycle reconnects on the same profile with no QR and is never EXPIRED; an
expired bot wakes for a queued message (which is then sent) and for the periodic link
refresh, after which it goes back to sleep. Time moves through an injected clock; the
cleanup runs through the operator's run-now route."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from server import create_app
from tests.support import FakeClock
from tests.web.test_sessions_api import ADMIN, Api, assert_problem, history
from tests.whatsapp.test_linking_api import demo_settings, linked_bot, wait_sent, wait_state


@contextlib.asynccontextmanager
async def running_at(settings: Any, clock: FakeClock) -> AsyncIterator[Api]:
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        app.state.listening.set()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://wakeful.test") as c:
            yield Api(app, c)


async def cleanup(api: Api) -> dict[str, Any]:
    response = await api.client.post("/api/jobs/cleanup/run", headers=ADMIN)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["lastResult"]
    return result


def moves(body: dict[str, Any]) -> list[tuple[str | None, str]]:
    return [(frm, to) for frm, to, _ in history(body)]


async def test_max_age_recycles_the_browser_with_no_qr_and_no_expired(
    tmp_path: Path, clock: FakeClock
):
    # SESSION_INACTIVE_TIMEOUT=0: a quiet bot is never closed, only recycled at its age.
    settings = demo_settings(tmp_path, session_inactive_timeout="0")
    qrs: list[str] = []
    async with running_at(settings, clock) as api:
        bot = await linked_bot(api)

        async def record(session: Any, event: str, data: dict[str, Any]) -> None:
            if event == "qr" and session.id == bot:
                qrs.append(data["qr"])

        api.manager.add_listener(record)
        first = api.manager.sessions[bot].engine_session
        clock.advance(timedelta(days=6))
        assert (await cleanup(api))["removed"] == 0  # quiet for 6 days: left running
        clock.advance(timedelta(days=1, seconds=1))
        result = await cleanup(api)
        assert result["recycled"] == 1
        assert result["reasons"] == {"max_age": 1}
        body = await wait_state(api, bot, "CONNECTED")
        assert api.manager.sessions[bot].engine_session is not first  # a new browser
        assert moves(body)[-3:] == [
            ("CONNECTED", "STOPPED"),
            ("STOPPED", "CONNECTING"),
            ("CONNECTING", "CONNECTED"),
        ]
        reasons = [reason for _, _, reason in history(body)]
        assert any("running for more than 7d" in r for r in reasons)
        assert all(to != "EXPIRED" for _, to in moves(body))
        assert all(to != "SCAN_QR" for _, to in moves(body)[-3:])
        assert qrs == []  # the phone was never asked to scan again
        assert body["linkedAs"].startswith("+1555")
        text = (await api.client.get("/metrics")).text
        assert 'bot_cleanup_removed_total{reason="max_age"} 1.0' in text


async def test_an_expired_bot_wakes_for_a_message_and_for_the_link_refresh(
    tmp_path: Path, clock: FakeClock
):
    settings = demo_settings(tmp_path, link_refresh_for="1s")
    async with running_at(settings, clock) as api:
        bot = await linked_bot(api)
        clock.advance(timedelta(hours=24, seconds=1))
        assert (await cleanup(api))["reasons"] == {"inactive": 1}
        asleep = await api.get(bot)
        assert asleep["state"] == "EXPIRED"
        assert asleep["browserMemoryMb"] is None  # the browser is freed

        # A message queued for it: it wakes by itself (no QR: the link is kept) and sends.
        sent = await api.client.post(
            f"/api/sessions/{bot}/messages",
            json={"to": "+15557654321", "text": "are you there?"},
            headers=ADMIN,
        )
        assert sent.status_code == 202, sent.text
        body = await wait_state(api, bot, "CONNECTED")
        assert ("EXPIRED", "CONNECTING") in moves(body)
        woke = [r for frm, _, r in history(body) if frm == "EXPIRED"]
        assert woke == ["woken: a message was queued"]
        delivered = await wait_sent(api, bot, 1)
        assert delivered[0]["body"] == "are you there?"

        # Idle again: asleep again. When WhatsApp has not seen the link for 7 days (its
        # last sign of life was the connection: the clock stood still for its heartbeats),
        # the refresh wakes it for a while (here a second), then it sleeps again.
        clock.advance(timedelta(hours=24, seconds=1))
        assert (await cleanup(api))["reasons"] == {"inactive": 1}
        assert (await api.get(bot))["state"] == "EXPIRED"
        clock.advance(timedelta(days=5))
        assert (await cleanup(api))["woken"] == {}
        clock.advance(timedelta(days=1))
        assert (await cleanup(api))["woken"] == {"refresh": 1}
        refreshed = await wait_state(api, bot, "CONNECTED")
        assert refreshed["lastConnectedAt"] == clock.now().isoformat()
        body = await wait_state(api, bot, "EXPIRED")
        assert body["stateReason"] == "link refreshed; asleep again until the next refresh"
        tail = moves(body)[-3:]
        assert tail == [
            ("EXPIRED", "CONNECTING"),
            ("CONNECTING", "CONNECTED"),
            ("CONNECTED", "EXPIRED"),
        ]
        assert all(to != "SCAN_QR" for _, to in moves(body)[3:])

        # Its owner asking for a QR wakes it too (and is told no QR is needed).
        problem = assert_problem(
            await api.client.get(f"/api/sessions/{bot}/qr", headers=ADMIN), 404
        )
        assert "asleep (EXPIRED" in problem["detail"]
        await wait_state(api, bot, "CONNECTED")
        await asyncio.sleep(1.5)  # longer than the refresh: an owner's wake stays up
        assert (await api.get(bot))["state"] == "CONNECTED"
