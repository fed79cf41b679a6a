"""Fixed-rate schedule maths against literal datetimes, and APScheduler agreeing with it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from services.keepalive import next_ping_due, ping_due_at
from services.scheduler import Scheduler, fixed_rate_trigger
from tests.support import FakeClock

START = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
FIRST = START + timedelta(seconds=5)
TEN_MIN = timedelta(minutes=10)


def test_ping_k_is_due_at_start_plus_delay_plus_k_intervals():
    assert ping_due_at(FIRST, TEN_MIN, 0) == datetime(2026, 11, 22, 12, 0, 5, tzinfo=UTC)
    assert ping_due_at(FIRST, TEN_MIN, 1) == datetime(2026, 11, 22, 12, 10, 5, tzinfo=UTC)
    assert ping_due_at(FIRST, TEN_MIN, 144) == datetime(2026, 11, 23, 12, 0, 5, tzinfo=UTC)


def test_next_due_skips_missed_slots_without_drifting():
    assert next_ping_due(FIRST, TEN_MIN, START) == FIRST
    assert next_ping_due(FIRST, TEN_MIN, FIRST) == FIRST
    # A ping that took 9 s does not move the next one: still on the 10-minute grid.
    after_slow_ping = datetime(2026, 11, 22, 12, 0, 14, tzinfo=UTC)
    assert next_ping_due(FIRST, TEN_MIN, after_slow_ping) == datetime(
        2026, 11, 22, 12, 10, 5, tzinfo=UTC
    )
    # Asleep for 35 minutes: the next slot is on the grid, missed ones are not replayed.
    asleep = datetime(2026, 11, 22, 12, 35, 6, tzinfo=UTC)
    assert next_ping_due(FIRST, TEN_MIN, asleep) == datetime(2026, 11, 22, 12, 40, 5, tzinfo=UTC)


def test_apscheduler_trigger_fires_on_the_same_grid_whatever_the_run_time():
    trigger = fixed_rate_trigger(FIRST, TEN_MIN)
    fire = trigger.get_next_fire_time(None, START)
    times = [fire]
    for _ in range(5):
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=9))
        times.append(fire)
    assert times == [ping_due_at(FIRST, TEN_MIN, k) for k in range(6)]


async def test_scheduler_runs_a_step_records_its_result_and_can_pause_and_run_now():
    clock = FakeClock(START)
    scheduler = Scheduler(clock)
    calls: list[int] = []

    async def step() -> dict[str, int]:
        calls.append(1)
        return {"done": len(calls)}

    scheduler.add_periodic(
        "demo", step, timedelta(milliseconds=50), datetime.now(UTC) + timedelta(milliseconds=20)
    )
    scheduler.start()
    try:
        async with asyncio.timeout(5):
            while len(calls) < 3:
                await asyncio.sleep(0.01)
        scheduler.pause("demo")
        assert scheduler.describe("demo")["state"] == "paused"
        assert scheduler.next_run_at("demo") is None
        await asyncio.sleep(0.1)  # in-flight run (if any) lands
        paused_at = len(calls)
        await asyncio.sleep(0.2)
        assert len(calls) == paused_at
        job = await scheduler.run_now("demo")
        assert job.last_result == {"done": paused_at + 1}
        described = scheduler.describe("demo")
        assert described["lastResult"] == {"done": paused_at + 1}
        assert described["lastRunAt"] == START.isoformat()
        scheduler.resume("demo")
        assert scheduler.next_run_at("demo") is not None
    finally:
        scheduler.shutdown()


async def test_a_failing_step_is_recorded_and_the_schedule_goes_on():
    scheduler = Scheduler(FakeClock(START))
    attempts: list[int] = []

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("database away")
        return "ok"

    scheduler.add_periodic("flaky", flaky, timedelta(milliseconds=40), datetime.now(UTC))
    scheduler.start()
    try:
        async with asyncio.timeout(5):
            while len(attempts) < 2:
                await asyncio.sleep(0.01)
            while scheduler.describe("flaky")["lastResult"] != "ok":
                await asyncio.sleep(0.01)
        assert scheduler.describe("flaky")["lastError"] is None
    finally:
        scheduler.shutdown()
