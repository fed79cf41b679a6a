"""Schemathesis against `/openapi.json`, in-process (its ASGI transport runs the app's lifespan),
with the admin token and with a user's token, on schema-valid and on schema-violating data.

Whatever it sends: no 5xx; every answer's status code and media type are in the document and
its body matches the documented schema; every 4xx is an `application/problem+json` for that
status with a title and a detail. Path parameters are sometimes generated, sometimes the ids of
a real bot, message, user and job, so the handlers behind the 404 are reached too.

The run is bounded and deterministic (`derandomize`, no example database): a failure here is
reproducible, and the report names every failing operation with a curl line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import APIOperation, Case, CheckContext, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette

from server import create_app
from tests.support import free_port
from tests.web.test_sessions_api import ADMIN, PROBLEM_JSON, bearer, make_settings, unique

Operation = APIOperation[Any, Any, Any, Any]
MAX_EXAMPLES = 25  # per operation, caller and mode: ~3,000 requests in all
BASE_URL = f"http://{asgi.HOST}"


def problem_json(ctx: CheckContext, response: schemathesis.Response, case: Case[Any]) -> None:
    """Every 4xx is a problem document (RFC 9457) about this very status."""
    if not 400 <= response.status_code < 500:
        return
    content_type = response.headers.get("content-type", [""])[0].split(";")[0].strip()
    assert content_type == PROBLEM_JSON, (
        f"{response.status_code} answered as {content_type or 'no content type'}, "
        f"not {PROBLEM_JSON}: {response.content[:200]!r}"
    )
    body = json.loads(response.content)
    assert body.get("status") == response.status_code, f"status {body.get('status')} in the body"
    assert body.get("title"), "a problem without a title"
    assert body.get("detail"), "a problem without a detail"


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    problem_json,
    # The document is the contract, in both directions: what it allows is accepted (no 400
    # or 422 for a body it calls valid), what it forbids is refused (an unknown field, a
    # value outside its enum, range or pattern).
    positive_data_acceptance,
    negative_data_rejection,
]


@dataclass
class Target:
    """The app, reached in-process, and a client for the set-up steps."""

    app: Starlette
    client: asgi.ASGIClient

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        response = self.client.post(path, json=body, headers=headers)
        assert response.status_code in (201, 202), response.text
        found: dict[str, Any] = response.json()
        return found


@pytest.fixture(autouse=True, scope="module")
def _hypothesis_files_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No example database, and Hypothesis' caches go to a temporary folder, not the repo."""
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    # The default body bound, so that only a body the document forbids is refused.
    settings_ = make_settings(tmp_path, max_sessions_per_user=1000, max_body_bytes=65_536)
    # Webhooks the fuzzer points anywhere are delivered to this stand-in, never to the network.
    peer = httpx.MockTransport(lambda request: httpx.Response(204))
    app = create_app(settings_, transport=peer, media_transport=httpx.MockTransport(a_file))
    try:
        with asgi.get_client(cast(Any, app)) as client:  # starts the lifespan on schemathesis' loop
            app.state.listening.set()
            yield Target(app, client)
    finally:
        asgi.shutdown_lifespans()


def a_file(request: httpx.Request) -> httpx.Response:
    """Media URLs the fuzzer sends are fetched from this stand-in, never from the network: a
    few bytes of the first type the server asks for (a document takes any)."""
    wanted = request.headers.get("accept", "").split(",")[0].split(";")[0].strip()
    kind = wanted if "*" not in wanted else "application/pdf"
    return httpx.Response(200, headers={"Content-Type": kind}, content=b"\x00fuzzed file")


def real_ids(target: Target, caller: dict[str, str]) -> dict[str, str]:
    """Fresh ids that exist and that `caller` may reach: a DELETE may use them up."""
    owner = target.post("/api/users", {"name": unique("owner")}, ADMIN)
    bot = target.post("/api/sessions", {"name": unique(), "start": True}, caller)
    sent = target.post(
        f"/api/sessions/{bot['id']}/messages", {"to": "+15550001111", "text": "hi"}, caller
    )
    # A group the scripted engine's accounts are in (GET /groups/{group_id}).
    groups = target.app.state.manager.engine.groups
    if not groups:
        groups.append(
            {
                "id": "120363000000000001@g.us",
                "name": "Fuzzed",
                "participants": [
                    {"id": "15550000001@c.us", "phone": "+15550000001", "lid": None},
                ],
            }
        )
    return {
        "session_id": bot["id"],
        "message_id": sent["id"],
        "user_id": owner["id"],
        "name": "cleanup",
        "group_id": groups[0]["id"],
    }


