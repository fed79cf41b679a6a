"""The public routes in-process, through httpx.ASGITransport, with the lifespan running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from config import Settings, load_settings
from server import create_app
from tests.support import FakeClock


def make_settings(tmp_path: Path, **values: object) -> Settings:
    # A start delay of an hour: these tests drive the pings themselves.
    values = {"keep_alive_start_delay": "1h", **values}
    return load_settings(_env_file=None, data_dir=tmp_path, database_url=None, **values)


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://wakeful.test") as c:
            yield c


@pytest.fixture
def peer() -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "pass"})

    return answer


async def test_health_is_health_json_and_head_works(tmp_path: Path):
    app = create_app(make_settings(tmp_path))
    async with running(app) as client:
        response = await client.get("/health")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/health+json"
        body = response.json()
        assert body["status"] == "pass"
        assert body["version"]
        assert isinstance(body["uptime"], float)
        head = await client.head("/health")
        assert head.status_code == 200


async def test_health_fails_while_draining(tmp_path: Path):
    app = create_app(make_settings(tmp_path))
    async with running(app) as client:
        app.state.health.draining = True
        response = await client.get("/health")
        assert response.status_code == 503
        assert response.json()["status"] == "fail"


async def test_keepalive_disabled_says_why(tmp_path: Path):
    app = create_app(make_settings(tmp_path))
    async with running(app) as client:
        body = (await client.get("/api/keepalive")).json()
        assert body["isRunning"] is False
        assert "KEEPALIVE_URL" in body["disabledReason"]
        assert body["nextPingAt"] is None
    app = create_app(make_settings(tmp_path, keep_alive_enabled=False, public_url="https://x.test"))
    async with running(app) as client:
        body = (await client.get("/api/keepalive")).json()
        assert body["disabledReason"] == "KEEP_ALIVE_ENABLED=false"


async def test_keepalive_document_after_pings(tmp_path: Path, peer, clock: FakeClock):
    settings = make_settings(
        tmp_path,
        keepalive_url="https://bot.test/health",
        heartbeat_url="https://hc.test/very-secret",
    )
    app = create_app(settings, clock=clock, transport=httpx.MockTransport(peer))
    async with running(app) as client:
        for _ in range(3):
            await app.state.keepalive.ping_once()
        body = (await client.get("/api/keepalive")).json()
    assert body["isRunning"] is True
    assert body["pingCount"] == 3
    assert body["failedPings"] == 0
    assert body["healthUrl"] == "https://bot.test/health"
    assert body["pingInterval"] == 600_000
    assert body["nextPingAt"] is not None
    assert len(body["recentPings"]) == 3
    assert body["heartbeat"]["configured"] is True
    assert "very-secret" not in str(body)


async def test_history_and_uptime_survive_a_restart(tmp_path: Path, peer, clock: FakeClock):
    settings = make_settings(tmp_path, keepalive_url="https://bot.test/health")
    failing = httpx.MockTransport(lambda r: httpx.Response(503))
    app = create_app(settings, clock=clock, transport=failing)
    async with running(app):
        await app.state.keepalive.ping_once()
    clock.advance(timedelta(minutes=10))
    app = create_app(settings, clock=clock, transport=httpx.MockTransport(peer))
    async with running(app) as client:
        await app.state.keepalive.ping_once()
        body = (await client.get("/api/keepalive")).json()
    assert body["pingCount"] == 1  # counts are per process, as in the seed
    assert body["uptimePercent"]["24h"] == 50.0  # history is not
    assert [p["ok"] for p in body["recentPings"]] == [True, False]


async def test_metrics_json_has_process_system_keepalive_and_http(tmp_path: Path):
    app = create_app(make_settings(tmp_path))
    async with running(app) as client:
        await client.get("/health")
        await client.get("/nowhere")
        body = (await client.get("/api/metrics")).json()
    assert body["process"]["rssBytes"] > 0
    assert body["process"]["threads"] >= 1
    assert body["process"]["openFiles"] >= 1
    assert 0 <= body["system"]["memoryPercent"] <= 100
    assert body["http"]["requests"]["2xx"] >= 1
    assert body["http"]["requests"]["4xx"] == 1
    assert body["keepalive"]["isRunning"] is False


async def test_prometheus_metrics_parse_and_name_the_keepalive_series(tmp_path: Path, peer):
    settings = make_settings(tmp_path, keepalive_url="https://bot.test/health")
    app = create_app(settings, transport=httpx.MockTransport(peer))
    async with running(app) as client:
        await app.state.keepalive.ping_once()
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    pings = {s.labels["result"]: s.value for s in families["keepalive_pings"].samples}
    assert pings == {"success": 1.0, "failure": 0.0}
    assert "keepalive_ping_duration_seconds" in families
    assert "keepalive_consecutive_failures" in families
    assert families["keepalive_last_success_timestamp_seconds"].samples[0].value > 0
    assert "http_requests" in families


async def test_unknown_route_and_wrong_method_are_problem_json(tmp_path: Path):
    app = create_app(make_settings(tmp_path))
    async with running(app) as client:
        missing = await client.get("/api/nope")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["status"] == 404
        wrong = await client.post("/health")
        assert wrong.status_code == 405
        assert "GET" in wrong.json()["detail"]


async def test_scheduled_pings_run_on_their_own(tmp_path: Path, peer):
    settings = make_settings(
        tmp_path,
        keepalive_url="https://bot.test/health",
        keep_alive_interval="100ms",
        keep_alive_start_delay="0",
    )
    app = create_app(settings, transport=httpx.MockTransport(peer))
    async with running(app) as client:
        async with asyncio.timeout(10):
            while app.state.keepalive.ping_count < 3:
                await asyncio.sleep(0.02)
        body = (await client.get("/api/keepalive")).json()
    assert body["pingCount"] >= 3


async def test_sigterm_turns_health_to_fail_at_once(tmp_path: Path):
    import signal

    import uvicorn

    from server import WakefulServer

    settings = make_settings(tmp_path)
    app = create_app(settings)
    server = WakefulServer(uvicorn.Config(app), app, settings)
    async with running(app) as client:
        assert (await client.get("/health")).status_code == 200
        server.handle_exit(signal.SIGTERM, None)
        server.disarm_watchdog()
        response = await client.get("/health")
        assert response.status_code == 503
        assert response.json()["output"] == "shutting down"
    assert server.should_exit


async def test_rendered_health_is_the_same_document(tmp_path: Path, clock: FakeClock):
    import json

    app = create_app(make_settings(tmp_path), clock=clock)
    async with running(app):
        state = app.state.health
        for draining in (False, True):
            state.draining = draining
            status, body = state.render()
            expected_status, expected = state.document()
            assert status == expected_status
            assert json.loads(body) == expected
