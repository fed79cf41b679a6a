"""KeepAlive: one self-ping step (`ping_once`), its counters, its history and its alerts.

There is no scheduling in here: the scheduler calls `ping_once()` at a fixed rate (see
`ping_due_at`), and tests call it directly with an injected clock and a mock transport.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from loguru import logger

from config import VERSION, Settings, format_duration
from services.alerts import Alerter
from services.clock import Clock
from services.heartbeat import Heartbeat, HeartbeatKind
from services.httpfailure import describe_failure
from services.metrics import Metrics
from services.pingstore import PingRecord, PingStore
from services.redaction import redact_url
from services.uncancelled import UncancelledRequests

log = logger.bind(component="keepalive")

ALERT_KEY = "keepalive"
RULE = "━" * 34
RECENT_PINGS = 50
UPTIME_WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}
USER_AGENT = f"wakeful-keepalive/{VERSION}"


def ping_due_at(first: datetime, interval: timedelta, k: int) -> datetime:
    """Ping k (0-based) is due at first + k × interval, however long earlier pings took.

    A fixed rate, not a fixed delay: Railway sleeps a service that sends nothing for 10
    minutes and Render one that receives nothing for 15, so drift would lose the race.
    """
    return first + k * interval


def next_ping_due(first: datetime, interval: timedelta, now: datetime) -> datetime:
    """The first due time at or after `now` (missed slots are skipped, not replayed)."""
    if now <= first:
        return first
    k = math.ceil((now - first) / interval)
    return ping_due_at(first, interval, k)


@dataclass(frozen=True, slots=True)
class KeepAliveConfig:
    url: str | None
    interval: timedelta
    timeout: timedelta
    start_delay: timedelta
    alert_after: int = 3
    stats_every: int = 10
    history_limit: int = 10_000
    heartbeat_url: str | None = None
    # None: recognised from the URL (see services.heartbeat.detect_kind).
    heartbeat_kind: HeartbeatKind | None = None
    enabled: bool = True
    disabled_reason: str | None = None

    @property
    def shown_url(self) -> str | None:
        """The target as logs, alerts and `/api/keepalive` show it: a password or a query
        value in KEEPALIVE_URL (a token a proxy in front asks for) is masked."""
        return redact_url(self.url) if self.url is not None else None


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
        heartbeat_kind=HeartbeatKind(settings.heartbeat_kind) if settings.heartbeat_kind else None,
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


class KeepAlive:
    def __init__(
        self,
        config: KeepAliveConfig,
        *,
        client: httpx.AsyncClient,
        alerter: Alerter,
        clock: Clock,
        store: PingStore | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self._client = client
        self._alerter = alerter
        self._clock = clock
        self._store = store
        self._metrics = metrics
        self.started_at = clock.now()
        self._started_monotonic = clock.monotonic()
        self.first_ping_at = self.started_at + config.start_delay
        self.ping_count = 0
        self.failed_pings = 0
        self.consecutive_failures = 0
        self.last_ping: PingRecord | None = None
        self.last_success_at: datetime | None = None
        # When the current run of failures began: an incident's downtime counts from here.
        self.failing_since: datetime | None = None
        self.heartbeat: Heartbeat | None = None
        if config.heartbeat_url:
            self.heartbeat = Heartbeat(
                config.heartbeat_url,
                kind=config.heartbeat_kind,
                client=client,
                clock=clock,
                timeout=config.timeout,
                metrics=metrics,
            )
        self.store_failures = 0
        # A ping is judged at its timeout, its request never cancelled (services.uncancelled).
        self._requests = UncancelledRequests()
        # Oldest first; bounded both by count and (when read) by the 7-day window.
        self.history: deque[PingRecord] = deque(maxlen=config.history_limit)

    @property
    def running(self) -> bool:
        return self.config.enabled and self.config.url is not None

    @property
    def alerting(self) -> bool:
        return self._alerter.is_open(ALERT_KEY)

    def uptime(self) -> timedelta:
        return timedelta(seconds=self._clock.monotonic() - self._started_monotonic)

    async def load_history(self) -> None:
        """Fill the in-memory window from the store so uptime % survives restarts."""
        if self._store is None:
            return
        since = self._clock.now() - UPTIME_WINDOWS["7d"]
        records = await self._store.since(since, self.config.history_limit)
        self.history.extend(records)
        successes = [r.at for r in records if r.ok]
        if successes:
            self.last_success_at = successes[-1]
            if self._metrics:
                self._metrics.keepalive_last_success.set(successes[-1].timestamp())

    def health_check(self) -> tuple[str, dict[str, Any]]:
        """The /health `keepalive:responseTime` check: the last self-ping's latency; `warn`
        while an incident is open, with the last error as its `output`."""
        last = self.last_ping
        details: dict[str, Any] = {
            "componentType": "component",
            "observedValue": None if last is None else round(last.latency_ms or 0.0, 1),
            "observedUnit": "ms",
        }
        if last is not None:
            details["time"] = last.at.isoformat()
        if not self.alerting:
            return "pass", details
        details["output"] = (
            f"{self.consecutive_failures} consecutive failed pings; last: "
            f"{last.error if last and last.error else 'none since the restart'}"
        )
        return "warn", details

    def close_stale_incident(self) -> None:
        """An incident stored before a restart, with the keep-alive now off, would stay open
        for ever: it ends here, with a notice saying why."""
        if not self.running and self._alerter.is_open(ALERT_KEY):
            self._alerter.resolve(
                ALERT_KEY,
                f"the keep-alive is off now ({self.config.disabled_reason})",
                title="keep-alive incident closed",
            )

    def log_started(self) -> None:
        if not self.running:
            log.warning("💤 Keep-alive is off: {}", self.config.disabled_reason)
            return
        log.info(
            "💗 Keep-alive service started\n   Ping URL: {}\n   Interval: {}\n   First ping in: {}",
            self.config.shown_url,
            format_duration(self.config.interval),
            format_duration(self.config.start_delay),
        )

    async def ping_once(self) -> PingRecord:
        """Ping the target once, record and log the result, alert or resolve as due."""
        assert self.config.url is not None, "ping_once needs a target URL"
        self.ping_count += 1
        number = self.ping_count
        at = self._clock.now()
        started = self._clock.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            seconds = self.config.timeout.total_seconds()
            response = await self._requests.within(
                seconds,
                self._client.get(
                    self.config.url,
                    timeout=seconds,
                    headers={"User-Agent": USER_AGENT, "Cache-Control": "no-cache"},
                ),
            )
            status = response.status_code
            if not response.is_success:
                error = f"HTTP {status} {response.reason_phrase}".strip()
        except Exception as exc:  # any failure is a failed ping, never a dead job
            error = describe_failure(exc, self.config.timeout)
        latency_ms = (self._clock.monotonic() - started) * 1000
        record = PingRecord(
            at=at, ok=error is None, latency_ms=latency_ms, status_code=status, error=error
        )
        self._record(record)
        if record.ok:
            log.info("💗 Keep-alive ping #{} successful ({:.0f}ms)", number, latency_ms)
            self._on_success(record)
            if self.heartbeat is not None:
                await self.heartbeat.success(
                    latency_ms, f"ping #{number} ok in {latency_ms:.0f} ms"
                )
        else:
            log.warning("❌ Keep-alive ping #{} failed: {}", number, error)
            self._on_failure(record)
            if self.heartbeat is not None and self.alerting:
                # Once the incident is open, the monitor hears why at every failed ping (Kuma
                # shows the last message; Healthchecks keeps each body).
                await self.heartbeat.fail(
                    f"{self.consecutive_failures} consecutive keep-alive failures: {error}"
                )
        if number % self.config.stats_every == 0:
            self.log_stats()
        await self._persist(record)
        return record

    async def close(self) -> None:
        """Stop the requests that outlived their ping (at shutdown)."""
        await self._requests.close()
        if self.heartbeat is not None:
            await self.heartbeat.close()

    def _record(self, record: PingRecord) -> None:
        self.last_ping = record
        self.history.append(record)
        if not record.ok:
            self.failed_pings += 1
        if self._metrics:
            self._metrics.keepalive_pings.labels(result="success" if record.ok else "failure").inc()
            if record.latency_ms is not None:
                self._metrics.keepalive_ping_duration.labels(
                    result="success" if record.ok else "failure"
                ).observe(record.latency_ms / 1000)

    def _on_success(self, record: PingRecord) -> None:
        failures = self.consecutive_failures
        self.consecutive_failures = 0
        self.failing_since = None
        self.last_success_at = record.at
        if self._metrics:
            self._metrics.keepalive_consecutive_failures.set(0)
            self._metrics.keepalive_last_success.set(record.at.timestamp())
        if not self._alerter.is_open(ALERT_KEY):
            return
        # Zero failures here: the incident was opened before a restart, and this is the
        # first ping since.
        after = f" after {failures} consecutive failures" if failures else " after a restart"
        self._alerter.resolve(
            ALERT_KEY,
            f"keep-alive pings to {self.config.shown_url} succeed again{after}",
            title="keep-alive recovered",
        )

    def _on_failure(self, record: PingRecord) -> None:
        self.consecutive_failures += 1
        if self.failing_since is None:
            self.failing_since = record.at
        if self._metrics:
            self._metrics.keepalive_consecutive_failures.set(self.consecutive_failures)
        if self.consecutive_failures >= self.config.alert_after:
            # The alerter ignores an incident that is already open: one alert per incident.
            self._alerter.alert(
                ALERT_KEY,
                f"{self.config.alert_after} consecutive keep-alive failures! "
                f"Last error: {record.error}; target {self.config.shown_url}",
                title="keep-alive failing",
                since=self.failing_since,
            )

    async def announce_start(self) -> None:
        """Tell the heartbeat monitor a run began (Healthchecks' `/start`): it then shows how
        long the boot took until the first good ping."""
        if self.heartbeat is not None:
            await self.heartbeat.start()

    async def _persist(self, record: PingRecord) -> None:
        if self._store is None:
            return
        try:
            await self._store.add(record)
            if self.ping_count % 100 == 0:
                await self._store.prune(
                    keep=self.config.history_limit,
                    older_than=self._clock.now() - 2 * UPTIME_WINDOWS["7d"],
                )
        except Exception as exc:  # the database being away must not stop the pings
            self.store_failures += 1
            log.warning("Could not store keep-alive ping #{}: {}", self.ping_count, exc)

    def summary(self) -> str:
        """One line for people: `100.0% of 12 pings ok` (or why it is not running)."""
        if not self.running:
            return f"off ({self.config.disabled_reason})"
        if self.ping_count == 0:
            return "no ping yet"
        ok = self.ping_count - self.failed_pings
        return f"{self.success_rate():.1f}% ({ok}/{self.ping_count} pings ok)"

    def success_rate(self) -> float:
        if self.ping_count == 0:
            return 100.0
        return (self.ping_count - self.failed_pings) / self.ping_count * 100

    def log_stats(self) -> None:
        log.info(
            "{rule}\n💗 Keep-Alive Stats:\n   Uptime: {uptime:.1f}h\n   Total Pings: {total}\n"
            "   Failed Pings: {failed}\n   Success Rate: {rate:.1f}%\n{rule}",
            rule=RULE,
            uptime=self.uptime().total_seconds() / 3600,
            total=self.ping_count,
            failed=self.failed_pings,
            rate=self.success_rate(),
        )

    # Reporting ------------------------------------------------------------------------

    def uptime_percent(self, window: timedelta) -> float | None:
        since = self._clock.now() - window
        total = ok = 0
        for record in reversed(self.history):
            if record.at < since:
                break
            total += 1
            ok += record.ok
        return round(ok / total * 100, 3) if total else None

    def latency_summary(self, window: timedelta = UPTIME_WINDOWS["24h"]) -> dict[str, Any]:
        since = self._clock.now() - window
        values: list[float] = []
        for record in reversed(self.history):
            if record.at < since:
                break
            if record.ok and record.latency_ms is not None:
                values.append(record.latency_ms)
        if not values:
            return {"p50Ms": None, "p95Ms": None, "maxMs": None, "samples": 0, "window": "24h"}
        values.sort()
        return {
            "p50Ms": round(_percentile(values, 50), 1),
            "p95Ms": round(_percentile(values, 95), 1),
            "maxMs": round(values[-1], 1),
            "samples": len(values),
            "window": "24h",
        }

    def _heartbeat_snapshot(self) -> dict[str, Any]:
        beat = self.heartbeat
        if beat is None:
            return {
                "configured": False,
                "kind": None,
                "lastOk": None,
                "lastAt": None,
                "lastEvent": None,
                "lastError": None,
                "failures": 0,
            }
        return {
            "configured": True,
            "kind": beat.kind.value,
            "lastOk": beat.last_ok,
            "lastAt": beat.last_at.isoformat() if beat.last_at else None,
            "lastEvent": beat.last_event,
            "lastError": beat.last_error,
            "failures": beat.failures,
        }

    def snapshot(self, next_ping_at: datetime | None) -> dict[str, Any]:
        """The `/api/keepalive` document: the seed's fields first, with their names and types."""
        uptime_ms = int(self.uptime().total_seconds() * 1000)
        recent = list(self.history)[-RECENT_PINGS:]
        return {
            "isRunning": self.running,
            "uptime": uptime_ms,
            "uptimeHours": f"{uptime_ms / 3_600_000:.1f}",
            "pingCount": self.ping_count,
            "failedPings": self.failed_pings,
            "successRate": f"{self.success_rate():.1f}",
            "healthUrl": self.config.shown_url,
            "pingInterval": int(self.config.interval.total_seconds() * 1000),
            "disabledReason": None if self.running else self.config.disabled_reason,
            "timeout": int(self.config.timeout.total_seconds() * 1000),
            "alertAfter": self.config.alert_after,
            "consecutiveFailures": self.consecutive_failures,
            "alerting": self.alerting,
            "lastPing": self.last_ping.as_json() if self.last_ping else None,
            "lastSuccessAt": self.last_success_at.isoformat() if self.last_success_at else None,
            "nextPingAt": next_ping_at.isoformat() if next_ping_at and self.running else None,
            "latency": self.latency_summary(),
            "uptimePercent": {
                name: self.uptime_percent(window) for name, window in UPTIME_WINDOWS.items()
            },
            "recentPings": [r.as_json() for r in reversed(recent)],
            "heartbeat": self._heartbeat_snapshot(),
        }


def _percentile(sorted_values: list[float], percent: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
