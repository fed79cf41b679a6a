"""Fair shares of the outbox: one user cannot fill the database or the queue for everyone.

Two bounds per user (the admin's own bots are not limited: the operator owns the instance
and its bulk sends hurt nobody else's share), both configurable:
- MAX_QUEUED_MESSAGES_PER_USER: messages waiting to be sent (queued or sending) over all of
  the owner's bots; past it, new messages are refused until some are sent.
- MESSAGE_ACCEPT_RATE: messages accepted per minute (a token bucket: a burst of that many,
  then one every 60/rate seconds). 0 turns a bound off.
A refusal says which bound and when to try again (429 with Retry-After). The accept rate is
kept in memory per process (a bound on speed); the queued count is read from the database.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select

from bot.outbox import outbox_messages
from bot.store import bot_sessions
from services.database import Database, shielded

WAITING = ("queued", "sending")
QUEUE_FULL_RETRY_AFTER = 60


@dataclass(frozen=True, slots=True)
class QuotaExceeded:
    reason: str
    retry_after: int


class MessageQuota:
    def __init__(
        self,
        db: Database,
        *,
        max_queued: int,
        per_minute: int,
        monotonic: Callable[[], float],
    ) -> None:
        self.db = db
        self._max_queued = max_queued
        self._per_minute = per_minute
        self._monotonic = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}  # owner: (tokens, at)

    async def check(self, owner: str | None) -> QuotaExceeded | None:
        """None if the owner may queue one more message now (and count it), else why not."""
        if owner is None:
            return None
        key = owner
        if self._max_queued:
            waiting = await self.waiting(owner)
            if waiting >= self._max_queued:
                return QuotaExceeded(
                    f"{waiting} messages are already waiting to be sent, the most "
                    f"MAX_QUEUED_MESSAGES_PER_USER={self._max_queued} allows",
                    QUEUE_FULL_RETRY_AFTER,
                )
        if self._per_minute:
            wait = self._take(key)
            if wait is not None:
                return QuotaExceeded(
                    f"more than MESSAGE_ACCEPT_RATE={self._per_minute} messages a minute",
                    wait,
                )
        return None

    def _take(self, key: str) -> int | None:
        now = self._monotonic()
        rate = self._per_minute / 60.0
        tokens, at = self._buckets.get(key, (float(self._per_minute), now))
        tokens = min(float(self._per_minute), tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / rate))
        self._buckets[key] = (tokens - 1.0, now)
        return None

    @shielded
    async def waiting(self, owner: str) -> int:
        m, s = outbox_messages.c, bot_sessions.c
        query = (
            select(func.count())
            .select_from(outbox_messages.join(bot_sessions, m.session_id == s.id))
            .where(s.user_id == owner, m.status.in_(WAITING))
        )
        async with self.db.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())
