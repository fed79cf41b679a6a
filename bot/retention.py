"""Retention: what is finished is kept for a while, then pruned, so the database stays the
size of the recent past instead of growing for as long as the service runs.

One step, `prune_once()`, scheduled as the `retention` job (see /api/jobs). Each run deletes
at most BATCH rows per table (oldest first), so a first run on a large database does not hold
the write lock for long; the next runs take the rest. What is pruned, after its setting:
- MESSAGE_RETENTION: sent and dead messages (queued ones are never pruned);
- DELIVERY_RETENTION: delivered and dead webhook deliveries;
- AUDIT_RETENTION: audit entries;
- HISTORY_RETENTION: state history, except each bot's latest transition (its current state);
- signed-out dashboard sessions, once their cookies would have expired anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Table, delete, func, select

from bot.outbox import outbox_messages
from bot.store import app_secrets, audit_log, session_transitions
from bot.webhooks import webhook_deliveries
from services.clock import Clock
from services.database import Database, shielded

BATCH = 5000
SIGNED_OUT_PREFIX = "signed_out:"  # web.auth's revoked dashboard sessions
COOKIE_LIFETIME = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    messages: timedelta
    deliveries: timedelta
    audit: timedelta
    history: timedelta


class Retention:
    def __init__(self, db: Database, clock: Clock, policy: RetentionPolicy) -> None:
        self.db = db
        self.clock = clock
        self.policy = policy

    async def prune_once(self) -> dict[str, int]:
        """Prune one batch of each kind; the counts are the job's result in /api/jobs."""
        now = self.clock.now()
        m, d, a, t, s = (
            outbox_messages.c,
            webhook_deliveries.c,
            audit_log.c,
            session_transitions.c,
            app_secrets.c,
        )
        latest = select(func.max(t.id)).group_by(t.session_id)
        return {
            "messages": await self._prune(
                outbox_messages,
                m.seq,
                m.status.in_(("sent", "dead")),
                m.updated_at < now - self.policy.messages,
            ),
            "deliveries": await self._prune(
                webhook_deliveries,
                d.seq,
                d.status.in_(("delivered", "dead")),
                d.created_at < now - self.policy.deliveries,
            ),
            "audit": await self._prune(audit_log, a.id, a.at < now - self.policy.audit),
            "history": await self._prune(
                session_transitions,
                t.id,
                t.at < now - self.policy.history,
                t.id.not_in(latest.scalar_subquery()),
            ),
            "signedOutSessions": await self._prune(
                app_secrets,
                s.key,
                s.key.startswith(SIGNED_OUT_PREFIX),
                s.created_at < now - COOKIE_LIFETIME,
            ),
        }

    @shielded
    async def _prune(self, table: Table, key: Any, *where: Any) -> int:
        oldest = select(key).where(*where).order_by(key).limit(BATCH)
        async with self.db.engine.begin() as conn:
            result = await conn.execute(delete(table).where(key.in_(oldest.scalar_subquery())))
        return int(result.rowcount or 0)