def path_params(operation: Operation) -> list[str]:
    return [p["name"] for p in operation.definition.raw.get("parameters", []) if p["in"] == "path"]


def breakable(operation: Operation) -> bool:
    """Negative data needs something to break besides the path (any string is a valid id,
    and a wrong one is the 404 the positive run already sees): a query or a body."""
    raw = operation.definition.raw
    queries = [p for p in raw.get("parameters", []) if p["in"] != "path"]
    return bool(queries or raw.get("requestBody"))


def exercise(
    target: Target,
    operation: Operation,
    mode: GenerationMode,
    caller: dict[str, str],
    ids: dict[str, str],
    answers: set[int],
) -> None:
    strategy = operation.as_strategy(generation_mode=mode)
    params = path_params(operation)
    if params:
        on_real = operation.as_strategy(
            generation_mode=mode, path_parameters={name: ids[name] for name in params}
        )
        strategy = st.one_of(strategy, on_real)

    def seen(ctx: CheckContext, response: schemathesis.Response, case: Case[Any]) -> None:
        answers.add(response.status_code)

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Case[Any]) -> None:
        case.call_and_validate(
            base_url=BASE_URL, session=target.client, headers=caller, checks=[*CHECKS, seen]
        )

    run()


# Schemathesis' own strategies draw from `random` (seeded by Hypothesis, so still repeatable).
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("who", ["admin", "user"])
def test_the_api_keeps_its_document_whatever_it_is_sent(
    target: Target, who: str, mode: GenerationMode
) -> None:
    if who == "admin":
        caller = ADMIN
    else:
        caller = bearer(target.post("/api/users", {"name": "fuzzed"}, ADMIN)["token"])
    schema = schemathesis.openapi.from_asgi("/openapi.json", target.app)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"/openapi.json has an invalid operation: {result.err()}"
        operations.append(result.ok())
    assert len(operations) >= 25, "most operations are missing from /openapi.json"
    failures: list[str] = []
    answered: dict[str, set[int]] = {}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not breakable(operation):
            continue
        ids = real_ids(target, caller) if path_params(operation) else {}
        answers = answered.setdefault(operation.label, set())
        try:
            exercise(target, operation, mode, caller, ids, answers)
        except (Exception, BaseExceptionGroup) as exc:
            # A handler's exception comes through the in-process transport as itself.
            why = str(exc) if isinstance(exc, BaseExceptionGroup) else f"{exc!r}"
            failures.append(f"{operation.label} as {who}, {mode.value} data:\n{why}")
    assert not failures, "\n\n".join(failures)
    # The fuzzer got past the front door: most operations succeeded at least once (on the
    # real ids; a user is refused the 6 admin routes), and schema-violating data was refused
    # with a 4xx wherever it was sent.
    succeeded = sorted(label for label, codes in answered.items() if any(c < 300 for c in codes))
    if mode is GenerationMode.POSITIVE:
        assert len(succeeded) >= (25 if who == "admin" else 15), succeeded
    else:
        assert len(answered) >= 8, sorted(answered)
        assert all(any(400 <= c < 500 for c in codes) for codes in answered.values()), answered


def test_a_database_outage_is_a_documented_503_wherever_a_token_is_needed(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the database away, a user's token cannot be looked up: every protected route
    answers the 503 (with Retry-After) that its document lists, as a problem document."""
    token = target.post("/api/users", {"name": "cut-off"}, ADMIN)["token"]
    ids = real_ids(target, ADMIN)

    # The store's queries go to a port where nothing listens, as when the database is away.
    db = target.app.state.manager.store.db
    refused = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    monkeypatch.setattr(db, "engine", refused)
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", target.app)
        protected = [
            result.ok()
            for result in schema.get_all_operations()
            if isinstance(result, Ok) and "security" in result.ok().definition.raw
        ]
        assert len(protected) >= 20
        for operation in protected:
            params = {name: ids[name] for name in path_params(operation)}
            case = operation.Case(path_parameters=params)
            response = case.call(base_url=BASE_URL, session=target.client, headers=bearer(token))
            assert response.status_code == 503, (operation.label, response.text)
            assert response.headers["retry-after"] == ["5"]
            case.validate_response(
                response,
                checks=[
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ],
            )
            assert json.loads(response.content)["status"] == 503
    finally:
        # The database back before the app stops (its shutdown stores the bots' states).
        monkeypatch.undo()
