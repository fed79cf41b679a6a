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
import random
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Generator
from datetime import timedelta
from types import FrameType

import httpx
import uvicorn
from loguru import logger
from starlette.applications import Starlette
from starlette.middleware import Middleware

from bot.cluster import ClusterConfig, Node
from bot.commands import ChatCommands
from bot.contacts import ContactChecker
from bot.content import TEXT, Content
from bot.engines import engine_factory, load_engine
from bot.engines.whatsapp.driver import WhatsAppEngine
from bot.engines.whatsapp.preflight import BootPreflight
from bot.inbox import Inbox
from bot.manager import BotManager, manager_config_from, policy_from
from bot.mediacache import MediaCache
from bot.mediastore import MediaStore
from bot.outbox import STATUSES as OUTBOX_STATUSES
from bot.outbox import OutboxStore, RetryPolicy
from bot.owner_reads import OwnerReads
from bot.ownership import OwnershipStore
from bot.policy import CleanupReason
from bot.qrcodes import QrLogPrinter
from bot.quota import MessageQuota
from bot.retention import Retention, RetentionPolicy
from bot.sender import OutboxSender
from bot.session import BotSession
from bot.states import SessionState
from bot.store import BotStore
from bot.webhook_reply import Reply
from bot.webhooks import DeliveryStore, WebhookConfig, Webhooks
from config import VERSION, ConfigError, Settings, format_duration, load_settings
from services.alerts import AlertConfigError, Alerter
from services.allocator import return_large_blocks
from services.clock import Clock, SystemClock
from services.database import Database, DatabaseError
from services.dbhealth import DatabaseMonitor
from services.filemodes import private_dir
from services.health import HealthState
from services.incidents import IncidentStore
from services.keepalive import KeepAlive, keepalive_config, warn_about_sleep_threshold
from services.logging import setup_logging
from services.mediafetch import MAX_REDIRECTS
from services.memory import MemoryBudget, read_limit
from services.metrics import Metrics, SystemSampler
from services.migrate import migrate_in_child
from services.netguard import AddressPolicy, default_resolver
from services.pingstore import PingStore
from services.pinned import PinnedTransport
from services.platform import check_durable_keys, ephemeral_warning
from services.resolver import Resolver
from services.scheduler import Scheduler
from services.secretbox import load_secret_box
from web.app_routes import all_routes
from web.auth import Authenticator, dashboard_secret_key, ensure_admin_token
from web.authlimit import FailedAuthLimiter
from web.bodylimit import BodySizeLimit
from web.errors import EXCEPTION_HANDLERS
from web.frontdoor import HealthFrontDoor
from web.middleware import RequestCounter
from web.securityheaders import SecurityHeaders
from web.serverprotocol import protocol_with_head_timeout
from web.websession import SessionSigner

