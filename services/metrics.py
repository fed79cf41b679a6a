"""Prometheus registry, HTTP request counts, and the JSON metrics snapshot (psutil).

Each app gets its own registry (not prometheus-client's global one), so two apps in one
process, as in the tests, never collide.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

# `*_created` series double the output and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Metrics:
    def __init__(self, version: str = "unknown") -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Info("wakeful_build", "The running wakeful build", registry=self.registry).info(
            {"version": version}
        )
        # Label values known in advance, so every series exists (at 0) from the first scrape:
        # `rate()` and `increase()` need the series before the first event. The owners of
        # these values (the bot package) declare them at start: services never import bot.
        self.known_states: tuple[str, ...] = ()
        self.known_outbox_statuses: tuple[str, ...] = ()
        # Is the database answering? Read at scrape time from whoever probes it.
        self.database_available: Callable[[], bool | None] = lambda: None
        self.registry.register(_DatabaseCollector(lambda: self.database_available()))
        self.keepalive_pings = Counter(
            "keepalive_pings", "Keep-alive self-pings by result", ["result"], registry=self.registry
        )
        for result in ("success", "failure"):
            self.keepalive_pings.labels(result=result)
        self.keepalive_ping_duration = Histogram(
            "keepalive_ping_duration_seconds",
            "Duration of keep-alive self-pings, by result (a timeout is a failure's duration)",
            ["result"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        for result in ("success", "failure"):
            self.keepalive_ping_duration.labels(result=result)
        self.heartbeat_pushes = Counter(
            "heartbeat_pushes",
            "Pushes to HEARTBEAT_URL, by event (success, fail, start) and result (ok, error)",
            ["event", "result"],
            registry=self.registry,
        )
        for event in ("success", "fail", "start"):
            for outcome in ("ok", "error"):
                self.heartbeat_pushes.labels(event=event, result=outcome)
        self.keepalive_consecutive_failures = Gauge(
            "keepalive_consecutive_failures",
            "Keep-alive pings failed in a row",
            registry=self.registry,
        )
        self.keepalive_last_success = Gauge(
            "keepalive_last_success_timestamp_seconds",
            "Unix time of the last successful keep-alive ping",
            registry=self.registry,
        )
        self.alert_notifications = Counter(
            "alert_notifications",
            "Alert notification attempts per channel, by result (delivered; failed, then "
            "retried; abandoned after the retry time)",
            ["result"],
            registry=self.registry,
        )
        for result in ("delivered", "failed", "abandoned"):
            self.alert_notifications.labels(result=result)
        self.bot_transitions = Counter(
            "bot_session_transitions",
            "Bot session state changes, by the state entered",
            ["to"],
            registry=self.registry,
        )
        self.bot_cleanup_removed = Counter(
            "bot_cleanup_removed",
            "Bot sessions closed by the cleanup sweep, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.outbox_send_duration = Histogram(
            "outbox_send_duration_seconds",
            "Time to hand one outbox message to WhatsApp",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "webhook_deliveries",
            "Webhook delivery attempts by result",
            ["result"],
            registry=self.registry,
        )
        for result in ("delivered", "retried", "dead"):
            self.webhook_deliveries.labels(result=result)
        # The outbox's rows by status, as last counted (the owner refreshes it).
        self.outbox_counts: dict[str, int] = {}
        self.registry.register(
            _CountsCollector(
                GaugeMetricFamily,
                "outbox_messages",
                "Outbox messages by status",
                "status",
                lambda: {**dict.fromkeys(self.known_outbox_statuses, 0), **self.outbox_counts},
            )
        )
        # Session counts are read at scrape time from whoever owns the sessions (services
        # never import the bot manager; it hands a callable over instead).
        self.session_counts: Callable[[], dict[str, int]] = dict
        self.registry.register(
            _CountsCollector(
                GaugeMetricFamily,
                "bot_sessions",
                "Bot sessions by lifecycle state",
                "state",
                lambda: {**dict.fromkeys(self.known_states, 0), **self.session_counts()},
            )
        )
        # Bots each live node of the cluster runs, as this node last read the registry.
        self.node_bots: Callable[[], dict[str, int]] = dict
        self.registry.register(
            _CountsCollector(
                GaugeMetricFamily,
                "cluster_node_bots",
                "Bots run by each live node of the cluster",
                "node",
                lambda: self.node_bots(),
            )
        )
        # The memory budget in bytes by part (limit, server, driver, bots), read at scrape time.
        self.memory_parts: Callable[[], dict[str, int]] = dict
        self.registry.register(
            _CountsCollector(
                GaugeMetricFamily,
                "memory_budget_bytes",
                "The container's memory limit and what the server, driver and bots use (PSS)",
                "part",
                lambda: self.memory_parts(),
            )
        )
        # Plain integers on the request path (/health included); Prometheus reads them at
        # scrape time. One event loop thread increments them, so no lock is needed.
        self.http_counts = dict.fromkeys(STATUS_CLASSES, 0)
        self.registry.register(
            _CountsCollector(
                CounterMetricFamily,
                "http_requests",
                "HTTP requests answered, by status class",
                "status_class",
                lambda: self.http_counts,
            )
        )

    def declare(
        self,
        *,
        states: Iterable[str] = (),
        cleanup_reasons: Iterable[str] = (),
        outbox_statuses: Iterable[str] = (),
    ) -> None:
        """Create the series of label values known in advance, at 0."""
        self.known_states = tuple(states)
        self.known_outbox_statuses = tuple(outbox_statuses)
        for state in self.known_states:
            self.bot_transitions.labels(to=state)
        for reason in cleanup_reasons:
            self.bot_cleanup_removed.labels(reason=reason)

    def count_notification(self, result: str) -> None:
        self.alert_notifications.labels(result=result).inc()

    def count_request(self, status: int) -> None:
        self.http_counts[_STATUS_CLASS[min(max(status // 100, 1), 5)]] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format the scraper asks for (`Accept`): OpenMetrics when it
        says so (Prometheus does, first), else the classic text format; and its media type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


_STATUS_CLASS = {n: f"{n}xx" for n in range(1, 6)}


class _CountsCollector(Collector):
    """A labelled family read from a dict of counts at scrape time (nothing on hot paths)."""

    def __init__(
        self,
        family: type[CounterMetricFamily] | type[GaugeMetricFamily],
        name: str,
        documentation: str,
        label: str,
        read: Callable[[], dict[str, int]],
    ) -> None:
        self._family = family
        self._name = name
        self._documentation = documentation
        self._label = label
        self._read = read

    def collect(self) -> Iterable[Metric]:
        family = self._family(self._name, self._documentation, labels=[self._label])
        for value, count in sorted(self._read().items()):
            family.add_metric([value], count)
        yield family


class _DatabaseCollector(Collector):
    """`database_up`: 1 when the last probe answered, 0 while the database is away (no
    series before the first probe says either)."""

    def __init__(self, read: Callable[[], bool | None]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "database_up", "Whether the database answered the last probe (1) or not (0)"
        )
        available = self._read()
        if available is not None:
            family.add_metric([], 1.0 if available else 0.0)
        yield family


class SystemSampler:
    """Process and system figures from psutil.

    CPU percentages are measured between two calls, so the first call is made here and the
    API reports the usage since the previous request (or since start).
    """

    def __init__(self, started_at: float | None = None) -> None:
        self._process = psutil.Process(os.getpid())
        self._started_at = started_at if started_at is not None else time.time()
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)

    def process(self) -> dict[str, Any]:
        proc = self._process
        with proc.oneshot():
            memory = proc.memory_info()
            try:
                open_files = proc.num_fds()
            except (AttributeError, psutil.Error):
                open_files = len(proc.open_files())
            return {
                "pid": proc.pid,
                "rssBytes": memory.rss,
                "rssMb": round(memory.rss / 1_048_576, 1),
                "cpuPercent": proc.cpu_percent(None),
                "threads": proc.num_threads(),
                "openFiles": open_files,
                "uptimeSeconds": round(time.time() - self._started_at, 1),
            }

    def system(self) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        try:
            load = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            load = None
        return {
            "cpuCount": psutil.cpu_count(),
            "cpuPercent": psutil.cpu_percent(None),
            "memoryPercent": memory.percent,
            "memoryTotalMb": round(memory.total / 1_048_576),
            "memoryAvailableMb": round(memory.available / 1_048_576),
            "loadAverage": load,
        }


def metrics_snapshot(
    sampler: SystemSampler,
    metrics: Metrics,
    sections: dict[str, Callable[[], dict[str, Any]]],
) -> dict[str, Any]:
    """The `/api/metrics` document; `sections` adds the keep-alive (and later bot) summaries."""
    document: dict[str, Any] = {
        "process": sampler.process(),
        "system": sampler.system(),
        "http": {"requests": dict(metrics.http_counts), "total": sum(metrics.http_counts.values())},
    }
    for name, build in sections.items():
        document[name] = build()
    return document
