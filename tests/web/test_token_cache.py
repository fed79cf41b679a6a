"""A user's token is looked up once, then remembered for a few seconds (web/auth.py): many
requests cost one database look-up; a deleted user's or a rotated token stops working at once
all the same, and an unknown token is never remembered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support import FakeClock
from tests.web.appclient import running_with
from tests.web.test_sessions_api import ADMIN, assert_problem, make_settings
from web.auth import KNOWN_TOKEN_SECONDS


def count_lookups(app: Any) -> list[str]:
    store = app.state.auth._store
    seen: list[str] = []
    original = store.user_by_token_hash

    async def counted(digest: str) -> Any:
        seen.append(digest)
        return await original(digest)

    store.user_by_token_hash = counted
    return seen


async def test_a_token_is_looked_up_once_while_remembered(tmp_path: Path, clock: FakeClock):
    async with running_with(make_settings(tmp_path), clock=clock) as api:
        alice = await api.new_user("alice")
        lookups = count_lookups(api.app)
        for _ in range(5):
            assert (await api.client.get("/api/sessions", headers=alice.headers)).status_code == 200
        assert len(lookups) == 1
        clock.advance(KNOWN_TOKEN_SECONDS + 0.1)
        assert (await api.client.get("/api/sessions", headers=alice.headers)).status_code == 200
        assert len(lookups) == 2  # looked up again once it aged out
        stranger = {"Authorization": "Bearer wk_" + "n" * 43}
        for _ in range(3):
            assert_problem(await api.client.get("/api/sessions", headers=stranger), 401)
        assert len(lookups) == 5  # an unknown token: looked up each time, never remembered


async def test_a_deleted_user_is_refused_at_once(tmp_path: Path, clock: FakeClock):
    async with running_with(make_settings(tmp_path), clock=clock) as api:
        alice = await api.new_user("alice")
        assert (await api.client.get("/api/sessions", headers=alice.headers)).status_code == 200
        deleted = await api.client.delete(f"/api/users/{alice.id}", headers=ADMIN)
        assert deleted.status_code == 204
        assert_problem(await api.client.get("/api/sessions", headers=alice.headers), 401)