log = logger.bind(component="server")
OUTBOX_COUNT_EVERY = 2.0
KEEP_ALIVE_IDLE_SECONDS = 75


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    resolver: Resolver | None = None,
    preflight: bool = False,
    media_transport: httpx.AsyncBaseTransport | None = None,
    migrated: bool = False,
) -> Starlette:
    """Build the app. `clock`, `transport` and `resolver` are for tests (a fake clock, a mock
    peer for the keep-alive, a DNS server of the test's own for webhook hosts).
    `preflight`: launch the browser once at boot before /health says `pass` (`python
    server.py` does, with BOOT_PREFLIGHT; in-process test apps do not start browsers).
    `media_transport`: where media URLs are fetched from (a stand-in peer in tests).
    `migrated`: the schema was brought to head before (`python server.py` does it in a child
    process, so this one never loads Alembic)."""
    clock = clock or SystemClock()
    resolver = resolver or default_resolver()
    # One TLS context (the CA bundle parsed once) for the keep-alive, the media fetches and
    # the webhooks: each context costs ~0.8 MB of the server's memory, for the same trust.
    tls = httpx.create_ssl_context()
    address_policy = AddressPolicy(
        allow_private=settings.webhook_allow_private,
        allowed=settings.webhook_allowed_network_list,
    )
    metrics = Metrics(VERSION)
    metrics.declare(
        states=[state.value for state in SessionState],
        cleanup_reasons=[reason.value for reason in CleanupReason],
        outbox_statuses=OUTBOX_STATUSES,
    )
    health = HealthState(clock, clock.now())
    alerter = Alerter(
        settings.alert_url_list, clock, source=settings.instance_name, metrics=metrics
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        private_dir(settings.data_dir)
        db = Database(settings.sqlalchemy_url)
        if not migrated:
            await db.migrate()
        alerter.use_store(IncidentStore(db))
        try:
            await alerter.load()
        except Exception as exc:
            log.warning("Could not load the open incidents: {}", exc)
        database = DatabaseMonitor(db, clock, alerter)
        metrics.database_available = lambda: (
            None if database.last_probe_at is None else database.available
        )
        app.state.database_monitor = database
        health.checks["database:responseTime"] = database.health_check
        client = httpx.AsyncClient(transport=transport, verify=tls, follow_redirects=True)
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
        store = BotStore(db)
        app.state.auth = Authenticator(
            await ensure_admin_token(settings, store, clock), store, clock.monotonic
        )
        node = Node(
            OwnershipStore(db),
            clock,
            ClusterConfig(
                lease=settings.node_lease,
                renew_every=settings.node_renew_interval,
                capacity=settings.bots_per_node,
            ),
        )
        engine = load_engine(settings, db)
        memory = MemoryBudget(read_limit(settings.memory_limit_mb))
        app.state.memory = memory
        metrics.memory_parts = memory.parts_bytes
        # Only browsers are budgeted: a scripted engine starts no processes.
        app.state.memory_guard = memory if isinstance(engine, WhatsAppEngine) else None
        if app.state.memory_guard is not None:
            log.info(memory.start_line())
        boot_check = boot_preflight(settings, engine) if preflight else None
        if boot_check is not None:
            health.checks["browser"] = boot_check.health_check
        manager = BotManager(
            node=node,
            store=store,
            engine=engine,
            policy=policy_from(settings),
            clock=clock,
            alerter=alerter,
            metrics=metrics,
            config=manager_config_from(settings),
        )
        if settings.whatsapp_simulator and settings.bot_engine.strip() == "whatsapp":
            log.warning(
                "🧪 DEMO MODE (WHATSAPP_SIMULATOR=1): bots talk to a local WhatsApp simulator, "
                "not to WhatsApp; nothing reaches a real phone"
            )
        manager.add_listener(QrLogPrinter())
        secret_box = load_secret_box(
            settings.session_encryption_key.get_secret_value()
            if settings.session_encryption_key
            else None,
            settings.data_dir,
        )
        outbox = OutboxStore(db)
        retry = RetryPolicy(
            max_attempts=settings.max_retry_attempts,
            base=settings.retry_base_delay,
            cap=settings.retry_max_delay,
            lease=settings.outbox_lease,
        )
        sender = OutboxSender(
            outbox,
            policy=retry,
            per_minute=settings.send_rate,
            clock=clock,
            metrics=metrics,
            rand=random.random,
            presence=settings.send_presence,
        )
        manager.add_listener(sender)
        database.on_recovery.append(sender.wake_all)
        manager.queued_for = outbox.sessions_waiting
        manager.memory_guard = app.state.memory_guard

        def heard(message: str) -> None:
            # Another node queued a message for a bot this node runs.
            if message.startswith("outbox:"):
                sender.wake(message.removeprefix("outbox:"))

        node.on_message.append(heard)
        # Media named by URL in a send: fetched as webhooks are delivered, pinned to the
        # address the guard approved, each redirect hop checked again.
        app.state.media_client = httpx.AsyncClient(
            transport=media_transport or PinnedTransport(address_policy, resolver, verify=tls),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
        )
        deliveries = DeliveryStore(db)
        webhook_client = httpx.AsyncClient(
            transport=PinnedTransport(address_policy, resolver, verify=tls),
            follow_redirects=False,
        )
        webhooks = Webhooks(
            deliveries,
            config=WebhookConfig(
                allow_private=settings.webhook_allow_private,
                timeout=settings.webhook_timeout.total_seconds(),
                global_url=settings.webhook_url,
                global_secret=(
                    settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
                ),
            ),
            policy=retry,
            client=webhook_client,
            secrets_box=secret_box,
            clock=clock,
            metrics=metrics,
            rand=random.random,
        )
        manager.add_listener(webhooks)
        database.on_recovery.append(webhooks.wake)
        # The last messages each bot received, for its page on the dashboard.
        app.state.inbox = Inbox(db, clock)
        manager.add_listener(app.state.inbox)
        quota = MessageQuota(
            db,
            max_queued=settings.max_queued_messages_per_user,
            per_minute=settings.message_accept_rate,
            monotonic=clock.monotonic,
        )

        async def queue_webhook_reply(session_id: str, reply: Reply) -> str | None:
            """A webhook answered a received message with a reply: queued like a send
            through the API (same quota, an expired bot woken), once per delivery (its key),
            quoting the received message unless the receiver said not to."""
            session = manager.sessions.get(session_id)
            if session is None:
                return "the bot was deleted"
            exceeded = await quota.check(session.record.user_id)
            if exceeded is not None:
                return f"not queued: {exceeded.reason}"
            quote = {"replyTo": reply.quoted_id} if reply.quoted_id else {}
            await MediaStore(outbox).enqueue(
                session_id, reply.to, reply.text, Content(TEXT, quote), None, reply.key, clock.now()
            )
            await manager.wake(session, "its webhook answered with a reply")
            sender.wake(session_id)
            if not session.held():
                await node.notify(f"outbox:{session_id}")
            return None

        webhooks.on_reply = queue_webhook_reply
        if settings.bot_commands:

            async def reply(session: BotSession, to: str, text: str, key: str | None) -> None:
                await outbox.enqueue(session.id, to, text, key, clock.now())
                sender.wake(session.id)

            manager.add_listener(ChatCommands(clock, keepalive.summary, reply))
        await manager.load()
        scheduler = Scheduler(clock)
        now = clock.now()
        scheduler.add_periodic(
            "cleanup",
            manager.cleanup_once,
            settings.session_cleanup_interval,
            now + settings.session_cleanup_interval,
        )
        scheduler.add_periodic(
            "health-sweep",
            manager.health_sweep_once,
            settings.health_check_interval,
            now + settings.health_check_interval,
        )
        retention = Retention(
            db,
            clock,
            RetentionPolicy(
                messages=settings.message_retention,
                deliveries=settings.delivery_retention,
                audit=settings.audit_retention,
                history=settings.history_retention,
            ),
        )

        async def prune_if_leader() -> object:
            # Cluster-wide, like cleanup and the sweep: once per interval, on the leader.
            return await manager.run_if_leader("Retention", retention.prune_once)

        scheduler.add_periodic(
            "retention",
            prune_if_leader,
            settings.retention_interval,
            now + min(settings.retention_interval, timedelta(minutes=10)),
        )
        if keepalive.running:
            scheduler.add_periodic(
                "keepalive",
                keepalive.ping_once,
                settings.keep_alive_interval,
                keepalive.first_ping_at,
            )
        if keepalive.running:  # off: no check at all, rather than a `pass` it never earned
            health.checks["keepalive:responseTime"] = keepalive.health_check
        health.details["sessions"] = manager.counts_by_state
        health.details["outbox"] = lambda: metrics.outbox_counts
        app.state.db = db
        app.state.manager = manager
        app.state.keepalive = keepalive
        app.state.scheduler = scheduler
        app.state.alerter = alerter
        app.state.outbox = outbox
        app.state.quota = quota
        app.state.sender = sender
        app.state.contacts = ContactChecker(
            db,
            clock,
            gap=settings.contact_check_gap,
            ttl=settings.contact_check_ttl,
            rand=random.random,
        )
        # The files, number checks and groups other nodes ask of the bots this one runs.
        manager.actions.reads = OwnerReads(
            app.state.contacts, media_max_bytes=settings.media_download_max_mb * 1024 * 1024
        )
        app.state.deliveries = deliveries
        app.state.webhooks = webhooks
        app.state.secret_box = secret_box
        app.state.media_cache = MediaCache(
            max_bytes=settings.media_cache_mb * 1024 * 1024,
            ttl=settings.media_cache_ttl,
            clock=clock,
        )
        app.state.auth.signer = SessionSigner(
            await dashboard_secret_key(settings, store, secret_box, clock)
        )

        def sealed_secret(session_id: str) -> str | None:
            session = manager.sessions.get(session_id)
            return session.record.webhook_secret if session else None

        background = [
            *([asyncio.get_running_loop().create_task(boot_check.run())] if boot_check else []),
            asyncio.get_running_loop().create_task(webhooks.run(sealed_secret)),
            asyncio.get_running_loop().create_task(_count_outbox(outbox, metrics)),
            asyncio.get_running_loop().create_task(
                database.run(every=settings.database_check_interval.total_seconds())
            ),
        ]

        if keepalive.running and keepalive.heartbeat is not None:
            background.append(asyncio.get_running_loop().create_task(keepalive.announce_start()))
        keepalive.log_started()
        keepalive.close_stale_incident()
        warn_about_sleep_threshold(settings)
        log.info(
            "🧹 Session cleanup started (checking every {:.0f}s)",
            settings.session_cleanup_interval.total_seconds(),
        )
        if boot_check is None:
            manager.restore_in_background()
        else:
            # After the preflight: a boot does not start the bots' browsers beside the trial
            # one (in 512 MB), and a restore never races a browser that cannot start.
            background.append(
                asyncio.get_running_loop().create_task(_restore_after(boot_check, manager))
            )
        jobs = asyncio.get_running_loop().create_task(
            _start_jobs_once_listening(app, scheduler, boot_check)
        )
        try:
            yield
        finally:
            health.draining = True
            jobs.cancel()
            await sender.shutdown(within=settings.shutdown_timeout.total_seconds() / 4)
            await app.state.contacts.close()
            await app.state.inbox.drain(within=1)  # received messages on their way in
            for task in background:
                task.cancel()
            await asyncio.wait(background, timeout=1)
            await webhook_client.aclose()
            await app.state.media_client.aclose()
            await _shutdown(settings, scheduler, manager, alerter, keepalive, client, db)

    app = Starlette(
        routes=all_routes(),
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            Middleware(RequestCounter, metrics=metrics),
            Middleware(SecurityHeaders),
            Middleware(
                BodySizeLimit,
                max_bytes=settings.max_body_bytes,
                max_media_bytes=settings.max_media_bytes,
            ),
        ],
    )
    app.state.settings = settings
    app.state.address_policy = address_policy
    app.state.auth_limiter = FailedAuthLimiter(
        settings.auth_max_failures, settings.auth_failure_window.total_seconds(), clock.monotonic
    )
    app.state.resolver = resolver
    app.state.listening = asyncio.Event()
    app.state.metrics = metrics
    app.state.health = health
    app.state.sampler = SystemSampler()
    return app


