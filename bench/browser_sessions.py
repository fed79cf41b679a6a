"""Chromium per bot: start→QR and memory of wakeful's browsers next to plain Playwright.

Prints figures; it is not a pass/fail test. N bots (default 5) are started on the simulator
(`bot/engines/simulator`, which answers https://web.whatsapp.com/ inside each browser
context: nothing leaves the machine) in each variant, all N browsers of a variant running at
once as a server runs them, then closed before the next variant starts:

* "wakeful": the real engine (`WhatsAppEngine`: driver, bridge, LEAN_FLAGS, the desktop user
  agent, its viewport). Start→QR ends at the first `qr` event its bridge reports.
* "wakeful, flags before #19": the same engine as it was before issue 19's per-bot work
  (LEAN_FLAGS without `--single-process` and the page's small young generation, and no
  BLOCKED_URLS), on the binary wakeful picks: the per-bot goal is wakeful's PSS at most 0.8
  of that, side by side in one run.
* "plain Playwright defaults": `launch_persistent_context(profile, executable_path=...,
  headless=True)` with no args (Playwright's own defaults), the simulator attached, then
  `page.goto("https://web.whatsapp.com/")`. Start→QR ends when the simulator reports a QR
  reference (`simulator.status(id)["ref"]`, polled every 50 ms).

The page (`--page`): "real" (the default) is the simulator carrying WhatsApp Web's weight
(`bot/engines/simulator/weight.py`: its code, fonts, emoji sheet, and once linked a store of
300 chats and the chat list with profile pictures); each bot is then linked (its QR scanned
by the simulated phone) and measured once its chat list has settled. "light" is the
simulator's bare page, a few KB, and the bots are measured at their QR.

The bots are asked to start at the same moment and at most BOT_START_CONCURRENCY (the
server's default, 2) launch at a time: the slot is held from the launch until the page's
DOMContentLoaded, as the manager holds it around `engine.start`. "start→QR" counts from that
common moment (the wait for a slot included, as a user of the server sees it); "launch→QR"
from the bot's own launch. Once every bot shows a QR (and on the real page, is linked with
its chat list settled), or failed, the script waits
`--settle` seconds and reads the proportional set size (PSS) of each bot's browser process
tree (`tree_memory_bytes`): shared pages are split across the processes that map them, so
the N trees add up to what the bots cost the machine.

Binaries: the defaults are measured with Debian's full Chromium (/usr/bin/chromium, what
CHROMIUM_PATH=/usr/bin/chromium gives: the reference of the goal) and with Debian's headless
shell; wakeful with what `find_chromium(None)` picks (the headless shell when installed) and
with /usr/bin/chromium, so the table separates what the flags save from what the binary
saves. A binary that is not installed is skipped, and the output says so. Each binary is
launched once, unmeasured, before the first round, so no variant pays for a cold disk cache.

Everything lives in a temporary directory removed at the end; any process still naming it
(a browser that would not close) is killed on the way out, Ctrl-C and errors included.

    .venv/bin/python bench/browser_sessions.py [--bots 5] [--settle 5] [--rounds 1]
        [--page real|light] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Literal, cast

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import _common as common  # noqa: E402
import psutil  # noqa: E402
from loguru import logger  # noqa: E402
from playwright.async_api import BrowserContext, Page, Playwright, async_playwright  # noqa: E402
from playwright.async_api import Error as PlaywrightError  # noqa: E402

from bot.engines.base import EngineError, EngineEvent, EventKind  # noqa: E402
from bot.engines.simulator import WHATSAPP_URL, Behaviour, Simulator, SimulatorError  # noqa: E402
from bot.engines.simulator.weight import (  # noqa: E402
    REAL_WEIGHT,
    SETTLED_SCRIPT,
    WEIGHTS,
    Weight,
)
from bot.engines.whatsapp.browser import (  # noqa: E402
    BLOCKED_URLS,
    DEBIAN_CHROMIUM,
    DEBIAN_HEADLESS_SHELL,
    LEAN_FLAGS,
    SINGLE_PROCESS,
    SMALL_YOUNG_GENERATION,
    ChromiumChoice,
    find_browser_process,
    find_chromium,
    kill_tree,
    tree_memory_bytes,
)
from bot.engines.whatsapp.driver import DriverOptions, WhatsAppEngine  # noqa: E402
from config import DEFAULT_USER_AGENT, Settings  # noqa: E402

GOAL_RATIO = 0.7  # wakeful's mean PSS per bot ÷ plain Playwright defaults with /usr/bin/chromium
# Issue 19's per-bot goal: wakeful's mean PSS per bot ÷ that of the flags it had before that
# work (the same engine, page and binary, side by side in the same run).
PER_BOT_GOAL = 0.8
BEFORE_FLAGS = tuple(f for f in LEAN_FLAGS if f not in (SINGLE_PROCESS, SMALL_YOUNG_GENERATION))

# The server's defaults (BOT_START_CONCURRENCY, SIMULATOR_QR_EVERY).
START_CONCURRENCY = cast(int, Settings.model_fields["bot_start_concurrency"].default)
QR_EVERY = cast(timedelta, Settings.model_fields["simulator_qr_every"].default)

QR_TIMEOUT_S = 120.0  # one bot: from its launch to its first QR
LINK_TIMEOUT_S = 120.0  # one bot on the weighty page: from its scan to its settled chat list
GOTO_TIMEOUT_MS = 60_000  # as the driver's page.goto
POLL_S = 0.05  # the baseline's QR poll
CLOSE_TIMEOUT_S = 15.0  # one browser context closing, then its tree is killed
VERSION_TIMEOUT_S = 15.0

MB = 1024 * 1024

WAKEFUL = "wakeful"
DEFAULTS = "plain Playwright defaults"
BEFORE = "wakeful, flags before #19"
Kind = Literal["wakeful", "defaults", "before"]


# --------------------------------------------------------------------------------------------
# Binaries and variants
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binary:
    label: str  # short name for the table
    path: Path | None  # None: Playwright's own download
    source: str


@dataclass(frozen=True)
class Variant:
    kind: Kind
    binary: Binary

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.binary.label}"

    @property
    def name(self) -> str:
        return {"wakeful": WAKEFUL, "defaults": DEFAULTS, "before": BEFORE}[self.kind]


CHROMIUM = Binary("chromium", DEBIAN_CHROMIUM, "Debian's chromium (/usr/bin/chromium)")
SHELL = Binary("headless-shell", DEBIAN_HEADLESS_SHELL, "Debian's chromium-headless-shell")
REFERENCE_KEY = f"defaults/{CHROMIUM.label}"
SHELL_DEFAULTS_KEY = f"defaults/{SHELL.label}"


def label_for(choice: ChromiumChoice) -> Binary:
    if choice.path == DEBIAN_HEADLESS_SHELL:
        return SHELL
    if choice.path == DEBIAN_CHROMIUM:
        return CHROMIUM
    return Binary(choice.path.name if choice.path else "bundled", choice.path, choice.source)


def plan_variants() -> tuple[list[Variant], list[str], Binary]:
    """The variants to measure, notes on those skipped, and what wakeful picks by itself."""
    notes: list[str] = []
    picked = label_for(find_chromium(None))
    variants: list[Variant] = []
    for binary in (CHROMIUM, SHELL):
        if binary.path is not None and binary.path.exists():
            variants.append(Variant("defaults", binary))
        else:
            notes.append(f"{DEFAULTS} with {binary.label}: skipped, {binary.path} not installed")
    variants.append(Variant("wakeful", picked))
    variants.append(Variant("before", picked))
    if picked.path == DEBIAN_CHROMIUM:
        notes.append(
            f"{WAKEFUL} with {CHROMIUM.label}: measured once, it is what find_chromium picks"
        )
    elif DEBIAN_CHROMIUM.exists():
        variants.append(Variant("wakeful", CHROMIUM))
    else:
        notes.append(f"{WAKEFUL} with {CHROMIUM.label}: skipped, {DEBIAN_CHROMIUM} not installed")
    return variants, notes, picked


def chromium_version(binary: Binary) -> str | None:
    if binary.path is None:
        return None
    try:
        done = subprocess.run(
            [str(binary.path), "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0] if lines else None


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


@dataclass
class BotResult:
    bot: str
    start_to_qr_s: float | None = None  # from the common start, the wait for a slot included
    launch_to_qr_s: float | None = None  # from this bot's own launch
    pss_bytes: int | None = None
    processes: int | None = None
    error: str | None = None


@dataclass
class RoundFigures:
    bots: int
    ok: int
    start_to_qr_median_s: float | None
    start_to_qr_max_s: float | None
    launch_to_qr_median_s: float | None
    pss_mean_mb: float | None
    pss_max_mb: float | None
    processes_mean: float | None
    all_qr_s: float | None  # from the common start until the last bot showed its QR
    per_bot: list[BotResult] = field(default_factory=list)


@dataclass
class Running:
    """What one variant has open, so that it can all be closed whatever happens."""

    contexts: list[BrowserContext] = field(default_factory=list)
    trees: list[psutil.Process] = field(default_factory=list)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _max(values: list[float]) -> float | None:
    return max(values) if values else None


def figures(results: list[BotResult], t_all_qr: float | None) -> RoundFigures:
    qr = [r.start_to_qr_s for r in results if r.start_to_qr_s is not None]
    launch = [r.launch_to_qr_s for r in results if r.launch_to_qr_s is not None]
    pss = [r.pss_bytes / MB for r in results if r.pss_bytes is not None and r.error is None]
    procs = [float(r.processes) for r in results if r.processes is not None and r.error is None]
    return RoundFigures(
        bots=len(results),
        ok=sum(1 for r in results if r.error is None),
        start_to_qr_median_s=_median(qr),
        start_to_qr_max_s=_max(qr),
        launch_to_qr_median_s=_median(launch),
        pss_mean_mb=_mean(pss),
        pss_max_mb=_max(pss),
        processes_mean=_mean(procs),
        all_qr_s=t_all_qr,
        per_bot=results,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def measure_trees(trees: dict[str, psutil.Process | None], results: list[BotResult]) -> None:
    """PSS and process count of each bot's tree, read one after the other."""

    def read(proc: psutil.Process) -> tuple[int, int]:
        try:
            count = 1 + len(proc.children(recursive=True))
        except psutil.Error:
            count = 0
        return tree_memory_bytes(proc), count

    for result in results:
        proc = trees.get(result.bot)
        if result.error is not None:
            continue
        if proc is None or not proc.is_running():
            result.error = "browser process not found"
            continue
        result.pss_bytes, result.processes = await asyncio.to_thread(read, proc)


