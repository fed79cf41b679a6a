"""Sessions that end, tokens that rotate, guessing that is slowed, pages that cannot be
framed, files only we can read. In-process app (real SQLite, real routes)."""

from __future__ import annotations

import re
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from server import create_app
from tests.support import FakeClock
from tests.web.appclient import running_with
from tests.web.test_sessions_api import ADMIN, ADMIN_TOKEN, Api, assert_problem, make_settings


async def running(settings: Any, clock: FakeClock | None = None) -> AsyncIterator[Api]:
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        app.state.listening.set()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://wakeful.test") as c:
            yield Api(app, c)


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = await client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    return await client.post("/login", data={"csrf": csrf.group(1), "token": token})


async def test_signing_out_ends_the_session_on_the_server(tmp_path: Path):
    async with running_with(make_settings(tmp_path)) as api:
        assert (await sign_in(api.client, ADMIN_TOKEN)).status_code == 303
        page = await api.client.get("/")
        assert page.status_code == 200
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert csrf is not None
        stolen = api.client.cookies["wakeful_session"]
        signed_out = await api.client.post("/logout", data={"csrf": csrf.group(1)})
        assert signed_out.status_code == 303
        # A copy of the cookie (another tab, a stolen one) no longer works.
        replay = {"wakeful_session": stolen}
        async with httpx.AsyncClient(
            transport=api.client._transport, base_url="http://wakeful.test", cookies=replay
        ) as other:
            assert (await other.get("/")).headers["location"] == "/login"
            assert_problem(await other.get("/api/sessions"), 401)
        # Signing in again gives a new session that works.
        assert (await sign_in(api.client, ADMIN_TOKEN)).status_code == 303
        assert (await api.client.get("/api/sessions")).status_code == 200


async def test_a_user_rotates_their_own_token(tmp_path: Path):
    async with running_with(make_settings(tmp_path)) as api:
        alice = await api.new_user("alice")
        bot = (await api.new_session(alice.headers, start=False))["id"]
        assert (await sign_in(api.client, alice.token)).status_code == 303
        rotated = await api.client.post("/api/me/token", headers=alice.headers)
        assert rotated.status_code == 200, rotated.text
        assert rotated.headers["cache-control"] == "no-store"
        new = rotated.json()["token"]
        assert new != alice.token and new.startswith("wk_")
        assert_problem(await api.client.get("/api/sessions", headers=alice.headers), 401)
        mine = await api.client.get("/api/sessions", headers={"Authorization": f"Bearer {new}"})
        assert [s["id"] for s in mine.json()["sessions"]] == [bot]
        # The dashboard session signed in with the old token ended with it.
        assert (await api.client.get("/")).headers["location"] == "/login"
        assert_problem(await api.client.post("/api/me/token", headers=ADMIN), 409)
        entries = (await api.client.get("/api/audit", headers=ADMIN)).json()["entries"]
        assert any(e["action"] == "user.token.rotate" for e in entries)
        assert new not in str(entries)


async def test_failed_authentications_are_limited_per_client_address(tmp_path: Path):
    clock = FakeClock(datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    settings = make_settings(tmp_path, auth_max_failures=5, auth_failure_window="60s")
    async with running_with(settings, clock=clock) as api:
        wrong = {"Authorization": "Bearer wk_guess"}
        for _ in range(5):
            assert_problem(await api.client.get("/api/sessions", headers=wrong), 401)
        limited = assert_problem(await api.client.get("/api/sessions", headers=wrong), 429)
        assert "failed" in limited["detail"]
        refused = await api.client.get("/api/sessions", headers=ADMIN)
        assert refused.status_code == 429  # a right guess looks like any other now
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        signin = await sign_in(api.client, ADMIN_TOKEN)
        assert signin.status_code == 429 and "Retry-After" in signin.headers
        clock.advance(61)
        assert (await api.client.get("/api/sessions", headers=ADMIN)).status_code == 200
        # The sign-in form counts too.
        for _ in range(5):
            assert (await sign_in(api.client, "wk_guess")).status_code == 401
        assert (await sign_in(api.client, ADMIN_TOKEN)).status_code == 429


async def test_pages_cannot_be_framed_and_carry_a_content_security_policy(tmp_path: Path):
    async with running_with(make_settings(tmp_path)) as api:
        login = await api.client.get("/login")
        assert login.headers["x-frame-options"] == "DENY"
        policy = login.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "<script>" not in login.text  # no inline script for the policy to refuse
        health = await api.client.get("/health")
        assert health.headers["x-frame-options"] == "DENY"
        assert health.headers["x-content-type-options"] == "nosniff"


async def test_the_data_dir_and_the_database_are_private(tmp_path: Path):
    data = tmp_path / "data"
    async with running_with(make_settings(data)) as api:
        await api.new_user("alice")  # something written: the WAL exists
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for name in ("wakeful.db", "wakeful.db-wal", "wakeful.db-shm"):
            path = data / name
            if name == "wakeful.db" or path.exists():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
