"""Alerter: one log line plus one notification per incident, and a "resolved" notice after.

An incident is identified by a key (`keepalive`, later `session:<id>`). Raising an open
incident again is a no-op, so a caller may report every failure and people still hear about
it once. Notifications go to every apprise URL in ALERT_URLS (Slack, Discord, Telegram,
mailto, json webhooks…) in the background: a slow channel never holds up the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import apprise
from loguru import logger

from services.clock import Clock

log = logger.bind(component="alerts")


class AlertConfigError(ValueError):
    """An ALERT_URLS entry apprise does not understand (the URL itself is never echoed)."""


@contextlib.contextmanager
def _apprise_silenced() -> Iterator[None]:
    """Apprise logs an entry it refuses in full ("Unsupported URL: …", "Could not load Slack
    URL: slack://…"), tokens and all; our own error names the entry by its position."""
    apprise_log = logging.getLogger("apprise")
    was = apprise_log.disabled
    apprise_log.disabled = True
    try:
        yield
    finally:
        apprise_log.disabled = was


@dataclass
class Incident:
    key: str
    opened_at: datetime
    message: str


def humanize(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


class Alerter:
    def __init__(self, urls: list[str], clock: Clock, *, source: str = "wakeful") -> None:
        self._clock = clock
        self._source = source
        self._apprise = apprise.Apprise()
        for position, url in enumerate(urls, start=1):
            with _apprise_silenced():
                added = self._apprise.add(url)
            if not added:
                raise AlertConfigError(
                    f"Invalid configuration: ALERT_URLS entry #{position} is not a URL apprise "
                    "understands (expected e.g. slack://…, discord://…, tgram://…, "
                    "mailto://…, json://host/path)"
                )
        self._open: dict[str, Incident] = {}
        # Strong references: a task nobody holds may be garbage-collected mid-flight.
        self._tasks: set[asyncio.Task[None]] = set()
        # One notification at a time, in order: a "resolved" must never overtake its alert.
        self._sending = asyncio.Lock()
        self.notifications_sent = 0
        self.notifications_failed = 0

    def is_open(self, key: str) -> bool:
        return key in self._open

    def adopt(self, key: str, opened_at: datetime, message: str) -> None:
        """Re-open an incident known from storage (after a restart) without notifying."""
        self._open.setdefault(key, Incident(key=key, opened_at=opened_at, message=message))

    def forget(self, key: str) -> None:
        """Drop an incident whose subject is gone (a deleted bot), without a notice."""
        self._open.pop(key, None)

    def alert(self, key: str, message: str, *, title: str, since: datetime | None = None) -> bool:
        """Open an incident: log at ERROR and notify. False if it was already open.

        `since` is when the trouble began (the first failure), which the resolved notice
        counts the downtime from; by default, now."""
        if key in self._open:
            return False
        opened = since or self._clock.now()
        self._open[key] = Incident(key=key, opened_at=opened, message=message)
        log.error("🚨 ALERT: {}", message)
        self._notify(
            title=f"[{self._source}] {title}", body=message, kind=apprise.NotifyType.FAILURE
        )
        return True

    def resolve(self, key: str, message: str, *, title: str) -> Incident | None:
        """Close an open incident with a notice saying how long it lasted."""
        incident = self._open.pop(key, None)
        if incident is None:
            return None
        duration = humanize(self._clock.now() - incident.opened_at)
        text = f"{message} (down {duration})"
        log.info("✅ RESOLVED: {}", text)
        self._notify(title=f"[{self._source}] {title}", body=text, kind=apprise.NotifyType.SUCCESS)
        return incident

    def _notify(self, *, title: str, body: str, kind: str) -> None:
        if not len(self._apprise):
            return
        task = asyncio.get_running_loop().create_task(self._send(title, body, kind))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, title: str, body: str, kind: str) -> None:
        try:
            async with self._sending:
                result = await self._apprise.async_notify(body=body, title=title, notify_type=kind)
            delivered = bool(result)
        except Exception as exc:  # a notification channel must never break the caller
            delivered = False
            log.warning("Alert notification raised {}: {}", type(exc).__name__, exc)
        if delivered:
            self.notifications_sent += 1
        else:
            self.notifications_failed += 1
            log.warning("Alert notification could not be delivered to every channel")

    async def drain(self, grace: float) -> None:
        """Wait up to `grace` seconds for notifications in flight; cancel what is left."""
        if not self._tasks:
            return
        pending = set(self._tasks)
        _, still_running = await asyncio.wait(pending, timeout=grace)
        for task in still_running:
            task.cancel()