async def run_bots(
    bots: list[str],
    start_one: Callable[[str, BotResult, float], Awaitable[None]],
) -> tuple[list[BotResult], float | None]:
    """Start all bots at one moment; `start_one(bot, result, t0)` fills in its result."""
    results = [BotResult(bot) for bot in bots]
    t0 = time.perf_counter()
    await asyncio.gather(*(start_one(r.bot, r, t0) for r in results))
    qr = [r.start_to_qr_s for r in results if r.start_to_qr_s is not None]
    all_qr = max(qr) if len(qr) == len(results) else None
    return results, all_qr


async def measure_wakeful(
    binary: Binary,
    workdir: Path,
    bots: list[str],
    settle: float,
    running: Running,
    weight: Weight | None,
    before: bool = False,
) -> RoundFigures:
    simulator = Simulator(qr_every=QR_EVERY, behaviour=Behaviour(weight=weight))
    options = DriverOptions(
        profiles_dir=workdir / "profiles",
        chromium=ChromiumChoice(binary.path, binary.source),
        user_agent=DEFAULT_USER_AGENT,
        flags=BEFORE_FLAGS if before else LEAN_FLAGS,
        # Before #19 nothing was blocked.
        blocked_urls=() if before else BLOCKED_URLS,
    )
    engine = WhatsAppEngine(options, simulator=simulator)
    slots = asyncio.Semaphore(START_CONCURRENCY)
    trees: dict[str, psutil.Process | None] = {}
    try:

        async def start_one(bot: str, result: BotResult, t0: float) -> None:
            shown, ready = asyncio.Event(), asyncio.Event()

            async def on_event(event: EngineEvent) -> None:
                if event.kind is EventKind.QR and not shown.is_set():
                    result.start_to_qr_s = time.perf_counter() - t0
                    shown.set()
                elif event.kind is EventKind.READY:
                    ready.set()

            try:
                async with slots:
                    launched = time.perf_counter()
                    session = await engine.start(bot, on_event)
                trees[bot] = session.browser
                if session.browser is not None:
                    running.trees.append(session.browser)
                async with asyncio.timeout(QR_TIMEOUT_S):
                    await shown.wait()
                result.launch_to_qr_s = time.perf_counter() - launched
                if weight is not None and session.page is not None:
                    await link(simulator, bot, ready.wait, session.page)
            except (EngineError, TimeoutError) as exc:
                result.error = _first_line(exc) if isinstance(exc, EngineError) else "no QR"
            except (SimulatorError, LinkError) as exc:
                result.error = _first_line(exc)

        results, all_qr = await run_bots(bots, start_one)
        await asyncio.sleep(settle)
        await measure_trees(trees, results)
        return figures(results, all_qr)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(engine.close(), CLOSE_TIMEOUT_S * len(bots))


