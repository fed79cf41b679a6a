"""Number checks and groups through the HTTP API, in real Chromium with the real driver and
bridge, and the simulator in place of WhatsApp Web (which unlinks a device that checks
numbers in bulk, and keeps its groups' members by LID)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bot.engines.simulator import Behaviour, Simulator
from tests.web.test_sessions_api import ADMIN, Api, assert_problem, running
from tests.whatsapp.test_linking_api import demo_settings, linked_bot, wait_state


def simulator(api: Api) -> Simulator:
    found = getattr(api.manager.engine, "simulator", None)
    assert isinstance(found, Simulator)
    return found


async def check(api: Api, bot: str, *phones: str, headers: dict[str, str] = ADMIN) -> Any:
    return await api.client.post(
        f"/api/sessions/{bot}/contacts/check", json={"phones": list(phones)}, headers=headers
    )


async def test_a_number_check_is_paced_answered_and_not_asked_twice(tmp_path: Path):
    settings = demo_settings(tmp_path, contact_check_gap="400ms")
    async with running(settings) as api:
        sim = simulator(api)
        # This WhatsApp unlinks a device that checks more than 3 numbers within a second.
        sim.behaviour = Behaviour(exists_limit=3, exists_window_ms=1000)
        api.app.state.contacts.budget = 60  # this request waits for every answer
        bot = await linked_bot(api)
        await sim.set_registered(bot, ["+15550000001", "+15550000002", "+15550000003"])
        started = time.monotonic()
        response = await check(
            api,
            bot,
            "+1 555 000 0001",
            "+15559990000",
            "15550000002",
            "+15550000003",
            "+15559990001",
        )
        took = time.monotonic() - started
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["phone"] for r in results] == [
            "+15550000001",
            "+15559990000",
            "+15550000002",
            "+15550000003",
            "+15559990001",
        ]
        assert [r["onWhatsApp"] for r in results] == [True, False, True, True, False]
        assert results[0]["id"] == "15550000001@c.us"
        assert results[0]["lid"] == await sim.lid_of(bot, "15550000001")
        assert results[1]["id"] is None and results[1]["lid"] is None
        assert not any(r["cached"] or r["pending"] for r in results)
        assert response.json()["pending"] == 0
        assert await sim.exists_queries(bot) == 5
        assert took >= 4 * 0.4  # five questions, at least the gap apart
        assert (await api.get(bot))["state"] == "CONNECTED"  # not unlinked for bulk checks

        # Asked again (with one new number): the known ones come from the database.
        await sim.set_registered(bot, ["+15550000001", "+15559990002"])
        again = await check(api, bot, "+15550000001", "+15559990000", "+15559990002")
        assert again.status_code == 200, again.text
        answers = again.json()["results"]
        assert [(r["onWhatsApp"], r["cached"]) for r in answers] == [
            (True, True),
            (False, True),
            (True, False),
        ]
        assert answers[0]["checkedAt"] == results[0]["checkedAt"]
        assert await sim.exists_queries(bot) == 6


async def test_unpaced_checks_get_the_simulated_device_unlinked(tmp_path: Path):
    """The simulator can fail the pacing: checks 1 ms apart get the device logged out, as
    WhatsApp does to accounts that check numbers in bulk."""
    settings = demo_settings(tmp_path, contact_check_gap="1ms")
    async with running(settings) as api:
        simulator(api).behaviour = Behaviour(exists_limit=3, exists_window_ms=60_000)
        bot = await linked_bot(api)
        response = await check(
            api, bot, "+15559990000", "+15559990001", "+15559990002", "+15559990003"
        )
        problem = assert_problem(response, 502)
        assert "already checked are stored" in problem["detail"]
        body = await wait_state(api, bot, "LOGGED_OUT")
        assert "logged out from the phone" in body["stateReason"]
        # The three answered before it are kept: asking them again asks nothing.
        kept = await check(api, bot, "+15559990000", "+15559990001", "+15559990002")
        assert kept.status_code == 200, kept.text
        assert all(r["cached"] for r in kept.json()["results"])


async def test_groups_with_their_members(tmp_path: Path):
    async with running(demo_settings(tmp_path)) as api:
        bot = await linked_bot(api)
        me = (await api.get(bot))["linkedAs"]
        sim = simulator(api)
        second = await sim.add_group(bot, "Shop staff", ["+15550000002"], admins=("+15550000002",))
        listed = await api.client.get(f"/api/sessions/{bot}/groups", headers=ADMIN)
        assert listed.status_code == 200, listed.text
        groups = {g["name"]: g for g in listed.json()["groups"]}
        assert set(groups) == {"Demo group", "Shop staff"}
        assert groups["Demo group"]["size"] == 4  # the bot and three members
        assert groups["Shop staff"] == {"id": second, "name": "Shop staff", "size": 2}

        demo_id = groups["Demo group"]["id"]
        one = await api.client.get(f"/api/sessions/{bot}/groups/{demo_id}", headers=ADMIN)
        assert one.status_code == 200, one.text
        group = one.json()
        assert group["description"] == "A group of the WhatsApp simulator"
        assert group["owner"] == f"{me.lstrip('+')}@c.us"
        members = {m["phone"]: m for m in group["participants"]}
        assert set(members) == {me, "+15550000001", "+15550000002", None}
        admin = members["+15550000001"]
        assert admin["id"] == "15550000001@c.us"
        assert admin["lid"] == await sim.lid_of(bot, "15550000001")
        assert (admin["isAdmin"], admin["isSuperAdmin"]) == (True, False)
        assert members[me]["isSuperAdmin"] is True
        assert members["+15550000002"]["isAdmin"] is False
        hidden = members[None]  # WhatsApp does not tell this member's number: its LID
        assert hidden["id"].endswith("@lid") and hidden["id"] == hidden["lid"]

        missing = await api.client.get(
            f"/api/sessions/{bot}/groups/120363000000000000@g.us", headers=ADMIN
        )
        assert "not in a group" in assert_problem(missing, 404)["detail"]
        bad = await api.client.get(f"/api/sessions/{bot}/groups/not-a-group", headers=ADMIN)
        assert_problem(bad, 404)

        # Owner or admin only: another user's token sees no such bot.
        other = await api.new_user()
        for path in (f"/groups/{demo_id}", "/groups"):
            hidden_bot = await api.client.get(f"/api/sessions/{bot}{path}", headers=other.headers)
            assert "no bot session" in assert_problem(hidden_bot, 404)["detail"]
        denied = await check(api, bot, "+15550000001", headers=other.headers)
        assert_problem(denied, 404)
