"""/metrics by Prometheus' conventions: parsed as the classic text format and, when the
scraper asks for it, as OpenMetrics; every series a dashboard needs exists from the start."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from bot.outbox import STATUSES
from bot.policy import CleanupReason
from bot.states import SessionState
from config import VERSION
from server import create_app
from tests.web.test_api import make_settings, running

# What Prometheus 2.x sends first in its Accept header.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(families: Any) -> Samples:
    found: Samples = {}
    for family in families:
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def expected_from_the_start() -> list[tuple[str, dict[str, str], float]]:
    series: list[tuple[str, dict[str, str], float]] = [
        ("wakeful_build_info", {"version": VERSION}, 1.0),
        ("database_up", {}, 1.0),
        ("keepalive_consecutive_failures", {}, 0.0),
    ]
    series += [("bot_session_transitions_total", {"to": s.value}, 0.0) for s in SessionState]
    series += [("bot_sessions", {"state": s.value}, 0.0) for s in SessionState]
    series += [("bot_cleanup_removed_total", {"reason": r.value}, 0.0) for r in CleanupReason]
    series += [("outbox_messages", {"status": status}, 0.0) for status in STATUSES]
    series += [
        ("keepalive_pings_total", {"result": result}, 0.0) for result in ("success", "failure")
    ]
    series += [
        ("keepalive_ping_duration_seconds_count", {"result": result}, 0.0)
        for result in ("success", "failure")
    ]
    series += [
        ("heartbeat_pushes_total", {"event": event, "result": result}, 0.0)
        for event in ("success", "fail", "start")
        for result in ("ok", "error")
    ]
    series += [
        ("alert_notifications_total", {"result": result}, 0.0)
        for result in ("delivered", "failed", "abandoned")
    ]
    series += [
        ("webhook_deliveries_total", {"result": result}, 0.0)
        for result in ("delivered", "retried", "dead")
    ]
    return series


async def wait_for_database_probe(app: Any) -> None:
    async with asyncio.timeout(10):
        while app.state.database_monitor.last_probe_at is None:
            await asyncio.sleep(0.02)


async def test_classic_text_format_with_every_series_from_the_start(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    async with running(app) as client:
        await wait_for_database_probe(app)
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.headers["vary"] == "Accept"
    found = samples(parse_text(response.text))
    missing = [
        (name, labels)
        for name, labels, _ in expected_from_the_start()
        if (name, frozenset(labels.items())) not in found
    ]
    assert not missing, missing
    for name, labels, expected in expected_from_the_start():
        assert value(found, name, **labels) == expected, (name, labels)


async def test_openmetrics_when_the_scraper_asks_for_it(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    async with running(app) as client:
        await wait_for_database_probe(app)
        response = await client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        "application/openmetrics-text; version=1.0.0"
    )
    assert response.text.endswith("# EOF\n")
    found = samples(parse_openmetrics(response.text))  # type: ignore[no-untyped-call]
    for name, labels, expected in expected_from_the_start():
        assert value(found, name, **labels) == expected, (name, labels)


async def test_ping_durations_by_result_and_the_database_going_away(tmp_path: Path) -> None:
    answers = [200, 503]

    def peer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(answers.pop(0))

    settings = make_settings(tmp_path, keepalive_url="https://bot.test/health")
    app = create_app(settings, transport=httpx.MockTransport(peer))
    async with running(app) as client:
        await wait_for_database_probe(app)
        await app.state.keepalive.ping_once()
        await app.state.keepalive.ping_once()
        app.state.database_monitor.saw_failure(ConnectionRefusedError("refused"))
        found = samples(parse_text((await client.get("/metrics")).text))
    count = "keepalive_ping_duration_seconds_count"
    assert value(found, count, result="success") == 1.0
    assert value(found, count, result="failure") == 1.0
    assert value(found, "keepalive_pings_total", result="failure") == 1.0
    assert value(found, "database_up") == 0.0
