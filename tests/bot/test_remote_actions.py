"""Actions reach the owner (bot.actions) and one node leads the cluster's jobs: two nodes
(two bot managers, each with its own node id and scripted engine) on one database, in one
process, on SQLite and on Postgres. Real store, real timers."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.action_store import ActionStore
from bot.actions import NoQrError, OwnerSilentError
from bot.engines.base import EventKind
from bot.manager import BotManager
from bot.session import BotSession, ConcurrentChangeError
from bot.states import IllegalTransitionError, SessionState
from services.leader import Leadership, LeaseStore
from tests.bot.test_handover import connected_bot, nodes, until
from tests.engines import ScriptedEngine

S = SessionState
__all__ = ["nodes"]  # the two-node fixture, shared with the handover tests


async def mirror_of(manager: BotManager, session: BotSession) -> BotSession:
    await until(lambda: session.id in manager.sessions)
    return manager.sessions[session.id]


def quick(*managers: BotManager) -> None:
    for manager in managers:
        manager.actions.poll_seconds = 0.05


async def test_an_action_through_any_node_runs_on_the_owner_and_answers_with_its_result(nodes):
    a = await nodes("node-a")
    b = await nodes("node-b")
    quick(a, b)
    running = await connected_bot(a, "sales")
    mirror = await mirror_of(b, running)
    engine_a = a.engine
    assert isinstance(engine_a, ScriptedEngine)
    page = engine_a.live[running.id]

    # A start through B of a bot A runs: A's answer, a 409 naming the state, nothing moved.
    with pytest.raises(IllegalTransitionError) as refused:
        await b.actions.run(mirror, "start", {})
    assert refused.value.current is S.CONNECTED
    assert running.state is S.CONNECTED and running.held()

    # Stop through B: A closes its browser and stores the stop under its epoch.
    await b.actions.run(mirror, "stop", {})
    assert page.stopped
    assert running.state is S.STOPPED
    assert mirror.state is S.STOPPED  # B answers with what A stored
    stored = await b.store.get_session(running.id)
    assert stored is not None and (stored.state, stored.owner_node) == (S.STOPPED, None)

    # Nobody runs it now: a start through B starts it on B (which waits for a scan).
    b.ctx.policy = replace(b.ctx.policy, qr_timeout=timedelta(minutes=1))
    engine_b = b.engine
    assert isinstance(engine_b, ScriptedEngine)
    await b.actions.run(mirror, "start", {})
    assert mirror.held() and b.sessions[running.id].state in (S.CONNECTING, S.SCAN_QR)
    await until(lambda: running.id in engine_b.live)
    # B shows a QR; A asks for it and gets B's.
    await until(lambda: mirror.qr is not None)
    pending = await a.actions.run(running, "qr", {})
    assert pending["qr"] == f"2@scripted-{running.id}" == mirror.qr
    # Pairing through A reaches B's page.
    assert (await a.actions.run(running, "pair", {"phone": "15550002222"}))["code"]
    await engine_b.live[running.id].emit(EventKind.READY, me="15550001111")
    await until(lambda: mirror.state is S.CONNECTED)
    with pytest.raises(NoQrError) as none:
        await a.actions.run(running, "qr", {})
    assert none.value.state is S.CONNECTED
    # Every request row is gone once answered.
    assert await ActionStore(a.store.db).prune(datetime.now(UTC) + timedelta(days=1)) == 0


async def test_an_owner_that_does_not_answer_is_reported_and_never_acts_later(nodes):
    a = await nodes("node-a")
    b = await nodes("node-b")
    quick(a, b)
    running = await connected_bot(a, "sales")
    mirror = await mirror_of(b, running)
    # A keeps its lease but stops answering (a node hung mid-request).
    assert a._actions_task is not None
    a._actions_task.cancel()
    b.actions.answer_within = timedelta(milliseconds=500)
    with pytest.raises(OwnerSilentError) as silent:
        await b.actions.run(mirror, "stop", {})
    assert silent.value.node == "node-a"
    # A answers again: the withdrawn stop is never run.
    a._actions_task = asyncio.get_running_loop().create_task(a.actions.serve())
    await asyncio.sleep(0.3)
    assert running.state is S.CONNECTED
    assert await a.actions.serve_once() == 0


async def test_an_action_for_a_dead_owner_s_bot_follows_the_bot_once_the_lease_runs_out(nodes):
    """The owner was SIGKILLed while a request waited for it: once its lease runs out the
    request is withdrawn and the action runs where the bot is now, well before the bound."""
    a = await nodes("node-a")
    b = await nodes("node-b")
    quick(a, b)
    running = await connected_bot(a, "sales")
    mirror = await mirror_of(b, running)
    # A dies: no more renewals, no more answers (its lease still live for up to a second).
    assert a._keeper_task is not None and a._actions_task is not None
    a._keeper_task.cancel()
    a._actions_task.cancel()
    b.actions.answer_within = timedelta(seconds=60)
    async with asyncio.timeout(15):  # a 504 would come only after the 60 s bound
        await b.actions.run(mirror, "stop", {})
    stored = await b.store.get_session(running.id)
    assert stored is not None and stored.state is S.STOPPED
    assert stored.owner_node in (None, "node-b")
    assert b.sessions[running.id].state is S.STOPPED


async def test_two_nodes_sweep_once_the_leader_covering_both(nodes):
    a = await nodes("node-a")
    b = await nodes("node-b")
    quick(a, b)
    await connected_bot(a, "sales")
    await connected_bot(b, "support")
    await until(lambda: len(a.keeper.nodes) == 2 and len(b.keeper.nodes) == 2)
    sweeps = await asyncio.gather(a.health_sweep_once(), b.health_sweep_once())
    ran = [sweep for sweep in sweeps if not sweep.get("skipped")]
    assert len(ran) == 1, sweeps
    # The one that ran covered both nodes' bots, each swept by its own node.
    assert ran[0]["total"] == 2 and ran[0]["healthy"] == 2 and ran[0]["nodes"] == 2
    leader = a if ran[0] is sweeps[0] else b
    follower = b if leader is a else a
    assert (await follower.cleanup_once())["leader"] == leader.node.id
    assert (await leader.cleanup_once())["checked"] == 2


async def test_a_leader_that_cannot_renew_stops_leading_and_another_takes_over(database_url):
    from services.database import Database
    from tests.support import FakeClock

    db = Database(database_url)
    await db.migrate()
    try:
        clock = FakeClock(datetime(2026, 11, 30, 6, 0, tzinfo=UTC))
        lease, every = timedelta(seconds=15), timedelta(seconds=3)

        def leadership(name: str) -> Leadership:
            return Leadership(
                LeaseStore(db),
                name,
                clock,
                lease=lease,
                renew_every=every,
                monotonic=clock.monotonic,
            )

        a, b = leadership("node-a"), leadership("node-b")
        won = await asyncio.gather(a.renew_once(), b.renew_once())
        assert sorted(won) == [False, True]
        first, second = (a, b) if won[0] else (b, a)
        assert first.holds() and not second.holds() and second.leader == first.holder
        # The leader's renewals fail (the database away from it): past the renew deadline
        # it stops acting, before its lease ends in the database.
        clock.advance(timedelta(seconds=12.5))
        assert not first.holds()
        assert not await second.renew_once()  # its lease still runs: nobody else leads
        clock.advance(timedelta(seconds=3))
        assert await second.renew_once()
        assert second.term == 2 and second.holds()
        assert not await first.renew_once()
        assert first.leader == second.holder
    finally:
        await db.dispose()


async def test_a_request_is_claimed_once_and_a_withdrawn_one_never(database_url):
    from services.database import Database

    db = Database(database_url)
    await db.migrate()
    try:
        store = ActionStore(db)
        now = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
        asked = [await store.ask("node-a", None, "sweep", {}, "node-b", now) for _ in range(4)]
        assert await store.withdraw(asked[0])
        claims = await asyncio.gather(
            *(store.claim("node-a", now, timedelta(seconds=30)) for _ in range(3))
        )
        claimed = sorted(row.id for rows in claims for row in rows)
        assert claimed == sorted(asked[1:])
        # Claimed rows can no longer be withdrawn (the owner is running them).
        assert not await store.withdraw(asked[1])
        assert await store.answer(asked[1]) is None
        await store.finish(asked[1], {"ok": {"total": 1}}, now)
        assert await store.answer(asked[1]) == {"ok": {"total": 1}}
        # Another node's requests, and requests older than the wait, are not claimed.
        await store.ask("node-c", None, "sweep", {}, "node-b", now)
        await store.ask("node-a", None, "sweep", {}, "node-b", now - timedelta(minutes=1))
        assert await store.claim("node-a", now, timedelta(seconds=30)) == []
    finally:
        await db.dispose()


def test_placement_gives_each_waiting_bot_to_the_node_with_the_most_room():
    from bot.keeper import placement

    rooms = {"node-b": 3, "node-a": 3, "node-c": 1}
    chosen = placement(["bot1", "bot2", "bot3", "bot4", "bot5"], rooms)
    assert chosen == {
        "bot1": "node-a",  # a tie goes to the lowest id
        "bot2": "node-b",
        "bot3": "node-a",
        "bot4": "node-b",
        "bot5": "node-a",
    }
    # No room anywhere: nobody is given more than it may take.
    assert placement(["bot1", "bot2"], {"node-a": 1, "node-b": 0}) == {"bot1": "node-a"}


def test_the_keeper_steps_just_after_another_node_s_lease_runs_out():
    from bot.keeper import seconds_to_next_step

    now = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)
    assert seconds_to_next_step(2.0, None, now) == 2.0  # nothing held elsewhere: poll
    soon = now + timedelta(seconds=0.5)
    assert seconds_to_next_step(2.0, soon, now) == pytest.approx(0.55)  # just after expiry
    later = now + timedelta(seconds=9)
    assert seconds_to_next_step(2.0, later, now) == 2.0  # never longer than the poll
    gone = now - timedelta(seconds=3)
    assert seconds_to_next_step(2.0, gone, now) == pytest.approx(0.05)  # already out


async def test_a_bot_whose_owner_let_the_lease_lapse_is_not_placed_back_on_it(nodes):
    """The owner was SIGKILLed: its bot's lease ran out while its own row may still look
    alive (it beat a moment after it renewed). Placed by room alone, the bot would go back
    to that node (a tie, lowest id), and the living node would wait a whole lease more."""
    from bot.ownership import NodeRecord
    from bot.store import SessionRecord

    a = await nodes("node-a")
    now = a.clock.now()
    a.keeper.nodes = [
        NodeRecord(
            id="node-0",
            host="gone",
            pid=1,
            started_at=now - timedelta(minutes=5),
            seen_at=now,
            expires_at=now + timedelta(seconds=1),
            draining=False,
            capacity=None,
            bots=0,
        )
    ]

    def waiting(bot_id: str, owner: str | None) -> SessionRecord:
        return SessionRecord(
            id=bot_id,
            user_id=None,
            name=bot_id,
            state=S.CONNECTED if owner else S.STOPPED,
            state_changed_at=now,
            created_at=now,
            want_running=True,
            owner_node=owner,
            lease_until=now - timedelta(milliseconds=10) if owner else None,
            epoch=3,
        )

    orphan = waiting("orphan", "node-0")
    assert [r.id for r in a.keeper._my_share([orphan])] == ["orphan"]
    # A bot nobody held (released at a graceful stop) is still placed by room alone.
    released = waiting("released", None)
    assert a.keeper._my_share([released]) == []  # node-0 has as much room, a lower id


async def test_a_new_bot_starts_on_the_node_with_the_most_room(nodes):
    a = await nodes("node-a")
    b = await nodes("node-b")
    quick(a, b)
    await connected_bot(a, "sales")
    await until(lambda: len(a.keeper.nodes) == 2)
    created = await a.create(user_id=None, name="new", webhook_url=None, metadata={}, start=True)
    # Created through A, which runs a bot already; B runs none: B starts it.
    assert created.record.owner_node == "node-b"
    await until(lambda: created.id in b.sessions and b.sessions[created.id].held())
    assert a.held_count() == 1 and b.held_count() == 1


async def test_the_bots_of_a_node_that_leaves_are_spread_over_the_others(nodes):
    c = await nodes("node-c")
    quick(c)
    bots = [await connected_bot(c, name) for name in ("one", "two")]
    a = await nodes("node-a")
    b = await nodes("node-b")
    await until(lambda: all(len(m.keeper.nodes) == 3 for m in (a, b)))
    # Joining nodes take nothing that runs.
    assert a.held_count() == b.held_count() == 0
    await c.shutdown(within=5)
    await until(lambda: a.held_count() + b.held_count() == 2)
    assert a.held_count() == 1 and b.held_count() == 1
    assert {s.id for s in bots} == {i for m in (a, b) for i, s in m.sessions.items() if s.held()}


async def a_pairing_code_asked_through_b_of_a_bot_on_a(
    nodes: Any,
) -> tuple[BotManager, BotManager, BotSession, ScriptedEngine, asyncio.Task[dict[str, Any]]]:
    """Node A runs a bot waiting for a link; a pairing code is asked for it through node B,
    and A's page is working on it (until `engine_a.pair_gate` is set)."""
    a = await nodes("node-a")
    b = await nodes("node-b")
    quick(a, b)
    a.ctx.policy = replace(a.ctx.policy, qr_timeout=timedelta(minutes=1))
    waiting = await a.create(user_id=None, name="sales", webhook_url=None, metadata={}, start=False)
    await waiting.start("started at creation")
    await until(lambda: waiting.qr is not None)
    mirror = await mirror_of(b, waiting)
    engine_a = a.engine
    assert isinstance(engine_a, ScriptedEngine)
    engine_a.pair_gate = asyncio.Event()
    asked = asyncio.get_running_loop().create_task(
        b.actions.run(mirror, "pair", {"phone": "15550002222"})
    )
    await until(lambda: engine_a.pairs_waiting == 1)
    return a, b, waiting, engine_a, asked


