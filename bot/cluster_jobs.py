"""One cluster, one voice: the cluster-wide jobs (cleanup, the health sweep, retention) run
once per interval in the cluster, on the node that holds the leader lease
(services.leader). The leader does its own part and asks every other node to do its part
(bot.actions, node-wide requests), then logs one summary for the cluster."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from bot.actions import OwnerSilentError, RemoteFailedError
from services.leader import Leadership, LeaseStore

if TYPE_CHECKING:
    from bot.manager import BotManager

log = logger.bind(component="bot")


def _cluster_part(theirs: list[dict[str, Any]], silent: list[str]) -> dict[str, Any]:
    """How many nodes a cluster-wide job covered (nothing to say for a cluster of one)."""
    if not theirs and not silent:
        return {}
    return {"nodes": 1 + len(theirs), **({"unanswered": silent} if silent else {})}


class ClusterJobs:
    def __init__(self, manager: BotManager) -> None:
        self.manager = manager
        node = manager.node
        self.leadership = Leadership(
            LeaseStore(manager.store.db),
            node.id,
            manager.clock,
            lease=node.config.lease,
            renew_every=node.config.renew_every,
            monotonic=manager.clock.monotonic,
        )

    async def leads(self) -> bool:
        """Whether this node runs the cluster's jobs now: it proves it holds the leader
        lease (renewing it) or takes it when it is free. A database away proves nothing."""
        try:
            return await self.leadership.renew_once()
        except Exception as exc:
            log.warning("Cannot tell whether this node leads the cluster: {}", exc)
            return False

    def _skipped(self, job: str) -> dict[str, Any]:
        leader = self.leadership.leader
        log.debug("{} skipped: node {} runs the cluster's jobs", job, leader or "another")
        return {"at": self.manager.clock.now().isoformat(), "skipped": True, "leader": leader}

    async def _ask_other_nodes(self, action: str) -> tuple[list[dict[str, Any]], list[str]]:
        """A node-wide action on every other live node, at once: their answers, and the
        nodes that gave none (they run their bots still; or they died, and their bots
        are adopted once their leases end)."""
        others = [
            n.id
            for n in self.manager.keeper.nodes
            if n.id != self.manager.node.id and not n.draining
        ]
        answers = await asyncio.gather(
            *(self.manager.actions.on_node(node, action) for node in others), return_exceptions=True
        )
        found, silent = [], []
        for node, answer in zip(others, answers, strict=True):
            if isinstance(answer, dict):
                found.append(answer)
            else:
                silent.append(node)
                if not isinstance(answer, OwnerSilentError | RemoteFailedError):
                    log.warning("Node {} did not {}: {}", node, action, answer)
        return found, silent

    async def run_if_leader(self, job: str, step: Callable[[], Any]) -> Any:
        """A cluster-wide job (retention): run here only while this node leads."""
        if not await self.leads():
            return self._skipped(job)
        return await step()

    async def cleanup_once(self) -> dict[str, Any]:
        """Recycle or close what runs too long, close what is idle, wake the expired bots
        that are due (BotManager.cleanup_local). Once per interval in the cluster: the
        leader cleans up what it runs and nobody runs, and asks every other node to clean
        up what it runs."""
        if not await self.leads():
            return self._skipped("Session cleanup")
        mine = await self.manager.cleanup_local(only_held=False)
        theirs, silent = await self._ask_other_nodes("cleanup")
        removed: Counter[str] = Counter(mine["reasons"])
        checked = mine["checked"]
        recycled = mine["recycled"]
        for answer in theirs:
            removed.update(answer.get("reasons", {}))
            checked += int(answer.get("checked", 0))
            recycled += int(answer.get("recycled", 0))
        total = sum(removed.values())
        log.info(
            "✅ Session cleanup complete: {}/{} sessions removed ({} recycled), {} woken",
            total,
            checked,
            recycled,
            sum(mine["woken"].values()),
        )
        self.manager.last_cleanup = {
            "at": mine["at"],
            "checked": checked,
            "removed": total,
            "recycled": recycled,
            "reasons": dict(removed),
            "woken": mine["woken"],
            "linksAtRisk": mine["linksAtRisk"],
            **_cluster_part(theirs, silent),
        }
        return self.manager.last_cleanup

    async def health_sweep_once(self) -> dict[str, Any]:
        """Level every session, reconnect what is due, alert on entering critical. Once per
        interval in the cluster: the leader sweeps what it runs and nobody runs, and asks
        every other node to sweep what it runs; one summary line for the cluster."""
        if not await self.leads():
            return self._skipped("Session health check")
        summary = await self.manager.health_sweep_local(only_held=False)
        theirs, silent = await self._ask_other_nodes("sweep")
        for answer in theirs:
            for key, value in answer.items():
                if key != "at" and isinstance(value, int):
                    summary[key] = summary.get(key, 0) + value
        log.info(
            "🩺 Session health check complete: {total} total, {healthy} healthy, {warning} "
            "warning, {critical} critical, {reconnected} reconnected, {notified} notified",
            **summary,
        )
        sweep = {**summary, **_cluster_part(theirs, silent)}
        self.manager.last_sweep = sweep
        return sweep
