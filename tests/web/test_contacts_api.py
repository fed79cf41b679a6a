"""Number checks and groups through the API, in-process, with the scripted engine: what is
refused (and how), what an expired bot does when asked, and answers served from storage."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.web.test_sessions_api import ADMIN, assert_problem, make_settings, running


async def test_bad_checks_name_every_bad_field_and_ask_nothing(tmp_path: Path):
    async with running(make_settings(tmp_path)) as api:
        bot = (await api.new_session())["id"]
        await api.wait_for(bot, "CONNECTED")
        url = f"/api/sessions/{bot}/contacts/check"
        cases = [
            ({"phones": ["+15550000001", "call me", "+0123456789"]}, ["phones[1]", "phones[2]"]),
            ({"phones": []}, ["phones"]),
            ({"phones": "+15550000001"}, ["phones"]),
            ({"phones": ["+15550000001"], "numbers": []}, ["numbers"]),
            ({"phones": [f"+1555000{n:04d}" for n in range(21)]}, ["phones"]),
        ]
        for body, fields in cases:
            problem = assert_problem(await api.client.post(url, json=body, headers=ADMIN), 422)
            assert [e["field"] for e in problem["errors"]] == fields, problem
        too_many = await api.client.post(url, json=cases[-1][0], headers=ADMIN)
        assert "check numbers in bulk" in too_many.json()["errors"][0]["message"]
        assert api.engine.exists_asked == []


async def test_an_expired_bot_wakes_when_asked_and_stored_answers_need_no_connection(
    tmp_path: Path,
):
    async with running(make_settings(tmp_path, contact_check_gap="1ms")) as api:
        bot = (await api.new_session())["id"]
        await api.wait_for(bot, "CONNECTED")
        url = f"/api/sessions/{bot}/contacts/check"
        first = await api.client.post(url, json={"phones": ["+15550000001"]}, headers=ADMIN)
        assert first.status_code == 200, first.text
        assert first.json()["results"][0]["onWhatsApp"] is True

        await api.manager.sessions[bot].expire("cleanup: no activity for 24h")
        # A number asked before: answered from storage, and the bot sleeps on.
        known = await api.client.post(url, json={"phones": ["+15550000001"]}, headers=ADMIN)
        assert known.status_code == 200, known.text
        assert known.json()["results"][0]["cached"] is True
        assert (await api.get(bot))["state"] == "EXPIRED"
        # A new number needs WhatsApp: the bot wakes, and the caller is told to retry.
        asleep = await api.client.post(url, json={"phones": ["+15550000002"]}, headers=ADMIN)
        problem = assert_problem(asleep, 409)
        assert "asleep (EXPIRED" in problem["detail"]
        assert asleep.headers["retry-after"] == "15"
        await api.wait_for(bot, "CONNECTED")
        retried = await api.client.post(url, json={"phones": ["+15550000002"]}, headers=ADMIN)
        assert retried.status_code == 200, retried.text
        assert retried.json()["results"][0]["onWhatsApp"] is False
        assert api.engine.exists_asked == ["15550000001", "15550000002"]

        # Groups need the connection too; a bot its owner stopped is not woken for them.
        assert (await api.act(bot, "stop")).status_code == 200
        stopped = await api.client.get(f"/api/sessions/{bot}/groups", headers=ADMIN)
        assert "STOPPED" in assert_problem(stopped, 409)["detail"]
        await asyncio.sleep(0.1)
        assert (await api.get(bot))["state"] == "STOPPED"


async def test_a_check_longer_than_its_budget_answers_pending_with_retry_after(tmp_path: Path):
    async with running(make_settings(tmp_path, contact_check_gap="300ms")) as api:
        api.app.state.contacts.budget = 0.2
        bot = (await api.new_session())["id"]
        await api.wait_for(bot, "CONNECTED")
        url = f"/api/sessions/{bot}/contacts/check"
        phones = ["+15550000001", "+15559990001", "+15559990002"]
        first = await api.client.post(url, json={"phones": phones}, headers=ADMIN)
        assert first.status_code == 200, first.text
        body = first.json()
        assert 1 <= body["pending"] < 3
        waiting = [r for r in body["results"] if r["pending"]]
        assert len(waiting) == body["pending"]
        assert all(r["onWhatsApp"] is None and r["checkedAt"] is None for r in waiting)
        assert int(first.headers["retry-after"]) >= 1
        async with asyncio.timeout(10):
            while True:  # asking again finds what was asked meanwhile, and asks nothing twice
                later = await api.client.post(url, json={"phones": phones}, headers=ADMIN)
                if later.json()["pending"] == 0:
                    break
                await asyncio.sleep(0.1)
        assert [r["onWhatsApp"] for r in later.json()["results"]] == [True, False, False]
        assert "retry-after" not in later.headers
        assert api.engine.exists_asked == ["15550000001", "15559990001", "15559990002"]
