"""Two nodes (two bot managers, each with its own node id and engine) on one database, in one
process: ownership decides who runs a bot. Real store, scripted engines, real timers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from bot.cluster import ClusterConfig, Node
from bot.engines.base import EventKind
from bot.manager import BotManager, ManagerConfig
from bot.ownership import OwnershipStore
from bot.session import BotSession, OwnedElsewhereError
from bot.states import SessionState
from bot.store import BotStore
from services.alerts import Alerter
from services.clock import SystemClock
from services.database import Database
from services.metrics import Metrics
from tests.bot.test_lifecycle import FAST
from tests.engines import ScriptedEngine

S = SessionState
CLUSTER = ClusterConfig(lease=timedelta(seconds=1), renew_every=timedelta(milliseconds=200))


async def until(predicate: Callable[[], bool], within: float = 10) -> None:
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
async def nodes(database_url: str) -> AsyncIterator[Callable[..., Any]]:
    db = Database(database_url)
    await db.migrate()
    managers: list[BotManager] = []

    async def build(
        name: str, engine: ScriptedEngine | None = None, stagger: timedelta = timedelta(0)
    ) -> BotManager:
        clock = SystemClock()
        manager = BotManager(
            store=BotStore(db),
            engine=engine or ScriptedEngine(auto=True),
            policy=FAST,
            clock=clock,
            alerter=Alerter([], clock),
            metrics=Metrics(),
            config=ManagerConfig(start_stagger=stagger),
            rand=lambda: 0.5,
            node=Node(OwnershipStore(db), clock, CLUSTER, node_id=name),
        )
        await manager.load()
        manager.restore_in_background()
        managers.append(manager)
        return manager

    yield build
    for manager in managers:
        if not manager.node.draining:
            await manager.shutdown(within=5)
    await db.dispose()


async def connected_bot(manager: BotManager, name: str) -> BotSession:
    """A bot started and connected on this node (not placed where there is most room)."""
    session = await manager.create(
        user_id=None, name=name, webhook_url=None, metadata={}, start=False
    )
    await session.start("started at creation")
    engine = manager.engine
    assert isinstance(engine, ScriptedEngine)
    await until(lambda: session.id in engine.live)
    await engine.live[session.id].emit(EventKind.READY, me="15550001111")
    await until(lambda: session.state is S.CONNECTED)
    return session


async def a_bot_node_b_mirrors(
    nodes: Callable[..., Any],
) -> tuple[BotManager, BotSession, BotManager, ScriptedEngine]:
    """Node A runs a linked bot; node B (whose engine knows the link) has seen it."""
    a = await nodes("node-a")
    running = await connected_bot(a, "sales")
    b_engine = ScriptedEngine(auto=True)
    b_engine.linked.add(running.id)
    b: BotManager = await nodes("node-b", b_engine)
    await until(lambda: running.id in b.sessions)
    return a, running, b, b_engine


async def test_a_new_node_never_starts_a_running_bot_and_adopts_it_on_release(nodes):
    a = await nodes("node-a")
    running = await connected_bot(a, "sales")
    b_engine = ScriptedEngine(auto=True)
    b_engine.linked.add(running.id)
    b = await nodes("node-b", b_engine)
    # B sees the bot (and who runs it), and starts nothing for a few renewals.
    await until(lambda: running.id in b.sessions)
    await asyncio.sleep(0.6)
    assert b_engine.starts == []
    mirror = b.sessions[running.id]
    assert (mirror.state, mirror.record.owner_node) == (S.CONNECTED, "node-a")
    # B's owner actions on a bot A runs are refused (not written over A's state).
    with pytest.raises(OwnedElsewhereError):
        await mirror.stop("stopped by its owner", by_owner=True)
    with pytest.raises(OwnedElsewhereError):
        await mirror.start("started by its owner")
    assert running.state is S.CONNECTED

    await a.shutdown(within=5)  # SIGTERM: closes the browser, stores STOPPED, releases
    assert a.engine is not None and running.id not in b_engine.live
    adopted = b.sessions[running.id]
    await until(lambda: adopted.held() and adopted.state is S.CONNECTED)
    assert adopted.record.epoch > running.record.epoch
    history = [t.reason for t in await b.store.history(running.id, 5)]
    assert history[:3] == [
        "connected as 15550001111",
        "taken over from another node",
        "shutdown",
    ]


async def test_a_takeover_is_not_spaced_out_by_the_boot_stagger(nodes):
    # BOT_START_STAGGER paces a node's boot; at a deploy every bot is handed over, and its
    # users wait: the start slots alone pace the takeover.
    a = await nodes("node-a")
    running = [await connected_bot(a, f"bot{i}") for i in range(3)]
    b_engine = ScriptedEngine(auto=True)
    b_engine.linked.update(bot.id for bot in running)
    b = await nodes("node-b", b_engine, stagger=timedelta(seconds=60))
    await until(lambda: b.keeper.restored)  # booted while A runs them: nothing to restore
    assert b_engine.starts == []

    await a.shutdown(within=5)
    await until(
        lambda: all(
            b.sessions[bot.id].held() and b.sessions[bot.id].state is S.CONNECTED for bot in running
        ),
        within=20,
    )


async def test_a_node_that_loses_its_lease_stops_the_browser_and_writes_nothing(nodes):
    a = await nodes("node-a")
    running = await connected_bot(a, "sales")
    engine = a.engine
    assert isinstance(engine, ScriptedEngine)
    page = engine.live[running.id]
    # Another node takes the bot behind A's back (as after a pause longer than the lease).
    leases = OwnershipStore(a.store.db)
    taken = None
    async with asyncio.timeout(10):
        while taken is None:
            # Only once A's lease has run out: A keeps renewing, so expire it by hand.
            await a.store.save_fields(running.id, lease_until=a.clock.now() - timedelta(1))
            taken = await leases.acquire(running.id, "node-z", a.clock.now(), CLUSTER.lease)
    await until(lambda: page.stopped)
    assert not running.held()
    await page.emit(EventKind.CRASH, reason="late event from the closed browser")
    stored = await a.store.get_session(running.id)
    assert stored is not None
    assert (stored.state, stored.owner_node, stored.epoch) == (
        S.CONNECTED,
        "node-z",
        taken.epoch,
    )


async def test_the_per_user_limit_holds_across_nodes_under_concurrent_creates(nodes):
    from datetime import UTC, datetime

    from bot.manager import SessionLimitError
    from bot.store import UserRecord

    a = await nodes("node-a")
    b = await nodes("node-b")
    a.config = b.config = ManagerConfig(start_stagger=timedelta(0), max_sessions_per_user=3)
    await a.store.create_user(UserRecord("usr_000000000001", "ann", datetime.now(UTC)), "f" * 64)

    async def create(manager: BotManager, n: int) -> bool:
        try:
            await manager.create(
                user_id="usr_000000000001",
                name=f"bot{n}",
                webhook_url=None,
                metadata={},
                start=False,
            )
        except SessionLimitError:
            return False
        return True

    made = await asyncio.gather(*(create(a if n % 2 else b, n) for n in range(8)))
    assert sum(made) == 3
    stored = [s for s in await a.store.all_sessions() if s.user_id == "usr_000000000001"]
    assert len(stored) == 3
    # Each node sees all three (created through either), at once on the next look.
    await until(lambda: len(a.sessions) == 3 and len(b.sessions) == 3)


async def test_an_expired_bot_is_woken_by_one_node_only(nodes):
    """A wake is a start: it takes the bot's lease, so two nodes waking it at once (a message
    queued through each) start one browser between them."""
    a = await nodes("node-a")
    sleepy = await connected_bot(a, "sleepy")
    await sleepy.expire("cleanup: no activity for 24h")
    b_engine = ScriptedEngine(auto=True)
    b_engine.linked.add(sleepy.id)
    b = await nodes("node-b", b_engine)
    await until(lambda: sleepy.id in b.sessions and b.sessions[sleepy.id].state is S.EXPIRED)
    a_engine = a.engine
    assert isinstance(a_engine, ScriptedEngine)
    a_engine.linked.add(sleepy.id)
    a_starts = len(a_engine.starts)
    mirror = b.sessions[sleepy.id]
    woken = await asyncio.gather(
        a.wake(sleepy, "a message was queued"), b.wake(mirror, "a message was queued")
    )
    assert sorted(woken) == [False, True]
    winner, loser = (a, b) if woken[0] else (b, a)
    session = winner.sessions[sleepy.id]
    await until(lambda: session.state is S.CONNECTED)
    assert session.held()
    starts = len(a_engine.starts) - a_starts + len(b_engine.starts)
    assert starts == 1
    await until(lambda: loser.sessions[sleepy.id].record.owner_node == winner.node.id)


async def test_a_bot_acquired_while_a_renewal_runs_is_not_taken_for_lost(nodes):
    """The renewal reads which bots this node holds; a bot created and started meanwhile
    (its acquire committed after that read) is missing from the answer. That is not
    another node taking it: the new bot must keep its lease and start (CI once saw it
    stuck IDLE, 'Lost the lease on this bot (another node took it)' at its creation)."""
    a: BotManager = await nodes("node-a")
    assert a._keeper_task is not None
    a._keeper_task.cancel()  # the renewals below are this test's
    session = await a.create(user_id=None, name="new", webhook_url=None, metadata={}, start=False)
    real_renew = a.node.renew

    async def renew_then_a_start() -> tuple[dict[str, int], datetime]:
        answer = await real_renew()
        await session.start("started at creation")  # acquires after the renewal's read
        return answer

    a.node.renew = renew_then_a_start  # type: ignore[method-assign]
    await a.keeper.renew()
    assert session.held()
    engine = a.engine
    assert isinstance(engine, ScriptedEngine)
    await until(lambda: session.id in engine.live)
    # The next renewal finds it, as any held bot.
    a.node.renew = real_renew  # type: ignore[method-assign]
    await a.keeper.renew()
    assert session.held() and session.state is not S.IDLE


async def test_a_takeover_whose_first_write_fails_does_not_keep_the_bot_without_a_browser(nodes):
    """The new owner acquires a dead node's bot, then its first write (the orphan's STOPPED)
    fails. It must not keep the lease with no browser (the bot would read CONNECTED, under
    the new node's name, forever): the lease goes back, and the bot is adopted again."""
    a, running, b, b_engine = await a_bot_node_b_mirrors(nodes)
    real_transition = b.store.transition
    failed: list[str] = []

    async def first_write_fails(*args: Any, **kwargs: Any) -> bool:
        if not failed:
            failed.append(str(args[3]))
            return False  # as a concurrent change would be refused
        return await real_transition(*args, **kwargs)

    b.store.transition = first_write_fails  # type: ignore[method-assign]
    # A dies: no more renewals.
    assert a._keeper_task is not None and a._actions_task is not None
    a._keeper_task.cancel()
    a._actions_task.cancel()
    adopted = b.sessions[running.id]
    await until(lambda: running.id in b_engine.live, within=20)
    await until(lambda: adopted.held() and adopted.state is S.CONNECTED)
    assert failed == ["the process ended while it was running"]
    reasons = [t.reason for t in await b.store.history(running.id, 4)]
    assert "taken over from another node" in reasons


async def test_a_status_read_from_before_a_takeover_does_not_undo_it(nodes):
    """A GET of the bot on the new node reads the row (the old node's) while the takeover
    runs, and its answer arrives after the takeover's acquire. That stale row must not
    replace what the new owner knows: CI saw the adoption fail with "run by node <the dead
    one>" while the database named the new node, and the bot stayed CONNECTED under the
    new node's name with no browser (the three-node SIGKILL test)."""
    from types import SimpleNamespace

    from starlette.requests import Request

    from web.sessions_api import session_json

    a, running, b, b_engine = await a_bot_node_b_mirrors(nodes)
    mirror = b.sessions[running.id]

    looked, acquired = asyncio.Event(), asyncio.Event()
    real_get, real_acquire = b.store.get_session, b.node.acquire

    async def slow_look(session_id: str) -> Any:
        b.store.get_session = real_get  # type: ignore[method-assign]
        row = await real_get(session_id)  # as stored before the takeover
        looked.set()
        await acquired.wait()
        return row

    async def acquire_after_the_look(session_id: str) -> Any:
        await looked.wait()
        record = await real_acquire(session_id)
        acquired.set()
        return record

    b.store.get_session = slow_look  # type: ignore[method-assign]
    b.node.acquire = acquire_after_the_look  # type: ignore[method-assign]
    request = Request({"type": "http", "app": SimpleNamespace(state=SimpleNamespace(manager=b))})
    look = asyncio.create_task(session_json(request, mirror))
    await until(looked.is_set)
    # A dies: no more renewals; B adopts the bot once its lease runs out.
    assert a._keeper_task is not None and a._actions_task is not None
    a._keeper_task.cancel()
    a._actions_task.cancel()
    await look
    adopted = b.sessions[running.id]
    # The user goes on polling the bot's status, as `curl` (and the e2e test) does.
    try:
        async with asyncio.timeout(20):
            while not (
                running.id in b_engine.live and adopted.held() and adopted.state is S.CONNECTED
            ):
                await session_json(request, adopted)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(
            f"not running on node-b: {adopted.state}, owner {adopted.record.owner_node}, "
            f"browser {running.id in b_engine.live}"
        ) from None
    reasons = [t.reason for t in await b.store.history(running.id, 4)]
    assert "taken over from another node" in reasons
