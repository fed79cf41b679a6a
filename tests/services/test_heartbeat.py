"""The heartbeat against a real monitor on loopback that speaks Healthchecks.io's ping API and
Uptime Kuma's push API, driven by the real keep-alive step over real sockets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from loguru import logger

from config import ConfigError, load_settings
from services.alerts import Alerter
from services.clock import SystemClock
from services.heartbeat import HeartbeatKind, build_request, detect_kind
from services.keepalive import KeepAlive, KeepAliveConfig
from services.metrics import Metrics
from tests.support import free_port, run_server_once

CHECK_UUID = "5f2c1a9e-8b7d-4c3e-9f10-2a3b4c5d6e7f"
PUSH_TOKEN = "kPushT0ken42"
HEALTH_DELAY = 0.03  # the monitored /health answers after this long: a latency to report


@dataclass
class Ping:
    kind: str  # "success", "start", "fail" (Healthchecks) or "up"/"down" (Kuma)
    method: str
    body: str
    query: dict[str, str] = field(default_factory=dict)


class Monitor:
    """A loopback server with three faces: the monitored service's `/health` (which can be
    made to fail), a Healthchecks.io check at `/ping/<uuid>` (also `/start`, `/fail`), and an
    Uptime Kuma push monitor at `/api/push/<token>`. Unknown checks get their 404s."""

    def __init__(self) -> None:
        self.healthchecks: list[Ping] = []
        self.kuma: list[Ping] = []
        self.health_status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length", 0) or 0)
                body = self.rfile.read(length).decode() if length else ""
                parts = urlsplit(self.path)
                segments = parts.path.strip("/").split("/")
                if parts.path == "/health":
                    time.sleep(HEALTH_DELAY)
                    self._answer(outer.health_status, b'{"status":"pass"}', "application/json")
                elif segments[:1] == ["ping"] and len(segments) in (2, 3):
                    # Healthchecks: /ping/<uuid>[/start|/fail]; body kept (up to 100 kB).
                    if segments[1] != CHECK_UUID:
                        self._answer(404, b"not found", "text/plain")
                        return
                    kind = segments[2] if len(segments) == 3 else "success"
                    if kind not in ("success", "start", "fail"):
                        self._answer(400, b"invalid url format", "text/plain")
                        return
                    outer.healthchecks.append(Ping(kind, self.command, body))
                    self._answer(200, b"OK", "text/plain")
                elif segments[:2] == ["api", "push"] and len(segments) == 3:
                    # Kuma: any method; status up (default) or down, msg, ping in the query.
                    if segments[2] != PUSH_TOKEN:
                        refusal = {"ok": False, "msg": "Monitor not found or not active."}
                        self._answer(404, json.dumps(refusal).encode(), "application/json")
                        return
                    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                    status = query.get("status", "up")
                    outer.kuma.append(Ping(status, self.command, body, query))
                    self._answer(200, b'{"ok":true}', "application/json")
                else:
                    self._answer(404, b"no such route", "text/plain")

            do_GET = do_POST = do_HEAD = _handle  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    server = Monitor()
    yield server
    server.close()


@pytest.fixture
def logs() -> Iterator[list[str]]:
    lines: list[str] = []
    handler_id = logger.add(lambda m: lines.append(m.record["message"]), level="DEBUG")
    yield lines
    logger.remove(handler_id)


async def keepalive_for(
    monitor: Monitor, heartbeat_url: str, kind: HeartbeatKind | None = None
) -> tuple[KeepAlive, httpx.AsyncClient, Metrics]:
    config = KeepAliveConfig(
        url=f"{monitor.base}/health",
        interval=timedelta(minutes=10),
        timeout=timedelta(seconds=5),
        start_delay=timedelta(seconds=5),
        heartbeat_url=heartbeat_url,
        heartbeat_kind=kind,
    )
    client = httpx.AsyncClient()
    metrics = Metrics()
    keepalive = KeepAlive(
        config,
        client=client,
        alerter=Alerter([], SystemClock()),
        clock=SystemClock(),
        metrics=metrics,
    )
    return keepalive, client, metrics


async def test_healthchecks_hears_the_start_each_success_with_its_latency_and_the_failure(
    monitor: Monitor, logs: list[str]
) -> None:
    keepalive, client, metrics = await keepalive_for(monitor, f"{monitor.base}/ping/{CHECK_UUID}")
    async with client:
        assert keepalive.heartbeat is not None
        assert keepalive.heartbeat.kind is HeartbeatKind.HEALTHCHECKS
        await keepalive.announce_start()
        await keepalive.ping_once()
        monitor.health_status = 503
        for _ in range(4):  # the incident opens at the third failure
            await keepalive.ping_once()
        monitor.health_status = 200
        await keepalive.ping_once()
    kinds = [p.kind for p in monitor.healthchecks]
    assert kinds == ["start", "success", "fail", "fail", "success"]
    start, first, fail, _, back = monitor.healthchecks
    assert start.method == "POST"
    assert "started" in start.body
    # The success body names the latency, which is at least what /health took to answer.
    latency = float(first.body.split(" in ")[1].split(" ms")[0])
    assert latency >= HEALTH_DELAY * 1000
    assert first.body.startswith("ping #1 ok")
    assert "3 consecutive keep-alive failures: HTTP 503 Service Unavailable" in fail.body
    assert back.body.startswith("ping #6 ok")
    assert keepalive.heartbeat.failures == 0
    text = metrics.render().decode()
    assert 'heartbeat_pushes_total{event="fail",result="ok"} 2.0' in text
    assert 'heartbeat_pushes_total{event="success",result="ok"} 2.0' in text
    assert 'heartbeat_pushes_total{event="start",result="ok"} 1.0' in text
    assert all(CHECK_UUID not in line for line in logs)


async def test_uptime_kuma_is_recognised_and_gets_up_with_ping_and_down_with_the_reason(
    monitor: Monitor,
) -> None:
    # The URL as Kuma shows it to copy, its own query included.
    url = f"{monitor.base}/api/push/{PUSH_TOKEN}?status=up&msg=OK&ping="
    keepalive, client, _ = await keepalive_for(monitor, url)
    async with client:
        assert keepalive.heartbeat is not None
        assert keepalive.heartbeat.kind is HeartbeatKind.UPTIME_KUMA
        await keepalive.announce_start()  # Kuma has no "started": nothing is sent
        assert monitor.kuma == []
        await keepalive.ping_once()
        monitor.health_status = 500
        for _ in range(3):
            await keepalive.ping_once()
    up, down = monitor.kuma
    assert up.kind == "up"
    assert up.method == "GET"
    assert int(up.query["ping"]) >= HEALTH_DELAY * 1000
    assert up.query["msg"].startswith("ping #1 ok")
    assert down.kind == "down"
    assert down.query["msg"] == (
        "3 consecutive keep-alive failures: HTTP 500 Internal Server Error"
    )
    assert down.query.get("ping", "") == ""


async def test_the_kind_can_be_forced_and_a_refused_push_is_counted_not_raised(
    monitor: Monitor, logs: list[str]
) -> None:
    # A Kuma behind a path of its own: forced with HEARTBEAT_KIND.
    keepalive, client, metrics = await keepalive_for(
        monitor, f"{monitor.base}/api/push/wrong-token", HeartbeatKind.UPTIME_KUMA
    )
    async with client:
        record = await keepalive.ping_once()
    assert record.ok
    assert keepalive.heartbeat is not None
    assert keepalive.heartbeat.failures == 1
    assert keepalive.snapshot(None)["heartbeat"]["lastError"] == "HTTP 404"
    assert 'heartbeat_pushes_total{event="success",result="error"} 1.0' in metrics.render().decode()
    refused = "Heartbeat push to HEARTBEAT_URL failed: HTTP 404 (success signal)"
    assert any(refused in line for line in logs)
    assert all("wrong-token" not in line for line in logs)


async def test_an_unusable_heartbeat_url_never_kills_the_keep_alive_job(
    monitor: Monitor, logs: list[str]
) -> None:
    """What a trailing newline did before it was refused at start: every push raised
    httpx.InvalidURL, which escaped the step ("Job keepalive failed", no ping stored).
    A port out of range is such a URL today."""
    keepalive, client, _ = await keepalive_for(monitor, f"http://127.0.0.1:99999/ping/{CHECK_UUID}")
    async with client:
        first = await keepalive.ping_once()
        second = await keepalive.ping_once()
    assert first.ok and second.ok
    assert keepalive.heartbeat is not None
    assert keepalive.heartbeat.failures == 2
    # The reason from inside anyio's exception group, not "unhandled errors in a TaskGroup".
    assert keepalive.heartbeat.last_error == "OverflowError: connect(): port must be 0-65535."
    assert all(CHECK_UUID not in line for line in logs)


async def test_an_unusable_keepalive_url_is_a_failed_ping_not_a_dead_job() -> None:
    config = KeepAliveConfig(
        url="http://127.0.0.1:1/health\n",  # httpx.InvalidURL, not an httpx.HTTPError
        interval=timedelta(minutes=10),
        timeout=timedelta(seconds=5),
        start_delay=timedelta(seconds=5),
    )
    async with httpx.AsyncClient() as client:
        keepalive = KeepAlive(
            config, client=client, alerter=Alerter([], SystemClock()), clock=SystemClock()
        )
        record = await keepalive.ping_once()
    assert not record.ok
    assert keepalive.failed_pings == 1
    assert record.error is not None
    assert record.error.startswith("InvalidURL: Invalid non-printable ASCII character")


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://hc-ping.com/5f2c1a9e-8b7d-4c3e-9f10-2a3b4c5d6e7f", HeartbeatKind.HEALTHCHECKS),
        ("https://hc-ping.com/ping-key/my-slug?create=1", HeartbeatKind.HEALTHCHECKS),
        (
            "https://status.example.test/api/push/AbC123?status=up&msg=OK&ping=",
            HeartbeatKind.UPTIME_KUMA,
        ),
    ],
)
def test_the_kind_is_recognised_from_the_url(url: str, kind: HeartbeatKind) -> None:
    assert detect_kind(url) is kind


def test_healthchecks_signals_keep_the_query_after_the_path() -> None:
    request = build_request(
        HeartbeatKind.HEALTHCHECKS,
        "https://hc-ping.com/ping-key/my-slug/?create=1",
        "fail",
        message="boom\nsecond line",
    )
    assert request is not None
    assert request.url == "https://hc-ping.com/ping-key/my-slug/fail?create=1"
    assert request.body == "boom second line\n"


@pytest.mark.parametrize(
    "variable", ["HEARTBEAT_URL", "KEEPALIVE_URL", "PUBLIC_URL", "WEBHOOK_URL"]
)
def test_a_url_with_a_trailing_newline_is_refused_naming_the_variable(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "https://hc-ping.example.test/abc\n")
    monkeypatch.setenv("WEBHOOK_SECRET", "s" * 32)
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None)
    line = str(refused.value)
    assert "\n" not in line
    assert line.startswith(f"Invalid configuration: {variable}=")
    assert "whitespace" in line


def test_heartbeat_kind_accepts_the_names_people_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTBEAT_KIND", "Kuma")
    assert load_settings(_env_file=None).heartbeat_kind == "uptime-kuma"
    monkeypatch.setenv("HEARTBEAT_KIND", "cronitor")
    with pytest.raises(ConfigError, match=r"^Invalid configuration: HEARTBEAT_KIND="):
        load_settings(_env_file=None)


def test_the_server_refuses_to_start_with_a_pasted_line_break(tmp_path: Path) -> None:
    code, output = run_server_once(
        tmp_path / "data",
        {"HEARTBEAT_URL": f"https://hc-ping.example.test/{CHECK_UUID}\n", "PORT": str(free_port())},
    )
    assert code == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == [
        "Invalid configuration: HEARTBEAT_URL=(hidden): contains whitespace (a line break or "
        "space pasted with it?); expected the value alone"
    ]
