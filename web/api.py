"""The public JSON and text routes: /health, /api/keepalive, /api/metrics, /metrics."""

from __future__ import annotations

from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.dbhealth import is_database_unavailable
from services.health import CACHE_CONTROL, HealthState
from services.keepalive import UPTIME_WINDOWS, KeepAlive
from services.metrics import Metrics, SystemSampler, metrics_snapshot
from services.scheduler import Scheduler
from web.routing import ApiRoute

HEALTH_JSON = "application/health+json"
NO_STORE = {"Cache-Control": "no-store"}


def _keepalive(request: Request) -> KeepAlive:
    keepalive: KeepAlive = request.app.state.keepalive
    return keepalive


def _scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


class HealthEndpoint:
    """`GET|HEAD /health` as a bare ASGI app: the platform's health check and every
    keep-alive ping land here, so it skips building a Request and a Response object."""

    _HEADERS: ClassVar = (
        (b"content-type", HEALTH_JSON.encode()),
        (b"cache-control", CACHE_CONTROL.encode()),
    )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: HealthState = scope["app"].state.health
        status, payload = state.render()
        headers = [*self._HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        head = scope["method"] == "HEAD"
        await send({"type": "http.response.body", "body": b"" if head else payload})


def keepalive_document(request: Request) -> dict[str, Any]:
    scheduler = _scheduler(request)
    next_ping = scheduler.next_run_at("keepalive") if "keepalive" in scheduler.names() else None
    return _keepalive(request).snapshot(next_ping)


async def keepalive_status(request: Request) -> Response:
    return JSONResponse(keepalive_document(request), headers=NO_STORE)


def keepalive_summary(request: Request) -> dict[str, Any]:
    keepalive = _keepalive(request)
    return {
        "isRunning": keepalive.running,
        "pingCount": keepalive.ping_count,
        "failedPings": keepalive.failed_pings,
        "successRate": round(keepalive.success_rate(), 1),
        "consecutiveFailures": keepalive.consecutive_failures,
        "alerting": keepalive.alerting,
        "uptimePercent24h": keepalive.uptime_percent(UPTIME_WINDOWS["24h"]),
    }


def sessions_summary(request: Request) -> dict[str, Any]:
    manager = request.app.state.manager
    return {
        "total": len(manager.sessions),
        "byState": manager.counts_by_state(),
        "byHealth": manager.counts_by_health(),
        "lastCleanup": manager.last_cleanup,
        "lastHealthSweep": manager.last_sweep,
    }


async def _refresh_outbox_counts(request: Request) -> dict[str, int]:
    metrics = _metrics(request)
    outbox = getattr(request.app.state, "outbox", None)
    if outbox is not None:
        try:
            metrics.outbox_counts = await outbox.counts()
        except Exception as exc:
            # The public figures must stay readable while the database is away (that is
            # when someone looks): the counts from the last good read stand in.
            if not is_database_unavailable(exc):
                raise
    return metrics.outbox_counts


async def metrics_json(request: Request) -> Response:
    sampler: SystemSampler = request.app.state.sampler
    outbox = await _refresh_outbox_counts(request)
    webhooks = {
        sample.labels["result"]: int(sample.value)
        for family in _metrics(request).webhook_deliveries.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    document = metrics_snapshot(
        sampler,
        _metrics(request),
        {
            "keepalive": lambda: keepalive_summary(request),
            "sessions": lambda: sessions_summary(request),
            "outbox": lambda: {
                "byStatus": outbox,
                "sendingWorkers": request.app.state.sender.active,
            },
            "webhookDeliveries": lambda: webhooks,
            "cluster": lambda: request.app.state.manager.cluster_summary(),
            "memory": lambda: request.app.state.memory.snapshot(),
        },
    )
    return JSONResponse(document, headers=NO_STORE)


async def metrics_prometheus(request: Request) -> Response:
    await _refresh_outbox_counts(request)
    body, content_type = _metrics(request).exposition(request.headers.get("accept"))
    # Vary: a cache in between must not hand the OpenMetrics answer to a classic scraper.
    headers = {**NO_STORE, "Vary": "Accept"}
    return Response(body, headers={**headers, "Content-Type": content_type})


PUBLIC_ROUTES = [
    ApiRoute(
        "GET",
        "/health",
        keepalive_status,  # documentation only: /health is served by HealthEndpoint
        "Liveness for the platform and the keep-alive (application/health+json)",
        access="public",
        responses={200: ("pass or warn", {"type": "object"}), 503: ("shutting down", {})},
        content_type="application/health+json",
    ),
    ApiRoute(
        "GET",
        "/api/keepalive",
        keepalive_status,
        "Keep-alive status, counts, latency, uptime %, recent pings",
        access="public",
        responses={200: ("The keep-alive status", {"type": "object"})},
    ),
    ApiRoute(
        "GET",
        "/api/metrics",
        metrics_json,
        "Process, system, keep-alive, HTTP and bot figures",
        access="public",
        responses={200: ("The metrics", {"type": "object"})},
    ),
    ApiRoute(
        "GET",
        "/metrics",
        metrics_prometheus,
        "Prometheus text exposition",
        access="public",
        responses={200: ("Prometheus text", {"type": "string"})},
        content_type="text/plain",
    ),
]

routes = [
    Route("/health", HealthEndpoint(), methods=["GET", "HEAD"]),
    Route("/api/keepalive", keepalive_status, methods=["GET"]),
    Route("/api/metrics", metrics_json, methods=["GET"]),
    Route("/metrics", metrics_prometheus, methods=["GET"]),
]