def front_door(app: Starlette) -> HealthFrontDoor:
    """What uvicorn serves: /health answered before the app's middleware and routing."""
    return HealthFrontDoor(app, app.state.health, app.state.metrics, time.monotonic)


def boot_preflight(settings: Settings, engine: object) -> BootPreflight | None:
    """Only the WhatsApp engine launches browsers; a scripted engine has nothing to check."""
    if not settings.boot_preflight or not isinstance(engine, WhatsAppEngine):
        return None
    return BootPreflight(
        engine.options.chromium,
        settings.data_dir.resolve(),
        engine.options.flags,
        settings.boot_preflight_timeout.total_seconds(),
    )


async def _restore_after(boot_check: BootPreflight, manager: BotManager) -> None:
    await boot_check.done.wait()
    manager.restore_in_background()


async def _count_outbox(outbox: OutboxStore, metrics: Metrics) -> None:
    """Keep the outbox counts /health and /metrics show fresh (they never query themselves)."""
    while True:
        try:
            metrics.outbox_counts = await outbox.counts()
        except Exception as exc:
            log.debug("Counting the outbox failed: {}", exc)
        await asyncio.sleep(OUTBOX_COUNT_EVERY)


async def _start_jobs_once_listening(
    app: Starlette, scheduler: Scheduler, boot_check: BootPreflight | None = None
) -> None:
    """Start the jobs when the socket is bound, so a self-ping due at once is not refused,
    and after the boot preflight, so the self-ping does not alert on our own 503 while the
    browser is being tried (if it failed, the pings fail and alert, as they should).

    Without uvicorn (in-process tests) nobody sets the event: the jobs start after a second.
    """
    listening: asyncio.Event = app.state.listening
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            await listening.wait()
    if boot_check is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(boot_check.timeout + 5):
                await boot_check.done.wait()
    scheduler.start()


