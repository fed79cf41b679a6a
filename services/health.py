"""The /health document (application/health+json, draft-inadarei-api-health-check), built
from memory only.

The platform's health check and our own keep-alive hit this route; it does no I/O, so a
slow database or browser can never make the platform think the service is dead. Each check
is keyed `component:measurement` as the draft asks (`database:responseTime`), carries its
`observedValue` with a unit (`ms`, `s`), the `time` it was observed, and an `output` saying
why whenever it is not `pass`; the top-level `output` sums those up.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from config import VERSION
from services.clock import Clock

# A check returns (status, details) with status "pass", "warn" or "fail", or None when it
# has nothing to claim (a component that is off is left out, not reported as passing).
Check = Callable[[], tuple[str, dict[str, Any]] | None]
_RANK = {"pass": 0, "warn": 1, "fail": 2}
SERVICE_ID = "wakeful"
DESCRIPTION = "wakeful: keep-alive and WhatsApp bot manager"
# Where a person (or a tool) goes from here; relative, so they hold behind any proxy.
LINKS = {
    "describedby": "/openapi.json",
    "keepalive": "/api/keepalive",
    "metrics": "/metrics",
}
# Short: a monitor polling every few seconds may reuse an answer, nothing longer.
MAX_AGE_SECONDS = 5
CACHE_CONTROL = f"max-age={MAX_AGE_SECONDS}"


class HealthState:
    def __init__(self, clock: Clock, started_at: datetime) -> None:
        self._clock = clock
        self._started_monotonic = clock.monotonic()
        self.started_at = started_at.isoformat()
        self._draining = False
        # Bumped by anything that must show at once (draining); a cached render is dropped.
        self.generation = 0
        # Keyed `component:measurement`; `uptime` is always there.
        self.checks: dict[str, Check] = {"uptime": self._uptime_check}
        # Extra figures (session counts by state…), read from memory on each request.
        self.details: dict[str, Callable[[], Any]] = {}

    @property
    def draining(self) -> bool:
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        self.generation += 1

    def uptime_seconds(self) -> float:
        return round(self._clock.monotonic() - self._started_monotonic, 3)

    def _uptime_check(self) -> tuple[str, dict[str, Any]]:
        return "pass", {
            "componentType": "system",
            "observedValue": self.uptime_seconds(),
            "observedUnit": "s",
            "time": self._clock.now().isoformat(),
        }

    def _collect(self) -> tuple[str, list[tuple[str, str, dict[str, Any]]], str | None]:
        """The overall status, each check's (name, status, details), and the `output`."""
        status = "fail" if self.draining else "pass"
        results = []
        troubles = ["shutting down"] if self.draining else []
        for name, check in self.checks.items():
            result = check()
            if result is None:  # nothing to claim (a part that is off)
                continue
            check_status, details = result
            results.append((name, check_status, details))
            if check_status != "pass":
                troubles.append(f"{name}: {details.get('output') or check_status}")
            if _RANK[check_status] > _RANK[status]:
                status = check_status
        return status, results, ("; ".join(troubles) if status != "pass" else None)

    def document(self) -> tuple[int, dict[str, Any]]:
        status, results, output = self._collect()
        body: dict[str, Any] = {
            "status": status,
            "version": VERSION,
            "serviceId": SERVICE_ID,
            "description": DESCRIPTION,
        }
        if output is not None:
            body["output"] = output
        body["uptime"] = self.uptime_seconds()
        body["startedAt"] = self.started_at
        for name, read in self.details.items():
            body[name] = read()
        body["checks"] = {
            name: [{"status": check_status, **details}] for name, check_status, details in results
        }
        body["links"] = dict(LINKS)
        return (503 if status == "fail" else 200), body

    def render(self) -> tuple[int, bytes]:
        """`document()` as JSON bytes, written by hand: this runs on every platform health
        check and keep-alive ping, and json.dumps of the nested document was most of its
        cost. Keys are our own identifiers; free text goes through json.dumps."""
        _, code, body = self.render_with_status()
        return code, body

    def render_with_status(self) -> tuple[str, int, bytes]:
        """`render()` with the document's own status (`pass`, `warn`, `fail`) first."""
        status, results, output = self._collect()
        parts = [
            f'{{"status":"{status}","version":"{VERSION}","serviceId":"{SERVICE_ID}",'
            f'"description":{_DESCRIPTION_JSON}'
        ]
        if output is not None:
            parts.append(f',"output":{json.dumps(output)}')
        parts.append(f',"uptime":{self.uptime_seconds()!r},"startedAt":"{self.started_at}"')
        for name, read in self.details.items():
            parts.append(f',"{name}":{{{_members(read())}}}')
        checks = [
            f'"{name}":[{{"status":"{check_status}"{_members(details, lead=",")}}}]'
            for name, check_status, details in results
        ]
        parts.append(',"checks":{' + ",".join(checks) + "}")
        parts.append(f',"links":{_LINKS_JSON}}}')
        return status, (503 if status == "fail" else 200), "".join(parts).encode()


_DESCRIPTION_JSON = json.dumps(DESCRIPTION)
_LINKS_JSON = json.dumps(LINKS, separators=(",", ":"))


def _members(values: dict[str, Any], lead: str = "") -> str:
    if not values:
        return ""
    return lead + ",".join(f'"{key}":{_scalar(value)}' for key, value in values.items())


def _scalar(value: Any) -> str:
    kind = type(value)
    if kind is str:
        # Times, units, ids: nothing to escape, so no json.dumps.
        return f'"{value}"' if _PLAIN.fullmatch(value) else json.dumps(value)
    if kind is int or kind is float:
        return repr(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


_PLAIN = re.compile(r"[\w .:+\-]*", re.ASCII)