async def measure_defaults(
    playwright: Playwright,
    binary: Binary,
    workdir: Path,
    bots: list[str],
    settle: float,
    running: Running,
    weight: Weight | None,
) -> RoundFigures:
    # Bare Playwright launches, without the bot's browser identity: the simulator's
    # unsupported-browser page for HeadlessChrome is off, the page is what is measured.
    simulator = Simulator(
        qr_every=QR_EVERY, behaviour=Behaviour(headless_check=False, weight=weight)
    )
    slots = asyncio.Semaphore(START_CONCURRENCY)
    trees: dict[str, psutil.Process | None] = {}

    async def start_one(bot: str, result: BotResult, t0: float) -> None:
        profile = workdir / "profiles" / bot
        profile.mkdir(parents=True, exist_ok=True)
        try:
            async with slots:
                launched = time.perf_counter()
                context = await playwright.chromium.launch_persistent_context(
                    str(profile), executable_path=binary.path, headless=True
                )
                running.contexts.append(context)
                tree = await asyncio.to_thread(find_browser_process, profile)
                trees[bot] = tree
                if tree is not None:
                    running.trees.append(tree)
                await simulator.attach(bot, context)
                page = context.pages[0] if context.pages else await context.new_page()
                await page.goto(
                    WHATSAPP_URL, wait_until="domcontentloaded", timeout=GOTO_TIMEOUT_MS
                )
            async with asyncio.timeout(QR_TIMEOUT_S):
                while True:
                    with contextlib.suppress(SimulatorError):
                        if (await simulator.status(bot)).get("ref"):
                            break
                    await asyncio.sleep(POLL_S)
            now = time.perf_counter()
            result.start_to_qr_s = now - t0
            result.launch_to_qr_s = now - launched
            if weight is not None:
                await link(simulator, bot, lambda: synced(simulator, bot), page)
        except (PlaywrightError, SimulatorError, LinkError) as exc:
            result.error = _first_line(exc)
        except TimeoutError:
            result.error = "no QR"

    results, all_qr = await run_bots(bots, start_one)
    await asyncio.sleep(settle)
    await measure_trees(trees, results)
    return figures(results, all_qr)


