"""The periodic jobs and their control: each job is one step coroutine on a fixed rate.

APScheduler does the timing (fixed-rate `IntervalTrigger`: the next run is computed from
the previous *scheduled* time, so a slow step never pushes later ones back); this module
adds what a person operating the service needs: the last run, its result or error, pause,
resume and run-now.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from loguru import logger

from services.clock import Clock

log = logger.bind(component="scheduler")

Step = Callable[[], Awaitable[Any]]


class UnknownJobError(KeyError):
    pass


@dataclass
class JobRecord:
    name: str
    step: Step
    interval: timedelta
    first_run_at: datetime
    runs: int = 0
    last_run_at: datetime | None = None
    last_duration_ms: float | None = None
    last_result: Any = None
    last_error: str | None = None
    running: bool = False
    paused: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def fixed_rate_trigger(first_run_at: datetime, interval: timedelta) -> IntervalTrigger:
    return IntervalTrigger(seconds=interval.total_seconds(), start_date=first_run_at, timezone=UTC)


class Scheduler:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._aps = AsyncIOScheduler(timezone=UTC)
        self._jobs: dict[str, JobRecord] = {}

    def add_periodic(
        self, name: str, step: Step, interval: timedelta, first_run_at: datetime
    ) -> None:
        self._jobs[name] = JobRecord(name, step, interval, first_run_at)
        self._aps.add_job(
            self._scheduled_run,
            trigger=fixed_rate_trigger(first_run_at, interval),
            args=[name],
            id=name,
            name=name,
            max_instances=1,
            coalesce=True,
            # Run late rather than never: a busy loop must not silently skip a ping.
            misfire_grace_time=None,
            # The first slot may already be a few ms in the past by the time the scheduler
            # starts; it still runs (late) instead of being skipped to the next slot.
            next_run_time=first_run_at,
        )

    def start(self) -> None:
        self._aps.start()

    def shutdown(self) -> None:
        """Stop the timers and cancel steps in flight (their work is re-done next start)."""
        if self._aps.running:
            self._aps.shutdown(wait=False)

    def names(self) -> list[str]:
        return list(self._jobs)

    def _job(self, name: str) -> JobRecord:
        try:
            return self._jobs[name]
        except KeyError:
            raise UnknownJobError(name) from None

    def next_run_at(self, name: str) -> datetime | None:
        job = self._aps.get_job(name)
        if job is None or job.next_run_time is None:
            return None
        next_run: datetime = job.next_run_time
        return next_run.astimezone(UTC)

    async def _scheduled_run(self, name: str) -> None:
        job = self._jobs[name]
        if job.lock.locked():
            log.warning("Job {} is still running from a manual run; skipping this tick", name)
            return
        await self._run(job)

    async def run_now(self, name: str) -> JobRecord:
        """Run the step now, waiting for a run in flight to finish first."""
        job = self._job(name)
        await self._run(job)
        return job

    async def _run(self, job: JobRecord) -> None:
        async with job.lock:
            job.running = True
            job.last_run_at = self._clock.now()
            started = time.perf_counter()
            try:
                job.last_result = await job.step()
                job.last_error = None
            except asyncio.CancelledError:
                job.last_error = "cancelled"
                raise
            except Exception as exc:  # one failed step must not end the schedule
                job.last_error = f"{type(exc).__name__}: {exc}"
                log.opt(exception=exc).error("Job {} failed: {}", job.name, job.last_error)
            finally:
                job.runs += 1
                job.running = False
                job.last_duration_ms = (time.perf_counter() - started) * 1000

    def pause(self, name: str) -> JobRecord:
        job = self._job(name)
        self._aps.pause_job(name)
        job.paused = True
        return job

    def resume(self, name: str) -> JobRecord:
        job = self._job(name)
        self._aps.resume_job(name)
        job.paused = False
        return job

    def describe(self, name: str) -> dict[str, Any]:
        job = self._job(name)
        next_run = self.next_run_at(name)
        return {
            "name": job.name,
            "state": "paused" if job.paused else ("running" if job.running else "scheduled"),
            "intervalSeconds": job.interval.total_seconds(),
            "nextRunAt": next_run.isoformat() if next_run else None,
            "runs": job.runs,
            "lastRunAt": job.last_run_at.isoformat() if job.last_run_at else None,
            "lastDurationMs": None
            if job.last_duration_ms is None
            else round(job.last_duration_ms, 1),
            "lastResult": _jsonable(job.last_result),
            "lastError": job.last_error,
        }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    as_json = getattr(value, "as_json", None)
    if callable(as_json):
        return as_json()
    return str(value)
