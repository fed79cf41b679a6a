"""The users, sessions and jobs APIs in-process (httpx.ASGITransport, lifespan running), with
the scripted engine (`tests.engines:auto_engine`): a started bot goes CONNECTING → SCAN_QR →
CONNECTED by itself within ~100 ms.

The auth matrix is generated from `/openapi.json`, so a new route cannot escape it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route

from bot.manager import BotManager
from config import Settings, load_settings
from server import create_app
from tests.engines import ScriptedEngine

ADMIN_TOKEN = "admin-token-for-tests-0001"
PROBLEM_JSON = "application/problem+json"
WAIT = 5.0
MISSING = {"session_id": "bot_000000000000", "user_id": "usr_000000000000", "name": "no-job"}

_names = itertools.count(1)


def unique(prefix: str = "bot") -> str:
    return f"{prefix}-{next(_names)}"


def make_settings(tmp_path: Path, **values: Any) -> Settings:
    values = {
        "admin_token": ADMIN_TOKEN,
        "bot_engine": "tests.engines:auto_engine",
        "keep_alive_start_delay": "1h",
        "max_sessions_per_user": 2,
        "max_body_bytes": 2048,
        **values,
    }
    return load_settings(_env_file=None, data_dir=tmp_path, database_url=None, **values)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def api_key(token: str) -> dict[str, str]:
    return {"X-Api-Key": token}


ADMIN = bearer(ADMIN_TOKEN)


@dataclass
class User:
    id: str
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


@dataclass
class Api:
    app: Starlette
    client: httpx.AsyncClient

    @property
    def manager(self) -> BotManager:
        found: BotManager = self.app.state.manager
        return found

    @property
    def engine(self) -> ScriptedEngine:
        engine = self.manager.engine
        assert isinstance(engine, ScriptedEngine)
        return engine

    async def new_user(self, name: str | None = None) -> User:
        response = await self.client.post("/api/users", json={"name": name or unique("user")})
        assert response.status_code == 201, response.text
        body = response.json()
        return User(body["id"], body["name"], body["token"])

    async def new_session(
        self, headers: dict[str, str], name: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        response = await self.client.post(
            "/api/sessions", json={"name": name or unique(), **fields}, headers=headers
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def get(self, session_id: str, headers: dict[str, str] = ADMIN) -> dict[str, Any]:
        response = await self.client.get(f"/api/sessions/{session_id}", headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait_for(
        self, session_id: str, state: str, headers: dict[str, str] = ADMIN
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    body = await self.get(session_id, headers)
                    if body["state"] == state:
                        return body
                    await asyncio.sleep(0.02)
        except TimeoutError:
            pytest.fail(f"{session_id} never reached {state}; last seen: {body.get('state')}")

    async def total(self, headers: dict[str, str] = ADMIN) -> int:
        response = await self.client.get("/api/sessions", headers=headers)
        assert response.status_code == 200
        listed: int = response.json()["total"]
        assert listed == len(self.manager.sessions) if headers is ADMIN else True
        return listed

    async def stored(self) -> int:
        return await self.manager.store.count_sessions()

    async def audit(self) -> list[dict[str, Any]]:
        response = await self.client.get("/api/audit")
        assert response.status_code == 200
        entries: list[dict[str, Any]] = response.json()["entries"]
        return entries


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        app.state.listening.set()  # as uvicorn would: the jobs start now, not in a second
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://wakeful.test", headers=ADMIN
        ) as client:
            yield Api(app, client)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running(make_settings(tmp_path)) as found:
        yield found


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


# ------------------------------------------------------------------------------------------
# 1. The auth matrix, generated from /openapi.json
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]

    @property
    def access(self) -> str:
        access: str = self.spec.get("x-access", "public")
        return access

    @property
    def params(self) -> list[str]:
        return re.findall(r"\{([^}:]+)", self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def operations(document: dict[str, Any]) -> list[Operation]:
    return [
        Operation(method.upper(), path, spec)
        for path, item in document["paths"].items()
        for method, spec in item.items()
    ]


def sample_body(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The smallest valid body: every required string property gets a fresh value."""
    if "requestBody" not in spec:
        return None
    schema = spec["requestBody"]["content"]["application/json"]["schema"]
    body = {}
    for name in schema.get("required", []):
        assert schema["properties"][name]["type"] == "string", f"no sample for {name}"
        body[name] = unique("sample")
    return body


def fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([^}:]+)[^}]*\}", lambda m: values[m.group(1)], path)


def normalized(response: httpx.Response, ident: str) -> tuple[int, str, Any]:
    text = response.text.replace(ident, "<id>")
    return response.status_code, response.headers["content-type"], json.loads(text)


HEADER_STYLES: dict[str, Callable[[str], dict[str, str]]] = {
    "bearer": bearer,
    "x-api-key": api_key,
}


async def test_openapi_lists_every_route_of_the_app(api: Api):
    document = (await api.client.get("/openapi.json", headers={})).json()
    documented = {(op.method, op.path) for op in operations(document)}
    for route in api.app.routes:
        assert isinstance(route, Route)
        if route.path == "/openapi.json":
            continue
        for method in (route.methods or set()) - {"HEAD"}:
            assert (method, route.path) in documented, f"{method} {route.path} is not documented"
    accesses = {op.access for op in operations(document)}
    assert accesses == {"public", "user", "admin"}
    assert ("DELETE", "/api/sessions/{session_id}") in documented


