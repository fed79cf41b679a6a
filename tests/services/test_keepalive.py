"""The keep-alive step with an injected clock and a mock peer (httpx.MockTransport)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx
import pytest
from loguru import logger

from services.alerts import Alerter
from services.httpfailure import describe_failure
from services.keepalive import KeepAlive, KeepAliveConfig
from services.metrics import Metrics
from tests.support import FakeClock, Receiver

URL = "https://bot.example.test/health"
HEARTBEAT = "https://hc-ping.example.test/secret-uuid-1234"


class Peer:
    """A scripted /health: a list of outcomes consumed one per request."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.outcomes: list[int | Exception] = []
        self.latency = 0.045
        self.heartbeats = 0
        self.heartbeat_status = 200

    def handler(self, request: httpx.Request) -> httpx.Response:
        if str(request.url).startswith(HEARTBEAT):
            self.heartbeats += 1
            return httpx.Response(self.heartbeat_status)
        self.clock.advance(self.latency)
        outcome = self.outcomes.pop(0) if self.outcomes else 200
        if isinstance(outcome, Exception):
            raise outcome
        return httpx.Response(outcome, json={"status": "pass"})


@pytest.fixture
def logs() -> Iterator[list[str]]:
    lines: list[str] = []
    handler_id = logger.add(lambda m: lines.append(m.record["message"]), level="DEBUG")
    yield lines
    logger.remove(handler_id)


@pytest.fixture
def make_keepalive(clock: FakeClock) -> Callable[..., tuple[KeepAlive, Peer, Alerter]]:
    def build(**overrides: object) -> tuple[KeepAlive, Peer, Alerter]:
        peer = Peer(clock)
        config = KeepAliveConfig(
            url=URL,
            interval=timedelta(minutes=10),
            timeout=timedelta(seconds=10),
            start_delay=timedelta(seconds=5),
            **overrides,  # type: ignore[arg-type]
        )
        alerter = Alerter([], clock)
        client = httpx.AsyncClient(transport=httpx.MockTransport(peer.handler))
        keepalive = KeepAlive(
            config, client=client, alerter=alerter, clock=clock, metrics=Metrics()
        )
        return keepalive, peer, alerter

    return build


async def test_successful_ping_is_counted_and_logged_like_the_seed(make_keepalive, logs):
    keepalive, _peer, _ = make_keepalive()
    record = await keepalive.ping_once()
    assert record.ok
    assert record.status_code == 200
    assert record.latency_ms == pytest.approx(45.0)
    assert "💗 Keep-alive ping #1 successful (45ms)" in logs
    assert keepalive.snapshot(None)["successRate"] == "100.0"


async def test_alert_fires_exactly_once_at_the_third_failure(make_keepalive, logs):
    keepalive, peer, _alerter = make_keepalive()
    peer.outcomes = [503] * 6
    for expected_alerting in (False, False, True, True, True, True):
        await keepalive.ping_once()
        assert keepalive.alerting is expected_alerting
    alerts = [line for line in logs if "ALERT: 3 consecutive keep-alive failures!" in line]
    assert len(alerts) == 1
    assert "HTTP 503 Service Unavailable" in alerts[0]
    assert keepalive.consecutive_failures == 6
    assert keepalive.failed_pings == 6
    assert "❌ Keep-alive ping #1 failed: HTTP 503 Service Unavailable" in logs


async def test_recovery_sends_one_resolved_notice_with_the_downtime(make_keepalive, clock, logs):
    keepalive, peer, _ = make_keepalive()
    peer.outcomes = [503, 503, 503, 503]
    for _ in range(4):
        await keepalive.ping_once()
        clock.advance(timedelta(minutes=10))
    await keepalive.ping_once()
    await keepalive.ping_once()
    resolved = [line for line in logs if line.startswith("✅ RESOLVED")]
    assert len(resolved) == 1
    # Down from the first failure (not from the alert at the third): 4 pings 10 min apart.
    assert "after 4 consecutive failures" in resolved[0]
    assert "(down 40m 0s)" in resolved[0]
    assert not keepalive.alerting
    assert keepalive.consecutive_failures == 0


async def test_a_second_incident_alerts_again(make_keepalive, logs):
    keepalive, peer, _ = make_keepalive()
    peer.outcomes = [503, 503, 503, 200, 503, 503, 503]
    for _ in range(7):
        await keepalive.ping_once()
    assert sum("ALERT:" in line for line in logs) == 2
    assert sum("RESOLVED" in line for line in logs) == 1


async def test_stats_block_every_ten_pings(make_keepalive, logs):
    keepalive, peer, _ = make_keepalive()
    peer.outcomes = [200] * 9 + [503] + [200] * 9
    for _ in range(19):
        await keepalive.ping_once()
    blocks = [line for line in logs if "Keep-Alive Stats:" in line]
    assert len(blocks) == 1
    assert "Total Pings: 10" in blocks[0]
    assert "Failed Pings: 1" in blocks[0]
    assert "Success Rate: 90.0%" in blocks[0]
    await keepalive.ping_once()
    blocks = [line for line in logs if "Keep-Alive Stats:" in line]
    assert len(blocks) == 2
    assert "Success Rate: 95.0%" in blocks[1]


async def test_heartbeat_only_after_a_successful_ping_and_never_logged(make_keepalive, logs):
    keepalive, peer, _ = make_keepalive(heartbeat_url=HEARTBEAT)
    peer.outcomes = [200, 503, 200]
    for _ in range(3):
        await keepalive.ping_once()
    assert peer.heartbeats == 2
    peer.heartbeat_status = 404
    await keepalive.ping_once()
    assert keepalive.heartbeat is not None
    assert keepalive.heartbeat.failures == 1
    refused = "Heartbeat push to HEARTBEAT_URL failed: HTTP 404 (success signal)"
    assert any(refused in line for line in logs)
    assert all("secret-uuid" not in line for line in logs)
    snapshot = keepalive.snapshot(None)
    assert snapshot["heartbeat"]["configured"] is True
    assert "secret-uuid" not in str(snapshot)


