"""`GET|HEAD /health` answered at the front door: before any middleware or routing.

The platform's health check and every keep-alive ping land on /health, often many a second
from a load balancer. Here the outermost ASGI app answers them itself, with the document
`services.health` renders, kept in memory for a moment (CACHE_SECONDS, well inside the
`max-age=5` the answer already allows a client): building the document was most of a
request's cost inside the app. Only a `pass` is kept: a `warn` or a `fail` is rendered on every
request, so a recovery (the boot preflight passing, the database back) shows at once, and the
keep-alive never pings an old 503; a drain (SIGTERM) bumps the state's generation and shows at
once too. A turn for the worse may show up to CACHE_SECONDS late. The answer carries what the
app's middleware would add (the security headers) and is counted like any other request.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from services.health import CACHE_CONTROL, HealthState
from services.metrics import Metrics
from web.securityheaders import ALWAYS

CACHE_SECONDS = 1.0
HEALTH_PATH = "/health"
HEALTH_JSON = b"application/health+json"
_HEADERS = [(b"content-type", HEALTH_JSON), (b"cache-control", CACHE_CONTROL.encode()), *ALWAYS]


class HealthFrontDoor:
    def __init__(
        self,
        app: ASGIApp,
        health: HealthState,
        metrics: Metrics,
        monotonic: Callable[[], float],
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self.app = app
        self._health = health
        self._metrics = metrics
        self._monotonic = monotonic
        self._cache_seconds = cache_seconds
        self._expires = float("-inf")
        self._generation = -1
        self._status = 200
        self._body = b""
        self._headers: list[tuple[bytes, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != HEALTH_PATH
            or scope["method"] not in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        status, body, headers = self._current()
        self._metrics.count_request(status)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    def _current(self) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        now = self._monotonic()
        if now >= self._expires or self._generation != self._health.generation:
            self._generation = self._health.generation
            health, self._status, self._body = self._health.render_with_status()
            self._headers = [*_HEADERS, (b"content-length", str(len(self._body)).encode())]
            self._expires = now + self._cache_seconds if health == "pass" else now
        return self._status, self._body, self._headers
