"""Alerter: one log line plus one notification per incident, and a "resolved" notice after.

An incident is identified by a key (`keepalive`, `database`, `session:<id>`). Raising an open
incident again is a no-op, so a caller may report every failure and people still hear about
it once. Open incidents are stored (services.incidents) and reloaded at start, so a restart
in the middle of one (how a PaaS applies a fixed setting) still ends in one RESOLVED notice
whose downtime counts from the first failure.

Notifications go to every apprise URL in ALERT_URLS (Slack, Discord, Telegram, mailto,
json webhooks…) in the background: a slow channel never holds up the caller. Each channel
has its own ordered queue: a notification it fails is retried with backoff for a bounded
time, and the notices after it wait, so a "resolved" never overtakes its alert there while
the other channels go on. A failure is logged naming the channel (by its position and its
URL with the secrets masked) and apprise's own reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from loguru import logger

from services.alertchannels import (
    FAILURE,
    SUCCESS,
    AlertConfigError,
    Channel,
    Note,
    apprise_captured,
    load_channel,
    masked,
    notify_type,
)
from services.clock import Clock

__all__ = ["AlertConfigError", "Alerter", "Incident", "humanize"]

log = logger.bind(component="alerts")

RETRY_BASE = timedelta(seconds=5)
RETRY_CAP = timedelta(minutes=2)
# How long a notification is retried before it is given up (logged as such).
RETRY_FOR = timedelta(minutes=15)
# How long a notice waits to learn whether this node is the one to send it.
STORE_WAIT_SECONDS = 3.0
Sleep = Callable[[float], Awaitable[None]]


class IncidentStorage(Protocol):
    # True when this call opened (closed) the stored incident: its notice is this node's.
    def open(self, key: str, title: str, message: str, opened_at: datetime) -> Awaitable[bool]: ...
    def close(self, key: str) -> Awaitable[bool]: ...
    # Rows with the fields of StoredIncidentLike.
    def all_open(self) -> Awaitable[list[Any]]: ...


class StoredIncidentLike(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def opened_at(self) -> datetime: ...


class NotificationCounter(Protocol):
    def count_notification(self, result: str) -> None: ...


@dataclass
class Incident:
    key: str
    opened_at: datetime
    message: str
    title: str = ""


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
    def __init__(
        self,
        urls: list[str],
        clock: Clock,
        *,
        source: str = "wakeful",
        retry_base: timedelta = RETRY_BASE,
        retry_cap: timedelta = RETRY_CAP,
        retry_for: timedelta = RETRY_FOR,
        sleep: Sleep = asyncio.sleep,
        metrics: NotificationCounter | None = None,
    ) -> None:
        self._clock = clock
        self.source = source
        self._channels = [load_channel(n, url) for n, url in enumerate(urls, start=1)]
        self._retry_base = retry_base.total_seconds()
        self._retry_cap = retry_cap.total_seconds()
        self._retry_for = retry_for.total_seconds()
        self._sleep = sleep
        self._metrics = metrics
        self._store: IncidentStorage | None = None
        self._open: dict[str, Incident] = {}
        # Strong references: a task nobody holds may be garbage-collected mid-flight.
        self._tasks: set[asyncio.Task[None]] = set()
        # One send at a time: apprise's reasons are read from its log while it sends.
        self._sending = asyncio.Lock()
        # Stored in the order they happened: an alert's row before its resolution's delete.
        self._writing = asyncio.Lock()
        self.notifications_sent = 0
        self.notifications_failed = 0  # failed attempts (each retry counts)
        self.notifications_abandoned = 0  # given up after RETRY_FOR

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    # Incidents -----------------------------------------------------------------------

    def use_store(self, store: IncidentStorage) -> None:
        self._store = store

    async def load(self) -> list[Incident]:
        """Re-open the incidents stored before a restart (no notification: people already
        know); their owners resolve them when they see things fine again."""
        if self._store is None:
            return []
        loaded = []
        stored: StoredIncidentLike
        for stored in await self._store.all_open():
            incident = Incident(stored.key, stored.opened_at, stored.message, stored.title)
            self._open.setdefault(stored.key, incident)
            loaded.append(incident)
            log.warning(
                "Incident still open from before the restart: {} (since {})",
                stored.title or stored.key,
                stored.opened_at.isoformat(),
            )
        return loaded

    def is_open(self, key: str) -> bool:
        return key in self._open

    def opened_at(self, key: str) -> datetime | None:
        incident = self._open.get(key)
        return incident.opened_at if incident else None

    def adopt(self, key: str, opened_at: datetime, message: str) -> None:
        """Re-open an incident known from elsewhere (a bot's stored health) without notifying."""
        self._open.setdefault(key, Incident(key=key, opened_at=opened_at, message=message))

    def forget(self, key: str) -> None:
        """Drop an incident whose subject is gone (a deleted bot), without a notice."""
        if self._open.pop(key, None) is not None:
            self._write(lambda store: store.close(key), f"forget incident {key}")

    def alert(self, key: str, message: str, *, title: str, since: datetime | None = None) -> bool:
        """Open an incident: log at ERROR and notify. False if it was already open.

        `since` is when the trouble began (the first failure), which the resolved notice
        counts the downtime from; by default, now."""
        if key in self._open:
            return False
        incident = Incident(key, since or self._clock.now(), message, title)
        self._open[key] = incident
        log.error("🚨 ALERT: {}", message)
        self._write(
            lambda store: store.open(key, title, message, incident.opened_at),
            f"store incident {key}",
            then=lambda: self._notify(title=title, body=message, kind=FAILURE),
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
        self._write(
            lambda store: store.close(key),
            f"close incident {key}",
            then=lambda: self._notify(title=title, body=text, kind=SUCCESS),
        )
        return incident

    def _write(
        self,
        action: Callable[[IncidentStorage], Awaitable[bool]],
        what: str,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Store the change; `then` (the notice) runs when this write made it, so one
        incident seen by several nodes is announced once. Without a store, or with the
        database away, the notice goes anyway: better twice than never."""
        store = self._store
        if store is None:
            if then is not None:
                then()
            return

        async def write() -> None:
            async with self._writing:
                try:
                    # Bounded: a database away must not hold the notice back for long.
                    async with asyncio.timeout(STORE_WAIT_SECONDS):
                        mine = await action(store)
                except Exception as exc:  # the database away must not lose the alert itself
                    log.warning("Could not {}: {}", what, type(exc).__name__)
                    mine = True
            if then is None:
                return
            if mine:
                then()
            else:
                log.info("Not notifying ({}): another node did, or had already", what)

        self._spawn(write())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # Notifications -------------------------------------------------------------------

    def _notify(self, *, title: str, body: str, kind: str) -> None:
        note = Note(f"[{self.source}] {title}", body, kind, self._clock.monotonic())
        for channel in self._channels:
            channel.queue.append(note)
            if channel.worker is None or channel.worker.done():
                channel.worker = self._spawn(self._work(channel))

    async def _work(self, channel: Channel) -> None:
        """Send the channel's notices in order, each retried until RETRY_FOR has passed."""
        while channel.queue:
            note = channel.queue[0]
            attempt = 1
            while True:
                reason = await self._send_once(channel, note)
                if reason is None:
                    self.notifications_sent += 1
                    self._count("delivered")
                    if attempt > 1:
                        log.info(
                            "Alert notification {!r} delivered to channel {} at attempt {}",
                            note.title,
                            channel.name,
                            attempt,
                        )
                    break
                self.notifications_failed += 1
                self._count("failed")
                delay = min(self._retry_base * 2 ** (attempt - 1), self._retry_cap)
                waited = self._clock.monotonic() - note.queued_at
                if waited + delay > self._retry_for:
                    self.notifications_abandoned += 1
                    self._count("abandoned")
                    log.error(
                        "Alert notification {!r} could not be delivered to channel {}: {}; "
                        "giving up after {} attempts",
                        note.title,
                        channel.name,
                        reason,
                        attempt,
                    )
                    break
                log.warning(
                    "Alert notification {!r} could not be delivered to channel {}: {}; "
                    "retrying in {:g}s",
                    note.title,
                    channel.name,
                    reason,
                    delay,
                )
                await self._sleep(delay)
                attempt += 1
            channel.queue.popleft()

    async def _send_once(self, channel: Channel, note: Note) -> str | None:
        """One attempt; None when delivered, else apprise's reason (secrets masked)."""
        async with self._sending:
            with apprise_captured() as said:
                try:
                    result = await channel.apprise.async_notify(
                        body=note.body, title=note.title, notify_type=notify_type(note.kind)
                    )
                    delivered = bool(result)
                except Exception as exc:  # a notification channel must never break the caller
                    delivered = False
                    said.warnings.append(f"{type(exc).__name__}: {exc}")
        if delivered:
            return None
        reasons = said.warnings or said.details[-1:] or ["apprise reported a failure"]
        return masked("; ".join(dict.fromkeys(reasons)), channel.secrets)

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.count_notification(result)

    async def drain(self, grace: float) -> None:
        """Wait up to `grace` seconds for notifications in flight; cancel what is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # A stored incident's write queues its notice when it ends: wait for those too.
        while self._tasks:
            pending = set(self._tasks)
            _, still_running = await asyncio.wait(pending, timeout=max(deadline - loop.time(), 0))
            if still_running:
                for task in still_running:
                    task.cancel()
                return