class LinkError(Exception):
    """A bot on the weighty page did not link, or its chat list did not settle."""


async def synced(simulator: Simulator, bot: str) -> None:
    """The page says its first sync is over (as the bridge's READY would)."""
    while True:
        if (await simulator.status(bot)).get("syncProgress") == 100:
            return
        await asyncio.sleep(POLL_S)


async def link(
    simulator: Simulator, bot: str, linked: Callable[[], Awaitable[object]], page: Page
) -> None:
    """Scan the bot's QR, wait for it to be linked, then for the page's chat list to settle
    (every picture and font loaded or refused): the real page's weight is there then."""
    try:
        async with asyncio.timeout(LINK_TIMEOUT_S):
            await simulator.scan(bot)
            await linked()
            while True:
                if await page.evaluate(SETTLED_SCRIPT):
                    break
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise LinkError(f"not linked and settled within {LINK_TIMEOUT_S:g}s") from None


async def close_all(running: Running) -> None:
    """Close every context; kill what did not close, so no browser outlives its variant."""
    for context in running.contexts:
        with contextlib.suppress(PlaywrightError, TimeoutError):
            await asyncio.wait_for(context.close(), CLOSE_TIMEOUT_S)
    for tree in running.trees:
        await asyncio.to_thread(kill_tree, tree)
    running.contexts.clear()
    running.trees.clear()


