"""A node's loops stop when they are cancelled, even when something wakes them in the same
turn. On Python 3.11, `asyncio.wait_for` returned the woken event's result instead of the
cancellation, so the cluster keeper looped on and a shutdown (a deploy's old node handing its
bots over) waited on it forever; CI saw it on a loaded machine."""

from __future__ import annotations

import asyncio

from tests.bot.test_handover import nodes, until

__all__ = ["nodes"]

WAITS = ("wait", "wait_for")  # Event.wait under asyncio.timeout; wait_for's own frame before


def waiting_for_wakeup(task: asyncio.Task[None] | None) -> bool:
    """The keeper is between two steps, blocked on its wake-up (not inside a step): what its
    loop awaits directly is the wait itself."""
    if task is None or task.done():
        return False
    awaited = task.get_coro().cr_await  # type: ignore[union-attr]
    return getattr(getattr(awaited, "cr_code", None), "co_name", None) in WAITS


async def test_a_keeper_woken_as_it_is_cancelled_still_stops(nodes):
    node = await nodes("node-a")
    for _ in range(5):  # five times: each one the old code lost
        task = node._keeper_task
        assert task is not None
        await until(lambda: len(node.keeper.nodes) == 1 and waiting_for_wakeup(node._keeper_task))
        node.node.wakeup.set()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert done, "the keeper went on after it was cancelled"
        assert task.cancelled()
        # Started again for the next round, as the manager does at start.
        node._keeper_task = asyncio.get_running_loop().create_task(node.keeper.run())
