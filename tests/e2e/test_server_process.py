"""`python server.py` as a real process on a free loopback port, as a user runs it."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.httpwire import read_response
from tests.support import Receiver, ServerProcess, free_port, run_server_once, wait_until

FAST = {"KEEP_ALIVE_ENABLED": "true", "KEEP_ALIVE_INTERVAL": "1s", "KEEP_ALIVE_START_DELAY": "0"}


def test_pings_itself_and_reports_the_counts(tmp_path: Path):
    with ServerProcess(tmp_path / "data", FAST) as server:
        server.env["KEEPALIVE_URL"] = f"{server.base_url}/health"
        server.stop(signal.SIGKILL)  # restart with the URL that names its own port
        server.start()
        server.wait_ready()
        server.wait_for_log("Keep-alive ping #3 successful", timeout=15)
        body = server.get("/api/keepalive").json()
        assert body["isRunning"] is True
        assert body["pingCount"] >= 3
        assert body["failedPings"] == 0
        assert body["successRate"] == "100.0"
        assert body["healthUrl"] == f"{server.base_url}/health"
        assert body["pingInterval"] == 1000
        assert body["uptimePercent"]["24h"] == 100.0
        log = server.log
        assert "💗 Keep-alive service started" in log
        assert f"Ping URL: {server.base_url}/health" in log
        assert "Interval: 1s" in log
        assert f"✅ Server running on port {server.port}" in log

        metrics = server.get("/metrics")
        families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
        success = [
            s
            for s in families["keepalive_pings"].samples
            if s.labels.get("result") == "success" and s.name.endswith("_total")
        ]
        assert success[0].value >= 3
        requests = {
            s.labels["status_class"]: s.value
            for s in families["http_requests"].samples
            if s.name.endswith("_total")
        }
        assert requests["2xx"] >= 3


def test_closed_port_alerts_once_and_notifies_a_real_receiver(tmp_path: Path):
    closed = free_port()  # nothing listens here: every ping is refused
    with (
        Receiver() as receiver,
        ServerProcess(
            tmp_path / "data",
            {
                **FAST,
                "KEEPALIVE_URL": f"http://127.0.0.1:{closed}/health",
                "ALERT_URLS": receiver.url("json", "/alerts"),
            },
        ) as server,
    ):
        server.wait_ready()
        server.wait_for_log("Keep-alive ping #6 failed", timeout=20)
        log = server.log
        assert log.count("ALERT: 3 consecutive keep-alive failures!") == 1
        assert "Keep-alive ping #1 failed: connection refused" in log
        wait_until(lambda: len(receiver.requests) >= 1, 10, "the alert notification")
        time.sleep(1.5)
        assert len(receiver.requests) == 1
        note = receiver.requests[0]["json"]
        assert note["type"] == "failure"
        assert "3 consecutive keep-alive failures" in note["message"]
        body = server.get("/api/keepalive").json()
        assert body["alerting"] is True
        assert body["consecutiveFailures"] >= 6
        assert body["lastPing"]["error"] == "connection refused"
        assert server.get("/health").json()["status"] == "warn"


def test_heartbeat_reaches_the_monitor_and_its_url_is_never_logged(tmp_path: Path):
    with Receiver() as monitor, ServerProcess(tmp_path / "data", FAST) as server:
        server.stop(signal.SIGKILL)
        server.env["KEEPALIVE_URL"] = f"{server.base_url}/health"
        server.env["HEARTBEAT_URL"] = monitor.url("http", "/ping/0b7e-secret-check")
        server.start()
        server.wait_ready()
        wait_until(lambda: len(monitor.requests) >= 3, 15, "the start and two heartbeats")
        # Healthchecks-style (the default): `/start` at boot, then a POST per good ping.
        paths = sorted(request["path"] for request in monitor.requests[:3])
        assert paths == ["/ping/0b7e-secret-check"] * 2 + ["/ping/0b7e-secret-check/start"]
        body = server.get("/api/keepalive").json()
        assert body["heartbeat"]["configured"] is True
        assert body["heartbeat"]["lastOk"] is True
        server.stop(signal.SIGTERM)
        assert "0b7e-secret-check" not in server.log
        assert "0b7e-secret-check" not in json.dumps(body)


def test_without_a_public_url_the_keepalive_says_so_once(tmp_path: Path):
    with ServerProcess(tmp_path / "data", {"KEEP_ALIVE_ENABLED": "true"}) as server:
        server.wait_ready()
        server.wait_for_log("Keep-alive is off")
        assert server.log.count("Keep-alive is off") == 1
        assert "set KEEPALIVE_URL or PUBLIC_URL" in server.log
        body = server.get("/api/keepalive").json()
        assert body["isRunning"] is False


def test_railway_default_interval_warns_about_the_sleep_threshold(tmp_path: Path):
    env = {
        "KEEP_ALIVE_ENABLED": "true",
        "RAILWAY_PUBLIC_DOMAIN": "bot.up.railway.app",
        "KEEP_ALIVE_START_DELAY": "1h",
    }
    with ServerProcess(tmp_path / "data", env) as server:
        server.wait_ready()
        server.wait_for_log("sleep threshold")
        assert "KEEP_ALIVE_INTERVAL=600s (10min) reaches Railway's sleep threshold" in server.log
        assert "Ping URL: https://bot.up.railway.app/health" in server.log


def test_a_bad_setting_exits_2_with_one_line_naming_it(tmp_path: Path):
    code, output = run_server_once(tmp_path / "data", {"KEEP_ALIVE_INTERVAL": "ten minutes"})
    assert code == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == [
        "Invalid configuration: KEEP_ALIVE_INTERVAL='ten minutes': expected milliseconds "
        "(600000) or a number with a unit (500ms, 30s, 10m, 24h, 7d)"
    ]


def test_a_bad_memory_tracing_setting_exits_2_with_one_line_naming_it(tmp_path: Path):
    code, output = run_server_once(
        tmp_path / "data",
        {"WAKEFUL_TRACEMALLOC": str(tmp_path / "traces"), "WAKEFUL_TRACEMALLOC_EVERY": "5m"},
    )
    assert code == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == ["WAKEFUL_TRACEMALLOC_EVERY='5m': expected seconds above 0"]


def test_an_unusable_database_exits_2_with_one_line(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, output = run_server_once(
        tmp_path / "data", {"DATABASE_URL": f"sqlite:///{blocker}/sub/wakeful.db"}
    )
    assert code == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("Database unavailable")


def test_sigterm_exits_cleanly_within_the_bound(tmp_path: Path):
    env = {**FAST, "SHUTDOWN_TIMEOUT": "5s"}
    with ServerProcess(tmp_path / "data", env) as server:
        server.stop(signal.SIGKILL)
        server.env["KEEPALIVE_URL"] = f"{server.base_url}/health"
        server.start()
        server.wait_ready()
        server.wait_for_log("Keep-alive ping #1 successful")
        # A client holding a keep-alive connection open must not hold up the exit.
        client = httpx.Client(base_url=server.base_url)
        assert client.get("/health").status_code == 200
        started = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout=10)
        elapsed = time.monotonic() - started
        client.close()
        assert code == 0, server.log
        assert elapsed < 5
        assert "Shutdown complete" in server.log


def test_json_log_format_is_one_object_per_line(tmp_path: Path):
    with ServerProcess(tmp_path / "data", {"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}) as server:
        server.wait_ready()
        server.stop(signal.SIGTERM)
    records = [json.loads(line) for line in server.lines if line.strip()]
    assert records, server.log
    assert all({"time", "level", "message"} <= record.keys() for record in records)
    assert any(r["component"] == "uvicorn" for r in records)
    assert any("Server running on port" in r["message"] for r in records)


def test_an_idle_connection_stays_open_longer_than_a_proxy_keeps_it(tmp_path: Path):
    # uvicorn closes idle connections after 5 s by default; a platform proxy reusing one
    # just then gets a reset (a 502 for its client). Ours stay open longer than 5 s.
    with ServerProcess(tmp_path / "data") as server:
        server.wait_ready()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            request = b"GET /health HTTP/1.1\r\nHost: wakeful\r\n\r\n"
            conn.sendall(request)
            assert read_response(conn).status == 200
            time.sleep(6)
            conn.sendall(request)
            assert read_response(conn).status == 200
        assert server.stop(signal.SIGTERM) == 0
