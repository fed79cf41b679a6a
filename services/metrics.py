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
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# `*_created` series double the output and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.keepalive_pings = Counter(
            "keepalive_pings", "Keep-alive self-pings by result", ["result"], registry=self.registry
        )
        for result in ("success", "failure"):
            self.keepalive_pings.labels(result=result)
        self.keepalive_ping_duration = Histogram(
            "keepalive_ping_duration_seconds",
            "Duration of keep-alive self-pings",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
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
                lambda: self.outbox_counts,
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
                lambda: self.session_counts(),
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

    def count_request(self, status: int) -> None:
        self.http_counts[_STATUS_CLASS[min(max(status // 100, 1), 5)]] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
