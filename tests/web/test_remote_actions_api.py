"""Two nodes (two apps in-process) on one database: an owner's action through the node that
does not run the bot answers with the owner's result, and an owner that does not answer is a
504 problem that names it (on SQLite and on Postgres)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from pydantic import SecretStr

from config import Settings
from tests.web.appclient import running_with
from tests.web.test_sessions_api import ADMIN, Api, make_settings


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
