"""Is the database there? Which errors mean "it is away" (not "the query is wrong"), a
probe step for the background loop, and the `database` check in /health.

While the database is away, the parts that keep their state in memory go on (/health,
/api/keepalive, the keep-alive pings, connected bots); requests that need it answer 503
(see web/errors.py) and every background loop backs off and tries again. Nothing has to be
restarted: the pool opens new connections once the database answers again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from loguru import logger
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from services.alerts import Alerter, humanize
from services.clock import Clock
from services.database import Database

log = logger.bind(component="database")

# Postgres error classes that mean the server cannot serve us right now, whatever the query:
# connection exceptions (08…), shutting down or starting up (57P01-57P03), too many clients.
_AWAY_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
# SQLite's OperationalError also covers "no such table"; only these mean the file is away.
_SQLITE_AWAY = ("unable to open", "disk i/o", "database is locked", "readonly", "disk is full")
_DATABASE_MODULES = ("sqlalchemy", "asyncpg", "aiosqlite", "sqlite3", "services.database")
PROBE_TIMEOUT = 5.0
ALERT_AFTER = 3  # consecutive failed probes, as the keep-alive alerts after 3 failed pings
RETRY_AFTER_SECONDS = 5


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or getattr(current, "orig", None)


def _raised_in_database_code(exc: BaseException) -> bool:
    """Did this exception come out of the database stack (not a file, a browser, a peer)?"""
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith(_DATABASE_MODULES):
            return True
        tb = tb.tb_next
    return False


def is_database_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database cannot be reached, not that a query is wrong."""
    for cause in _causes(exc):
        if isinstance(cause, sa_exc.TimeoutError):  # every pooled connection is stuck
            return True
        if isinstance(cause, OSError | TimeoutError):  # refused, reset, DNS, connect timeout
            if _raised_in_database_code(cause):
                return True
            continue
        if isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated:
            return True
        if isinstance(cause, sa_exc.StatementError):
            continue  # its text holds the SQL and the parameters: read the driver's own error
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_AWAY_SQLSTATES):
            return True
        name = type(cause).__name__
        if name in ("ConnectionDoesNotExistError", "InterfaceError") and "closed" in str(cause):
            return True
        if name == "OperationalError" and any(s in str(cause).lower() for s in _SQLITE_AWAY):
            return True
    return False


def describe(exc: BaseException) -> str:
    """One line for a person: the deepest cause's message, without SQL or parameters."""
    deepest = list(_causes(exc))[-1]
    message = str(deepest).strip().splitlines()[0] if str(deepest).strip() else ""
    return f"{type(deepest).__name__}: {message}" if message else type(deepest).__name__


class DatabaseMonitor:
    """The database's reachability, from probes and from the failures requests run into."""

    def __init__(self, db: Database, clock: Clock, alerter: Alerter | None = None) -> None:
        self._db = db
        self._clock = clock
        self._alerter = alerter
        self.down_since: datetime | None = None
        self.last_error: str | None = None
        self.failed_probes = 0
        # The last probe: when, and how long `SELECT 1` took (for /health's responseTime).
        self.last_probe_at: datetime | None = None
        self.last_probe_ms: float | None = None
        # Called when the database answers again after an outage (workers backing off).
        self.on_recovery: list[Callable[[], None]] = []

    @property
    def available(self) -> bool:
        return self.down_since is None

    async def check_once(self) -> bool:
        """Probe with `SELECT 1`; True when the database answered."""
        self.last_probe_at = self._clock.now()
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                async with self._db.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception as exc:
            self.last_probe_ms = None
            self.failed_probes += 1
            self.saw_failure(exc)
            if self.failed_probes == ALERT_AFTER and self._alerter is not None:
                self._alerter.alert(
                    "database",
                    f"the database ({self._db.display_name}) has been unreachable for "
                    f"{self.failed_probes} checks: {self.last_error}",
                    title="database unreachable",
                    since=self.down_since,
                )
            return False
        self.last_probe_ms = round((self._clock.monotonic() - started) * 1000, 3)
        self.saw_success()
        return True

    def saw_failure(self, exc: BaseException) -> None:
        """Record that the database is away (a probe, or a request that needed it)."""
        self.last_error = describe(exc)
        if self.down_since is None:
            self.down_since = self._clock.now()
            log.warning(
                "⚠️ Database unreachable ({}): {}; requests that need it get 503 until it is back",
                self._db.display_name,
                self.last_error,
            )

    def saw_success(self) -> None:
        recovered = self.down_since is not None
        if self.down_since is not None:
            away = self._clock.now() - self.down_since
            log.info("✅ Database reachable again after {}", humanize(away))
        if self._alerter is not None and self._alerter.is_open("database"):
            # Also an incident stored before a restart: it is over once the database answers.
            self._alerter.resolve(
                "database", "the database is reachable again", title="database reachable"
            )
        self.down_since = None
        self.last_error = None
        self.failed_probes = 0
        if recovered:
            for callback in self.on_recovery:
                callback()

    def health_check(self) -> tuple[str, dict[str, Any]]:
        """The /health `database:responseTime` check: the last probe's time, in ms; `warn`
        while away (the process itself is fine, so a platform must not restart it for this)."""
        details: dict[str, Any] = {
            "componentType": "datastore",
            "observedValue": self.last_probe_ms,
            "observedUnit": "ms",
        }
        if self.last_probe_at is not None:
            details["time"] = self.last_probe_at.isoformat()
        if self.down_since is None:
            return "pass", details
        # /health is public: the kind of error only; the log has the address and the rest.
        details["output"] = (self.last_error or "unreachable").split(":", 1)[0]
        details["unreachableSince"] = self.down_since.isoformat()
        return "warn", details

    async def run(self, every: float) -> None:
        """Probe forever (a task kept and cancelled by the lifespan)."""
        while True:
            await self.check_once()
            await asyncio.sleep(every)
