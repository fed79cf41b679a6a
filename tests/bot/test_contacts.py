"""The number checker as a step: answers stored and reused for CONTACT_CHECK_TTL, one
question at a time per bot and at least the gap apart, with an injected clock."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.contacts import ContactCheck, ContactChecker, contact_checks, pace_gap
from bot.engines.base import EngineError
from bot.states import SessionState
from bot.store import BotStore, SessionRecord
from services.database import Database
from tests.support import FakeClock


class Phone:
    """WhatsApp's servers as the checker sees them: who is registered, what was asked."""

    def __init__(self, registered: set[str]) -> None:
        self.registered = registered
        self.asked: list[tuple[str, float]] = []
        self.fail_on: str | None = None

    async def query_exists(self, phone: str) -> dict[str, Any]:
        self.asked.append((phone, time.monotonic()))
        await asyncio.sleep(0.005)
        if phone == self.fail_on:
            raise EngineError("rate-overlimit")
        if phone in self.registered:
            return {"exists": True, "id": f"{phone}@c.us", "lid": "1234567890@lid"}
        return {"exists": False}


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'contacts.db'}")
    await database.migrate()
    now = datetime(2026, 11, 22, tzinfo=UTC)
    for bot in ("bot_000000000001", "bot_000000000002"):
        record = SessionRecord(
            id=bot,
            user_id=None,
            name=bot,
            state=SessionState.CONNECTED,
            state_changed_at=now,
            created_at=now,
        )
        await BotStore(database).insert_session(record, "created", limit=10)
    yield database
    await database.dispose()


def checker(
    db: Database, clock: FakeClock, gap: float = 0.05, budget: float = 30
) -> ContactChecker:
    return ContactChecker(
        db,
        clock,
        gap=timedelta(seconds=gap),
        ttl=timedelta(days=7),
        rand=lambda: 0.0,
        budget=budget,
    )


async def answered(
    contacts: ContactChecker, bot: str, phone: Phone, numbers: list[str]
) -> list[ContactCheck]:
    results = await contacts.check(bot, phone, numbers)
    done = [r for r in results if r is not None]
    assert len(done) == len(results), "some numbers are still pending"
    return done


def test_the_gap_is_never_shorter_than_configured():
    gap = timedelta(seconds=3)
    assert pace_gap(gap, 0.0) == 3.0
    assert pace_gap(gap, 0.999) == pytest.approx(4.4985)


async def test_answers_are_stored_and_reused_until_the_ttl(db: Database, clock: FakeClock):
    phone = Phone({"15550000001"})
    contacts = checker(db, clock)
    first = await answered(contacts, "bot_000000000001", phone, ["15550000001", "15559990000"])
    assert [(r.on_whatsapp, r.wa_id, r.cached) for r in first] == [
        (True, "15550000001@c.us", False),
        (False, None, False),
    ]
    clock.advance(timedelta(days=7) - timedelta(seconds=1))
    again = await answered(contacts, "bot_000000000001", phone, ["15559990000", "15550000001"])
    assert [r.cached for r in again] == [True, True]
    assert len(phone.asked) == 2
    # Another bot asks for itself: no answer leaks from one bot to another.
    other = await answered(contacts, "bot_000000000002", phone, ["15550000001"])
    assert other[0].cached is False
    assert len(phone.asked) == 3
    clock.advance(timedelta(seconds=2))  # past the TTL: asked again, and stored anew
    phone.registered.add("15559990000")
    later = await answered(contacts, "bot_000000000001", phone, ["15559990000"])
    assert (later[0].on_whatsapp, later[0].cached) == (True, False)
    assert later[0].checked_at == clock.now()
    # The stale answer for the other number went with that write: the table keeps what is
    # fresh only (the other bot's answers are its own).
    async with db.engine.connect() as conn:
        rows = (
            await conn.execute(select(contact_checks.c.session_id, contact_checks.c.phone))
        ).all()
    assert sorted(rows) == [
        ("bot_000000000001", "15559990000"),
        ("bot_000000000002", "15550000001"),
    ]


async def test_one_question_at_a_time_and_the_gap_apart(db: Database, clock: FakeClock):
    phone = Phone(set())
    contacts = checker(db, clock, gap=0.1)
    numbers = [f"155599900{n:02d}" for n in range(4)]
    # Two requests at once, overlapping on one number: asked once, all paced as one queue.
    await asyncio.gather(
        contacts.check("bot_000000000001", phone, numbers[:3]),
        contacts.check("bot_000000000001", phone, numbers[2:]),
    )
    asked = [p for p, _ in phone.asked]
    assert sorted(asked) == numbers
    times = [at for _, at in phone.asked]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.1


async def test_a_failed_question_keeps_the_answers_before_it(db: Database, clock: FakeClock):
    phone = Phone({"15550000001"})
    phone.fail_on = "15559990001"
    contacts = checker(db, clock, gap=0.001)
    with pytest.raises(EngineError):
        await contacts.check("bot_000000000001", phone, ["15550000001", "15559990001"])
    kept = await contacts.cached("bot_000000000001", ["15550000001", "15559990001"])
    assert set(kept) == {"15550000001"}


async def test_a_long_check_answers_pending_and_goes_on_asking(db: Database, clock: FakeClock):
    """The request waits its budget; the rest is asked in its turn and stored for later."""
    phone = Phone({"15550000003"})
    contacts = checker(db, clock, gap=0.2, budget=0.3)
    numbers = [f"1555000000{n}" for n in range(1, 5)]
    results = await contacts.check("bot_000000000001", phone, numbers)
    done = [r for r in results if r is not None]
    assert 1 <= len(done) < 4
    assert results[0] is not None  # in the order asked: the first ones are answered
    async with asyncio.timeout(10):
        while len(phone.asked) < 4:
            await asyncio.sleep(0.02)
        while len(await contacts.cached("bot_000000000001", numbers)) < 4:
            await asyncio.sleep(0.02)
    later = await answered(contacts, "bot_000000000001", phone, numbers)
    assert [r.on_whatsapp for r in later] == [False, False, True, False]
    assert len(phone.asked) == 4  # nothing asked twice
    await contacts.close()
