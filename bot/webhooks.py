"""Webhooks: each bot's events POSTed to its `webhookUrl` (and to WEBHOOK_URL), signed, and
delivered through a durable queue like messages are.

A delivery is stored before anything is sent. Network errors, 5xx, 408 and 429 are retried
with backoff; any other 4xx (and a redirect, which could lead into our own network) is
permanent. After MAX_RETRY_ATTEMPTS a delivery is `dead`, kept and listed with its last
status. The body is signed: `X-Wakeful-Signature: sha256=HMAC(secret, "<timestamp>.<body>")`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from loguru import logger
from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)

from bot.outbox import RetryPolicy, claimable, retry_delay
from services.clock import Clock
from services.database import Database, UTCDateTime, metadata, shielded
from services.metrics import Metrics
from services.netguard import BlockedAddressError, check_url
from services.redaction import redact_userinfo as redact_userinfo  # used by web too
from services.secretbox import SecretBox, SecretUnreadableError

EVENTS = ("session.status", "message.received", "message.sent", "message.failed", "qr")
RETRYABLE_STATUS = frozenset({408, 429})
# What a delivery to WEBHOOK_URL stores in place of the URL: the setting is a secret (its path
# or query often is the receiver's credential), so it stays out of the database and is read
# from the configuration when the delivery is sent.
GLOBAL_URL_MARK = "WEBHOOK_URL"
BATCH = 20

log = logger.bind(component="webhooks")

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    Column(
        "session_id",
        String(32),
        ForeignKey("bot_sessions.id", ondelete="CASCADE"),
        nullable=True,
    ),
    Column("target", String(10), nullable=False),  # "bot" (its webhookUrl) or "global"
    Column("url", String(2000), nullable=False),
    Column("event", String(40), nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(10), nullable=False),  # queued, sending, delivered, dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_status", Integer, nullable=True),
    Column("last_error", String(500), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("delivered_at", UTCDateTime, nullable=True),
    Index("ix_webhook_deliveries_due", "status", "due_at"),
    Index("ix_webhook_deliveries_session", "session_id", "seq"),
)


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def is_retryable(status: int) -> bool:
    return status >= 500 or status in RETRYABLE_STATUS


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    session_id: str | None
    target: str
    url: str
    event: str
    payload: str
    status: str
    attempts: int
    created_at: datetime
    due_at: datetime
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "target": self.target,
            "url": redact_userinfo(self.url),
            "status": self.status,
            "attempts": self.attempts,
            "lastStatus": self.last_status,
            "lastError": self.last_error,
            "createdAt": self.created_at.isoformat(),
            "deliveredAt": self.delivered_at.isoformat() if self.delivered_at else None,
            "nextAttemptAt": self.due_at.isoformat() if self.status == "queued" else None,
        }


_FIELDS = [name for name in Delivery.__dataclass_fields__]


def _delivery(row: Any) -> Delivery:
    return Delivery(**{name: getattr(row, name) for name in _FIELDS})


class DeliveryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @shielded
    async def enqueue(self, rows: list[dict[str, Any]]) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(insert(webhook_deliveries), rows)

    @shielded
    async def claim_due(self, now: datetime, lease_until: datetime, limit: int) -> list[Delivery]:
        c = webhook_deliveries.c
        claimed: list[Delivery] = []
        async with self.db.engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(c.seq)
                    .where(claimable(webhook_deliveries, now))
                    .order_by(c.seq)
                    .limit(limit)
                )
            ).all()
            for row in rows:
                won = await conn.execute(
                    update(webhook_deliveries)
                    .where(c.seq == row.seq, claimable(webhook_deliveries, now))
                    .values(status="sending", lease_until=lease_until, attempts=c.attempts + 1)
                )
                if won.rowcount == 1:
                    found = await conn.execute(select(webhook_deliveries).where(c.seq == row.seq))
                    claimed.append(_delivery(found.one()))
        return claimed

    @shielded
    async def finish(self, /, delivery_id: str, **values: Any) -> None:
        c = webhook_deliveries.c
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(webhook_deliveries)
                .where(c.id == delivery_id, c.status == "sending")
                .values(lease_until=None, **values)
            )

    @shielded
    async def requeue_dead(self, session_id: str, now: datetime) -> int:
        """This bot's dead deliveries, due again now with a fresh count of attempts."""
        c = webhook_deliveries.c
        async with self.db.engine.begin() as conn:
            done = await conn.execute(
                update(webhook_deliveries)
                .where(c.session_id == session_id, c.target == "bot", c.status == "dead")
                .values(status="queued", attempts=0, due_at=now, lease_until=None)
            )
        return int(done.rowcount)

    @shielded
    async def next_due(self) -> datetime | None:
        c = webhook_deliveries.c
        query = select(func.min(c.due_at)).where(c.status == "queued")
        async with self.db.engine.connect() as conn:
            due: datetime | None = (await conn.execute(query)).scalar_one_or_none()
        return due

    @shielded
    async def list_for(
        self, session_id: str, status: str | None, limit: int
    ) -> tuple[list[Delivery], int]:
        c = webhook_deliveries.c
        where = [c.session_id == session_id, c.target == "bot"]
        if status is not None:
            where.append(c.status == status)
        query = select(webhook_deliveries).where(*where).order_by(c.seq.desc()).limit(limit)
        count = select(func.count()).select_from(webhook_deliveries).where(*where)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            total = int((await conn.execute(count)).scalar_one())
        return [_delivery(r) for r in rows], total


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    allow_private: bool = False
    timeout: float = 10.0
    global_url: str | None = None
    global_secret: str | None = None


