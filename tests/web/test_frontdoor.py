"""/health at the front door: what uvicorn serves (`server.front_door`) answers GET and HEAD
/health itself, with the same document, headers and status the app's own route gives, from a
render kept for a moment; a drain shows at once; everything else reaches the app."""

from __future__ import annotations

from pathlib import Path

import httpx

from server import create_app, front_door
from tests.support import FakeClock
from tests.web.test_api import make_settings, running
from web.frontdoor import CACHE_SECONDS


def through(door: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=door)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://wakeful.test")


async def test_the_front_door_answers_as_the_app_does(tmp_path: Path, clock: FakeClock) -> None:
    app = create_app(make_settings(tmp_path), clock=clock)
    door = front_door(app)
    async with running(app) as inside, through(door) as outside:
        mine = await outside.get("/health")
        theirs = await inside.get("/health")
        head = await outside.head("/health")
    assert mine.status_code == theirs.status_code == 200
    assert mine.json() == theirs.json()  # the fake clock stands still: equal to the byte
    for name in ("content-type", "cache-control", "content-length"):
        assert mine.headers[name] == theirs.headers[name], name
    assert mine.headers["cache-control"] == "max-age=5"
    assert mine.headers["x-frame-options"] == "DENY"
    assert mine.headers["x-content-type-options"] == "nosniff"
    assert mine.headers["referrer-policy"] == "same-origin"
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == mine.headers["content-length"]


async def test_a_render_is_kept_briefly_and_a_drain_shows_at_once(
    tmp_path: Path, clock: FakeClock
) -> None:
    app = create_app(make_settings(tmp_path), clock=clock)
    door = front_door(app)
    door._monotonic = clock.monotonic  # the fake clock's time for the cache too
    async with running(app), through(door) as client:
        first = await client.get("/health")
        clock.advance(CACHE_SECONDS / 2)
        again = await client.get("/health")
        assert again.content == first.content  # the same render: uptime did not move
        clock.advance(CACHE_SECONDS)
        later = await client.get("/health")
        assert later.json()["uptime"] > first.json()["uptime"]

        app.state.health.draining = True  # SIGTERM: no waiting for the cache to expire
        draining = await client.get("/health")
        assert draining.status_code == 503
        assert draining.json()["status"] == "fail"
        assert draining.json()["output"] == "shutting down"


async def test_everything_else_reaches_the_app_and_health_is_counted(
    tmp_path: Path, clock: FakeClock
) -> None:
    app = create_app(make_settings(tmp_path), clock=clock)
    door = front_door(app)
    async with running(app), through(door) as client:
        before = dict(app.state.metrics.http_counts)
        assert (await client.get("/health")).status_code == 200
        keepalive = await client.get("/api/keepalive")
        assert keepalive.status_code == 200 and "isRunning" in keepalive.json()
        refused = await client.post("/health")
        assert refused.status_code == 405  # the app's own answer, not the front door's
        assert (await client.get("/health/")).status_code != 200
    after = app.state.metrics.http_counts
    assert sum(after.values()) - sum(before.values()) == 4


async def test_only_a_pass_is_kept_so_a_recovery_shows_at_once(
    tmp_path: Path, clock: FakeClock
) -> None:
    app = create_app(make_settings(tmp_path), clock=clock)
    door = front_door(app)
    door._monotonic = clock.monotonic
    stage = {"now": "fail"}
    app.state.health.checks["browser"] = lambda: (stage["now"], {"output": "starting"})
    async with running(app), through(door) as client:
        starting = await client.get("/health")
        assert starting.status_code == 503
        stage["now"] = "pass"  # the boot preflight passed: no waiting for the cache
        passing = await client.get("/health")
        assert passing.status_code == 200 and passing.json()["status"] == "pass"
