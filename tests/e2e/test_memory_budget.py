"""The memory budget through a real `python server.py` in demo mode (real Chromium on the
simulator page): with MEMORY_LIMIT_MB=512 the start line gives the budget, a bot starts
while it fits, and the next start is refused with the budget named, the bot left as it was."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from tests.e2e.test_whatsapp_process import call, demo_env, wait_state
from tests.support import ServerProcess, wait_until


def test_bots_start_while_they_fit_then_the_next_is_refused_naming_the_budget(tmp_path: Path):
    env = demo_env(MEMORY_LIMIT_MB="512")
    with ServerProcess(tmp_path / "data", env) as server:
        server.wait_ready(timeout=60)
        server.wait_for_log("Memory budget: 512 MB (MEMORY_LIMIT_MB)")
        first = call(server, "POST", "/api/sessions", json={"name": "fits"})
        assert first.status_code == 201, first.text
        wait_state(server, first.json()["id"], "SCAN_QR")

        # The figures are sampled every few seconds: the new browser shows in the next one.
        def sampled() -> dict[str, Any]:
            memory: dict[str, Any] = call(server, "GET", "/api/metrics").json()["memory"]
            return memory

        wait_until(lambda: sampled()["bots"] == 1, 30, "the bot's browser in the memory figures")
        memory = sampled()
        assert memory["limitMb"] == 512
        assert memory["bots"] == 1
        assert memory["perBotMeasured"] is True
        assert memory["botsMb"] > 20
        assert memory["nextBotFits"] is False, memory

        refused = call(server, "POST", "/api/sessions", json={"name": "too-many"})
        assert refused.status_code == 409, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert problem["title"] == "Memory budget full"
        assert "512 MB (MEMORY_LIMIT_MB)" in problem["detail"]
        assert problem["memoryBudget"]["limitMb"] == 512
        names = [s["name"] for s in call(server, "GET", "/api/sessions").json()["sessions"]]
        assert names == ["fits"]

        # A bot created stopped stays as it was when its start is refused.
        idle = call(server, "POST", "/api/sessions", json={"name": "later", "start": False})
        assert idle.status_code == 201, idle.text
        bot_id = idle.json()["id"]
        start = call(server, "POST", f"/api/sessions/{bot_id}/start")
        assert start.status_code == 409, start.text
        assert "512 MB" in start.json()["detail"]
        assert call(server, "GET", f"/api/sessions/{bot_id}").json()["state"] == "IDLE"

        prometheus = server.get("/metrics").text
        assert 'memory_budget_bytes{part="limit"} 5.36870912e+08' in prometheus
        assert server.stop(signal.SIGTERM, timeout=30) == 0