async def warm_up(playwright: Playwright, binaries: list[Binary], workdir: Path) -> None:
    """One unmeasured launch per binary: its files are in the page cache for every variant."""
    for index, binary in enumerate(binaries):
        profile = workdir / f"warm-up-{index}"
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=binary.path, headless=True
        )
        tree = await asyncio.to_thread(find_browser_process, profile)
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            await page.goto("about:blank")
        finally:
            with contextlib.suppress(PlaywrightError, TimeoutError):
                await asyncio.wait_for(context.close(), CLOSE_TIMEOUT_S)
            if tree is not None:
                await asyncio.to_thread(kill_tree, tree)


def rotated(items: list[Variant], by: int) -> Iterator[Variant]:
    """The variants in a different order each round, so none always runs first."""
    n = len(items)
    for i in range(n):
        yield items[(i + by) % n]


async def run_all(
    variants: list[Variant],
    root: Path,
    bots: int,
    settle: float,
    rounds: int,
    weight: Weight | None,
) -> dict[str, list[RoundFigures]]:
    results: dict[str, list[RoundFigures]] = {v.key: [] for v in variants}
    names = [f"bench-bot-{i + 1}" for i in range(bots)]
    async with async_playwright() as playwright:
        binaries = list({v.binary: None for v in variants})
        await warm_up(playwright, binaries, root)
        for round_no in range(rounds):
            for variant in rotated(variants, round_no):
                workdir = root / f"round{round_no + 1}" / variant.key.replace("/", "-")
                running = Running()
                try:
                    if variant.kind == "defaults":
                        got = await measure_defaults(
                            playwright, variant.binary, workdir, names, settle, running, weight
                        )
                    else:
                        got = await measure_wakeful(
                            variant.binary,
                            workdir,
                            names,
                            settle,
                            running,
                            weight,
                            before=variant.kind == "before",
                        )
                finally:
                    await close_all(running)
                results[variant.key].append(got)
                print(
                    f"  round {round_no + 1}: {variant.name:<26} {variant.binary.label:<15} "
                    f"{got.ok}/{got.bots} QR, start→QR median "
                    f"{_fmt(got.start_to_qr_median_s, '.2f')} s, "
                    f"PSS mean {_fmt(got.pss_mean_mb, '.0f')} MB/bot",
                    flush=True,
                )
                for r in got.per_bot:
                    if r.error is not None:
                        print(f"    {r.bot}: {r.error}")
    return results


# --------------------------------------------------------------------------------------------
# Strays and signals
# --------------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM: unwind like Ctrl-C, closing the browsers


# --------------------------------------------------------------------------------------------
# Summary and output
# --------------------------------------------------------------------------------------------


@dataclass
class Summary:
    variant: str
    binary: str
    binary_path: str | None
    bots: int
    ok: int  # bots that showed a QR and were measured, in every round
    start_to_qr_median_s: float | None
    start_to_qr_max_s: float | None
    launch_to_qr_median_s: float | None
    pss_mean_mb: float | None
    pss_max_mb: float | None
    processes_mean: float | None
    all_qr_s: float | None
    rounds: list[RoundFigures]


def _median_of(rounds: list[RoundFigures], name: str) -> float | None:
    values = [getattr(r, name) for r in rounds]
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(variant: Variant, rounds: list[RoundFigures]) -> Summary:
    """One round: its figures. Several: the median of each figure across rounds."""
    return Summary(
        variant=variant.name,
        binary=variant.binary.label,
        binary_path=str(variant.binary.path) if variant.binary.path else None,
        bots=rounds[0].bots,
        ok=min(r.ok for r in rounds),
        start_to_qr_median_s=_median_of(rounds, "start_to_qr_median_s"),
        start_to_qr_max_s=_median_of(rounds, "start_to_qr_max_s"),
        launch_to_qr_median_s=_median_of(rounds, "launch_to_qr_median_s"),
        pss_mean_mb=_median_of(rounds, "pss_mean_mb"),
        pss_max_mb=_median_of(rounds, "pss_max_mb"),
        processes_mean=_median_of(rounds, "processes_mean"),
        all_qr_s=_median_of(rounds, "all_qr_s"),
        rounds=rounds,
    )


