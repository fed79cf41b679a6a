"""The /health document (application/health+json), built from memory only.

The platform's health check and our own keep-alive hit this route; it does no I/O, so a
slow database or browser can never make the platform think the service is dead.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from config import VERSION
from services.clock import Clock

# A check returns (status, details) with status "pass", "warn" or "fail".
Check = Callable[[], tuple[str, dict[str, Any]]]
_RANK = {"pass": 0, "warn": 1, "fail": 2}


class HealthState:
    def __init__(self, clock: Clock, started_at: datetime) -> None:
        self._clock = clock
        self._started_monotonic = clock.monotonic()
        self.started_at = started_at.isoformat()
        self.draining = False
        self.checks: dict[str, Check] = {}
        # Extra figures (session counts by state…), read from memory on each request.
        self.details: dict[str, Callable[[], Any]] = {}

    def document(self) -> tuple[int, dict[str, Any]]:
        status = "fail" if self.draining else "pass"
        checks: dict[str, list[dict[str, Any]]] = {}
        for name, check in self.checks.items():
            check_status, details = check()
            checks[name] = [{"status": check_status, **details}]
            if _RANK[check_status] > _RANK[status]:
                status = check_status
        body: dict[str, Any] = {
            "status": status,
            "version": VERSION,
            "serviceId": "wakeful",
            "uptime": round(self._clock.monotonic() - self._started_monotonic, 3),
            "startedAt": self.started_at,
        }
        if self.draining:
            body["output"] = "shutting down"
        for name, read in self.details.items():
            body[name] = read()
        if checks:
            body["checks"] = checks
        return (503 if status == "fail" else 200), body
