"""The database going away while wakeful runs, and at start (a real process each time).

The running case needs a server whose connections can be cut: Postgres behind a TCP proxy
(the suite's Postgres: TEST_DATABASE_URL's, or the one the suite starts). The start cases
need no server.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from bot.engines.whatsapp.browser import find_browser_process
from tests.e2e.test_outbox_process import ADMIN as DEMO_ADMIN
from tests.e2e.test_outbox_process import create, demo_env, scan, stop_cleanly
from tests.support import (
    ServerProcess,
    free_port,
    fresh_postgres_database,
    run_server_once,
    wait_until,
)
from tests.tcpproxy import TcpProxy

ADMIN = "admin-token-for-outage-0001"
PROBLEM_JSON = "application/problem+json"


def call(server: ServerProcess, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.request(method, server.base_url + path, headers=headers, timeout=15, **kw)


def database_check(server: ServerProcess) -> tuple[int, str, str]:
    response = server.get("/health")
    body = response.json()
    return (
        response.status_code,
        body["status"],
        body["checks"]["database:responseTime"][0]["status"],
    )


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[tuple[str, int]]:
    """A fresh database on the test Postgres: (name, port)."""
    with fresh_postgres_database(postgres_url, "wakeful_outage") as name:
        yield name, make_url(postgres_url).port or 5432


def test_database_away_while_running_is_a_warn_and_503_then_recovers_alone(
    tmp_path: Path, postgres_database: tuple[str, int]
):
    name, pg_port = postgres_database
    with TcpProxy(pg_port) as proxy:
        env = {
            "ADMIN_TOKEN": ADMIN,
            "BOT_ENGINE": "tests.engines:auto_engine",
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}",
            "DATABASE_CHECK_INTERVAL": "300ms",
            "RETRY_BASE_DELAY": "200ms",
            "RETRY_MAX_DELAY": "1s",
            "SEND_RATE": "6000",
        }
        with ServerProcess(tmp_path / "data", env) as server:
            server.wait_ready()
            assert database_check(server) == (200, "pass", "pass")
            token = call(server, "POST", "/api/users", ADMIN, json={"name": "ann"}).json()["token"]
            bot = call(server, "POST", "/api/sessions", token, json={"name": "shop"}).json()["id"]
            wait_until(
                lambda: (
                    call(server, "GET", f"/api/sessions/{bot}", token).json()["state"]
                    == "CONNECTED"
                ),
                20,
                "the bot to connect",
            )

            proxy.cut()
            wait_until(lambda: database_check(server)[2] == "warn", 10, "/health to warn")
            # Still 200: the process is fine, and a platform must not restart it for this.
            code, status, _ = database_check(server)
            assert (code, status) == (200, "warn")
            output = server.get("/health").json()["checks"]["database:responseTime"][0]["output"]
            # The kind of error only: /health is public, the database's address is not.
            assert output == "ConnectionRefusedError", output

            refused = [
                call(server, "POST", "/api/sessions", token, json={"name": "second"}),
                call(
                    server,
                    "POST",
                    f"/api/sessions/{bot}/messages",
                    token,
                    json={"to": "+15550001111", "text": "during the outage"},
                ),
                call(server, "GET", "/api/audit", ADMIN),
                # A token not verified in the last seconds is looked up in the database.
                call(server, "GET", "/api/me", "wk_a-token-this-server-has-not-seen-yet"),
            ]
            for response in refused:
                assert response.status_code == 503, response.text
                assert response.headers["content-type"] == PROBLEM_JSON
                assert response.headers["retry-after"] == "5"
                assert "database is unreachable" in response.json()["detail"]
            # What lives in memory is still answered.
            assert server.get("/api/keepalive").status_code == 200
            assert server.get("/metrics").status_code == 200
            assert server.get("/api/metrics").status_code == 200
            # A bot's page needs its stored history.
            assert call(server, "GET", f"/api/sessions/{bot}", ADMIN).status_code == 503

            # Long enough for every background loop (sender, webhooks, counts, keep-alive
            # history, heartbeats) to run into the outage.
            def unreachable_for() -> float:
                check = server.get("/health").json()["checks"]["database:responseTime"][0]
                since = datetime.fromisoformat(check["unreachableSince"])
                return (datetime.now(UTC) - since).total_seconds()

            wait_until(lambda: unreachable_for() >= 3, 10, "three seconds of outage")
            proxy.start()
            wait_until(lambda: database_check(server) == (200, "pass", "pass"), 15, "recovery")
            again = call(server, "POST", "/api/sessions", token, json={"name": "second"})
            assert again.status_code == 201, again.text
            sent = call(
                server,
                "POST",
                f"/api/sessions/{bot}/messages",
                token,
                json={"to": "+15550001111", "text": "after the outage"},
            )
            assert sent.status_code == 202, sent.text
            message = sent.json()["id"]
            wait_until(
                lambda: (
                    call(server, "GET", f"/api/sessions/{bot}/messages/{message}", token).json()[
                        "status"
                    ]
                    == "sent"
                ),
                20,
                "the message sent after the outage",
                explain=lambda: server.log[-6000:],
            )
            # Nothing was stored for the refused requests: the only bots are the two made.
            names = sorted(
                s["name"] for s in call(server, "GET", "/api/sessions", token).json()["sessions"]
            )
            assert names == ["second", "shop"]
            listed = call(server, "GET", f"/api/sessions/{bot}/messages", token).json()
            assert [m["text"] for m in listed["messages"]] == ["after the outage"]

            assert server.stop(signal.SIGTERM, timeout=20) == 0
        log = server.log
        assert log.count("Database unreachable") == 1, log
        assert "Database reachable again" in log
        assert "Unhandled error" not in log
        assert "Traceback" not in log


def test_postgres_down_at_start_exits_2_with_one_line(tmp_path: Path):
    code, output = run_server_once(
        tmp_path / "data", {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"}
    )
    assert code == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("Database unavailable (postgresql+asyncpg://postgres@127.0.0.1:")
    assert "refused" in lines[0].lower() or "connect call failed" in lines[0].lower()


def test_postgres_that_never_answers_at_start_exits_2_within_the_connect_timeout(
    tmp_path: Path,
):
    # A host that accepts TCP and says nothing (a firewall, a stuck proxy).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held: list[socket.socket] = []

    def hold() -> None:
        while True:
            try:
                held.append(silent.accept()[0])
            except OSError:
                return

    threading.Thread(target=hold, daemon=True).start()
    started = time.monotonic()
    try:
        code, output = run_server_once(
            tmp_path / "data",
            {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/x"},
            timeout=40,
        )
    finally:
        silent.close()
        for conn in held:
            conn.close()
    assert code == 2, output
    assert time.monotonic() - started < 30
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("Database unavailable")


def test_unwritable_sqlite_path_exits_2_with_one_line(tmp_path: Path):
    # /proc refuses new files even to root, unlike a chmod'ed directory.
    code, output = run_server_once(
        tmp_path / "data", {"DATABASE_URL": "sqlite:////proc/wakeful.db"}
    )
    assert code == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == [
        "Database unavailable (sqlite+aiosqlite:////proc/wakeful.db): unable to open database file"
    ]


def test_a_browser_that_dies_while_the_database_is_away_comes_back_after_it(
    tmp_path: Path, postgres_database: tuple[str, int]
):
    name, pg_port = postgres_database
    with TcpProxy(pg_port) as proxy:
        env = demo_env(
            DATABASE_URL=f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}",
            DATABASE_CHECK_INTERVAL="300ms",
        )
        data = tmp_path / "data"
        with ServerProcess(data, env) as server:
            server.wait_ready()
            bot = create(server, "shop")["id"]
            scan(server, bot)
            browser = find_browser_process(data.resolve() / "profiles" / bot)
            assert browser is not None

            proxy.cut()
            wait_until(lambda: database_check(server)[2] == "warn", 10, "/health to warn")
            browser.kill()
            # The failure cannot be stored now; it is tried again, not dropped.
            server.wait_for_log("(the database is unreachable); trying again", timeout=30)
            proxy.start()

            def back() -> bool:
                response = call(server, "GET", f"/api/sessions/{bot}", DEMO_ADMIN)
                if response.status_code != 200:
                    return False
                found = response.json()
                dropped = any(t["to"] == "DISCONNECTED" for t in found["history"])
                return dropped and found["state"] == "CONNECTED"

            wait_until(back, 60, "the bot DISCONNECTED, then CONNECTED again")
            assert server.log.count("Scan this QR code") == 1  # the link was kept
            stop_cleanly(server)
