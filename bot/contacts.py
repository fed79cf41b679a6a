"""Which phone numbers are on WhatsApp: asked of WhatsApp's servers through the bot's page,
one number at a time and paced, with the answers stored for a while.

WhatsApp logs out accounts that check numbers in bulk, so a bot never asks two questions
closer than CONTACT_CHECK_GAP (plus a random share of it), whoever asks and however many
requests run at once; and a number it asked about within CONTACT_CHECK_TTL is answered from
the database, not asked again. Each answer is stored as soon as it comes, so a request that
fails half-way loses none of the questions already asked. A request waits a few seconds at
most: what is not asked by then is answered "pending", asked in its turn, and found in the
database next time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from loguru import logger
from sqlalchemy import Boolean, Column, ForeignKey, String, Table, delete, insert, or_, select
from sqlalchemy.exc import IntegrityError

from services.clock import Clock
from services.database import Database, UTCDateTime, metadata, shielded

log = logger.bind(component="bot")
# Seconds a request waits for its answers; the numbers not asked by then are "pending".
REQUEST_BUDGET = 5.0

contact_checks = Table(
    "contact_checks",
    metadata,
    Column(
        "session_id",
        String(32),
        ForeignKey("bot_sessions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("phone", String(20), primary_key=True),  # digits, with the country code
    Column("on_whatsapp", Boolean, nullable=False),
    Column("wa_id", String(100), nullable=True),  # the account's id, as WhatsApp has it
    Column("lid", String(100), nullable=True),
    Column("checked_at", UTCDateTime, nullable=False),
)


class NumberAsker(Protocol):
    async def query_exists(self, phone: str) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class ContactCheck:
    phone: str  # digits
    on_whatsapp: bool
    wa_id: str | None
    lid: str | None
    checked_at: datetime
    cached: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "phone": f"+{self.phone}",
            "onWhatsApp": self.on_whatsapp,
            "id": self.wa_id,
            "lid": self.lid,
            "checkedAt": self.checked_at.isoformat(),
            "cached": self.cached,
            "pending": False,
        }


def pace_gap(gap: timedelta, jitter: float) -> float:
    """Seconds between two questions: the gap, plus up to half of it at random (never
    less than the gap: a regular beat looks like a machine, a shorter one like a bulk check)."""
    return gap.total_seconds() * (1 + 0.5 * jitter)


class ContactChecker:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        gap: timedelta,
        ttl: timedelta,
        rand: Callable[[], float],
        budget: float = REQUEST_BUDGET,
    ) -> None:
        self.db = db
        self.clock = clock
        self.gap = gap
        self.ttl = ttl
        self.rand = rand
        # One question at a time per bot, and when its last one was asked (monotonic).
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_asked: dict[str, float] = {}
        self.asked = 0  # questions sent to WhatsApp by this process
        self.budget = budget
        # Strong references to the question runs still going after their request answered.
        self._tasks: set[asyncio.Task[None]] = set()

    async def cached(self, session_id: str, phones: Iterable[str]) -> dict[str, ContactCheck]:
        """The answers still fresh (asked within CONTACT_CHECK_TTL)."""
        wanted = sorted(set(phones))
        if not wanted:
            return {}
        return await self._fresh(session_id, wanted, self.clock.now() - self.ttl)

    async def check(
        self, session_id: str, asker: NumberAsker, phones: list[str]
    ) -> list[ContactCheck | None]:
        """An answer for each of `phones` (digits), in their order: stored ones as they
        are, the others asked of WhatsApp one at a time, paced, and stored at once. The
        caller waits at most `budget` seconds: a number not asked by then is None (pending),
        its question still goes out in its turn, and asking again later finds its answer."""
        found: dict[str, ContactCheck | None] = dict(await self.cached(session_id, phones))
        missing = [phone for phone in dict.fromkeys(phones) if phone not in found]
        if missing:
            answers: dict[str, ContactCheck] = {}
            task = asyncio.ensure_future(self._ask_all(session_id, asker, missing, answers))
            self._tasks.add(task)
            task.add_done_callback(self._finished)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.budget):
                    await asyncio.shield(task)
            if task.done() and not task.cancelled():
                failure = task.exception()
                if failure is not None:
                    raise failure
            for phone in missing:
                found[phone] = answers.get(phone)
        return [found[phone] for phone in phones]

    async def _ask_all(
        self,
        session_id: str,
        asker: NumberAsker,
        phones: list[str],
        answers: dict[str, ContactCheck],
    ) -> None:
        for phone in phones:
            answers[phone] = await self._ask(session_id, asker, phone)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("A number check ended early: {}", task.exception())

    async def close(self) -> None:
        """Shutdown: the questions not asked yet are dropped (their callers were answered
        'pending'; asking again asks them)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)

    async def _ask(self, session_id: str, asker: NumberAsker, phone: str) -> ContactCheck:
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            # Another request may have asked while this one waited for its turn.
            again = await self._fresh(session_id, [phone], self.clock.now() - self.ttl)
            if phone in again:
                return again[phone]
            last = self._last_asked.get(session_id)
            if last is not None:
                wait = pace_gap(self.gap, self.rand()) - (self.clock.monotonic() - last)
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                answer = await asker.query_exists(phone)
            finally:
                self._last_asked[session_id] = self.clock.monotonic()
                self.asked += 1
            exists = bool(answer.get("exists"))
            result = ContactCheck(
                phone=phone,
                on_whatsapp=exists,
                wa_id=str(answer["id"]) if exists and answer.get("id") else None,
                lid=str(answer["lid"]) if exists and answer.get("lid") else None,
                checked_at=self.clock.now(),
            )
            # Stored before the next question: whoever waits for the lock finds it.
            await self._store(session_id, result)
        return result

    def forget(self, session_id: str) -> None:
        self._locks.pop(session_id, None)
        self._last_asked.pop(session_id, None)

    @shielded
    async def _fresh(
        self, session_id: str, phones: list[str], since: datetime
    ) -> dict[str, ContactCheck]:
        c = contact_checks.c
        query = select(contact_checks).where(
            c.session_id == session_id, c.phone.in_(phones), c.checked_at > since
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {
            row.phone: ContactCheck(
                phone=row.phone,
                on_whatsapp=bool(row.on_whatsapp),
                wa_id=row.wa_id,
                lid=row.lid,
                checked_at=row.checked_at,
                cached=True,
            )
            for row in rows
        }

    @shielded
    async def _store(self, session_id: str, result: ContactCheck) -> None:
        c = contact_checks.c
        row = {
            "session_id": session_id,
            "phone": result.phone,
            "on_whatsapp": result.on_whatsapp,
            "wa_id": result.wa_id,
            "lid": result.lid,
            "checked_at": result.checked_at,
        }
        try:
            async with self.db.engine.begin() as conn:
                # The old answer for this number, and this bot's answers past the TTL (they
                # would never be served again): the table holds what is fresh, no more.
                await conn.execute(
                    delete(contact_checks).where(
                        c.session_id == session_id,
                        or_(c.phone == result.phone, c.checked_at <= result.checked_at - self.ttl),
                    )
                )
                await conn.execute(insert(contact_checks).values(**row))
        except IntegrityError:
            pass  # another process stored the same answer at the same moment: it stands
