"""Sends the outbox: one worker per connected bot, one message at a time, paced.

A worker runs while its bot is CONNECTED and stops by itself when it is not (mid-send it
finishes the send first; nothing is cancelled between a claim and its mark but at process
exit, where the lease brings the message back). Messages for a bot that is not connected
simply wait in the queue. WhatsApp bans accounts that send in bursts: consecutive sends are
SEND_RATE apart on average, with a random gap.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from bot.content import MEDIA_KINDS, TEXT, load_content, typing_seconds
from bot.mediastore import MediaStore
from bot.outbox import OutboxMessage, OutboxStore, RetryPolicy, retry_delay
from bot.session import BotSession
from bot.states import SessionState
from services.clock import Clock
from services.metrics import Metrics

SEND_TIMEOUT = 60.0
PRESENCE_LEAD_MAX = 10.0
IDLE_POLL = 30.0
ERROR_BACKOFF = (1.0, 30.0)

log = logger.bind(component="bot")


def send_gap(per_minute: int, jitter: float) -> float:
    """Seconds to wait after a send: 60 / rate on average, anywhere from half to 1.5 times."""
    if per_minute <= 0:
        return 0.0
    return 60.0 / per_minute * (0.5 + jitter)


class OutboxSender:
    def __init__(
        self,
        store: OutboxStore,
        *,
        policy: RetryPolicy,
        per_minute: int,
        clock: Clock,
        metrics: Metrics,
        rand: Callable[[], float],
        presence: bool = False,
    ) -> None:
        self.store = store
        self.media = MediaStore(store)
        # "typing…" before a send and the chat marked read (SEND_PRESENCE).
        self.presence = presence
        # When each bot's next send is due (monotonic): the gap is waited partly before the
        # claim and the rest, at most `presence_lead`, just before the send, typing.
        self._due: dict[str, float] = {}
        self.policy = policy
        self.per_minute = per_minute
        self.clock = clock
        self.metrics = metrics
        self.rand = rand
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._closing = False
        self._stopped = asyncio.Event()
        # A send must end well inside its lease, or another claim could send it again.
        self.send_timeout = min(SEND_TIMEOUT, policy.lease.total_seconds() / 2)

    async def __call__(self, session: BotSession, event: str, data: dict[str, Any]) -> None:
        """A session listener: a bot that connects gets a worker."""
        if event == "session.status" and data.get("to") == SessionState.CONNECTED.value:
            self.start(session)
        elif event == "session.status":
            self.wake(session.id)  # a worker notices its bot left CONNECTED and ends

    def start(self, session: BotSession) -> None:
        if self._closing:
            return
        running = self._workers.get(session.id)
        if running is not None and not running.done():
            self.wake(session.id)
            return
        task = asyncio.get_running_loop().create_task(self._run(session))
        task.set_name(f"outbox {session.id}")
        self._workers[session.id] = task
        task.add_done_callback(functools.partial(self._forget, session.id))

    def _forget(self, session_id: str, task: asyncio.Task[None]) -> None:
        if self._workers.get(session_id) is task:
            del self._workers[session_id]
        if not task.cancelled() and task.exception() is not None:
            log.bind(session=session_id).opt(exception=task.exception()).error(
                "Outbox worker failed"
            )

    def wake(self, session_id: str) -> None:
        event = self._wakeups.get(session_id)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        """Every worker looks again now (the database is back after an outage: those backing
        off from its errors must not sleep through the messages queued meanwhile)."""
        for event in self._wakeups.values():
            event.set()

    @property
    def active(self) -> int:
        return len(self._workers)

    async def _run(self, session: BotSession) -> None:
        wakeup = self._wakeups.setdefault(session.id, asyncio.Event())
        errors = 0
        try:
            while not self._closing and session.state is SessionState.CONNECTED:
                # Cleared before looking, so a wake-up during the look is not lost.
                wakeup.clear()
                try:
                    sent = await self.send_once(session)
                    due = None if sent else await self.store.next_due(session.id)
                except Exception as exc:  # the database away for a moment: back off, go on
                    errors += 1
                    pause = min(ERROR_BACKOFF[0] * 2 ** (errors - 1), ERROR_BACKOFF[1])
                    log.bind(session=session.id).warning(
                        "Outbox worker error ({}); retrying in {:.0f}s", _describe(exc), pause
                    )
                    # Cut short by a wake-up: a message accepted (the database answers
                    # again), the database seen back (wake_all), or a shutdown.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(pause):
                            await wakeup.wait()
                    continue
                errors = 0
                if sent:
                    full = send_gap(self.per_minute, self.rand())
                    self._due[session.id] = time.monotonic() + full
                    # The last `presence_lead` of the gap is spent typing the next message
                    # (after its claim): the rate stays SEND_RATE.
                    gap = full - self.presence_lead
                    if gap > 0:
                        # New messages do not shorten the gap; a shutdown does.
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(gap):
                                await self._stopped.wait()
                    continue
                wait = IDLE_POLL
                if due is not None:
                    wait = min(max((due - self.clock.now()).total_seconds(), 0.02), IDLE_POLL)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await wakeup.wait()
        finally:
            self._wakeups.pop(session.id, None)
            self._due.pop(session.id, None)

    async def send_once(self, session: BotSession) -> bool:
        """Claim this bot's oldest due message and send it. True if one was handled."""
        handle = session.engine_session
        if handle is None or session.state is not SessionState.CONNECTED or not session.held():
            return False
        # Under the epoch this node runs the bot with: once another node took it, nothing.
        message = await self.store.claim(
            session.id, self.clock.now(), self.policy.lease, epoch=session.record.epoch
        )
        if message is None:
            return False
        started = time.monotonic()
        try:
            if self.presence:
                await self._show_presence(session.id, handle, message)
            async with asyncio.timeout(self.send_timeout):
                engine_id = await self._deliver(handle, message)
        except Exception as exc:
            error = _describe(exc)
            now = self.clock.now()
            final = message.attempts >= self.policy.max_attempts
            retry_at = (
                None if final else now + retry_delay(self.policy, message.attempts, self.rand())
            )
            await self.store.mark_failed(message.id, message.attempts, error, retry_at, now)
            bound = log.bind(session=session.id)
            if final:
                bound.warning(
                    "Message {} is dead after {} attempts: {}", message.id, message.attempts, error
                )
                await session.emit(
                    "message.failed",
                    {
                        "id": message.id,
                        "to": message.to,
                        "attempts": message.attempts,
                        "error": error,
                    },
                )
            else:
                bound.info(
                    "Message {} failed (attempt {}): {}; retry at {}",
                    message.id,
                    message.attempts,
                    error,
                    retry_at.isoformat() if retry_at else "-",
                )
            return True
        self.metrics.outbox_send_duration.observe(time.monotonic() - started)
        # Activity first: whoever sees the message marked sent must also see the bot as
        # active at that moment (not later, when its clock may have moved on).
        await session.touch()
        if not await self.store.mark_sent(
            message.id, message.attempts, str(engine_id), self.clock.now()
        ):
            # Our lease ran out and someone else holds the message now: theirs is the mark.
            log.bind(session=session.id).warning(
                "Message {} was sent after its lease ran out", message.id
            )
        elif message.kind in MEDIA_KINDS:
            await self.media.forget(message.id)
        await session.emit(
            "message.sent", {"id": message.id, "to": message.to, "whatsappId": str(engine_id)}
        )
        return True

    async def _deliver(self, handle: Any, message: OutboxMessage) -> str:
        """Plain text as ever; any other kind with its fields (and its file's bytes)."""
        content = load_content(message.kind, message.payload)
        if content.kind == TEXT and not content.fields:
            return str(await handle.send_text(message.to, message.text))
        wire: dict[str, Any] = {**content.fields, "kind": content.kind, "text": message.text}
        if content.kind in MEDIA_KINDS:
            media = await self.media.load(message.id)
            if media is None:
                raise LookupError("the message's file is not in the database")
            wire.update(
                data=base64.b64encode(media.data).decode("ascii"),
                mimetype=media.mimetype,
                filename=media.filename,
            )
        return str(await handle.send_content(message.to, wire))

    @property
    def presence_lead(self) -> float:
        """The end of each gap kept for typing: the pacing's shortest gap, at most 10 s (a
        claimed message waits through it, well inside its lease)."""
        if not self.presence or self.per_minute <= 0:
            return 0.0
        return min(send_gap(self.per_minute, 0.0), PRESENCE_LEAD_MAX)

    async def _show_presence(self, session_id: str, handle: Any, message: OutboxMessage) -> None:
        """Mark the chat read, then "typing…" (or "recording…") for as long as a person would,
        ending when the gap since the last send does: the send is no earlier than without
        presence. Best effort: a presence that fails sends anyway (on time)."""
        content = load_content(message.kind, message.payload)
        lead = self.presence_lead
        wait = 0.0 if content.kind == "reaction" else typing_seconds(message.text, lead)
        remaining = self._due.get(session_id, 0.0) - time.monotonic()
        quiet = min(max(remaining - wait, 0.0), lead)
        if quiet > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(quiet):
                    await self._stopped.wait()
        state = content.presence if wait > 0 else "read"
        try:
            async with asyncio.timeout(self.send_timeout / 4):
                await handle.presence(message.to, state)
        except Exception as exc:
            log.bind(session=session_id).debug("No presence before {}: {}", message.id, exc)
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._stopped.wait()

    async def shutdown(self, within: float) -> None:
        """Let sends under way finish (their marks are what prevents a re-send), then stop."""
        self._closing = True
        self._stopped.set()
        self.wake_all()
        workers = list(self._workers.values())
        if not workers:
            return
        _, pending = await asyncio.wait(workers, timeout=within)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer from WhatsApp in time"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
