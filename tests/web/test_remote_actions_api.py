"""Two nodes (two apps in-process) on one database: an owner's action through the node that
does not run the bot answers with the owner's result, and an owner that does not answer is a
504 problem that names it (on SQLite and on Postgres). What is read through the bot's page (a
received file, a number check, its groups) is read by its owner too, whichever node is asked."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from pydantic import SecretStr

from bot.engines.base import MediaFile
from config import Settings
from tests.web.appclient import running_with
from tests.web.test_sessions_api import ADMIN, Api, assert_problem, make_settings


def node_settings(data_dir: Path, database_url: str) -> Settings:
    settings = make_settings(
        data_dir,
        node_lease="2s",
        node_renew_interval="500ms",
        session_encryption_key="remote-actions-test-key-0000001",
    )
    return settings.model_copy(update={"database_url": SecretStr(database_url)})


async def seen_by(api: Api, session_id: str) -> None:
    async with asyncio.timeout(10):
        while (
            await api.client.get(f"/api/sessions/{session_id}", headers=ADMIN)
        ).status_code != 200:
            await asyncio.sleep(0.05)


async def test_an_action_through_the_other_node_reaches_the_owner_or_says_it_did_not_answer(
    tmp_path: Path, database_url: str
):
    async with (
        running_with(node_settings(tmp_path / "a", database_url)) as a,
        running_with(node_settings(tmp_path / "b", database_url)) as b,
    ):
        node_a, node_b = a.manager.node.id, b.manager.node.id
        bot_id = (await a.new_session(start=False))["id"]
        assert (await a.act(bot_id, "start")).status_code == 200
        assert (await a.wait_for(bot_id, "CONNECTED"))["node"] == node_a
        await seen_by(b, bot_id)

        # Stopped through B: A stops it, B answers with the bot as A left it.
        stopped = await b.act(bot_id, "stop")
        assert stopped.status_code == 200, stopped.text
        assert (stopped.json()["state"], stopped.json()["node"]) == ("STOPPED", None)
        assert a.manager.sessions[bot_id].state.value == "STOPPED"
        # Nobody runs it: started through B, it runs on B.
        assert (await b.act(bot_id, "start")).status_code == 200
        assert (await a.wait_for(bot_id, "CONNECTED"))["node"] == node_b
        # A start through A of a bot B runs: B's answer, a 409 naming the state.
        again = await a.act(bot_id, "start")
        assert again.status_code == 409 and again.json()["state"] == "CONNECTED", again.text

        # B stops answering (hung), keeping its lease: A says so, names B, changes nothing.
        task = b.manager._actions_task
        assert task is not None
        task.cancel()
        a.manager.actions.answer_within = timedelta(seconds=1)
        silent = await a.act(bot_id, "stop")
        assert silent.status_code == 504, silent.text
        assert silent.headers["content-type"].startswith("application/problem+json")
        problem = silent.json()
        assert problem["node"] == node_b and node_b in problem["detail"]
        assert "did not answer within 1s" in problem["detail"]
        assert (await b.get(bot_id))["state"] == "CONNECTED"


GROUP = {
    "id": "120363000000000001@g.us",
    "name": "Climbing",
    "description": "Tuesdays",
    "owner": "15550000001@c.us",
    "createdAt": 1700000000,
    "announce": False,
    "participants": [
        {"id": "15550000001@c.us", "phone": "15550000001", "lid": None, "isAdmin": True},
        {"id": "15550000002@c.us", "phone": "15550000002", "lid": None, "isAdmin": False},
    ],
}


async def test_files_number_checks_and_groups_are_read_by_the_owner_through_either_node(
    tmp_path: Path, database_url: str
):
    async with (
        running_with(node_settings(tmp_path / "a", database_url)) as a,
        running_with(node_settings(tmp_path / "b", database_url)) as b,
    ):
        bot_id = (await a.new_session(start=False))["id"]
        assert (await a.act(bot_id, "start")).status_code == 200
        assert (await a.wait_for(bot_id, "CONNECTED"))["node"] == a.manager.node.id
        await seen_by(b, bot_id)
        page = a.engine.live[bot_id]  # the bot's page, on A only
        a.engine.groups = [GROUP]
        # A file larger than one read of a socket buffer, with every byte value in it.
        photo = bytes(range(256)) * 2000
        page.media["true_15550000001@c.us_ABC"] = MediaFile(photo, "image/jpeg", "receipt.jpg")
        base = f"/api/sessions/{bot_id}"

        # The received file, through B: fetched by A's browser, the same bytes and type.
        got = await b.client.get(f"{base}/messages/true_15550000001@c.us_ABC/media", headers=ADMIN)
        assert got.status_code == 200, got.text
        assert got.content == photo and got.headers["content-type"] == "image/jpeg"
        assert "receipt.jpg" in got.headers["content-disposition"]
        assert page.media_fetches == 1
        # A message without a file: A's answer, B's 404, as on one node.
        missing = await b.client.get(
            f"{base}/messages/true_15550000001@c.us_XYZ/media", headers=ADMIN
        )
        assert "no message true_15550000001@c.us_XYZ" in assert_problem(missing, 404)["detail"]
        # A file past the owner's MEDIA_DOWNLOAD_MAX_MB never enters the row: a 502 saying so.
        reads = a.manager.actions.reads
        assert reads is not None
        reads.media_max_bytes = len(photo) - 1
        page.media["true_15550000001@c.us_BIG"] = MediaFile(photo, "image/png", None)
        big = await b.client.get(f"{base}/messages/true_15550000001@c.us_BIG/media", headers=ADMIN)
        assert "larger than MEDIA_DOWNLOAD_MAX_MB" in assert_problem(big, 502)["detail"]

        # Number checks through B: asked by A's page (its pace), stored for both nodes.
        url = f"{base}/contacts/check"
        phones = {"phones": ["+15550000001", "+15550000009"]}
        checked = await b.client.post(url, json=phones, headers=ADMIN)
        assert checked.status_code == 200, checked.text
        results = checked.json()["results"]
        assert [(r["phone"], r["onWhatsApp"], r["id"]) for r in results] == [
            ("+15550000001", True, "15550000001@c.us"),
            ("+15550000009", False, None),
        ]
        assert a.engine.exists_asked == ["15550000001", "15550000009"]
        assert b.engine.exists_asked == []
        again = await a.client.post(url, json=phones, headers=ADMIN)
        assert [r["cached"] for r in again.json()["results"]] == [True, True]
        assert a.engine.exists_asked == ["15550000001", "15550000009"]

        # Groups through B: A's page lists them.
        listed = await b.client.get(f"{base}/groups", headers=ADMIN)
        assert listed.status_code == 200, listed.text
        assert listed.json() == {"groups": [{"id": GROUP["id"], "name": "Climbing", "size": 2}]}
        one = await b.client.get(f"{base}/groups/{GROUP['id']}", headers=ADMIN)
        assert one.status_code == 200, one.text
        assert (one.json()["description"], one.json()["createdAt"]) == ("Tuesdays", 1700000000)
        assert [(p["phone"], p["isAdmin"]) for p in one.json()["participants"]] == [
            ("15550000001", True),
            ("15550000002", False),
        ]
        absent = await b.client.get(f"{base}/groups/120363000000000002@g.us", headers=ADMIN)
        assert "not in a group" in assert_problem(absent, 404)["detail"]

        # Stopped through B (by A): nobody runs it, and B says so itself; nothing is woken.
        assert (await b.act(bot_id, "stop")).status_code == 200
        stopped = await b.client.get(f"{base}/groups", headers=ADMIN)
        assert "The bot is STOPPED" in assert_problem(stopped, 409)["detail"]

        # A hung owner: B says it did not answer, naming A.
        assert (await a.act(bot_id, "start")).status_code == 200
        await a.wait_for(bot_id, "CONNECTED")
        await seen_by(b, bot_id)
        task = a.manager._actions_task
        assert task is not None
        task.cancel()
        b.manager.actions.answer_within = timedelta(seconds=1)
        silent = await b.client.get(f"{base}/groups", headers=ADMIN)
        assert assert_problem(silent, 504)["node"] == a.manager.node.id
