"""/health field by field against draft-inadarei-api-health-check (application/health+json):
the top-level members, each check keyed `component:measurement` with its unit, `time` and,
when not `pass`, `output`; no keep-alive check while it is off; `links`; a short max-age."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from config import VERSION
from server import create_app
from tests.web.test_api import make_settings, running

# What the draft defines for the top level and for a check; ours adds only these members.
DRAFT_TOP = {
    "status",
    "version",
    "releaseId",
    "notes",
    "output",
    "serviceId",
    "description",
    "checks",
    "links",
}
OUR_TOP = {"uptime", "startedAt", "sessions", "outbox"}
DRAFT_CHECK = {
    "componentId",
    "componentType",
    "observedValue",
    "observedUnit",
    "status",
    "affectedEndpoints",
    "time",
    "output",
    "links",
}
LINKS = {"describedby": "/openapi.json", "keepalive": "/api/keepalive", "metrics": "/metrics"}


def check_of(body: dict[str, Any], name: str) -> dict[str, Any]:
    (only,) = body["checks"][name]
    assert set(only) <= DRAFT_CHECK | {"unreachableSince"}, set(only) - DRAFT_CHECK
    return dict(only)


def is_iso_time(value: Any) -> bool:
    return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None


async def wait_for_database_probe(app: Any) -> None:
    async with asyncio.timeout(10):
        while app.state.database_monitor.last_probe_ms is None:
            await asyncio.sleep(0.02)


async def test_a_healthy_instance_without_keep_alive(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    async with running(app) as client:
        await wait_for_database_probe(app)
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/health+json"
    assert response.headers["cache-control"] == "max-age=5"
    body = response.json()
    assert set(body) <= DRAFT_TOP | OUR_TOP, set(body) - DRAFT_TOP - OUR_TOP
    assert body["status"] == "pass"
    assert body["version"] == VERSION
    assert body["serviceId"] == "wakeful"
    assert body["description"]
    assert "output" not in body  # the draft: omitted for `pass`
    assert body["links"] == LINKS
    # The keep-alive is off (no public URL): no check at all rather than a `pass`.
    assert set(body["checks"]) == {"uptime", "database:responseTime"}

    uptime = check_of(body, "uptime")
    assert uptime["status"] == "pass"
    assert uptime["componentType"] == "system"
    assert uptime["observedUnit"] == "s"
    assert isinstance(uptime["observedValue"], float) and uptime["observedValue"] >= 0
    assert is_iso_time(uptime["time"])

    database = check_of(body, "database:responseTime")
    assert database["status"] == "pass"
    assert database["componentType"] == "datastore"
    assert database["observedUnit"] == "ms"
    assert isinstance(database["observedValue"], float) and database["observedValue"] >= 0
    assert is_iso_time(database["time"])
    assert "output" not in database


async def test_a_failing_keep_alive_warns_with_its_reason_then_passes_again(
    tmp_path: Path,
) -> None:
    answers = [503, 503, 503, 200]

    def peer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(answers.pop(0))

    settings = make_settings(tmp_path, keepalive_url="https://bot.test/health")
    app = create_app(settings, transport=httpx.MockTransport(peer))
    async with running(app) as client:
        before = (await client.get("/health")).json()
        keepalive = check_of(before, "keepalive:responseTime")
        assert keepalive == {
            "status": "pass",
            "componentType": "component",
            "observedValue": None,  # no ping yet
            "observedUnit": "ms",
        }
        for _ in range(3):
            await app.state.keepalive.ping_once()
        response = await client.get("/health")
        assert response.status_code == 200  # `warn` is still up for a platform
        body = response.json()
        assert body["status"] == "warn"
        keepalive = check_of(body, "keepalive:responseTime")
        assert keepalive["status"] == "warn"
        assert keepalive["observedUnit"] == "ms"
        assert isinstance(keepalive["observedValue"], float)
        assert is_iso_time(keepalive["time"])
        expected = "3 consecutive failed pings; last: HTTP 503 Service Unavailable"
        assert keepalive["output"] == expected
        assert body["output"] == f"keepalive:responseTime: {expected}"

        await app.state.keepalive.ping_once()
        body = (await client.get("/health")).json()
        assert body["status"] == "pass"
        assert "output" not in body
        keepalive = check_of(body, "keepalive:responseTime")
        assert keepalive["status"] == "pass"
        assert "output" not in keepalive


async def test_shutting_down_is_a_fail_with_its_output(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    async with running(app) as client:
        app.state.health.draining = True
        response = await client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["output"] == "shutting down"
    assert body["links"] == LINKS


def test_the_hand_written_json_escapes_what_it_must() -> None:
    """render() writes plain strings without json.dumps: anything that needs escaping (a
    quote, a backslash, a line break, non-ASCII) still comes out as valid, equal JSON."""
    import json

    from services.health import HealthState
    from tests.support import FakeClock

    clock = FakeClock(datetime.fromisoformat("2026-11-30T03:00:00+00:00"))
    state = HealthState(clock, clock.now())
    tricky = 'say "hi" \\ back\nslash — ✓'
    state.checks["odd:responseTime"] = lambda: (
        "warn",
        {"componentType": "component", "output": tricky, "observedValue": 1.5, "flag": True},
    )
    status, rendered = state.render()
    expected_status, expected = state.document()
    assert (status, json.loads(rendered)) == (expected_status, expected)
    assert expected["checks"]["odd:responseTime"][0]["output"] == tricky