async def _shutdown(
    settings: Settings,
    scheduler: Scheduler,
    manager: BotManager,
    alerter: Alerter,
    keepalive: KeepAlive,
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
            await manager.shutdown(within=max(budget * 0.6, 0.1))
            await alerter.drain(grace=max(budget / 2, 0.1))
            await keepalive.close()
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
        manager = getattr(self._app.state, "manager", None)
        if manager is not None:
            # From the signal on, this node adopts no more bots: it is handing its own over.
            manager.node.draining = True
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


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    # Large buffers freed go back to the system for the life of the process (glibc only).
    return_large_blocks()
    if os.environ.get("WAKEFUL_TRACEMALLOC"):  # opt-in memory debugging: README, Performance
        from services.memtrace import start_from_env

        try:
            start_from_env()
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    try:
        check_durable_keys(settings, os.environ)
        engine_factory(settings)
        app = create_app(settings, preflight=settings.boot_preflight, migrated=True)
        failed = migrate_in_child(settings.sqlalchemy_url)
        if failed is not None:
            raise DatabaseError(failed)
    except (AlertConfigError, ConfigError, DatabaseError) as exc:
        print(exc, file=sys.stderr)
        return 2
    ephemeral = ephemeral_warning(settings, os.environ)
    if ephemeral:
        log.warning(ephemeral)
    config = uvicorn.Config(
        front_door(app),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        # h11, for its bound on a request's head; ours adds a bound on the time it may take.
        http=protocol_with_head_timeout(settings.header_read_timeout.total_seconds()),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        # No WebSocket routes: uvicorn would otherwise import a WebSocket library it never uses.
        ws="none",
        log_config=None,
        access_log=settings.access_log,
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
        server_header=False,
        # Longer than the platform proxies' idle timeouts (often 60 s): with uvicorn's 5 s,
        # a proxy (or a client) reusing a connection just as we close it gets a reset, a 502.
        timeout_keep_alive=KEEP_ALIVE_IDLE_SECONDS,
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