async def test_a_node_that_hands_over_answers_the_request_it_is_working_on_first(nodes):
    """A deploy's SIGTERM lands while the old node asks the page for a pairing code that a
    user asked for through the new node: the user gets the code (the page is closed after),
    not "the page was closed"."""
    a, b, waiting, engine_a, asked = await a_pairing_code_asked_through_b_of_a_bot_on_a(nodes)
    page = engine_a.live[waiting.id]
    assert engine_a.pair_gate is not None
    handing_over = asyncio.get_running_loop().create_task(a.shutdown(within=6))
    # The page answers a second later, or as soon as its browser is closed under it.
    with contextlib.suppress(TimeoutError):
        await until(lambda: page.stopped, within=1)
    engine_a.pair_gate.set()
    assert await asked == {"code": "WAKEFUL1"}
    await handing_over
    assert page.stopped  # and the bot was handed over all the same
    stored = await b.store.get_session(waiting.id)
    assert stored is not None and stored.owner_node != "node-a"


async def test_a_request_the_old_node_could_not_finish_before_it_left_is_answered_at_once(nodes):
    """The page never answers: the node hands the bot over after its bound all the same,
    and the asker hears "moving, try again" then, not after its 30 s wait."""
    a, b, _, _, asked = await a_pairing_code_asked_through_b_of_a_bot_on_a(nodes)
    assert b.actions.answer_within == timedelta(seconds=30)
    await a.shutdown(within=1.5)  # the page's answer never comes
    async with asyncio.timeout(10):
        with pytest.raises(ConcurrentChangeError, match="node node-a shut down"):
            await asked
