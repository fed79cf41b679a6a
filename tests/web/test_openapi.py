"""/openapi.json says exactly what the server enforces: for sample values of every
constrained field, the document's pattern and the server agree; every path answers its own
methods with a sorted Allow; creations link to the operations that use their ids."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.web.test_sessions_api import ADMIN, Api, make_settings, running, unique

NAMES = [
    "shop",
    "Shop 2",
    "  padded  ",
    "a",
    "x" * 64,
    "x" * 65,
    "&",
    "a&b",
    " ",
    "",
    "émile.bot",
    "bot:eu",
    "tab\tinside",
    "under_score-1+2@x",
]
TOS = [
    "+15551234567",
    "15551234567",
    "+1 (555) 123-4567",
    " +15551234567 ",
    "+0551234567",
    "+1555",
    "+1234567890123456",
    "+1 2 3 4 5 6 7",
    "15551234567@c.us",
    "1203630123456789@g.us",
    "12345-678@g.us",
    "1234@c.us",
    "15551234567@example.com",
    "hello",
    "+1-----------------------5551234",
]
KEYS = ["order-1", "", "   ", "a b", "x" * 200, "x" * 201, "é", " key "]
TEXTS = ["hi", " ", "\n\t", "x" * 4096]
PHONES = ["+15551234567", "15551234567", "+0551234567", "+1555", "+1 (555) 123-4567", "abc"]
WEBHOOK_URLS = [
    "https://hooks.example.test/x",
    "http://127.0.0.1:8080/hook?a=1",
    "HTTPS://Example.test",
    "https://user:pw@example.test:443/p#f",
    "ftp://example.test/x",
    "https://",
    "https://example.test:99999/",
    "https://example.test:abc/",
    "not a url",
    "  https://example.test/padded  ",
    "https://[::1",
]


def schema_accepts(schema: dict[str, Any], value: str) -> bool:
    if len(value) > schema.get("maxLength", 10**9) or len(value) < schema.get("minLength", 0):
        return False
    pattern = schema.get("pattern")
    if pattern is not None and re.search(pattern, value) is None:
        return False
    return all(
        any(schema_accepts(branch, value) for branch in schema[key])
        for key in ("anyOf",)
        if key in schema
    )


def field_schema(document: dict[str, Any], method: str, path: str, name: str) -> dict[str, Any]:
    body = document["paths"][path][method]["requestBody"]["content"]["application/json"]
    found: dict[str, Any] = body["schema"]["properties"][name]
    return found


def refused_fields(response: Any) -> set[str]:
    if response.status_code != 422:
        return set()
    return {error["field"] for error in response.json().get("errors", [])}


@pytest.fixture
async def api(tmp_path: Path) -> Any:
    async with running(make_settings(tmp_path, max_sessions_per_user=1000)) as found:
        yield found


async def document_of(api: Api) -> dict[str, Any]:
    response = await api.client.get("/openapi.json")
    found: dict[str, Any] = response.json()
    return found


async def test_names_patterns_agree_with_the_server(api: Api) -> None:
    document = await document_of(api)
    session_name = field_schema(document, "post", "/api/sessions", "name")
    user_name = field_schema(document, "post", "/api/users", "name")
    disagreements = []
    for value in NAMES:
        response = await api.client.post(
            "/api/sessions", json={"name": value, "start": False}, headers=ADMIN
        )
        server = "name" not in refused_fields(response)
        if server != schema_accepts(session_name, value):
            disagreements.append(("session name", value, response.status_code))
        response = await api.client.post("/api/users", json={"name": value}, headers=ADMIN)
        server = "name" not in refused_fields(response)
        if server != schema_accepts(user_name, value):
            disagreements.append(("user name", value, response.status_code))
    assert not disagreements


async def test_message_fields_agree_with_the_server(api: Api) -> None:
    document = await document_of(api)
    path = "/api/sessions/{session_id}/messages"
    bot = (await api.new_session(name=unique()))["id"]
    disagreements = []
    cases = (
        [("to", v, {"to": v, "text": "hi"}) for v in TOS]
        + [("text", v, {"to": "+15551234567", "text": v}) for v in TEXTS]
        + [
            ("idempotencyKey", v, {"to": "+15551234567", "text": "hi", "idempotencyKey": v})
            for v in KEYS
        ]
    )
    for name, value, body in cases:
        # A fresh key per call unless the key is the field under test (no 409 in the way).
        response = await api.client.post(f"/api/sessions/{bot}/messages", json=body, headers=ADMIN)
        server = name not in refused_fields(response)
        if server != schema_accepts(field_schema(document, "post", path, name), value):
            disagreements.append((name, value, response.status_code, response.text[:200]))
    assert not disagreements


async def test_phone_and_webhook_url_agree_with_the_server(api: Api) -> None:
    document = await document_of(api)
    phone = field_schema(document, "post", "/api/sessions/{session_id}/pair", "phone")
    webhook = field_schema(document, "patch", "/api/sessions/{session_id}", "webhookUrl")
    bot = (await api.new_session(name=unique(), start=False))["id"]
    disagreements = []
    for value in PHONES:
        response = await api.client.post(
            f"/api/sessions/{bot}/pair", json={"phone": value}, headers=ADMIN
        )
        if ("phone" not in refused_fields(response)) != schema_accepts(phone, value):
            disagreements.append(("phone", value, response.status_code))
    for value in WEBHOOK_URLS:
        response = await api.client.patch(
            f"/api/sessions/{bot}", json={"webhookUrl": value}, headers=ADMIN
        )
        if ("webhookUrl" not in refused_fields(response)) != schema_accepts(webhook, value):
            disagreements.append(("webhookUrl", value, response.status_code))
    assert not disagreements


async def test_user_id_well_formed_is_403_or_404_not_a_field_error(api: Api) -> None:
    user = await api.new_user()
    unknown = await api.client.post(
        "/api/sessions", json={"name": unique(), "userId": "usr_000000000000"}, headers=ADMIN
    )
    assert unknown.status_code == 404, unknown.text
    not_admin = await api.client.post(
        "/api/sessions", json={"name": unique(), "userId": user.id}, headers=user.headers
    )
    assert not_admin.status_code == 403, not_admin.text
    malformed = await api.client.post(
        "/api/sessions", json={"name": unique(), "userId": "bob"}, headers=ADMIN
    )
    assert refused_fields(malformed) == {"userId"}
    mine = await api.client.post(
        "/api/sessions", json={"name": unique(), "userId": user.id}, headers=ADMIN
    )
    assert mine.status_code == 201
    assert mine.json()["owner"] == user.id


@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "DELETE"])
async def test_retry_dead_answers_its_own_methods(api: Api, method: str) -> None:
    bot = (await api.new_session(name=unique(), start=False))["id"]
    response = await api.client.request(
        method, f"/api/sessions/{bot}/messages/retry-dead", headers=ADMIN
    )
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_allow_is_sorted(api: Api) -> None:
    bot = (await api.new_session(name=unique(), start=False))["id"]
    for _ in range(3):
        response = await api.client.put(f"/api/sessions/{bot}", headers=ADMIN)
        assert response.status_code == 405
        assert response.headers["allow"] == "DELETE, GET, HEAD, PATCH"
    health = await api.client.post("/health")
    assert health.headers["allow"] == "GET, HEAD"


async def test_creations_link_to_the_operations_that_use_their_ids(api: Api) -> None:
    document = await document_of(api)
    operations = {
        op["operationId"]: (path, op)
        for path, methods in document["paths"].items()
        for op in methods.values()
    }
    created = document["paths"]["/api/sessions"]["post"]["responses"]["201"]["links"]
    assert len(created) >= 14
    for link in created.values():
        path, _ = operations[link["operationId"]]
        assert path.startswith("/api/sessions/{session_id}")
        assert link["parameters"]["session_id"] == "$response.body#/id"
    sent = document["paths"]["/api/sessions/{session_id}/messages"]["post"]["responses"]["202"]
    (message_link,) = sent["links"].values()
    assert message_link["operationId"] == "get_api_sessions_session_id_messages_message_id"
    assert message_link["parameters"] == {
        "session_id": "$request.path.session_id",
        "message_id": "$response.body#/id",
    }
    user_links = document["paths"]["/api/users"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in user_links.values()} == {"delete_api_users_user_id"}
