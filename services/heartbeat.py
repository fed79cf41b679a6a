"""The dead-man's-switch heartbeat: tell an outside monitor (HEARTBEAT_URL) that we are alive,
that we are failing, and that we have just started, in the protocol that monitor speaks.

Two protocols cover the monitors people run:

- **Healthchecks.io** (and the many services that copied its API: Cronitor's and Dead Man's
  Snitch's ping URLs behave the same for success): a request to the URL is a success; `/start`
  appended to the path says a run began, `/fail` that it failed. A POST body (up to 100 kB)
  is kept by the monitor and shown beside the ping, so success and failure carry one line.
- **Uptime Kuma** push monitors (`…/api/push/<token>`): `status=up|down`, `msg=<text>` and
  `ping=<ms>` in the query; Kuma has no "started" signal, so nothing is sent at boot.

A push never raises: every error (a bad URL, a refused connection, a timeout, a 404 from a
deleted check) is caught, counted and logged without the URL, which is a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from loguru import logger

from config import VERSION
from services.clock import Clock
from services.httpfailure import describe_failure
from services.metrics import Metrics
from services.uncancelled import UncancelledRequests

log = logger.bind(component="heartbeat")

USER_AGENT = f"wakeful-heartbeat/{VERSION}"
# Kuma shows `msg` in its event list and notifications; Healthchecks keeps 100 kB of body,
# but a reason longer than a line helps nobody.
MAX_MESSAGE = 200

Event = Literal["success", "fail", "start"]
EVENTS: tuple[Event, ...] = ("success", "fail", "start")


class HeartbeatKind(StrEnum):
    HEALTHCHECKS = "healthchecks"
    UPTIME_KUMA = "uptime-kuma"


def detect_kind(url: str) -> HeartbeatKind:
    """Uptime Kuma's push URLs have `/api/push/` in their path; anything else is pinged the
    way Healthchecks.io is (a plain request means success)."""
    path = urlsplit(url).path
    return HeartbeatKind.UPTIME_KUMA if "/api/push/" in path else HeartbeatKind.HEALTHCHECKS


@dataclass(frozen=True, slots=True)
class HeartbeatRequest:
    method: Literal["GET", "POST"]
    url: str
    body: str | None = None


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_MESSAGE else flat[: MAX_MESSAGE - 1] + "…"


def build_request(
    kind: HeartbeatKind,
    url: str,
    event: Event,
    *,
    message: str,
    latency_ms: float | None = None,
) -> HeartbeatRequest | None:
    """The request that reports `event` to a monitor of this kind (None: nothing to send)."""
    parts = urlsplit(url)
    if kind is HeartbeatKind.UPTIME_KUMA:
        if event == "start":
            return None
        # Keep whatever else the user's URL carries; ours replace Kuma's own three.
        query = [
            (name, value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
            if name not in ("status", "msg", "ping")
        ]
        query += [("status", "up" if event == "success" else "down"), ("msg", _one_line(message))]
        query.append(("ping", f"{latency_ms:.0f}" if latency_ms is not None else ""))
        return HeartbeatRequest("GET", urlunsplit(parts._replace(query=urlencode(query))))
    path = parts.path.rstrip("/")
    if event != "success":
        path += f"/{event}"
    return HeartbeatRequest(
        "POST", urlunsplit(parts._replace(path=path)), body=_one_line(message) + "\n"
    )


class Heartbeat:
    """Pushes to HEARTBEAT_URL and keeps what a person (and /metrics) wants to know."""

    def __init__(
        self,
        url: str,
        *,
        kind: HeartbeatKind | None,
        client: httpx.AsyncClient,
        clock: Clock,
        timeout: timedelta,
        metrics: Metrics | None = None,
    ) -> None:
        self._url = url
        self.kind = kind or detect_kind(url)
        self._client = client
        self._clock = clock
        self._timeout = timeout
        self._metrics = metrics
        self.last_ok: bool | None = None
        self.last_at: datetime | None = None
        self.last_event: Event | None = None
        self.last_error: str | None = None
        self.failures = 0
        self.pushes = 0
        self._requests = UncancelledRequests()

    async def close(self) -> None:
        """Stop the pushes that outlived their deadline (at shutdown)."""
        await self._requests.close()

    async def success(self, latency_ms: float, message: str = "OK") -> bool:
        return await self._push("success", message, latency_ms)

    async def fail(self, reason: str) -> bool:
        return await self._push("fail", reason, None)

    async def start(self) -> bool:
        return await self._push("start", f"wakeful {VERSION} started", None)

    async def _push(self, event: Event, message: str, latency_ms: float | None) -> bool:
        try:
            request = build_request(
                self.kind, self._url, event, message=message, latency_ms=latency_ms
            )
        except ValueError:
            request = HeartbeatRequest("GET", self._url)  # fails below, counted and logged
        if request is None:
            return True
        self.last_at = self._clock.now()
        self.last_event = event
        self.pushes += 1
        failure: str | None
        try:
            # Judged at the timeout, never cancelled mid-way (services.uncancelled).
            seconds = self._timeout.total_seconds()
            response = await self._requests.within(
                seconds,
                self._client.request(
                    request.method,
                    request.url,
                    content=request.body,
                    timeout=seconds,
                    headers={"User-Agent": USER_AGENT, "Content-Type": "text/plain"},
                ),
            )
            failure = None if response.is_success else f"HTTP {response.status_code}"
            if failure is None and self.kind is HeartbeatKind.UPTIME_KUMA:
                failure = _kuma_refusal(response)
        except Exception as exc:  # a heartbeat must never break the keep-alive
            failure = _describe(exc, self._timeout)
        self.last_ok = failure is None
        self.last_error = failure
        if self._metrics is not None:
            self._metrics.heartbeat_pushes.labels(
                event=event, result="ok" if failure is None else "error"
            ).inc()
        if failure is not None:
            self.failures += 1
            log.warning("Heartbeat push to HEARTBEAT_URL failed: {} ({} signal)", failure, event)
            return False
        return True


def _kuma_refusal(response: httpx.Response) -> str | None:
    """Kuma answers `{"ok": false, "msg": "Monitor not found or not active."}` for a push it
    did not take (some versions with a 200)."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("ok") is False:
        return f"refused: {_one_line(str(body.get('msg') or 'ok=false'))}"
    return None


def _describe(exc: BaseException, timeout: timedelta) -> str:
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        # Its text would quote the URL, which is a secret.
        return f"HEARTBEAT_URL is not a usable URL ({type(exc).__name__})"
    return describe_failure(exc, timeout)