async def test_a_token_in_the_target_url_is_never_shown(clock, logs):
    # KEEPALIVE_URL may carry a credential a proxy in front asks for: it is used, not shown.
    peer = Peer(clock)
    peer.outcomes = [503, 503, 503, 200]
    config = KeepAliveConfig(
        url="https://u:pw-0a1b2c@bot.example.test/health?token=tk-3d4e5f",
        interval=timedelta(minutes=10),
        timeout=timedelta(seconds=10),
        start_delay=timedelta(seconds=5),
    )
    with Receiver() as receiver:
        alerter = Alerter([receiver.url("json")], clock)
        client = httpx.AsyncClient(transport=httpx.MockTransport(peer.handler))
        keepalive = KeepAlive(config, client=client, alerter=alerter, clock=clock)
        keepalive.log_started()
        for _ in range(4):
            await keepalive.ping_once()
        await alerter.drain(grace=10)
    shown = "https://u:***@bot.example.test/health?token=***"
    notes = [request["json"]["message"] for request in receiver.requests]
    assert len(notes) == 2
    assert all(shown in note for note in notes)
    assert keepalive.snapshot(None)["healthUrl"] == shown
    assert any(f"Ping URL: {shown}" in line for line in logs)
    assert any(line.endswith(f"HTTP 503 Service Unavailable; target {shown}") for line in logs)
    for text in [*logs, *notes, str(keepalive.snapshot(None))]:
        assert "pw-0a1b2c" not in text
        assert "tk-3d4e5f" not in text


async def test_heartbeat_failure_does_not_stop_the_pings(make_keepalive):
    keepalive, peer, _ = make_keepalive(heartbeat_url=HEARTBEAT)

    def broken(request: httpx.Request) -> httpx.Response:
        if str(request.url).startswith(HEARTBEAT):
            raise httpx.ConnectError("boom")
        answer: httpx.Response = peer.handler(request)
        return answer

    keepalive._client = httpx.AsyncClient(transport=httpx.MockTransport(broken))
    assert keepalive.heartbeat is not None
    keepalive.heartbeat._client = keepalive._client
    first = await keepalive.ping_once()
    second = await keepalive.ping_once()
    assert first.ok
    assert second.ok
    assert keepalive.heartbeat is not None
    assert keepalive.heartbeat.failures == 2


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (httpx.ReadTimeout("read timed out"), "timeout of 10000ms exceeded"),
        (TimeoutError(), "timeout of 10000ms exceeded"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "connection refused"),
        (
            httpx.ConnectError("[Errno -2] Name or service not known"),
            "DNS lookup failed ([Errno -2] Name or service not known)",
        ),
    ],
)
def test_failure_reasons_a_person_understands(exc: Exception, reason: str):
    assert describe_failure(exc, timedelta(seconds=10)) == reason


def test_dns_failure_found_in_the_cause_chain():
    error = httpx.ConnectError("failed")
    error.__cause__ = socket.gaierror(-2, "Name or service not known")
    assert describe_failure(error, timedelta(seconds=10)) == (
        "DNS lookup failed (Name or service not known)"
    )


async def test_snapshot_reports_uptime_percent_latency_and_recent_pings(make_keepalive, clock):
    keepalive, peer, _ = make_keepalive()
    peer.outcomes = [200, 200, 503, 200]
    for latency in (0.010, 0.020, 0.030, 0.040):
        peer.latency = latency
        await keepalive.ping_once()
        clock.advance(timedelta(minutes=10))
    snap = keepalive.snapshot(clock.now())
    assert snap["pingCount"] == 4
    assert snap["failedPings"] == 1
    assert snap["successRate"] == "75.0"
    assert snap["uptimePercent"] == {"24h": 75.0, "7d": 75.0}
    assert snap["latency"]["p50Ms"] == 20.0
    assert snap["latency"]["maxMs"] == 40.0
    assert [p["ok"] for p in snap["recentPings"]] == [True, False, True, True]  # newest first
    assert snap["lastPing"]["latencyMs"] == 40.0
    # A day later the first pings fall out of the 24 h window but not the 7 d one.
    clock.advance(timedelta(hours=23, minutes=45))  # window now starts after ping 3
    later = keepalive.snapshot(None)
    assert later["uptimePercent"]["24h"] == 100.0
    assert later["uptimePercent"]["7d"] == 75.0


async def test_snapshot_keeps_the_seed_field_names_and_types(make_keepalive, clock):
    keepalive, _, _ = make_keepalive()
    clock.advance(timedelta(hours=1))
    await keepalive.ping_once()
    snap = keepalive.snapshot(None)
    assert snap["isRunning"] is True
    assert snap["uptime"] == 3_600_045
    assert snap["uptimeHours"] == "1.0"
    assert snap["pingCount"] == 1
    assert isinstance(snap["failedPings"], int)
    assert snap["successRate"] == "100.0"
    assert snap["healthUrl"] == URL
    assert snap["pingInterval"] == 600_000


async def test_metrics_follow_the_pings(make_keepalive):
    keepalive, peer, _ = make_keepalive()
    peer.outcomes = [200, 503, 503]
    for _ in range(3):
        await keepalive.ping_once()
    metrics = keepalive._metrics
    assert metrics is not None
    text = metrics.render().decode()
    assert 'keepalive_pings_total{result="success"} 1.0' in text
    assert 'keepalive_pings_total{result="failure"} 2.0' in text
    assert "keepalive_consecutive_failures 2.0" in text
