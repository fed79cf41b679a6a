"""Bots across real process restarts: SIGTERM and SIGKILL, then a start on the same data."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx

from tests.support import ServerProcess, wait_until

ADMIN = "admin-token-for-e2e-000001"
ENV = {
    "ADMIN_TOKEN": ADMIN,
    "BOT_ENGINE": "tests.engines:auto_engine",
    "BOT_START_STAGGER": "100ms",
    "SHUTDOWN_TIMEOUT": "8s",
}


def call(server: ServerProcess, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
    return httpx.request(
        method,
        server.base_url + path,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
        **kw,
    )


def wait_state(server: ServerProcess, token: str, bot_id: str, state: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        found.update(call(server, "GET", f"/api/sessions/{bot_id}", token).json())
        return found.get("state") == state

    wait_until(reached, 20, f"{bot_id} to be {state}")
    return found


def test_running_bots_come_back_after_sigterm_and_sigkill(tmp_path: Path):
    data = tmp_path / "data"
    with ServerProcess(data, ENV) as server:
        server.wait_ready()
        user = call(server, "POST", "/api/users", ADMIN, json={"name": "alice"}).json()
        token = user["token"]
        ids = []
        for name in ("sales", "support", "paused"):
            created = call(server, "POST", "/api/sessions", token, json={"name": name})
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        for bot_id in ids:
            wait_state(server, token, bot_id, "CONNECTED")
        call(server, "POST", f"/api/sessions/{ids[2]}/stop", token)
        before = call(server, "GET", f"/api/sessions/{ids[0]}", token).json()["history"]
        assert server.stop(signal.SIGTERM, timeout=15) == 0
        assert "CONNECTED → STOPPED (shutdown)" in server.log

    with ServerProcess(data, ENV) as server:
        server.wait_ready()
        # /health answers before the bots are back: restore runs in the background.
        assert server.get("/health").status_code == 200
        for bot_id in ids[:2]:
            restored = wait_state(server, token, bot_id, "CONNECTED")
            assert restored["owner"] == user["id"]
        paused = call(server, "GET", f"/api/sessions/{ids[2]}", token).json()
        assert paused["state"] == "STOPPED"
        after = call(server, "GET", f"/api/sessions/{ids[0]}", token).json()["history"]
        # The old history is intact, under the new entries (newest first).
        tail = [(t["from"], t["to"], t["reason"]) for t in after[-len(before) :]]
        assert tail == [(t["from"], t["to"], t["reason"]) for t in before]
        assert [t["to"] for t in after[:3]] == ["CONNECTED", "CONNECTING", "STOPPED"]
        assert after[1]["reason"] == "restored at boot"
        assert "scan" not in " ".join(t["reason"] or "" for t in after[:3])  # no new QR
        server.stop(signal.SIGKILL)

    with ServerProcess(data, ENV) as server:
        server.wait_ready()
        # Killed while connected: from the first answer on, it is not reported as the
        # CONNECTED it was, but as stopped by the crash (and then restored).
        first = call(server, "GET", f"/api/sessions/{ids[1]}", token).json()
        first_reasons = [t["reason"] for t in first["history"]]
        assert "the process ended while it was running" in first_reasons[:3]
        for bot_id in ids[:2]:
            wait_state(server, token, bot_id, "CONNECTED")
        history = call(server, "GET", f"/api/sessions/{ids[1]}", token).json()["history"]
        reasons = [t["reason"] for t in history[:4]]
        assert "the process ended while it was running" in reasons
        assert "restored at boot" in reasons
        metrics = server.get("/api/metrics").json()
        assert metrics["sessions"]["byState"]["CONNECTED"] == 2
        assert metrics["sessions"]["byState"]["STOPPED"] == 1
        # /health is answered from a render kept up to a second (web/frontdoor.py).
        wait_until(
            lambda: server.get("/health").json()["sessions"].get("CONNECTED") == 2,
            5,
            "/health to count the 2 restored bots CONNECTED",
        )
        server.stop(signal.SIGTERM)


def test_admin_token_is_generated_once_and_printed_once(tmp_path: Path):
    data = tmp_path / "data"
    env = {k: v for k, v in ENV.items() if k != "ADMIN_TOKEN"}
    with ServerProcess(data, env) as server:
        server.wait_ready()
        server.wait_for_log("No ADMIN_TOKEN is set")
        line = next(i for i, text in enumerate(server.lines) if "No ADMIN_TOKEN is set" in text)
        token = server.lines[line + 1].strip()
        assert token.startswith("wk_")
        assert call(server, "GET", "/api/me", token).json()["isAdmin"] is True
        server.stop(signal.SIGTERM)
    stored = (data / "wakeful.db").read_bytes()
    assert token.encode() not in stored  # only its hash is kept
    with ServerProcess(data, env) as server:
        server.wait_ready()
        assert call(server, "GET", "/api/me", token).status_code == 200
        server.stop(signal.SIGTERM)
        assert "No ADMIN_TOKEN is set" not in server.log
        assert token not in server.log