def ratio(summary: Summary, reference: Summary | None) -> float | None:
    if reference is None or not reference.pss_mean_mb or summary.pss_mean_mb is None:
        return None
    return summary.pss_mean_mb / reference.pss_mean_mb


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(summaries: dict[str, Summary]) -> None:
    reference = summaries.get(REFERENCE_KEY)
    shell = summaries.get(SHELL_DEFAULTS_KEY)
    header = (
        f"{'variant':<26} {'binary':<15} {'QR ok':>5} {'start→QR s':>13} {'launch→QR':>9} "
        f"{'PSS MB/bot':>13} {'procs':>5} {'÷ defaults':>10} {'÷ defaults':>10}"
    )
    second = (
        f"{'':<26} {'':<15} {'':>5} {'median/max':>13} {'median s':>9} {'mean/max':>13} "
        f"{'/bot':>5} {'chromium':>10} {'shell':>10}"
    )
    print(header)
    print(second)
    print("-" * len(header))
    for s in summaries.values():
        qr = f"{_fmt(s.start_to_qr_median_s, '.2f')}/{_fmt(s.start_to_qr_max_s, '.2f')}"
        pss = f"{_fmt(s.pss_mean_mb, '.0f')}/{_fmt(s.pss_max_mb, '.0f')}"
        print(
            f"{s.variant:<26} {s.binary:<15} {f'{s.ok}/{s.bots}':>5} {qr:>13} "
            f"{_fmt(s.launch_to_qr_median_s, '.2f'):>9} {pss:>13} "
            f"{_fmt(s.processes_mean, '.1f'):>5} {_fmt(ratio(s, reference), '.2f'):>10} "
            f"{_fmt(ratio(s, shell), '.2f'):>10}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bots", type=int, default=5, help="bots per variant, side by side (5)")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="s after the last QR before measuring (5)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds; medians across them (1)")
    parser.add_argument(
        "--page",
        choices=WEIGHTS,
        default=REAL_WEIGHT,
        help="the simulator's page: real (WhatsApp Web's weight, bots linked; the default) "
        "or light (a few KB, bots measured at their QR)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write figures")
    args = parser.parse_args(argv)
    if args.bots < 1 or args.settle < 0 or args.rounds < 1:
        parser.error("--bots >= 1, --settle >= 0, --rounds >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    signal.signal(signal.SIGTERM, _interrupt)

    variants, notes, picked = plan_variants()
    weight = Weight() if args.page == REAL_WEIGHT else None
    binaries = list({v.binary: None for v in variants})
    versions = {b.label: chromium_version(b) for b in binaries}
    print(
        f"{args.bots} bots per variant side by side, start concurrency {START_CONCURRENCY}, "
        f"settle {args.settle:g}s, {args.rounds} round(s), {os.cpu_count()} CPUs, "
        f"{args.page} page{' (linked, measured with its chat list)' if weight else ''}; "
        f"find_chromium(None) picks {picked.label} ({picked.source})"
    )
    for binary in binaries:
        print(f"  {binary.label}: {binary.path or 'bundled'} ({versions[binary.label] or '?'})")
    for note in notes:
        print(f"  {note}")

    started = time.perf_counter()
    strays = 0
    with tempfile.TemporaryDirectory(prefix="wakeful-browsers-") as tmp:
        root = Path(tmp).resolve()
        try:
            results = common.run_async(
                lambda: run_all(variants, root, args.bots, args.settle, args.rounds, weight)
            )
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            strays = common.kill_strays(root)
            if strays:
                print(f"killed {strays} stray browser process(es) left running")
    elapsed = time.perf_counter() - started

    summaries = {v.key: summarize(v, results[v.key]) for v in variants}
    print()
    print_table(summaries)
    print(
        "(start→QR: from the moment all bots were asked to start, the wait for one of "
        f"{START_CONCURRENCY} start slots\n included; launch→QR: from the bot's own launch; "
        "PSS: each bot's browser process tree, all bots of\n the variant running; ÷: mean "
        "PSS per bot over that of the plain Playwright defaults with that binary"
        + (";\n figures are medians of the rounds)" if args.rounds > 1 else ")")
    )

    reference = summaries.get(REFERENCE_KEY)
    shell = summaries.get(SHELL_DEFAULTS_KEY)
    judged = summaries[f"wakeful/{picked.label}"]
    goal_ratio = ratio(judged, reference)
    met = None if goal_ratio is None else goal_ratio <= GOAL_RATIO
    print()
    verdict = "not judged" if met is None else ("met" if met else "NOT met")
    print(
        f"goal: wakeful ({picked.label}) ÷ {DEFAULTS} with {CHROMIUM.label} = "
        f"{_fmt(goal_ratio, '.2f')} (goal ≤ {GOAL_RATIO}): {verdict}"
    )
    lean_chromium = summaries.get(f"wakeful/{CHROMIUM.label}")
    if lean_chromium is not None and reference is not None and lean_chromium is not judged:
        print(
            f"  the flags alone (both on {CHROMIUM.label}): "
            f"{_fmt(ratio(lean_chromium, reference), '.2f')}"
        )
    if shell is not None:
        what = "the flags alone, both on" if picked == SHELL else "against"
        print(
            f"  {what} {SHELL.label} ({WAKEFUL} ÷ {DEFAULTS}): {_fmt(ratio(judged, shell), '.2f')}"
        )
        if reference is not None:
            print(
                f"  the binary alone ({DEFAULTS}, {SHELL.label} ÷ {CHROMIUM.label}): "
                f"{_fmt(ratio(shell, reference), '.2f')}"
            )
    before = summaries[f"before/{picked.label}"]
    per_bot = ratio(judged, before)
    per_bot_met = None if per_bot is None else per_bot <= PER_BOT_GOAL
    print(
        f"per-bot goal: wakeful ÷ {BEFORE} ({picked.label}) = {_fmt(per_bot, '.2f')} "
        f"(goal ≤ {PER_BOT_GOAL}): "
        + ("not judged" if per_bot_met is None else ("met" if per_bot_met else "NOT met"))
    )
    print(f"run time {elapsed:.0f}s")

    if args.json is not None:
        document = {
            "benchmark": "browser_sessions",
            "settings": {
                "bots": args.bots,
                "settle_s": args.settle,
                "rounds": args.rounds,
                "page": args.page,
                "weight": asdict(weight) if weight else None,
                "start_concurrency": START_CONCURRENCY,
                "qr_every_s": QR_EVERY.total_seconds(),
                "wakeful_flags": list(LEAN_FLAGS),
                "before_flags": list(BEFORE_FLAGS),
                "picked": {"binary": picked.label, "path": str(picked.path), "why": picked.source},
            },
            "binaries": {
                b.label: {"path": str(b.path) if b.path else None, "version": versions[b.label]}
                for b in binaries
            },
            "skipped": notes,
            "results": {key: asdict(s) for key, s in summaries.items()},
            "ratios_to_defaults_chromium": {
                key: ratio(s, reference) for key, s in summaries.items()
            },
            "ratios_to_defaults_shell": {key: ratio(s, shell) for key, s in summaries.items()},
            "goal": GOAL_RATIO,
            "goal_ratio": goal_ratio,
            "per_bot_goal": PER_BOT_GOAL,
            "per_bot_ratio": per_bot,
            "per_bot_goal_met": per_bot_met,
            "goal_met": met,
            "stray_processes_killed": strays,
            "run_s": round(elapsed, 1),
            "machine": common.machine_info(
                ("psutil", "uvloop"),
                playwright=_version("playwright"),
                memory_total_mb=round(psutil.virtual_memory().total / MB),
            ),
        }
        common.write_json(args.json, document)
    return 0


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