class Webhooks:
    """A session listener that queues deliveries, and the loop that sends them."""

    def __init__(
        self,
        store: DeliveryStore,
        *,
        config: WebhookConfig,
        policy: RetryPolicy,
        client: httpx.AsyncClient,
        secrets_box: SecretBox,
        clock: Clock,
        metrics: Metrics,
        rand: Callable[[], float],
    ) -> None:
        self.store = store
        self.config = config
        self.policy = policy
        self.client = client
        self.box = secrets_box
        self.clock = clock
        self.metrics = metrics
        self.rand = rand
        self._wake = asyncio.Event()

    # Queueing ------------------------------------------------------------------------

    async def __call__(self, session: Any, event: str, data: dict[str, Any]) -> None:
        if event not in EVENTS:
            return
        record = session.record
        now = self.clock.now()
        envelope = {
            "event": event,
            "sessionId": record.id,
            "sessionName": record.name,
            "at": now.isoformat(),
            "data": data,
        }
        payload = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
        rows = []
        wanted = record.webhook_events
        if record.webhook_url and (wanted is None or event in wanted):
            rows.append(self._row(record.id, "bot", record.webhook_url, event, payload, now))
        if self.config.global_url:
            rows.append(self._row(record.id, "global", GLOBAL_URL_MARK, event, payload, now))
        if rows:
            await self.store.enqueue(rows)
            self._wake.set()

    @staticmethod
    def _row(
        session_id: str, target: str, url: str, event: str, payload: str, now: datetime
    ) -> dict[str, Any]:
        return {
            "id": "dlv_" + secrets.token_hex(8),
            "session_id": session_id,
            "target": target,
            "url": url,
            "event": event,
            "payload": payload,
            "status": "queued",
            "attempts": 0,
            "created_at": now,
            "due_at": now,
        }

    # Delivering ----------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due deliveries now (some were just queued again)."""
        self._wake.set()

    async def run(self, secret_of: Callable[[str], str | None]) -> None:
        """The delivery loop: one step at a time, sleeping until the next due one."""
        errors = 0
        while True:
            self._wake.clear()  # before looking: a wake-up during the look is kept
            try:
                if await self.deliver_once(secret_of):
                    errors = 0
                    continue
                due = await self.store.next_due()
            except Exception as exc:  # the database away for a moment: back off, go on
                errors += 1
                pause = min(2.0 ** (errors - 1), 30.0)
                log.warning("Webhook delivery loop error ({}); retrying in {:.0f}s", exc, pause)
                await asyncio.sleep(pause)
                continue
            errors = 0
            wait = 30.0
            if due is not None:
                wait = min(max((due - self.clock.now()).total_seconds(), 0.02), 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def deliver_once(self, secret_of: Callable[[str], str | None]) -> bool:
        """Claim the due deliveries (a batch) and send them; True if there were any."""
        now = self.clock.now()
        batch = await self.store.claim_due(now, now + self.policy.lease, BATCH)
        if not batch:
            return False
        await asyncio.gather(*(self._deliver(d, secret_of) for d in batch))
        return True

    def _secret_for(self, delivery: Delivery, secret_of: Callable[[str], str | None]) -> str:
        if delivery.target == "global":
            return self.config.global_secret or ""
        sealed = secret_of(delivery.session_id or "")
        if sealed is None:
            raise SecretUnreadableError("the bot has no webhook secret")
        return self.box.open(sealed)

    def _url_for(self, delivery: Delivery) -> str | None:
        """Where it goes: WEBHOOK_URL as configured now for the operator's deliveries
        (rows queued before it was kept out of the database carry it themselves)."""
        if delivery.target == "global" and delivery.url == GLOBAL_URL_MARK:
            return self.config.global_url
        return delivery.url

    async def _deliver(self, delivery: Delivery, secret_of: Callable[[str], str | None]) -> None:
        url = self._url_for(delivery)
        if url is None:
            await self._give_up(delivery, None, "refused: WEBHOOK_URL is no longer set")
            return
        try:
            secret = self._secret_for(delivery, secret_of)
            await check_url(url, allow_private=self.config.allow_private)
        except (SecretUnreadableError, BlockedAddressError) as exc:
            await self._give_up(delivery, None, f"refused: {exc}")
            return
        body = delivery.payload.encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "wakeful-webhooks",
            "X-Wakeful-Event": delivery.event,
            "X-Wakeful-Delivery": delivery.id,
            "X-Wakeful-Timestamp": timestamp,
            "X-Wakeful-Signature": sign(secret, timestamp, body),
        }
        try:
            response = await self.client.post(
                url,
                content=body,
                headers=headers,
                timeout=self.config.timeout,
                follow_redirects=False,
            )
        except httpx.HTTPError as exc:
            await self._retry(delivery, None, f"{type(exc).__name__}: {exc}"[:300] or "network")
            return
        status = response.status_code
        if 200 <= status < 300:
            self.metrics.webhook_deliveries.labels(result="delivered").inc()
            await self.store.finish(
                delivery.id,
                status="delivered",
                last_status=status,
                last_error=None,
                delivered_at=self.clock.now(),
            )
        elif is_retryable(status):
            await self._retry(delivery, status, f"HTTP {status}")
        else:
            await self._give_up(delivery, status, f"HTTP {status}: not retried")

    async def _retry(self, delivery: Delivery, status: int | None, error: str) -> None:
        if delivery.attempts >= self.policy.max_attempts:
            await self._give_up(delivery, status, f"{error}; gave up after {delivery.attempts}")
            return
        self.metrics.webhook_deliveries.labels(result="retried").inc()
        due = self.clock.now() + retry_delay(self.policy, delivery.attempts, self.rand())
        await self.store.finish(
            delivery.id, status="queued", last_status=status, last_error=error, due_at=due
        )

    async def _give_up(self, delivery: Delivery, status: int | None, error: str) -> None:
        self.metrics.webhook_deliveries.labels(result="dead").inc()
        log.bind(session=delivery.session_id).warning(
            "Webhook {} for {} is dead: {}", delivery.id, delivery.event, error
        )
        await self.store.finish(delivery.id, status="dead", last_status=status, last_error=error)
