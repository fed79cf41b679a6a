"""The memory budget: what the container may hold (its cgroup limit, or MEMORY_LIMIT_MB),
what wakeful itself holds (the server, the Playwright driver), and what the bots' browsers
hold. A bot that would not fit is refused before it starts, and the per-bot watchdog limit
is a share of the room, so a growing bot is recycled before the kernel's OOM killer ends
the whole process (and every other bot with it).

Figures are proportional set sizes (PSS): pages shared between processes count once, so
the sum is what the processes cost the container. Sampling reads /proc; it is cached for
a few seconds, and never done on /health."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

MB = 1_048_576
UNLIMITED = 1 << 60  # cgroup v1 says "no limit" with a number near 2**63
# Room kept free for the kernel's page cache, Python's garbage and a page's spikes.
HEADROOM_SHARE = 0.10
# Until a bot has run here, what one costs: the figures `make image-check` measured in the
# image on the simulator page (README, Sizing). A real WhatsApp page weighs more; the
# estimate is replaced by the measured average as soon as a bot runs.
DRIVER_ESTIMATE_MB = 140.0
BOT_ESTIMATE_MB = 175.0
SAMPLE_EVERY = 5.0


@dataclass(frozen=True, slots=True)
class Limit:
    bytes: int | None
    source: str


def read_limit(
    override_mb: int | None,
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    proc_cgroup: Path = Path("/proc/self/cgroup"),
) -> Limit:
    """MEMORY_LIMIT_MB, else the tightest limit on our cgroup's path (v2 memory.max, v1
    memory.limit_in_bytes), else the machine's memory."""
    if override_mb:
        return Limit(override_mb * MB, "MEMORY_LIMIT_MB")
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            found = _tightest(cgroup_root, path, "memory.max")
            if found is not None:
                return Limit(found, "cgroup v2 memory.max")
        elif "memory" in controllers.split(","):
            found = _tightest(cgroup_root / "memory", path, "memory.limit_in_bytes")
            if found is not None:
                return Limit(found, "cgroup v1 memory.limit_in_bytes")
    return Limit(psutil.virtual_memory().total, "the machine's memory (no container limit)")


def _tightest(root: Path, path: str, name: str) -> int | None:
    """The smallest limit from our cgroup up to the root of the mounted hierarchy (inside a
    container the path is usually `/`, and the limit sits on the root file)."""
    limits = []
    folder = root / path.strip("/")
    while True:
        with contextlib.suppress(OSError, ValueError):
            text = (folder / name).read_text().strip()
            if text != "max" and int(text) < UNLIMITED:
                limits.append(int(text))
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    return min(limits) if limits else None


@dataclass(frozen=True, slots=True)
class Sample:
    server: int
    driver: int
    bots: int
    bot_count: int


def _pss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_full_info().pss)
    except (psutil.AccessDenied, AttributeError):
        with contextlib.suppress(psutil.Error):
            return int(proc.memory_info().rss)
    except psutil.Error:
        pass
    return 0


def sample_processes(root: psutil.Process) -> Sample:
    """Our process tree, split: browsers (a `--user-data-dir` on their command line, one
    root per bot), the driver (the rest of our children), and the server itself."""
    server = _pss(root)
    driver = bots = count = 0
    try:
        children = root.children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if any(arg.startswith("--user-data-dir=") for arg in cmdline):
            bots += _pss(child)
            count += not any(arg.startswith("--type=") for arg in cmdline)
        else:
            driver += _pss(child)
    return Sample(server, driver, bots, count)


