"""Actions reach the owner: a person's action on a bot (start, stop, restart, logout, pair,
QR, simulator controls; and what is read through its browser: a received file, a number
check, its groups, bot.owner_reads) runs on the node that holds the bot's lease, whichever
node the request came through.

The asking node stores a request row (`bot_actions`) naming the owner node, tells it
(Postgres NOTIFY; the owner also polls, which is all SQLite has), and waits, bounded, for the
owner to write the result. The owner claims the row (`UPDATE … WHERE status = 'pending'` and
the row count: one claim), runs the action on the bot it holds, under the epoch it holds
(every write it makes is fenced), and writes the result. An owner that no longer holds the
bot says so, and the asker looks again; a bot nobody runs is acted on where the request
came in. An owner that does not answer in time is reported as such (504), never guessed at;
one whose lease runs out while the asker waits (it died) is left, and the action follows
the bot to its next node.

The same rows carry node-wide requests (`session_id` null): the leader asks every node to
sweep and clean up the bots it runs, so the cluster's jobs run once per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from loguru import logger

from bot.action_store import ActionRow, ActionStore
from bot.engines.base import EngineError, MediaNotFoundError
from bot.engines.simulator import Simulator, SimulatorError
from bot.owner_reads import READS, OwnerReads, wire
from bot.session import (
    BotSession,
    ConcurrentChangeError,
    EngineUnavailableError,
    NotConnectedError,
    NotLinkingError,
    OwnedElsewhereError,
)
from bot.states import RUNNING_STATES, IllegalTransitionError, SessionState

if TYPE_CHECKING:
    from bot.manager import BotManager

log = logger.bind(component="cluster")
S = SessionState
# How long an asking node waits for the owner's answer.
ANSWER_WITHIN = timedelta(seconds=30)
# How long a node asked to start a new bot may take to answer before the asker starts it.
PLACE_WITHIN = timedelta(seconds=5)
# A moving bot (its owner draining, or just released it): look again this often.
LOOK_AGAIN_SECONDS = 0.3
# While waiting for an owner, look this often whether it still holds the bot: one that died
# (SIGKILL) loses its lease, and the action goes where the bot goes, not to a 504.
OWNER_LOOK_SECONDS = 1.0
# Rows older than this are removed (their asker gave up long ago).
KEEP_ROWS_FOR = timedelta(minutes=10)
# The owner looks for requests this often when no notice can reach it (SQLite).
POLL_SECONDS = 1.0
# ... and this often when it hears requests at once (Postgres LISTEN): a lost notice only.
LISTENING_POLL_SECONDS = 5.0


class OwnerSilentError(Exception):
    """The owner node did not answer within the bound."""

    def __init__(self, node: str, seconds: float) -> None:
        super().__init__(f"node {node} did not answer within {seconds:.0f}s")
        self.node = node
        self.seconds = seconds


class RemoteFailedError(Exception):
    """The owner node tried and failed in a way the asker has no name for."""

    def __init__(self, node: str, detail: str) -> None:
        super().__init__(f"node {node} failed: {detail}")
        self.node = node
        self.detail = detail


class NoQrError(Exception):
    """No QR code is pending; carries what the owner knows of why."""

    def __init__(self, state: SessionState, progress: int | None) -> None:
        super().__init__(f"no QR code is pending ({state.value})")
        self.state = state
        self.progress = progress


# Results on the wire: {"ok": data} or {"error": kind, ...}; the asker raises what the owner
# raised, so the HTTP layer answers a remote action exactly as a local one.


def encode_error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, IllegalTransitionError):
        return {"error": "illegal", "current": exc.current.value, "target": exc.target.value}
    if isinstance(exc, OwnedElsewhereError):
        return {"error": "elsewhere", "node": exc.node}
    if isinstance(exc, ConcurrentChangeError):
        return {"error": "concurrent", "detail": str(exc)}
    if isinstance(exc, NotLinkingError):
        return {"error": "not_linking", "state": exc.state.value}
    if isinstance(exc, NoQrError):
        return {"error": "no_qr", "state": exc.state.value, "progress": exc.progress}
    if isinstance(exc, EngineUnavailableError):
        return {"error": "no_engine"}
    if isinstance(exc, NotConnectedError):
        return {"error": "not_connected", "state": exc.state.value, "elsewhere": exc.elsewhere}
    if isinstance(exc, MediaNotFoundError):
        return {"error": "no_media", "detail": str(exc)}
    if isinstance(exc, SimulatorError):
        return {"error": "simulator", "detail": str(exc)}
    if isinstance(exc, EngineError):
        return {"error": "engine", "detail": str(exc)}
    return {"error": "failed", "detail": f"{type(exc).__name__}: {exc}"}


def raise_decoded(node: str, session_id: str | None, result: dict[str, Any]) -> None:
    kind = result.get("error")
    if kind is None:
        return
    if kind == "illegal":
        raise IllegalTransitionError(S(result["current"]), S(result["target"]))
    if kind == "elsewhere":
        raise OwnedElsewhereError(session_id or "", result.get("node"))
    if kind == "concurrent":
        raise ConcurrentChangeError(str(result.get("detail")))
    if kind == "not_linking":
        raise NotLinkingError(S(result["state"]))
    if kind == "no_qr":
        raise NoQrError(S(result["state"]), result.get("progress"))
    if kind == "no_engine":
        raise EngineUnavailableError
    if kind == "not_connected":
        raise NotConnectedError(S(result["state"]), elsewhere=bool(result.get("elsewhere")))
    if kind == "no_media":
        raise MediaNotFoundError(str(result.get("detail")))
    if kind == "simulator":
        raise SimulatorError(str(result.get("detail")))
    if kind == "engine":
        raise EngineError(str(result.get("detail")))
    raise RemoteFailedError(node, str(result.get("detail")))


# The actions themselves, run where the bot is held --------------------------------------


async def _stop(session: BotSession) -> None:
    if session.state not in RUNNING_STATES and session.state not in (S.SUSPENDED, S.EXPIRED):
        raise IllegalTransitionError(session.state, S.STOPPED)
    await session.stop("stopped by its owner", by_owner=True)


async def _qr(session: BotSession) -> dict[str, Any]:
    qr, generated = session.qr, session.qr_at
    if qr is None or generated is None:
        raise NoQrError(session.state, session.sync_progress)
    deadline = session.qr_deadline
    return {
        "qr": qr,
        "generatedAt": generated.isoformat(),
        "expiresAt": deadline.isoformat() if deadline else None,
    }


def _simulator_of(manager: BotManager) -> Simulator:
    simulator = getattr(manager.engine, "simulator", None)
    if not isinstance(simulator, Simulator):
        raise SimulatorError("the simulator is off on the node that runs this bot")
    return simulator


async def perform(
    manager: BotManager, session: BotSession, action: str, args: dict[str, Any]
) -> dict[str, Any]:
    """Run one action on a bot this node holds (or that nobody holds); raises what the
    session raises."""
    if action == "start":
        await session.start("started by its owner")
    elif action == "stop":
        await _stop(session)
    elif action == "restart":
        await session.restart("restarted by its owner")
    elif action == "logout":
        await session.logout("logged out by its owner")
    elif action == "pair":
        return {"code": await session.request_pair_code(str(args["phone"]))}
    elif action == "qr":
        return await _qr(session)
    elif action == "simulate":
        simulator = _simulator_of(manager)
        return await simulator.act(session.id, str(args["action"]), dict(args["data"]))
    elif action in READS:
        reads = manager.actions.reads
        if reads is None:
            raise ValueError("this node reads nothing through its bots (not set up)")
        return await reads.perform(session, action, args)
    elif action == "sent":
        simulator = _simulator_of(manager)
        sent = simulator.sent(session.id)
        return {
            "messages": [
                {"id": m.id, "to": m.to, "body": m.body, "at": m.at, "type": m.type} for m in sent
            ],
            # Times a second browser opened this bot's linked device while one held it.
            "conflicts": len(simulator.conflicts(session.id)),
        }
    else:
        raise ValueError(f"unknown action {action!r}")
    if action in ("start", "stop", "restart", "logout"):
        await session.touch()
    return {}


NodeStep = Callable[[], Awaitable[dict[str, Any]]]


class Actions:
    """This node's side of the actions: asking owners, and answering as an owner."""

    def __init__(
        self,
        manager: BotManager,
        *,
        answer_within: timedelta = ANSWER_WITHIN,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.manager = manager
        self.node = manager.node
        self.store = ActionStore(manager.store.db)
        self.answer_within = answer_within
        self.poll_seconds = poll_seconds
        # Node-wide requests this node answers (the leader's sweep and cleanup).
        self.node_steps: dict[str, NodeStep] = {}
        # Files, number checks and groups read through the bots this node runs (set at start).
        self.reads: OwnerReads | None = None
        self._answered: dict[str, asyncio.Event] = {}
        self._asked = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._last_prune = 0.0
        self.node.on_message.append(self._heard)

    def _heard(self, message: str) -> None:
        if message == f"action:{self.node.id}":
            self._asked.set()
        elif message.startswith("done:"):
            waiting = self._answered.get(message.removeprefix("done:"))
            if waiting is not None:
                waiting.set()

    # Asking ----------------------------------------------------------------------------

    async def run(self, session: BotSession, action: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run the action where the bot is held: here when this node holds it or nobody
        does, else on its owner node (asked through the database). Bounded."""
        manager = self.manager
        deadline = time.monotonic() + self.answer_within.total_seconds()
        while True:
            owner = await self._live_owner(session)
            try:
                if owner is None or owner == self.node.id:
                    return await perform(manager, session, action, args)
                answer = await self.ask(owner, session.id, action, args, deadline)
            except OwnedElsewhereError:
                # It moved (its owner is draining, or gave it up; or its owner's renewal
                # was late, and it is not ours to act on): look again.
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(LOOK_AGAIN_SECONDS)
                continue
            # This node's copy as the owner left it (what the answer describes).
            with contextlib.suppress(ConcurrentChangeError):
                await self._live_owner(session)
            return answer

    async def _live_owner(self, session: BotSession) -> str | None:
        if session.held():
            return self.node.id
        fresh = await self.manager.store.get_session(session.id)
        if fresh is None:
            raise ConcurrentChangeError(f"session {session.id} was deleted")
        # Refused when this node's copy is newer (it took the bot while the row was read).
        session.replace_record(fresh)
        if session.held():
            return self.node.id
        record, now = session.record, self.manager.clock.now()
        if record.owner_node is None or record.lease_until is None or record.lease_until < now:
            return None
        return record.owner_node

    async def _still_holds(self, node: str, session_id: str) -> bool:
        fresh = await self.manager.store.get_session(session_id)
        if fresh is None:
            return False
        now = self.manager.clock.now()
        return bool(
            fresh.owner_node == node and fresh.lease_until is not None and fresh.lease_until >= now
        )

    async def place(self, session: BotSession, node: str) -> None:
        """Ask `node` to start a bot nobody runs (a new bot, placed where there is room).
        Briefly: a start answers at once, and the caller starts the bot itself otherwise
        (a node that died a moment ago is listed until its row expires)."""
        wait = min(self.answer_within, PLACE_WITHIN).total_seconds()
        deadline = time.monotonic() + wait
        await self.ask(node, session.id, "place", {}, deadline)
        with contextlib.suppress(ConcurrentChangeError):
            await self._live_owner(session)

    async def on_node(self, node: str, action: str) -> dict[str, Any]:
        """A node-wide request (sweep, cleanup) to another node."""
        deadline = time.monotonic() + self.answer_within.total_seconds()
        return await self.ask(node, None, action, {}, deadline)

    async def ask(
        self,
        node: str,
        session_id: str | None,
        action: str,
        args: dict[str, Any],
        deadline: float,
    ) -> dict[str, Any]:
        store = self.store
        action_id = await store.ask(
            node, session_id, action, args, self.node.id, self.manager.clock.now()
        )
        answered = self._answered[action_id] = asyncio.Event()
        # A bot's action follows the bot; a placement or a node-wide request, the node.
        follows_bot = session_id is not None and action != "place"
        next_look = time.monotonic() + OWNER_LOOK_SECONDS
        try:
            await self.node.notify(f"action:{node}")
            while True:
                result = await store.answer(action_id)
                if result is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    await store.withdraw(action_id)
                    raise OwnerSilentError(node, self.answer_within.total_seconds())
                if follows_bot and time.monotonic() >= next_look:
                    next_look = time.monotonic() + OWNER_LOOK_SECONDS
                    assert session_id is not None
                    # Withdrawn only while unclaimed: an owner already at work answers.
                    if not await self._still_holds(node, session_id) and await store.withdraw(
                        action_id
                    ):
                        raise OwnedElsewhereError(session_id, None)
                # A notice cuts the wait short; the poll is for a notice that never comes.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, 0.25)):
                        await answered.wait()
                answered.clear()
        finally:
            self._answered.pop(action_id, None)
        await store.forget(action_id)
        raise_decoded(node, session_id, result)
        data: dict[str, Any] = result.get("ok") or {}
        return data

    # Answering -------------------------------------------------------------------------

    async def serve(self) -> None:
        """Answer the requests addressed to this node until cancelled."""
        while True:
            self._asked.clear()
            try:
                await self.serve_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("Looking for requests failed: {}", exc)
            # With LISTEN, a request's notice wakes this at once; the look is a safety net.
            every = self.poll_seconds if not self.node.listening else LISTENING_POLL_SECONDS
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await self._asked.wait()

    async def serve_once(self) -> int:
        now = self.manager.clock.now()
        rows = await self.store.claim(self.node.id, now, self.answer_within)
        for row in rows:
            task = asyncio.get_running_loop().create_task(self._answer(row))
            task.set_name(f"action {row.action}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if time.monotonic() - self._last_prune > KEEP_ROWS_FOR.total_seconds():
            self._last_prune = time.monotonic()
            await self.store.prune(now - KEEP_ROWS_FOR)
        return len(rows)

    async def _answer(self, row: ActionRow) -> None:
        try:
            result: dict[str, Any] = {"ok": wire(await self._execute(row))}
        except asyncio.CancelledError:
            await self._answer_interrupted(row)
            raise
        except Exception as exc:
            result = encode_error(exc)
            if result["error"] == "failed":
                log.opt(exception=exc).warning("Action {} failed: {}", row.action, exc)
        try:
            await self.store.finish(row.id, result, self.manager.clock.now())
        finally:
            await self.node.notify(f"done:{row.id}")

    async def _answer_interrupted(self, row: ActionRow) -> None:
        """Cut short by this node's shutdown: the asker hears it now ("moving, try again"),
        not at the end of its bound; it does not repeat the action by itself, which may
        have half happened."""
        interrupted = ConcurrentChangeError(
            f"node {self.node.id} shut down before it finished; the bot moves to another node"
        )
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                await self.store.finish(row.id, encode_error(interrupted), self.manager.clock.now())
                await self.node.notify(f"done:{row.id}")

    async def _execute(self, row: ActionRow) -> dict[str, Any]:
        if row.session_id is None:
            step = self.node_steps.get(row.action)
            if step is None:
                raise ValueError(f"unknown node-wide action {row.action!r}")
            return await step()
        if row.action == "place":
            return await self._place(row.session_id)
        session = self.manager.sessions.get(row.session_id)
        # Only under a lease this node holds, and not while it is handing its bots over:
        # the asker looks again and finds the bot's next owner.
        if session is None or not session.held() or self.node.draining:
            owner = session.record.owner_node if session is not None else None
            raise OwnedElsewhereError(row.session_id, None if owner == self.node.id else owner)
        return await perform(self.manager, session, row.action, row.args)

    async def _place(self, session_id: str) -> dict[str, Any]:
        """Start a bot another node created for this one (it may not have seen it yet)."""
        if self.node.draining:
            raise OwnedElsewhereError(session_id, None)
        session = self.manager.sessions.get(session_id)
        if session is None:
            fresh = await self.manager.store.get_session(session_id)
            if fresh is None:
                raise ConcurrentChangeError(f"session {session_id} was deleted")
            session = self.manager.add(fresh)
        await session.start("started at creation")
        return {}

    async def finish_running(self, within: float) -> None:
        """Let the answers already under way end (a scan, a pairing code asked through
        another node), for at most `within` seconds: a draining node closes its browsers
        after, so the asker gets the outcome, not "the page was closed". A request claimed
        from now on is refused (the node is draining), so this wait does not grow."""
        running = list(self._running)
        if running:
            await asyncio.wait(running, timeout=within)

    async def stop(self) -> None:
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.wait(self._running, timeout=2)
