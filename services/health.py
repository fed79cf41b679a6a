"""The /health document (application/health+json), built from memory only.

The platform's health check and our own keep-alive hit this route; it does no I/O, so a
slow database or browser can never make the platform think the service is dead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from config import VERSION
from services.clock import Clock

# A check returns (status, details) with status "pass", "warn" or "fail", or None when it
# has nothing to claim (a component that is off is left out, not reported as passing).
Check = Callable[[], tuple[str, dict[str, Any]] | None]
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
            result = check()
            if result is None:
                continue
            check_status, details = result
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

    def render(self) -> tuple[int, bytes]:
        """`document()` as JSON bytes, written by hand: this runs on every platform health
        check and keep-alive ping, and json.dumps of the nested document was most of its
        cost. Keys are our own identifiers; free text goes through json.dumps."""
        status = "fail" if self.draining else "pass"
        checks = []
        for name, check in self.checks.items():
            result = check()
            if result is None:
                continue
            check_status, details = result
            checks.append(f'"{name}":[{{"status":"{check_status}",{_members(details)}}}]')
            if _RANK[check_status] > _RANK[status]:
                status = check_status
        uptime = self._clock.monotonic() - self._started_monotonic
        parts = [
            f'{{"status":"{status}","version":"{VERSION}","serviceId":"wakeful",'
            f'"uptime":{uptime:.3f},"startedAt":"{self.started_at}"'
        ]
        if self.draining:
            parts.append(',"output":"shutting down"')
        for name, read in self.details.items():
            parts.append(f',"{name}":{{{_members(read())}}}')
        if checks:
            parts.append(',"checks":{' + ",".join(checks) + "}")
        parts.append("}")
        return (503 if status == "fail" else 200), "".join(parts).encode()


def _members(values: dict[str, Any]) -> str:
    return ",".join(f'"{key}":{_scalar(value)}' for key, value in values.items())


def _scalar(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)