class MemoryFullError(Exception):
    """A bot start refused: it would not fit in the budget."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        super().__init__(budget.refusal())


class MemoryBudget:
    def __init__(
        self,
        limit: Limit,
        *,
        sampler: Callable[[], Sample] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        me = psutil.Process(os.getpid())
        self._sampler = sampler or (lambda: sample_processes(me))
        self._monotonic = monotonic
        self._sample: Sample | None = None
        self._sampled_at = 0.0

    def sample(self, fresh: bool = False) -> Sample:
        now = self._monotonic()
        if fresh or self._sample is None or now - self._sampled_at >= SAMPLE_EVERY:
            self._sample = self._sampler()
            self._sampled_at = now
        return self._sample

    # The arithmetic, from one sample -------------------------------------------------------

    @property
    def limit_mb(self) -> float:
        return (self.limit.bytes or 0) / MB

    def per_bot_mb(self, sample: Sample) -> float:
        return sample.bots / sample.bot_count / MB if sample.bot_count else BOT_ESTIMATE_MB

    def overhead_mb(self, sample: Sample) -> float:
        """The server, plus the driver (its estimate while no bot has started it)."""
        driver = sample.driver / MB if sample.driver else DRIVER_ESTIMATE_MB
        return sample.server / MB + driver

    def room_for_bots_mb(self, sample: Sample) -> float:
        return self.limit_mb * (1 - HEADROOM_SHARE) - self.overhead_mb(sample)

    def bots_that_fit(self, sample: Sample) -> int:
        return max(int(self.room_for_bots_mb(sample) // self.per_bot_mb(sample)), 0)

    def next_fits(self, sample: Sample) -> bool:
        used = sample.bots / MB
        return used + self.per_bot_mb(sample) <= self.room_for_bots_mb(sample)

    def per_bot_limit_mb(self, sample: Sample) -> int:
        """The watchdog's default: the whole room for bots, so one bot growing past what
        is left for all of them is recycled before the kernel acts."""
        return max(int(self.room_for_bots_mb(sample)), 64)

    # What callers use ------------------------------------------------------------------------

    def check_room(self) -> None:
        sample = self.sample(fresh=True)
        if not self.next_fits(sample):
            raise MemoryFullError(self)

    def refusal(self) -> str:
        sample = self.sample()
        return (
            f"not enough memory for another bot: the budget is {self.limit_mb:.0f} MB "
            f"({self.limit.source}), wakeful itself uses {self.overhead_mb(sample):.0f} MB, "
            f"{sample.bot_count} bot(s) use {sample.bots / MB:.0f} MB and one more needs about "
            f"{self.per_bot_mb(sample):.0f} MB (of {self.room_for_bots_mb(sample):.0f} MB "
            "for bots). Stop or delete a bot, or give the service more memory"
        )

    def start_line(self) -> str:
        sample = self.sample(fresh=True)
        measured = "measured" if sample.bot_count else "estimated"
        return (
            f"💾 Memory budget: {self.limit_mb:.0f} MB ({self.limit.source}); wakeful itself "
            f"{self.overhead_mb(sample):.0f} MB (server {sample.server / MB:.0f} MB + driver); "
            f"about {self.bots_that_fit(sample)} bot(s) fit at ~{self.per_bot_mb(sample):.0f} MB "
            f"each ({measured})"
        )

    def parts_bytes(self) -> dict[str, int]:
        sample = self.sample()
        return {
            "limit": self.limit.bytes or 0,
            "server": sample.server,
            "driver": sample.driver,
            "bots": sample.bots,
        }

    def snapshot(self) -> dict[str, Any]:
        sample = self.sample()
        return {
            "limitMb": round(self.limit_mb),
            "limitSource": self.limit.source,
            "serverMb": round(sample.server / MB, 1),
            "driverMb": round(sample.driver / MB, 1),
            "overheadMb": round(self.overhead_mb(sample), 1),
            "bots": sample.bot_count,
            "botsMb": round(sample.bots / MB, 1),
            "perBotMb": round(self.per_bot_mb(sample), 1),
            "perBotMeasured": bool(sample.bot_count),
            "roomForBotsMb": round(self.room_for_bots_mb(sample), 1),
            "botsThatFit": self.bots_that_fit(sample),
            "nextBotFits": self.next_fits(sample),
        }
