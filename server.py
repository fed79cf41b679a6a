"""wakeful's entry point: `create_app(settings)` and `python server.py` (uvicorn).

Everything with a lifetime (database, HTTP client, keep-alive, scheduler) is built inside
Starlette's lifespan and kept on `app.state`; shutdown runs in reverse order, bounded by
SHUTDOWN_TIMEOUT. Only pieces without I/O (metrics, health state, alert channels) are built
eagerly, so a bad ALERT_URLS entry stops the start before anything listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Generator
from types import FrameType

import httpx
import uvicorn
from loguru import logger
from starlette.applications import Starlette
from starlette.middleware import Middleware

from config import ConfigError, Settings, format_duration, load_settings
from services.alerts import AlertConfigError, Alerter
from services.clock import Clock, SystemClock
from services.database import Database, DatabaseError
from services.health import HealthState
from services.keepalive import KeepAlive, KeepAliveConfig
from services.logging import setup_logging
from services.metrics import Metrics, SystemSampler
from services.pingstore import PingStore
from services.scheduler import Scheduler
from web.api import routes as api_routes
from web.errors import EXCEPTION_HANDLERS
from web.middleware import RequestCounter

log = logger.bind(component="server")


def keepalive_config(settings: Settings) -> KeepAliveConfig:
    url, source = settings.keepalive_target
    reason: str | None = None
    if not settings.keep_alive_enabled:
        reason = "KEEP_ALIVE_ENABLED=false"
    elif url is None:
        reason = f"no public URL is known; {source}"
    return KeepAliveConfig(
        url=url,
        interval=settings.keep_alive_interval,
        timeout=settings.keep_alive_timeout,
        start_delay=settings.keep_alive_start_delay,
        alert_after=settings.keep_alive_alert_after,
        stats_every=settings.keep_alive_stats_every,
        history_limit=settings.keep_alive_history_limit,
        heartbeat_url=settings.heartbeat_url.get_secret_value() if settings.heartbeat_url else None,
        enabled=settings.keep_alive_enabled and url is not None,
        disabled_reason=reason,
    )


def warn_about_sleep_threshold(settings: Settings) -> None:
    threshold = settings.sleep_threshold
    if threshold is None or not settings.keep_alive_enabled:
        return
    if settings.keep_alive_interval >= threshold:
        log.warning(
            "⚠️ KEEP_ALIVE_INTERVAL={} reaches {}'s sleep threshold ({}): the service can be "
            "put to sleep between two pings; set KEEP_ALIVE_INTERVAL below it (e.g. {})",
            format_duration(settings.keep_alive_interval),
            settings.platform.value.capitalize(),
            format_duration(threshold),
            format_duration(threshold / 2),
        )


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """Build the app. `clock` and `transport` are for tests (a fake clock, a mock peer)."""
    clock = clock or SystemClock()
    metrics = Metrics()
    health = HealthState(clock, clock.now())
    alerter = Alerter(settings.alert_url_list, clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = Database(settings.sqlalchemy_url)
        await db.migrate()
        client = httpx.AsyncClient(transport=transport, follow_redirects=True)
        keepalive = KeepAlive(
            keepalive_config(settings),
            client=client,
            alerter=alerter,
            clock=clock,
            store=PingStore(db),
            metrics=metrics,
        )
        try:
            await keepalive.load_history()
        except Exception as exc:
            log.warning("Could not load keep-alive history: {}", exc)
        scheduler = Scheduler(clock)
        if keepalive.running:
            scheduler.add_periodic(
                "keepalive",
                keepalive.ping_once,
                settings.keep_alive_interval,
                keepalive.first_ping_at,
            )
        health.checks["keepalive"] = lambda: (
            "warn" if keepalive.alerting else "pass",
            {
                "componentType": "component",
                "observedValue": keepalive.consecutive_failures,
                "observedUnit": "consecutive failures",
            },
        )
        app.state.db = db
        app.state.keepalive = keepalive
        app.state.scheduler = scheduler
        app.state.alerter = alerter

        keepalive.log_started()
        warn_about_sleep_threshold(settings)
        jobs = asyncio.get_running_loop().create_task(_start_jobs_once_listening(app, scheduler))
        try:
            yield
        finally:
            health.draining = True
            jobs.cancel()
            await _shutdown(settings, scheduler, alerter, client, db)

    app = Starlette(
        routes=api_routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(RequestCounter, metrics=metrics)],
    )
    app.state.settings = settings
    app.state.listening = asyncio.Event()
    app.state.metrics = metrics
    app.state.health = health
    app.state.sampler = SystemSampler()
    return app


async def _start_jobs_once_listening(app: Starlette, scheduler: Scheduler) -> None:
    """Start the jobs when the socket is bound, so a self-ping due at once is not refused.

    Without uvicorn (in-process tests) nobody sets the event: the jobs start after a second.
    """
    listening: asyncio.Event = app.state.listening
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(listening.wait(), timeout=1.0)
    scheduler.start()


async def _shutdown(
    settings: Settings,
    scheduler: Scheduler,
    alerter: Alerter,
    client: httpx.AsyncClient,
    db: Database,
) -> None:
    """Stop in reverse order of start, all within SHUTDOWN_TIMEOUT."""
    started = time.monotonic()
    budget = settings.shutdown_timeout.total_seconds()
    log.info("Shutting down: stopping jobs (bound {})", format_duration(settings.shutdown_timeout))
    scheduler.shutdown()
    try:
        async with asyncio.timeout(max(budget - 0.5, 0.1)):
            await alerter.drain(grace=max(budget / 2, 0.1))
            await client.aclose()
            await db.dispose()
    except TimeoutError:
        log.error("Shutdown did not finish within SHUTDOWN_TIMEOUT; leaving the rest")
    log.info("Shutdown complete in {:.2f}s", time.monotonic() - started)


class WakefulServer(uvicorn.Server):
    """uvicorn's Server with three changes a PaaS needs.

    - On SIGTERM, /health turns to "fail" at once, so a load balancer stops routing here
      while connections drain.
    - A watchdog ends the process if shutdown overruns SHUTDOWN_TIMEOUT (a stuck browser
      must not keep a redeploy waiting for the platform's SIGKILL).
    - After a clean shutdown the signal is not re-raised, so the exit status is 0.
    """

    def __init__(self, config: uvicorn.Config, app: Starlette, settings: Settings) -> None:
        super().__init__(config)
        self._app = app
        self._health: HealthState = app.state.health
        self._settings = settings
        self._watchdog: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._health.draining = True
        if self._watchdog is None:
            bound = self._settings.shutdown_timeout.total_seconds()
            self._watchdog = threading.Timer(bound + 1.0, self._force_exit)
            self._watchdog.daemon = True
            self._watchdog.start()
        super().handle_exit(sig, frame)

    def disarm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _force_exit(self) -> None:
        log.error(
            "Shutdown exceeded SHUTDOWN_TIMEOUT={}; exiting now",
            format_duration(self._settings.shutdown_timeout),
        )
        os._exit(1)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets=sockets)  # type: ignore[arg-type]
        if self.started:
            self._app.state.listening.set()
            log.info(
                "✅ Server running on port {} (http://{}:{})",
                self.config.port,
                "127.0.0.1" if self.config.host in ("0.0.0.0", "::") else self.config.host,  # noqa: S104
                self.config.port,
            )


async def _prepare_database(settings: Settings) -> None:
    db = Database(settings.sqlalchemy_url)
    try:
        await db.migrate()
    finally:
        await db.dispose()


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
        asyncio.run(_prepare_database(settings))
    except (AlertConfigError, DatabaseError) as exc:
        print(exc, file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,
        access_log=settings.access_log,
        proxy_headers=True,
        forwarded_allow_ips="*",
        server_header=False,
        # Half the bound for open requests; the rest for the app's own shutdown.
        timeout_graceful_shutdown=max(int(settings.shutdown_timeout.total_seconds() / 2), 1),
    )
    server = WakefulServer(config, app, settings)
    server.run()
    server.disarm_watchdog()
    if not server.started:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
