"""Each user's share of the outbox (429 with Retry-After) and the retention job that keeps
the database the size of the recent past. In-process app, real SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, insert, select

from bot.outbox import outbox_messages
from bot.store import audit_log, session_transitions
from bot.webhooks import webhook_deliveries
from server import create_app
from tests.support import FakeClock
from tests.web.appclient import running_with
from tests.web.test_sessions_api import ADMIN, Api, assert_problem, make_settings

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


async def running(settings: Any, clock: FakeClock) -> AsyncIterator[Api]:
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        app.state.listening.set()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://wakeful.test") as c:
            yield Api(app, c)


async def send(api: Api, bot: str, headers: dict[str, str], n: int) -> httpx.Response:
    return await api.client.post(
        f"/api/sessions/{bot}/messages",
        json={"to": "+15550001111", "text": f"message {n}"},
        headers=headers,
    )


async def test_a_user_past_the_queued_bound_gets_429_and_others_are_not_affected(
    tmp_path: Path,
):
    clock = FakeClock(T0)
    settings = make_settings(
        tmp_path, max_queued_messages_per_user=5, message_accept_rate=0, send_rate=0
    )
    async with running_with(settings, clock=clock) as api:
        alice, bob = await api.new_user("alice"), await api.new_user("bob")
        # Bots not started: nothing is sent, everything stays queued.
        a1 = (await api.new_session(alice.headers, start=False))["id"]
        a2 = (await api.new_session(alice.headers, start=False))["id"]
        b1 = (await api.new_session(bob.headers, start=False))["id"]
        for n in range(5):
            assert (await send(api, (a1, a2)[n % 2], alice.headers, n)).status_code == 202
        refused = await send(api, a1, alice.headers, 5)
        body = assert_problem(refused, 429)
        assert "MAX_QUEUED_MESSAGES_PER_USER=5" in body["detail"]
        assert int(refused.headers["retry-after"]) > 0
        assert (await send(api, b1, bob.headers, 0)).status_code == 202
        listed = await api.client.get(f"/api/sessions/{a1}/messages", headers=alice.headers)
        assert listed.json()["total"] == 3  # the refused one was not stored


async def test_the_accept_rate_refills_with_time(tmp_path: Path):
    clock = FakeClock(T0)
    settings = make_settings(
        tmp_path, max_queued_messages_per_user=0, message_accept_rate=3, send_rate=0
    )
    async with running_with(settings, clock=clock) as api:
        alice = await api.new_user("alice")
        bot = (await api.new_session(alice.headers, start=False))["id"]
        for n in range(3):
            assert (await send(api, bot, alice.headers, n)).status_code == 202
        refused = await send(api, bot, alice.headers, 3)
        assert "MESSAGE_ACCEPT_RATE=3" in assert_problem(refused, 429)["detail"]
        assert refused.headers["retry-after"] == "20"  # one message every 60/3 s
        clock.advance(20)
        assert (await send(api, bot, alice.headers, 4)).status_code == 202
        assert (await send(api, bot, alice.headers, 5)).status_code == 429


async def count(api: Api, table: Any) -> int:
    async with api.app.state.db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_the_retention_job_prunes_what_is_finished_and_old(tmp_path: Path):
    clock = FakeClock(T0)
    settings = make_settings(
        tmp_path,
        message_retention="30d",
        delivery_retention="14d",
        audit_retention="90d",
        history_retention="30d",
    )
    async with running_with(settings, clock=clock) as api:
        bot = (await api.new_session(start=False))["id"]

        async def retention_runs() -> int:
            jobs = (await api.client.get("/api/jobs", headers=ADMIN)).json()
            found = [j for j in jobs["jobs"] if j["name"] == "retention"]
            return int(found[0]["runs"]) if found and found[0]["lastRunAt"] else 0

        # The job's first run at start (nothing to prune yet) ends before the rows go in:
        # on a loaded machine it could still be running when the test asks for its own.
        async with asyncio.timeout(30):
            while await retention_runs() < 1:
                await asyncio.sleep(0.05)
        old, recent = T0 - timedelta(days=100), T0 - timedelta(days=1)
        rows = []
        for i, (status, at) in enumerate(
            [("sent", old), ("dead", old), ("queued", old), ("sent", recent)]
        ):
            rows.append(
                {
                    "id": f"msg_keep{i:04d}",
                    "session_id": bot,
                    "to": "+1555",
                    "text": "x",
                    "status": status,
                    "attempts": 1,
                    "created_at": at,
                    "due_at": at,
                    "updated_at": at,
                }
            )
        deliveries = [
            {
                "id": f"dlv_keep{i:04d}",
                "session_id": bot,
                "target": "bot",
                "url": "http://127.0.0.1:9/hook",
                "event": "qr",
                "payload": "{}",
                "status": status,
                "attempts": 1,
                "created_at": at,
                "due_at": at,
            }
            for i, (status, at) in enumerate([("delivered", old), ("dead", old), ("queued", old)])
        ]
        async with api.app.state.db.engine.begin() as conn:
            await conn.execute(insert(outbox_messages), rows)
            await conn.execute(insert(webhook_deliveries), deliveries)
            await conn.execute(
                insert(audit_log),
                [{"at": old, "actor": "admin", "action": "old", "target": None, "detail": None}],
            )
            await conn.execute(
                session_transitions.update()
                .where(session_transitions.c.session_id == bot)
                .values(at=old)
            )
            await conn.execute(
                insert(session_transitions),
                [
                    {"session_id": bot, "at": old, "from_state": "IDLE", "to_state": "STOPPED"},
                    {"session_id": bot, "at": old, "from_state": "STOPPED", "to_state": "IDLE"},
                ],
            )
        jobs = (await api.client.get("/api/jobs", headers=ADMIN)).json()
        assert "retention" in str(jobs)
        ran = await api.client.post("/api/jobs/retention/run", headers=ADMIN)
        assert ran.status_code == 200, ran.text
        result = ran.json()
        assert "'messages': 2" in str(result) or '"messages": 2' in ran.text, ran.text
        async with api.app.state.db.engine.connect() as conn:
            left = (
                await conn.execute(select(outbox_messages.c.status, outbox_messages.c.updated_at))
            ).all()
            kept_deliveries = (await conn.execute(select(webhook_deliveries.c.status))).all()
            history = (
                await conn.execute(
                    select(session_transitions.c.to_state).where(
                        session_transitions.c.session_id == bot
                    )
                )
            ).all()
        assert sorted(r.status for r in left) == ["queued", "sent"]
        assert [r.status for r in kept_deliveries] == ["queued"]
        actions = [e["action"] for e in (await api.audit())]
        assert "old" not in actions and "session.create" in actions
        # The latest transition (the bot's current state) is kept, however old.
        assert [r.to_state for r in history] == ["IDLE"]
        assert (await api.get(bot))["state"] == "IDLE"
