"""Bad input on every route that takes it, generated from `/openapi.json` so a new route
cannot escape: each refusal is a problem document with the right status that names the
problem (or the field), and nothing is stored.

What `test_sessions_api.py` (bodies and ids of `/api/sessions`) and `test_messages_api.py`
(webhook URLs on create, and on a bot without one) already cover is not repeated here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.engines.simulator import Simulator
from config import Settings
from server import create_app
from tests.web.test_sessions_api import (
    ADMIN,
    Api,
    Operation,
    User,
    assert_problem,
    make_settings,
    operations,
)

MAX_BODY = 2048  # make_settings' MAX_BODY_BYTES
PUBLIC_HOOK = "https://93.184.215.14/hook"  # a public address, as a literal: no DNS


@dataclass
class World:
    """A running app (WEBHOOK_ALLOW_PRIVATE off) with a user, her bot, one of its messages,
    and the simulator of demo mode; every webhook request it makes lands in `peer_hosts`."""

    api: Api
    alice: User
    bot: str
    message: str
    simulator: Simulator
    peer_hosts: list[str] = field(default_factory=list)

    @property
    def ids(self) -> dict[str, str]:
        return {
            "session_id": self.bot,
            "message_id": self.message,
            "user_id": self.alice.id,
            "name": "cleanup",
        }

    def caller(self, op: Operation) -> dict[str, str]:
        return ADMIN if op.access == "admin" else self.alice.headers

    async def snapshot(self) -> dict[str, Any]:
        """Everything a refused request could have left behind."""
        api = self.api
        users = (await api.client.get("/api/users", headers=ADMIN)).json()["users"]
        messages = await api.client.get(f"/api/sessions/{self.bot}/messages", headers=ADMIN)
        return {
            "users": [(u["id"], u["name"]) for u in users],
            "sessions": [
                (s["id"], s["name"], s["state"], s["webhookUrl"], s["webhookEvents"], s["metadata"])
                for s in await api.listed()
            ],
            "stored sessions": await api.stored(),
            "rows": [
                (r.id, r.name, r.webhook_url, r.webhook_events, r.metadata, r.webhook_secret)
                for r in await api.manager.store.all_sessions()
            ],
            "messages": [(m["id"], m["status"], m["text"]) for m in messages.json()["messages"]],
            "audit": [(e["action"], e["target"]) for e in await api.audit()],
            "simulated": self.simulator.sent(self.bot),
        }


@asynccontextmanager
async def running_with_peer(settings: Settings, hosts: list[str]) -> AsyncIterator[Api]:
    """`running()` with the app's outgoing HTTP answered in-process (never the network)."""

    def answer(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(204)

    app = create_app(settings, transport=httpx.MockTransport(answer))
    async with app.router.lifespan_context(app):
        app.state.listening.set()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://wakeful.test") as c:
            yield Api(app, c)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    hosts: list[str] = []
    settings = make_settings(tmp_path, webhook_allow_private=False, max_body_bytes=MAX_BODY)
    async with running_with_peer(settings, hosts) as api:
        alice = await api.new_user("alice")
        bot = await api.new_session(
            alice.headers,
            "kept",
            start=False,
            webhookUrl=PUBLIC_HOOK,
            webhookEvents=["message.received"],
            metadata={"team": "a"},
        )
        sent = await api.client.post(
            f"/api/sessions/{bot['id']}/messages",
            json={"to": "+15550001111", "text": "kept"},
            headers=alice.headers,
        )
        assert sent.status_code == 202, sent.text
        # Demo mode's routes read their body only when the simulator is on.
        simulator = Simulator(qr_every=timedelta(seconds=20))
        setattr(api.engine, "simulator", simulator)  # noqa: B010 - not an attribute it declares
        yield World(api, alice, bot["id"], sent.json()["id"], simulator, hosts)
        # Whatever was refused, nothing was ever sent into our own network.
        assert set(hosts) <= {"93.184.215.14"}, hosts


async def document(world: World) -> list[Operation]:
    response = await world.api.client.get("/openapi.json")
    return operations(response.json())


# ------------------------------------------------------------------------------------------
# 1. Bodies: malformed, of the wrong type, too large (declared, or only found while reading)
# ------------------------------------------------------------------------------------------


def oversized() -> bytes:
    # Valid JSON with an unknown field: a 413 proves the size is checked before anything else.
    raw = json.dumps({"pad": "x" * MAX_BODY}).encode()
    assert len(raw) > MAX_BODY
    return raw


async def streamed(raw: bytes) -> AsyncIterator[bytes]:
    """No Content-Length: the size is found while reading."""
    for start in range(0, len(raw), 512):
        yield raw[start : start + 512]


# The send route's bound has room for MAX_MEDIA_BYTES of base64 besides MAX_BODY_BYTES; its
# 413s (a 20 MB upload, declared and streamed) are in tests/web/test_send_media_api.py.
SEND_ROUTE = ("POST", "/api/sessions/{session_id}/messages")


@dataclass(frozen=True)
class BadBody:
    content: bytes
    content_type: str
    status: int
    detail: tuple[str, ...]  # what the problem's detail must say
    stream: bool = False
    # Routes whose case is already in test_sessions_api.py.
    covered: frozenset[tuple[str, str]] = frozenset({("POST", "/api/sessions")})


BAD_BODIES = {
    "malformed JSON": BadBody(
        b'{"to": "+15550001111",', "application/json", 400, ("not valid JSON", "line 1, column 23")
    ),
    "wrong content type": BadBody(
        b'{"to": "+15550001111"}', "text/plain", 415, ("application/json", "got text/plain")
    ),
    "oversized": BadBody(
        oversized(),
        "application/json",
        413,
        (f"larger than {MAX_BODY} bytes",),
        covered=frozenset({("POST", "/api/sessions"), ("POST", "/api/users"), SEND_ROUTE}),
    ),
    "oversized, streamed": BadBody(
        oversized(),
        "application/json",
        413,
        (f"larger than {MAX_BODY} bytes",),
        stream=True,
        covered=frozenset({("POST", "/api/sessions"), SEND_ROUTE}),
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_every_body_route_refuses_bad_bodies_and_stores_nothing(world: World, case: str):
    bad = BAD_BODIES[case]
    body_routes = [op for op in await document(world) if "requestBody" in op.spec]
    assert len(body_routes) >= 6, [str(op) for op in body_routes]
    assert bad.covered <= {(op.method, op.path) for op in body_routes}, "stale exclusion"
    before = await world.snapshot()
    failures = []
    checked = 0
    for op in body_routes:
        if (op.method, op.path) in bad.covered:
            continue
        checked += 1
        content: bytes | AsyncIterator[bytes] = streamed(bad.content) if bad.stream else bad.content
        response = await world.api.client.request(
            op.method,
            op.url(world.ids),
            content=content,
            headers={**world.caller(op), "Content-Type": bad.content_type},
        )
        if response.status_code != bad.status:
            failures.append(f"{op}: {response.status_code} {response.text[:200]}")
            continue
        detail = assert_problem(response, bad.status)["detail"]
        if not all(words in detail for words in bad.detail):
            failures.append(f"{op}: the detail does not say {bad.detail}: {detail}")
    assert checked >= 3  # the routes not covered elsewhere, each one reached
    assert not failures, "\n".join(failures)
    assert await world.snapshot() == before


# ------------------------------------------------------------------------------------------
# 2. Query parameters: out of range, not a number, not one of the choices
# ------------------------------------------------------------------------------------------


def bad_values(schema: dict[str, Any]) -> list[str]:
    if "enum" in schema:
        return ["not-one-of-them", schema["enum"][0].upper() + "x"]
    if schema.get("type") == "integer":
        values = ["abc", "1.5", ""]
        if "minimum" in schema:
            values.append(str(schema["minimum"] - 1))
        if "maximum" in schema:
            values.append(str(schema["maximum"] + 1))
        return values
    return []


async def test_every_query_parameter_out_of_its_range_is_a_422_naming_it(world: World):
    before = await world.snapshot()
    failures = []
    checked = set()
    for op in await document(world):
        for param in op.spec.get("parameters", []):
            if param["in"] != "query":
                continue
            for value in bad_values(param["schema"]):
                checked.add(f"{op} ?{param['name']}")
                response = await world.api.client.request(
                    op.method,
                    op.url(world.ids),
                    params={param["name"]: value},
                    headers=world.caller(op),
                )
                if response.status_code != 422:
                    failures.append(f"{op} ?{param['name']}={value}: {response.status_code}")
                    continue
                problem = assert_problem(response, 422)
                named = [e["field"] for e in problem["errors"]]
                if named != [param["name"]] or param["name"] not in problem["detail"]:
                    failures.append(f"{op} ?{param['name']}={value}: {problem}")
    # limit and offset (sessions, messages), include, status (messages, deliveries), format.
    assert len(checked) >= 8, sorted(checked)
    assert not failures, "\n".join(failures)
    assert await world.snapshot() == before


# ------------------------------------------------------------------------------------------
# 3. Odd message and user ids: a 404, never another resource, nothing changed
# ------------------------------------------------------------------------------------------

# A bare ".." is resolved by every client before it is sent; encoded, it reaches the server.
ODD_IDS = [
    "%2E%2E",
    "..%2F..%2Fetc%2Fpasswd",
    "{real}%2F..%2F..%2Fusers",
    "{real}%00",
    "{real}%20",
    "%20{real}",
    "{upper}",
    "{real}'%20OR%20'1'='1",
    "*",
    "{real}" + "0" * 200,
]


def odd(template: str, real: str) -> str:
    return template.replace("{real}", real).replace("{upper}", real.upper())


async def test_odd_message_ids_are_404(world: World):
    before = await world.snapshot()
    base = f"/api/sessions/{world.bot}/messages"
    for template in ODD_IDS:
        ident = odd(template, world.message)
        for headers in (world.alice.headers, ADMIN):
            response = await world.api.client.get(
                f"{base}/{ident}", headers=headers, follow_redirects=True
            )
            # An id is echoed 40 characters at most.
            assert len(assert_problem(response, 404)["detail"]) < 200, ident
    # The real one is still there, as it was.
    kept = await world.api.client.get(f"{base}/{world.message}", headers=world.alice.headers)
    assert kept.status_code == 200
    assert kept.json()["text"] == "kept"
    assert await world.snapshot() == before


async def test_odd_user_ids_are_404_and_delete_nobody(world: World):
    before = await world.snapshot()
    for template in ODD_IDS:
        ident = odd(template, world.alice.id)
        response = await world.api.client.delete(
            f"/api/users/{ident}", headers=ADMIN, follow_redirects=True
        )
        assert len(assert_problem(response, 404)["detail"]) < 200, ident
    me = await world.api.client.get("/api/me", headers=world.alice.headers)
    assert me.status_code == 200
    assert me.json()["sessions"] == 1
    assert await world.snapshot() == before


# ------------------------------------------------------------------------------------------
# 4. A webhook re-pointed into our own network (WEBHOOK_ALLOW_PRIVATE off): refused with the
#    field named, the stored webhook (and the rest of the same change) kept as it was
# ------------------------------------------------------------------------------------------

DISGUISED_HOOKS: list[tuple[str, str]] = [
    ("http://127.1/hook", "loopback"),
    ("http://0x7f000001/hook", "loopback"),
    ("http://0177.0.0.1/hook", "loopback"),
    ("http://hooks.example.com@127.0.0.1/hook", "loopback"),
    ("http://hooks:s3cr3t-pass@127.0.0.1/hook", "loopback"),
    ("http://192.168.0.1#@hooks.example.com/", "private"),
    ("http://172.16.0.1/hook", "private"),
    ("http://[fd00::1]/hook", "private"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://[::ffff:a9fe:a9fe]/hook", "link-local"),
]
INTERNAL_HOOKS: list[tuple[str, str]] = [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://localhost:8000/api/sessions", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://10.1.2.3:8443/hook", "private"),
    ("http://192.168.0.1/hook", "private"),
    *DISGUISED_HOOKS,
]


@pytest.mark.parametrize(("url", "kind"), INTERNAL_HOOKS, ids=[u for u, _ in INTERNAL_HOOKS])
async def test_a_webhook_into_our_network_is_refused_and_the_stored_one_kept(
    world: World, url: str, kind: str
):
    before = await world.snapshot()
    change = {"webhookUrl": url, "metadata": {"team": "b"}, "webhookEvents": ["session.status"]}
    response = await world.api.client.patch(
        f"/api/sessions/{world.bot}", json=change, headers=world.alice.headers
    )
    problem = assert_problem(response, 422)
    assert "webhookUrl" in problem["detail"]
    (error,) = problem["errors"]
    assert error["field"] == "webhookUrl"
    assert f"is a {kind}" in error["message"]
    assert "WEBHOOK_ALLOW_PRIVATE" in error["message"]
    assert "s3cr3t" not in response.text
    assert "webhookSecret" not in problem
    # Nothing of the change was applied: not the URL, nor the metadata and events with it.
    bot = await world.api.get(world.bot, world.alice.headers)
    assert bot["webhookUrl"] == PUBLIC_HOOK
    assert bot["metadata"] == {"team": "a"}
    assert bot["webhookEvents"] == ["message.received"]
    assert await world.snapshot() == before  # the database's row included
    if (url, kind) in DISGUISED_HOOKS:
        # A new bot cannot start out pointed there either.
        created = await world.api.client.post(
            "/api/sessions", json={"name": "new", "webhookUrl": url}, headers=world.alice.headers
        )
        assert [e["field"] for e in assert_problem(created, 422)["errors"]] == ["webhookUrl"]
        assert await world.snapshot() == before
