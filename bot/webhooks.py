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
from urllib.parse import urlsplit

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
from bot.webhook_reply import (
    MAX_REPLY_BYTES,
    REPLY_EVENT,
    QueueReply,
    ReplyRefusedError,
    parse_reply,
)
from services.clock import Clock
from services.database import Database, UTCDateTime, metadata, shielded
from services.metrics import Metrics
from services.netguard import BlockedAddressError
from services.redaction import redact_userinfo as redact_userinfo  # used by web too
from services.secretbox import SecretBox, SecretUnreadableError

EVENTS = (
    "session.status",
    "message.received",
    "message.sent",
    "message.failed",
    "qr",
    # What the bot received besides messages (see bot/received.py).
    "message.reaction",
    "message.edited",
    "message.revoked",
    "group.join",
    "group.leave",
    "group.update",
)
RETRYABLE_STATUS = frozenset({408, 429})
# What a delivery to WEBHOOK_URL stores in place of the URL: the setting is a secret (its path
# or query often is the receiver's credential), so it stays out of the database and is read
# from the configuration when the delivery is sent.
GLOBAL_URL_MARK = "WEBHOOK_URL"
# Deliveries in progress at once: in all, and to one receiver (scheme, host and port), so a
# slow or failing receiver holds its own few slots and never another user's.
MAX_IN_FLIGHT = 64
PER_RECEIVER = 4
HEADS = 200  # receivers looked at per round

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
    async def due_heads(self, now: datetime, limit: int) -> list[tuple[int, str, str]]:
        """The oldest claimable delivery of each receiver URL: (seq, target, url).

        One per URL, so a receiver with a thousand queued deliveries is one candidate among
        the others, not the whole batch."""
        c = webhook_deliveries.c
        first = func.min(c.seq)
        query = (
            select(first.label("seq"), c.target, c.url)
            .where(claimable(webhook_deliveries, now))
            .group_by(c.target, c.url)
            .order_by(first)
            .limit(limit)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(int(r.seq), str(r.target), str(r.url)) for r in rows]

    @shielded
    async def claim(self, seq: int, now: datetime, lease_until: datetime) -> Delivery | None:
        c = webhook_deliveries.c
        async with self.db.engine.begin() as conn:
            won = await conn.execute(
                update(webhook_deliveries)
                .where(c.seq == seq, claimable(webhook_deliveries, now))
                .values(status="sending", lease_until=lease_until, attempts=c.attempts + 1)
            )
            if won.rowcount != 1:
                return None
            found = await conn.execute(select(webhook_deliveries).where(c.seq == seq))
            return _delivery(found.one())

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
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: dict[str, int] = {}
        # Queues a reply a receiver answered a `message.received` delivery with (the app
        # sets it: the outbox); None: answers are not read.
        self.on_reply: QueueReply | None = None

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
        """The delivery loop: start what is due (each delivery its own task, at most
        PER_RECEIVER at a time to one receiver), sleep until the next is due or one ends."""
        errors = 0
        try:
            while True:
                self._wake.clear()  # before looking: a wake-up during the look is kept
                try:
                    started, held_back = await self._dispatch(secret_of)
                    if started:
                        errors = 0
                        continue
                    due = await self.store.next_due()
                except Exception as exc:  # the database away for a moment: back off, go on
                    errors += 1
                    pause = min(2.0 ** (errors - 1), 30.0)
                    log.warning("Webhook delivery loop error ({}); retrying in {:.0f}s", exc, pause)
                    # Cut short by a wake-up: a new event queued or the database seen back.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(pause):
                            await self._wake.wait()
                    continue
                errors = 0
                wait = 30.0
                if due is not None:
                    wait = min(max((due - self.clock.now()).total_seconds(), 0.02), 30.0)
                if held_back:
                    # Due, but their receivers are busy: a delivery ending wakes us sooner.
                    wait = max(wait, 1.0)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def deliver_once(self, secret_of: Callable[[str], str | None]) -> bool:
        """Start the due deliveries and wait for them; True if there were any (tests' step)."""
        started, _ = await self._dispatch(secret_of)
        if started:
            await asyncio.gather(*started)
        return bool(started)

    async def _dispatch(
        self, secret_of: Callable[[str], str | None]
    ) -> tuple[list[asyncio.Task[None]], bool]:
        """Claim and start what may start now; also say whether due ones were held back."""
        room = MAX_IN_FLIGHT - len(self._tasks)
        if room <= 0:
            return [], True
        now = self.clock.now()
        started: list[asyncio.Task[None]] = []
        held_back = False
        for seq, target, url in await self.store.due_heads(now, HEADS):
            if len(started) >= room:
                held_back = True
                break
            key = self._receiver_key(target, url)
            if self._in_flight.get(key, 0) >= PER_RECEIVER:
                held_back = True
                continue
            delivery = await self.store.claim(seq, now, now + self.policy.lease)
            if delivery is None:
                continue  # another worker took it
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            task = asyncio.get_running_loop().create_task(
                self._deliver_isolated(delivery, key, secret_of)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started.append(task)
        return started, held_back

    def _receiver_key(self, target: str, url: str) -> str:
        """Who receives: deliveries to one host and port share its PER_RECEIVER slots."""
        if target == "global" and url == GLOBAL_URL_MARK:
            return "global"
        try:
            parts = urlsplit(url)
            return f"{parts.scheme}://{parts.hostname}:{parts.port}"
        except ValueError:
            return url

    async def _deliver_isolated(
        self, delivery: Delivery, key: str, secret_of: Callable[[str], str | None]
    ) -> None:
        """One delivery, whatever happens in it: an error ends this delivery (retried, then
        dead), never the loop or another delivery."""
        try:
            await self._deliver(delivery, secret_of)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.bind(session=delivery.session_id).warning(
                "Webhook {} failed unexpectedly: {}", delivery.id, exc
            )
            with contextlib.suppress(Exception):  # if this fails too, the lease runs out
                await self._retry(delivery, None, f"{type(exc).__name__}: {exc}"[:300])
        finally:
            left = self._in_flight.get(key, 1) - 1
            if left > 0:
                self._in_flight[key] = left
            else:
                self._in_flight.pop(key, None)
            self._wake.set()

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
        except SecretUnreadableError as exc:
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
        deadline = min(self.config.timeout, self.policy.lease.total_seconds() * 0.8)
        try:
            # One deadline for the whole exchange (a receiver dripping a byte at a time never
            # trips a per-read timeout). The response body is read only for a reply to a
            # received message (bounded, bot.webhook_reply); otherwise the status is all.
            # The client's transport checks the address and connects to exactly that one
            # (services.pinned); a refusal there is permanent.
            async with asyncio.timeout(deadline):
                async with self.client.stream(
                    "POST",
                    url,
                    content=body,
                    headers=headers,
                    timeout=self.config.timeout,
                    follow_redirects=False,
                ) as response:
                    status = response.status_code
                    answer = await self._read_answer(delivery, response)
        except BlockedAddressError as exc:
            await self._give_up(delivery, None, f"refused: {exc}")
            return
        except TimeoutError:
            await self._retry(delivery, None, f"no complete answer within {deadline:g}s")
            return
        except httpx.HTTPError as exc:
            await self._retry(delivery, None, f"{type(exc).__name__}: {exc}"[:300] or "network")
            return
        if 200 <= status < 300:
            # The reply is queued before the delivery is marked: if queueing fails, the
            # delivery is retried, and its reply (same key) is still queued only once.
            note = await self._queue_reply(delivery, answer)
            self.metrics.webhook_deliveries.labels(result="delivered").inc()
            await self.store.finish(
                delivery.id,
                status="delivered",
                last_status=status,
                last_error=note,
                delivered_at=self.clock.now(),
            )
        elif is_retryable(status):
            await self._retry(delivery, status, f"HTTP {status}")
        else:
            await self._give_up(delivery, status, f"HTTP {status}: not retried")

    async def _read_answer(
        self, delivery: Delivery, response: httpx.Response
    ) -> bytes | str | None:
        """A 2xx answer to a `message.received` delivery, read up to MAX_REPLY_BYTES
        (within the delivery's deadline): it may carry a reply (bot.webhook_reply). A
        string says why it cannot."""
        if self.on_reply is None or delivery.event != REPLY_EVENT:
            return None
        if not 200 <= response.status_code < 300:
            return None
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_REPLY_BYTES:
                return f"the answer is over {MAX_REPLY_BYTES} bytes"
        return bytes(body)

    async def _queue_reply(self, delivery: Delivery, answer: bytes | str | None) -> str | None:
        """None when there was no reply or it was queued; else why it was refused."""
        if answer is None or self.on_reply is None or delivery.session_id is None:
            return None
        if isinstance(answer, str):
            return f"reply refused: {answer}"
        try:
            reply = parse_reply(answer, delivery.id, delivery.payload)
        except ReplyRefusedError as exc:
            return f"reply refused: {exc}"
        if reply is None:
            return None
        refused = await self.on_reply(delivery.session_id, reply)
        if refused is not None:
            return f"reply refused: {refused}"
        log.bind(session=delivery.session_id).info(
            "Webhook {} answered with a reply to {}: queued", delivery.id, reply.to
        )
        return None

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