@pytest.mark.parametrize("style", list(HEADER_STYLES))
async def test_auth_matrix_from_openapi(api: Api, style: str):
    as_ = HEADER_STYLES[style]
    client = api.client
    alice, bob = await api.new_user("alice"), await api.new_user("bob")
    bobs_bot = await api.new_session(bob.headers, "bobs-bot")
    await api.wait_for(bobs_bot["id"], "CONNECTED")
    document = (await client.get("/openapi.json", headers={})).json()
    failures: list[str] = []

    def expect(condition: bool, op: Operation, who: str, response: httpx.Response) -> None:
        if not condition:
            failures.append(f"{op} as {who}: {response.status_code} {response.text[:200]}")

    async def values(op: Operation, owner: User) -> dict[str, str]:
        """Real ids; a DELETE gets a target of its own, so the matrix can go on."""
        if op.method != "DELETE":
            return {"session_id": bobs_bot["id"], "user_id": bob.id, "name": "cleanup"}
        fresh_session = (await api.new_session(owner.headers))["id"] if "session_id" in op.params else ""
        fresh_user = (await api.new_user()).id if "user_id" in op.params else ""
        return {"session_id": fresh_session, "user_id": fresh_user, "name": "cleanup"}

    async def call(op: Operation, path: str, headers: dict[str, str]) -> httpx.Response:
        body = sample_body(op.spec)
        # Every request carries exactly the headers given (no client default).
        return await client.request(
            op.method, path, json=body, headers={"Authorization": "", **headers}
            if not headers
            else headers,
        )

    checked = 0
    for op in operations(document):
        if op.access == "public":
            response = await client.request(op.method, op.path, headers={"Authorization": ""})
            expect(response.status_code == 200, op, "nobody", response)
            continue
        checked += 1
        path = fill(op.path, await values(op, bob) if op.method != "DELETE" else MISSING)
        # No token, a wrong token, a non-bearer scheme, an absurdly long token: 401.
        for who, headers in (
            ("no token", {}),
            ("wrong token", as_("wk_" + "x" * 43)),
            ("basic auth", {"Authorization": "Basic YWRtaW46YWRtaW4="}),
            ("long token", as_(ADMIN_TOKEN * 20)),
        ):
            response = await client.request(
                op.method, path, json=sample_body(op.spec), headers={"Authorization": "", **headers}
            )
            expect(
                response.status_code == 401
                and response.headers.get("content-type") == PROBLEM_JSON
                and response.headers.get("www-authenticate", "").startswith("Bearer"),
                op,
                who,
                response,
            )
        if op.access == "admin":
            for user in (alice, bob):
                response = await client.request(
                    op.method, path, json=sample_body(op.spec), headers=as_(user.token)
                )
                expect(
                    response.status_code == 403
                    and response.headers.get("content-type") == PROBLEM_JSON,
                    op,
                    user.name,
                    response,
                )
        elif op.params:
            # Alice on Bob's bot: exactly what she gets for a bot that does not exist.
            real = await values(op, bob)
            on_bobs = await client.request(
                op.method, fill(op.path, real), json=sample_body(op.spec), headers=as_(alice.token)
            )
            missing = await client.request(
                op.method,
                fill(op.path, MISSING),
                json=sample_body(op.spec),
                headers=as_(alice.token),
            )
            expect(on_bobs.status_code == 404, op, "alice on bob's", on_bobs)
            expect(missing.status_code == 404, op, "alice on a missing one", missing)
            ident = real.get("session_id") or real.get("user_id") or ""
            if normalized(on_bobs, ident) != normalized(missing, MISSING["session_id"]):
                failures.append(f"{op}: another's bot is told apart from a missing one")
            # Bob reaches his own.
            own = await client.request(
                op.method,
                fill(op.path, await values(op, bob)),
                json=sample_body(op.spec),
                headers=as_(bob.token),
            )
            expect(own.status_code not in (401, 403, 404) and own.status_code < 500, op, "bob", own)
        else:
            response = await client.request(
                op.method, op.path, json=sample_body(op.spec), headers=as_(alice.token)
            )
            expect(response.status_code < 300, op, "alice", response)
        # The admin reaches everyone's.
        response = await client.request(
            op.method,
            fill(op.path, await values(op, bob)),
            json=sample_body(op.spec),
            headers=as_(ADMIN_TOKEN),
        )
        expect(
            response.status_code not in (401, 403, 404) and response.status_code < 500,
            op,
            "admin",
            response,
        )
    assert checked >= 15, "the OpenAPI document lost most of its protected operations"
    assert not failures, "\n".join(failures)
    _ = call  # kept for symmetry with the helpers above


async def test_public_routes_answer_without_a_token(api: Api):
    for path in ("/health", "/api/keepalive", "/api/metrics", "/metrics", "/openapi.json"):
        response = await api.client.get(path, headers={"Authorization": ""})
        assert response.status_code == 200, path


async def test_admin_sees_bobs_bot_as_bobs(api: Api):
    bob = await api.new_user("bob")
    bot = await api.new_session(bob.headers, "shared")
    seen = await api.get(bot["id"], bearer(ADMIN_TOKEN))
    assert seen["owner"] == bob.id
    seen = await api.get(bot["id"], api_key(ADMIN_TOKEN))
    assert seen["owner"] == bob.id
