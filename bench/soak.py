"""Soak: the real server in demo mode for minutes under steady load. Does its memory stay flat
after a warm-up, and does anything fail?

Prints figures; it is not a pass/fail test (it prints a verdict). The real app runs as
`python server.py` on a free loopback port, in demo mode (WHATSAPP_SIMULATOR=1: real Chromium,
the real driver and bridge, the simulator in place of web.whatsapp.com), with its own
temporary DATA_DIR (SQLite) and an admin token. N bots (5) are created and linked by
"scanning" their QR codes with the simulated phone; then, for `--duration` (10 minutes):

* load: C httpx clients (4), each with one keep-alive connection, alternate `GET /health` and
  `GET /api/keepalive` at a steady total rate (200 requests a second; `--load-rate 0`: as fast
  as they go);
* messages: `POST /api/sessions/{id}/messages` at a steady rate (1 a second in all, round-robin
  over the bots: 12 a minute per bot, under the server's default SEND_RATE of 20 a minute),
  and a simulated incoming message every few seconds (5 s, round-robin; every other one per
  bot is `!ping`, which the bot answers with `pong` through the outbox);
* keep-alive: KEEPALIVE_URL is the server's own http://127.0.0.1:PORT/health and
  KEEP_ALIVE_INTERVAL is short (2 s; any duration above zero is allowed, KEEP_ALIVE_TIMEOUT
  is then fitted to half of it), so the keep-alive really pings, hundreds of times.

Every `--sample-every` seconds (duration / 20, at most 30 s) it reads, with psutil: the
server process's RSS, PSS and anonymous memory; the PSS and anonymous memory of its other
children apart from the browsers (Playwright's Node driver); and the PSS and anonymous
memory of each bot's browser process tree (found with `find_browser_process`; PSS by
`tree_memory_bytes`, as the memory watchdog measures it: shared pages are split across the
processes that map them, so the trees add up). "Anonymous" is the PSS of the pages a process
allocated itself (heap, V8 heap, shared memory between a browser and its renderers:
smaps_rollup's Pss_Anon + Pss_Shmem + SwapPss), mapped files (code, libraries) excluded.
Also the server's open files and threads, CPU, request rate and latency, and the outbox
counts. After the duration the load stops, the outbox is given `--drain-timeout` to empty,
and every accepted message must be `sent` (checked one by one through the API, and counted
on the simulator's side); `/api/keepalive` gives the keep-alive success rate; the bots must
still be CONNECTED with no state change since they were linked.

Verdict, against the goal "memory flat after warm-up, zero errors": for the server, the
driver and the browsers (all bots together), the growth of the anonymous memory (what a leak
grows; PSS and USS also move when other processes on the machine map the same files: other
Python processes of the same virtualenv, other Chromiums, so they are shown, not judged)
after the warm-up (`--warmup`, duration / 5, at most 2 minutes), from the average of the
samples in the first third of the rest of the run to the average of those in its last third
(averages: Python's, V8's and Node's heaps grow and shrink with their collections), must be
at most 5 % (or 5 MB, whichever is larger: a small process may move by a few MB); no request
may fail (non-2xx, or a transport error, on any route); every ping must succeed; no accepted
message may be lost or dead; every bot must stay connected.

`--speed 10` (the 10x mode): every rate ten times the soak's (load, messages, incoming
messages, keep-alive pings; SEND_RATE too, so the bots keep up), so the bounded in-memory
windows (the keep-alive's 10,000 pings, the simulator's 10,000 sent messages) fill within
minutes; the warm-up then lasts, by default, until both are seen full in the counts the server
reports (pings done, messages sent), at least the time the nominal rates need, and the run is
lengthened so that the part after it keeps its planned length; and the verdict judges
the slope (MB an hour, least squares over the samples after the warm-up) of the server's and
the driver's anonymous memory: goal under SLOPE_GOAL_MB_PER_H (1 MB an hour, under 5 % of a
512 MB budget in a week). The slope is judged as measured at ten times the load: a growth per
request or per message would be a tenth of it at the soak's load, a growth per hour the same.

Ctrl-C once stops the load early and still reports (the verdict says the run was cut short);
twice aborts. Either way, and on errors, the server is stopped (SIGTERM, which closes its
browsers) and any process still naming the temporary directory is killed.

    .venv/bin/python bench/soak.py [--duration 10m] [--bots 5] [--clients 4] [--load-rate 200]
        [--message-rate 1] [--incoming-every 5s] [--keepalive-interval 2s] [--sample-every S]
        [--warmup S] [--chromium PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import _common as common  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402

from bot.engines.simulator import KEEP_SENT_IN_MEMORY  # noqa: E402
from bot.engines.whatsapp.browser import (  # noqa: E402
    find_browser_process,
    find_chromium,
    tree_memory_bytes,
)
from config import parse_duration  # noqa: E402
from services.procmem import anonymous, smaps_rollup  # noqa: E402

ADMIN_TOKEN = "bench-soak-admin-token-" + "x" * 16  # only ever sent to our loopback server
TO = "+15550001111"
FRIEND = "+15550002222"  # the simulated phone that writes to the bots

GOAL_GROWTH_PCT = 5.0  # memory growth after the warm-up, per component
GOAL_GROWTH_FLOOR_MB = 5.0  # ... or this many MB, whichever is larger
KEEPALIVE_START_DELAY_S = 1.0
GOAL_PINGS_SHARE = 0.9  # pings done / pings expected: the keep-alive really ran at its rate
SLOPE_GOAL_MB_PER_H = 1.0  # --speed: the anonymous memory's slope after the windows fill
SLOPE_JUDGED = ("server", "driver")
# The server's bounded windows (services/keepalive.py history_limit, the simulator's
# KEEP_SENT_IN_MEMORY): in the 10x mode the warm-up lasts until both are full.
PING_WINDOW = 10_000
SENT_WINDOW = KEEP_SENT_IN_MEMORY

START_TIMEOUT_S = 60.0
LINK_TIMEOUT_S = 120.0  # one bot: from its creation to CONNECTED
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 10.0
POLL_S = 0.25
PAGE = 500
KEEP_ERRORS = 10  # the first failed requests kept with their details

MB = 1024 * 1024
LOAD_ROUTES = ("GET /health", "GET /api/keepalive")
LOG_PROBLEM_RE = re.compile(r"Traceback|\b(ERROR|CRITICAL)\b")


def duration_arg(text: str) -> float:
    """`90s`, `10m`, `1.5h`, `500ms` (as wakeful's settings take them) or bare seconds (`90`)."""
    try:
        seconds = float(text)  # bare: seconds here, where the settings read milliseconds
    except ValueError:
        try:
            seconds = parse_duration(text).total_seconds()
        except ValueError:
            seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds or 500ms, 90s, 10m, 1h")
    return seconds


def format_s(seconds: float) -> str:
    """A duration the way the options take it (`90s`, `10m`, `1.5h`)."""
    if seconds >= 3600 and seconds % 360 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 6 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


# --------------------------------------------------------------------------------------------
# Requests and their statistics
# --------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class RouteStats:
    requests: int = 0
    errors: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    window_ms: list[float] = field(default_factory=list)  # since the last sample


@dataclass
class FailedRequest:
    at_s: float  # since the load started
    route: str
    what: str
    idle_s: float | None  # how long its client's connection had been idle (None: first use)


class Stats:
    """Every request the soak makes, by route; a failure is a non-2xx answer or no answer."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteStats] = {}
        self.failures: list[FailedRequest] = []
        self.started = time.perf_counter()

    def route(self, name: str) -> RouteStats:
        found = self.routes.get(name)
        if found is None:
            found = self.routes[name] = RouteStats()
        return found

    def record(
        self,
        name: str,
        ms: float,
        error: str | None,
        detail: str = "",
        idle_s: float | None = None,
    ) -> None:
        stats = self.route(name)
        stats.requests += 1
        if error is None:
            stats.latencies_ms.append(ms)
            stats.window_ms.append(ms)
            return
        stats.errors += 1
        stats.kinds[error] += 1
        if len(self.failures) < KEEP_ERRORS:
            at = time.perf_counter() - self.started
            what = f"{error} {detail}".strip()
            idle = None if idle_s is None else round(idle_s, 2)
            self.failures.append(FailedRequest(round(at, 1), name, what, idle))

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.routes.values())

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.routes.values())

    def take_window(self, names: tuple[str, ...]) -> list[float]:
        """The latencies of `names` since the last call (for the per-sample figures)."""
        taken: list[float] = []
        for name in names:
            stats = self.route(name)
            taken += stats.window_ms
            stats.window_ms = []
        return taken


# When each client (one connection each) last had an answer: a failure's idle time tells a
# server-side keep-alive timeout (uvicorn's default: 5 s) racing the client's reuse.
LAST_ANSWER: dict[int, float] = {}


async def call(
    client: httpx.AsyncClient,
    stats: Stats,
    route: str,
    method: str,
    url: str,
    **kwargs: Any,
) -> httpx.Response | None:
    """One request, recorded under `route`; None when it failed (recorded as an error)."""
    start = time.perf_counter()
    previous = LAST_ANSWER.get(id(client))
    idle = None if previous is None else start - previous
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        stats.record(route, 0.0, type(exc).__name__, str(exc)[:200], idle)
        LAST_ANSWER.pop(id(client), None)
        return None
    LAST_ANSWER[id(client)] = time.perf_counter()
    ms = (time.perf_counter() - start) * 1000
    if not 200 <= response.status_code < 300:
        stats.record(route, ms, f"HTTP {response.status_code}", response.text[:200])
        return None
    stats.record(route, ms, None)
    return response


def new_client(port: int, *, auth: bool) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if auth else {}
    return httpx.AsyncClient(
        base_url=f"http://{common.LOOPBACK}:{port}",
        headers=headers,
        timeout=REQUEST_TIMEOUT_S,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


def checked(response: httpx.Response, *expected: int) -> dict[str, Any]:
    """The JSON of an answer the setup and the final checks cannot do without."""
    if response.status_code not in expected:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text[:500]}"
        )
    document: dict[str, Any] = response.json()
    return document


# --------------------------------------------------------------------------------------------
# Setup: bots created and linked through the simulator
# --------------------------------------------------------------------------------------------


async def wait_state(api: httpx.AsyncClient, bot: str, wanted: str, deadline: float) -> None:
    seen = "?"
    while time.monotonic() < deadline:
        seen = checked(await api.get(f"/api/sessions/{bot}"), 200)["state"]
        if seen == wanted:
            return
        await asyncio.sleep(POLL_S)
    raise RuntimeError(f"bot {bot} did not reach {wanted} within {LINK_TIMEOUT_S:.0f}s: {seen}")


async def link_bots(api: httpx.AsyncClient, count: int) -> list[str]:
    """Create `count` bots (started at once, as the server starts them: a few at a time) and
    scan each one's QR code with the simulated phone as soon as it shows one."""
    bots = []
    for i in range(count):
        created = checked(await api.post("/api/sessions", json={"name": f"soak-{i + 1}"}), 201)
        bots.append(str(created["id"]))
    deadline = time.monotonic() + LINK_TIMEOUT_S

    async def link(bot: str) -> None:
        await wait_state(api, bot, "SCAN_QR", deadline)
        checked(await api.post(f"/api/sessions/{bot}/simulator", json={"action": "scan"}), 200)
        await wait_state(api, bot, "CONNECTED", deadline)

    await asyncio.gather(*(link(bot) for bot in bots))
    return bots


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


async def paced(period: float, stop: asyncio.Event, step: Callable[[int], Awaitable[None]]) -> None:
    """Call `step(i)` every `period` seconds (back to back when 0) until `stop`. A step that
    ran late does not make the next ones burst: the schedule restarts from now."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    i = 0
    while not stop.is_set():
        await step(i)
        i += 1
        if period <= 0:
            continue
        next_at += period
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -period:
            next_at = loop.time()


async def load_worker(
    port: int, index: int, period: float, stats: Stats, stop: asyncio.Event
) -> None:
    async with new_client(port, auth=False) as client:

        async def step(i: int) -> None:
            route = LOAD_ROUTES[(i + index) % len(LOAD_ROUTES)]
            method, path = route.split(" ", 1)
            await call(client, stats, route, method, path)

        await paced(period, stop, step)


@dataclass
class Traffic:
    """What the soak sent the bots: accepted message ids per bot, incoming messages."""

    accepted: dict[str, list[str]] = field(default_factory=dict)
    incoming: int = 0
    pings: int = 0

    @property
    def accepted_total(self) -> int:
        return sum(len(ids) for ids in self.accepted.values())


async def message_sender(
    port: int, bots: list[str], period: float, traffic: Traffic, stats: Stats, stop: asyncio.Event
) -> None:
    async with new_client(port, auth=True) as client:

        async def step(i: int) -> None:
            bot = bots[i % len(bots)]
            body = {"to": TO, "text": f"soak message #{i + 1}"}
            response = await call(
                client,
                stats,
                "POST /api/sessions/{id}/messages",
                "POST",
                f"/api/sessions/{bot}/messages",
                json=body,
            )
            if response is not None:
                traffic.accepted[bot].append(str(response.json()["id"]))

        await paced(period, stop, step)


async def incoming_sender(
    port: int, bots: list[str], period: float, traffic: Traffic, stats: Stats, stop: asyncio.Event
) -> None:
    """The simulated phone writes to the bots in turn; every other message to a bot is !ping."""
    async with new_client(port, auth=True) as client:

        async def step(i: int) -> None:
            bot = bots[i % len(bots)]
            ping = (i // len(bots)) % 2 == 0
            body = {"action": "message", "from": FRIEND, "body": "!ping" if ping else f"hi #{i}"}
            response = await call(
                client,
                stats,
                "POST /api/sessions/{id}/simulator",
                "POST",
                f"/api/sessions/{bot}/simulator",
                json=body,
            )
            if response is not None:
                traffic.incoming += 1
                traffic.pings += ping

        # The first incoming message one period after the start, not at once.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)
        await paced(period, stop, step)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t_s: float  # since the load started
    warmup: bool
    server_rss_mb: float | None
    server_pss_mb: float | None
    server_anon_mb: float | None  # see anon_bytes
    driver_pss_mb: float | None  # the server's other children: Playwright's Node driver
    driver_anon_mb: float | None
    driver_processes: int
    bots_pss_mb: dict[str, float | None]  # each bot's browser process tree
    bots_anon_mb: dict[str, float | None]
    browser_processes: int
    browsers_pss_mb: float  # all bots
    browsers_anon_mb: float
    total_pss_mb: float | None  # server + driver + browsers
    total_anon_mb: float | None
    server_cpu: float | None  # share of one core since the previous sample
    browsers_cpu: float | None
    fds: int | None
    threads: int | None
    load_requests: int  # /health and /api/keepalive answered since the previous sample
    load_per_s: float
    load_p50_ms: float | None
    load_p99_ms: float | None
    errors: int  # all routes, since the start
    accepted: int  # since the start
    sent: int  # the outbox's count, replies included
    waiting: int  # queued + sending
    pings: int | None
    failed_pings: int | None
    load_average: float


def anon_bytes(processes: list[Any]) -> int | None:
    """PSS of the pages these processes allocated themselves (anonymous memory, shared memory
    and their swapped-out part; /proc/PID/smaps_rollup), mapped files excluded: what a leak
    grows. USS and PSS also count file pages (code, libraries), which become shared or private
    as other processes on the machine map the same files and exit. None: not readable."""
    total = 0
    for proc in processes:
        fields = smaps_rollup(proc.pid)
        if fields is None:
            continue  # it exited
        if "Pss_Anon" not in fields:
            return None  # a kernel older than 5.10
        total += anonymous(fields)
    return total


def _mb(value: int | None) -> float | None:
    return None if value is None else value / MB


class ProcessWatch:
    """Finds the server's processes and reads their memory and CPU (blocking: run it in a
    thread)."""

    def __init__(self, server_pid: int, profiles: dict[str, Path]) -> None:
        self.server = psutil.Process(server_pid)
        self.profiles = profiles
        self.browsers: dict[str, Any] = {}  # bot -> psutil.Process of its browser
        self.browser_pids: dict[str, set[int]] = {bot: set() for bot in profiles}
        self.cpu_seen: dict[int, float] = {}
        self.last_at: float | None = None

    def _browser(self, bot: str) -> Any:
        proc = self.browsers.get(bot)
        with contextlib.suppress(psutil.Error):
            if proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        proc = find_browser_process(self.profiles[bot])
        self.browsers[bot] = proc
        if proc is not None:
            self.browser_pids[bot].add(proc.pid)
        return proc

    def _cpu_delta(self, proc: Any) -> float:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            return 0.0
        total = float(times.user + times.system)
        before = self.cpu_seen.get(proc.pid)
        self.cpu_seen[proc.pid] = total
        return 0.0 if before is None else max(0.0, total - before)

    def read(self) -> dict[str, Any]:
        now = time.perf_counter()
        elapsed = None if self.last_at is None else now - self.last_at
        self.last_at = now
        figures: dict[str, Any] = {}
        try:
            info = self.server.memory_full_info()
            figures.update(
                server_rss_mb=info.rss / MB,
                server_pss_mb=info.pss / MB,
                server_anon_mb=_mb(anon_bytes([self.server])),
                fds=self.server.num_fds(),
                threads=self.server.num_threads(),
            )
            descendants = self.server.children(recursive=True)
        except psutil.Error:
            figures.update(
                server_rss_mb=None, server_pss_mb=None, server_anon_mb=None, fds=None, threads=None
            )
            descendants = []
        server_cpu = self._cpu_delta(self.server)

        in_trees: set[int] = set()
        pss: dict[str, float | None] = {}
        anon: dict[str, float | None] = {}
        browsers_cpu = 0.0
        processes = 0
        for bot in self.profiles:
            pss[bot] = anon[bot] = None
            proc = self._browser(bot)
            if proc is None:
                continue
            try:
                tree = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                continue
            in_trees.update(p.pid for p in tree)
            processes += len(tree)
            browsers_cpu += sum(self._cpu_delta(p) for p in tree)
            pss[bot] = tree_memory_bytes(proc) / MB  # as the memory watchdog measures it
            anon[bot] = _mb(anon_bytes(tree))
        others = [p for p in descendants if p.pid not in in_trees]
        driver_pss = 0
        for proc in others:
            with contextlib.suppress(psutil.Error):
                driver_pss += proc.memory_full_info().pss
        figures.update(
            driver_pss_mb=driver_pss / MB if others else None,
            driver_anon_mb=_mb(anon_bytes(others)) if others else None,
            driver_processes=len(others),
            bots_pss_mb=pss,
            bots_anon_mb=anon,
            browser_processes=processes,
            browsers_pss_mb=sum(v for v in pss.values() if v is not None),
            browsers_anon_mb=sum(v for v in anon.values() if v is not None),
            server_cpu=None if not elapsed else server_cpu / elapsed,
            browsers_cpu=None if not elapsed else browsers_cpu / elapsed,
        )
        for kind in ("pss", "anon"):
            server = figures[f"server_{kind}_mb"]
            figures[f"total_{kind}_mb"] = (
                None
                if server is None
                else server + (figures[f"driver_{kind}_mb"] or 0.0) + figures[f"browsers_{kind}_mb"]
            )
        return figures


async def outbox_counts(client: httpx.AsyncClient, bots: list[str], stats: Stats) -> Counter[str]:
    total: Counter[str] = Counter()
    for bot in bots:
        response = await call(
            client,
            stats,
            "GET /api/sessions/{id}/messages",
            "GET",
            f"/api/sessions/{bot}/messages",
            params={"limit": 1},
        )
        if response is not None:
            total.update(response.json()["counts"])
    return total


async def keepalive_document(client: httpx.AsyncClient, stats: Stats) -> dict[str, Any] | None:
    response = await call(client, stats, "GET /api/keepalive", "GET", "/api/keepalive")
    if response is None:
        return None
    document: dict[str, Any] = response.json()
    return document


# --------------------------------------------------------------------------------------------
# The soak
# --------------------------------------------------------------------------------------------


class Interrupts:
    """SIGINT/SIGTERM: the first stops the soak early (it still reports), the next aborts."""

    def __init__(self) -> None:
        self.count = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        loop, stop = self.loop, self.stop
        if self.count == 1 and loop is not None and stop is not None and not loop.is_closed():
            print("\nstopping the soak early (Ctrl-C again to abort)", file=sys.stderr)
            loop.call_soon_threadsafe(stop.set)
            return
        raise KeyboardInterrupt


INTERRUPTS = Interrupts()


@dataclass
class BotOutcome:
    bot: str
    state: str
    changes_after_link: list[str]
    browser_pids: int  # browser processes seen over the run (1: never restarted)
    accepted: int
    sent: int  # of the accepted
    not_sent: dict[str, int]  # status -> count, of the accepted
    replies_sent: int  # messages the bot sent that the soak did not post (its !ping answers)
    simulator_received: int


@dataclass
class SoakResult:
    bots: list[str]
    link_s: float
    planned_s: float
    ran_s: float
    completed: bool
    samples: list[Sample]
    stats: Stats
    traffic: Traffic
    drain_s: float | None  # None: not drained within the timeout
    outcomes: list[BotOutcome]
    send_latency_s: dict[str, float | None]
    keepalive: dict[str, Any]
    expected_pings: float


async def soak(server: common.Server, args: argparse.Namespace, data_dir: Path) -> SoakResult:
    loop = asyncio.get_running_loop()
    stats = Stats()
    traffic = Traffic()
    stop = asyncio.Event()
    async with new_client(server.port, auth=True) as api:
        started = time.perf_counter()
        bots = await link_bots(api, args.bots)
        link_s = time.perf_counter() - started
        linked_at = datetime.now().astimezone()
        print(f"{len(bots)} bots linked in {link_s:.1f}s: {', '.join(bots)}", flush=True)
        traffic.accepted = {bot: [] for bot in bots}
        profiles = {bot: data_dir / "profiles" / bot for bot in bots}  # data_dir is resolved
        watch = ProcessWatch(server.proc.pid, profiles)
        await asyncio.to_thread(watch.read)  # CPU counters start here

        INTERRUPTS.loop, INTERRUPTS.stop = loop, stop
        stats.started = time.perf_counter()
        period = args.clients / args.load_rate if args.load_rate > 0 else 0.0
        tasks = [
            asyncio.create_task(load_worker(server.port, i, period, stats, stop))
            for i in range(args.clients)
        ]
        tasks.append(
            asyncio.create_task(
                message_sender(server.port, bots, 1 / args.message_rate, traffic, stats, stop)
            )
        )
        if args.incoming_every > 0:
            tasks.append(
                asyncio.create_task(
                    incoming_sender(server.port, bots, args.incoming_every, traffic, stats, stop)
                )
            )
        samples: list[Sample] = []
        print_progress_header()
        t0 = loop.time()
        next_at = t0
        end_at = t0 + args.duration
        try:
            while True:
                t = loop.time() - t0
                sample = await take_sample(t, args.warmup, watch, api, bots, traffic, stats)
                if args.until_windows_full and not windows_seen_full(samples, sample):
                    # A loaded machine falls short of the nominal rates: the windows fill later
                    # than planned, and the judged part keeps its planned length after them.
                    sample.warmup = True
                    end_at = max(end_at, loop.time() + args.duration - args.warmup)
                samples.append(sample)
                print_progress(samples[-1])
                if next_at >= end_at or stop.is_set():
                    break
                next_at = min(next_at + args.sample_every, end_at)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
                if stop.is_set():  # cut short: one last sample, now
                    next_at = end_at
        finally:
            stop.set()
            INTERRUPTS.loop = INTERRUPTS.stop = None
            ran_s = loop.time() - t0
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if task.exception() is not None:
                raise RuntimeError(f"a load task failed: {task.exception()!r}")
        completed = ran_s >= args.duration - 0.5
        print(
            f"load stopped after {ran_s:.0f}s; waiting for the outbox to drain "
            f"(at most {args.drain_timeout:.0f}s)",
            flush=True,
        )

        drain_s = await wait_drained(api, bots, stats, args.drain_timeout)
        outcomes, latency = await check_messages(api, bots, traffic, watch, linked_at)
        keepalive = checked(await api.get("/api/keepalive"), 200)
    return SoakResult(
        bots=bots,
        link_s=link_s,
        planned_s=args.duration,
        ran_s=ran_s,
        completed=completed,
        samples=samples,
        stats=stats,
        traffic=traffic,
        drain_s=drain_s,
        outcomes=outcomes,
        send_latency_s=latency,
        keepalive=keepalive,
        # Fixed rate from the first ping (KEEP_ALIVE_START_DELAY after its start) to now.
        expected_pings=max(0.0, keepalive["uptime"] / 1000 - KEEPALIVE_START_DELAY_S)
        / args.keepalive_interval
        + 1,
    )


def windows_seen_full(samples: list[Sample], sample: Sample) -> bool:
    """Whether the keep-alive's ping window and the simulator's sent window are full: the
    counts read from the server (pings done, messages sent with the bots' replies), once
    both have reached their window and ever since."""
    if samples and samples[-1].warmup is False:
        return True
    return (sample.pings or 0) >= PING_WINDOW and sample.sent >= SENT_WINDOW


async def take_sample(
    t: float,
    warmup: float,
    watch: ProcessWatch,
    api: httpx.AsyncClient,
    bots: list[str],
    traffic: Traffic,
    stats: Stats,
) -> Sample:
    window_start = watch.last_at
    figures = await asyncio.to_thread(watch.read)
    window = stats.take_window(LOAD_ROUTES)
    elapsed = (watch.last_at or 0.0) - (window_start or 0.0)
    counts = await outbox_counts(api, bots, stats)
    keepalive = await keepalive_document(api, stats)
    return Sample(
        t_s=round(t, 1),
        warmup=t < warmup,
        **figures,
        load_requests=len(window),
        load_per_s=len(window) / elapsed if elapsed > 0 else 0.0,
        load_p50_ms=percentile(window, 0.50),
        load_p99_ms=percentile(window, 0.99),
        errors=stats.errors,
        accepted=traffic.accepted_total,
        sent=counts["sent"],
        waiting=counts["queued"] + counts["sending"],
        pings=None if keepalive is None else int(keepalive["pingCount"]),
        failed_pings=None if keepalive is None else int(keepalive["failedPings"]),
        load_average=os.getloadavg()[0],
    )


async def wait_drained(
    api: httpx.AsyncClient, bots: list[str], stats: Stats, limit_s: float
) -> float | None:
    start = time.perf_counter()
    while True:
        counts = await outbox_counts(api, bots, stats)
        if counts["queued"] + counts["sending"] == 0:
            return time.perf_counter() - start
        if time.perf_counter() - start > limit_s:
            return None
        await asyncio.sleep(POLL_S)


async def all_messages(api: httpx.AsyncClient, bot: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = checked(
            await api.get(
                f"/api/sessions/{bot}/messages", params={"limit": PAGE, "offset": offset}
            ),
            200,
        )
        found += page["messages"]
        offset += PAGE
        if offset >= page["total"]:
            return found


async def check_messages(
    api: httpx.AsyncClient,
    bots: list[str],
    traffic: Traffic,
    watch: ProcessWatch,
    linked_at: datetime,
) -> tuple[list[BotOutcome], dict[str, float | None]]:
    """Every accepted message's final status, what the simulated WhatsApp received, and each
    bot's state and state changes since it was linked."""
    outcomes = []
    latencies: list[float] = []
    for bot in bots:
        stored = {m["id"]: m for m in await all_messages(api, bot)}
        accepted = traffic.accepted[bot]
        statuses = Counter(stored[i]["status"] if i in stored else "missing" for i in accepted)
        for i in accepted:
            m = stored.get(i)
            if m is not None and m["sentAt"]:
                sent_at = datetime.fromisoformat(m["sentAt"])
                latencies.append((sent_at - datetime.fromisoformat(m["createdAt"])).total_seconds())
        mine = set(accepted)
        replies = sum(1 for i, m in stored.items() if i not in mine and m["status"] == "sent")
        received = checked(await api.get(f"/api/sessions/{bot}/simulator/sent"), 200)["messages"]
        session = checked(await api.get(f"/api/sessions/{bot}"), 200)
        changes = [
            f"{h['from']}→{h['to']} ({h['reason']})"
            for h in session.get("history", [])
            if datetime.fromisoformat(h["at"]) > linked_at
        ]
        outcomes.append(
            BotOutcome(
                bot=bot,
                state=session["state"],
                changes_after_link=changes,
                browser_pids=len(watch.browser_pids[bot]),
                accepted=len(accepted),
                sent=statuses["sent"],
                not_sent={k: v for k, v in statuses.items() if k != "sent"},
                replies_sent=replies,
                simulator_received=len(received),
            )
        )
    latency = {
        "p50": percentile(latencies, 0.50),
        "p95": percentile(latencies, 0.95),
        "max": max(latencies) if latencies else None,
    }
    return outcomes, latency


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _f(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_progress_header() -> None:
    print(
        f"{'t s':>6} {'server anon':>11} {'driver anon':>11} {'browsers anon':>13} {'req/s':>6} "
        f"{'p99 ms':>7} {'errors':>6} {'accepted':>8} {'sent':>5} {'pings ok/failed':>15}",
        flush=True,
    )


def print_progress(s: Sample) -> None:
    pings = "n/a"
    if s.pings is not None and s.failed_pings is not None:
        pings = f"{s.pings - s.failed_pings}/{s.failed_pings}"
    print(
        f"{s.t_s:>6.0f} {_f(s.server_anon_mb):>11} {_f(s.driver_anon_mb):>11} "
        f"{s.browsers_anon_mb:>13.1f} {s.load_per_s:>6.0f} {_f(s.load_p99_ms, '.2f'):>7} "
        f"{s.errors:>6} {s.accepted:>8} {s.sent:>5} {pings:>15}",
        flush=True,
    )


def print_memory_table(result: SoakResult) -> None:
    names = [f"bot{i + 1}" for i in range(len(result.bots))]
    first = (
        f"{'':>6}  {'server':^23} {'driver':^15} {'browsers':^15} {'total':^15}  "
        f"{'PSS per bot':^{7 * len(names) - 1}}"
    )
    second = (
        f"{'t s':>6}  {'RSS':>7} {'PSS':>7} {'anon':>7} {'PSS':>7} {'anon':>7} {'PSS':>7} "
        f"{'anon':>7} {'PSS':>7} {'anon':>7}  " + " ".join(f"{n:>6}" for n in names)
    )
    print(
        "memory, MB (PSS: shared pages split among the processes mapping them; anon: the PSS of "
        "the pages\n they allocated, mapped files excluded; driver: Playwright's Node process; "
        "browsers: every bot's\n process tree):"
    )
    print(first)
    print(second)
    print("-" * len(second))
    for s in result.samples:
        bots = " ".join(f"{_f(s.bots_pss_mb.get(b)):>6}" for b in result.bots)
        mark = "w" if s.warmup else " "
        print(
            f"{s.t_s:>5.0f}{mark}  {_f(s.server_rss_mb):>7} {_f(s.server_pss_mb):>7} "
            f"{_f(s.server_anon_mb):>7} {_f(s.driver_pss_mb):>7} {_f(s.driver_anon_mb):>7} "
            f"{s.browsers_pss_mb:>7.1f} {s.browsers_anon_mb:>7.1f} {_f(s.total_pss_mb):>7} "
            f"{_f(s.total_anon_mb):>7}  {bots}"
        )
    print("(w: warm-up, not judged)")


def print_activity_table(result: SoakResult) -> None:
    header = (
        f"{'t s':>6}  {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'accepted':>8} "
        f"{'sent':>5} {'waiting':>7} {'pings':>5} {'failed':>6} {'srv CPU':>7} {'brw CPU':>7} "
        f"{'procs':>5} {'fds':>4} {'thr':>4} {'load':>5}"
    )
    print(
        "activity (req/s, p50, p99: /health + /api/keepalive since the previous sample; the "
        "rest since the start;\n sent: the outbox's count, the bots' answers to !ping "
        "included; CPU: share of one core; procs: server\n + driver + browsers; fds, thr: the "
        "server's open files and threads; load: the machine's 1-minute average):"
    )
    print(header)
    print("-" * len(header))
    for s in result.samples:
        mark = "w" if s.warmup else " "
        print(
            f"{s.t_s:>5.0f}{mark}  {s.load_per_s:>6.0f} {_f(s.load_p50_ms, '.2f'):>7} "
            f"{_f(s.load_p99_ms, '.2f'):>7} {s.errors:>6} {s.accepted:>8} {s.sent:>5} "
            f"{s.waiting:>7} {_f(s.pings, 'd'):>5} {_f(s.failed_pings, 'd'):>6} "
            f"{_f(s.server_cpu, '.0%'):>7} {_f(s.browsers_cpu, '.0%'):>7} "
            f"{s.browser_processes + s.driver_processes + 1:>5} {_f(s.fds, 'd'):>4} "
            f"{_f(s.threads, 'd'):>4} {s.load_average:>5.1f}"
        )


def print_routes(stats: Stats) -> None:
    header = (
        f"{'route':<36} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, r in sorted(stats.routes.items()):
        print(
            f"{name:<36} {r.requests:>9,} {r.errors:>7} "
            f"{_f(percentile(r.latencies_ms, 0.5), '.2f'):>8} "
            f"{_f(percentile(r.latencies_ms, 0.99), '.2f'):>8} "
            f"{_f(max(r.latencies_ms) if r.latencies_ms else None, '.1f'):>8}"
        )
        for kind, n in r.kinds.most_common():
            print(f"  {kind}: {n}")
    raced = False
    for failure in stats.failures:
        idle = "" if failure.idle_s is None else f" (connection idle {failure.idle_s:.2f}s before)"
        print(f"  at {failure.at_s:.1f}s {failure.route}: {failure.what}{idle}")
        transport = not failure.what.startswith("HTTP ")
        raced |= transport and failure.idle_s is not None and 4.0 <= failure.idle_s <= 6.0
    if raced:
        print(
            "  note: a transport error on a connection idle for about 5 s is uvicorn's keep-alive "
            "timeout\n  (timeout_keep_alive, 5 s by default) closing the connection as the client "
            "reuses it"
        )


JUDGED = ("server", "driver", "browsers")  # their anonymous memory's growth is the verdict


@dataclass
class Growth:
    component: str
    measure: str  # anon, PSS or RSS
    first_third_mb: float | None  # average of the samples after the warm-up, first third
    last_third_mb: float | None  # ... and last third
    growth_mb: float | None
    growth_pct: float | None
    slope_mb_per_h: float | None  # least squares over the samples after the warm-up
    allowed_mb: float | None
    flat: bool | None


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 3600


def growth(
    component: str, measure: str, samples: list[Sample], values: list[float | None]
) -> Growth:
    """After the warm-up: the average of the first third of the samples against that of the
    last third (by time)."""
    after = [
        (s.t_s, v) for s, v in zip(samples, values, strict=True) if not s.warmup and v is not None
    ]
    if len(after) < 2:
        return Growth(component, measure, None, None, None, None, None, None, None)
    start, end = after[0][0], after[-1][0]
    third = (end - start) / 3
    first = statistics.fmean(v for t, v in after if t <= start + third)
    last = statistics.fmean(v for t, v in after if t >= end - third)
    delta = last - first
    allowed = max(first * GOAL_GROWTH_PCT / 100, GOAL_GROWTH_FLOOR_MB)
    return Growth(
        component=component,
        measure=measure,
        first_third_mb=first,
        last_third_mb=last,
        growth_mb=delta,
        growth_pct=delta / first * 100 if first else None,
        slope_mb_per_h=slope_per_hour(after),
        allowed_mb=allowed,
        flat=delta <= allowed,
    )


def memory_growth(result: SoakResult) -> list[Growth]:
    s = result.samples
    found = []
    for measure in ("anon", "pss"):
        for part in ("server", "driver", "browsers", "total"):
            values = [getattr(x, f"{part}_{measure}_mb") for x in s]
            found.append(growth(part, "anon" if measure == "anon" else "PSS", s, values))
    found.append(growth("server", "RSS", s, [x.server_rss_mb for x in s]))
    for bot_no, bot in enumerate(result.bots, 1):
        found.append(growth(f"bot{bot_no}", "anon", s, [x.bots_anon_mb.get(bot) for x in s]))
    return found


def judged(growths: list[Growth]) -> list[Growth]:
    return [g for g in growths if g.measure == "anon" and g.component in JUDGED]


def print_growth(growths: list[Growth]) -> None:
    header = (
        f"{'':<9} {'':<4} {'first third':>11} {'last third':>10} {'growth MB':>9} {'growth':>7} "
        f"{'MB/hour':>8} {'flat?':>6}"
    )
    print("memory after the warm-up (MB, averages of the samples in the first and last thirds):")
    print(header)
    print("-" * len(header))
    verdicts = {id(g) for g in judged(growths)}
    for g in growths:
        flat = "n/a" if g.flat is None else ("yes" if g.flat else "NO")
        if id(g) not in verdicts:
            flat = f"({flat})"
        print(
            f"{g.component:<9} {g.measure:<4} {_f(g.first_third_mb):>11} {_f(g.last_third_mb):>10} "
            f"{_f(g.growth_mb, '+.1f'):>9} {_f(g.growth_pct, '+.1f') + '%':>7} "
            f"{_f(g.slope_mb_per_h, '+.0f'):>8} {flat:>6}"
        )
    print(
        f"(flat: growth at most {GOAL_GROWTH_PCT:g}% of the first third, or "
        f"{GOAL_GROWTH_FLOOR_MB:g} MB if larger. The verdict is on the\n anonymous memory of "
        "the server, the driver and the browsers together; in brackets: shown, not\n judged "
        "(PSS moves when other processes on the machine map the same files). MB/hour: the slope\n"
        " over the samples after the warm-up; a short run's slope is a weak forecast)"
    )


def evaluate(result: SoakResult, growths: list[Growth]) -> dict[str, Any]:
    verdicts = judged(growths)
    flat = [g.flat for g in verdicts]
    ka = result.keepalive
    pings, failed = int(ka["pingCount"]), int(ka["failedPings"])
    accepted = sum(o.accepted for o in result.outcomes)
    sent = sum(o.sent for o in result.outcomes)
    dead = sum(o.not_sent.get("dead", 0) for o in result.outcomes)
    sent_total = sum(o.sent + o.replies_sent for o in result.outcomes)
    received = sum(o.simulator_received for o in result.outcomes)
    changes = sum(len(o.changes_after_link) for o in result.outcomes)
    connected = sum(o.state == "CONNECTED" for o in result.outcomes)
    return {
        "memory_flat": {
            "goal": f"anonymous memory growth after the warm-up ≤ {GOAL_GROWTH_PCT:g}% "
            f"(or ≤ {GOAL_GROWTH_FLOOR_MB:g} MB) for the server, the driver and the browsers",
            "growth_mb": {g.component: g.growth_mb for g in verdicts},
            "growth_pct": {g.component: g.growth_pct for g in verdicts},
            "met": None if any(f is None for f in flat) else all(flat),
        },
        "zero_errors": {
            "goal": "no failed request (non-2xx or transport error) on any route",
            "requests": result.stats.requests,
            "errors": result.stats.errors,
            "by_route": {k: r.errors for k, r in result.stats.routes.items() if r.errors},
            "met": result.stats.errors == 0,
        },
        "keepalive": {
            "goal": f"every ping succeeds, and at least {GOAL_PINGS_SHARE:.0%} of the expected "
            "pings were made",
            "pings": pings,
            "failed": failed,
            "success_rate_pct": (pings - failed) / pings * 100 if pings else None,
            "expected_pings": round(result.expected_pings),
            "met": pings > 0
            and failed == 0
            and pings >= GOAL_PINGS_SHARE * int(result.expected_pings),
        },
        "messages": {
            "goal": "every accepted message sent (none lost, none dead), each received once "
            f"(of the last {SENT_WINDOW:,} when more were sent: all the simulator keeps)",
            "accepted": accepted,
            "sent": sent,
            "lost": accepted - sent,
            "dead": dead,
            "sent_including_replies": sent_total,
            "simulator_received": received,
            # The simulator keeps the last SENT_WINDOW sends of all its bots: past that, a
            # longer run is judged on what it still holds (a 10x hour sends ~30,000).
            "met": accepted > 0 and sent == accepted and received == min(sent_total, SENT_WINDOW),
        },
        "bots_connected": {
            "goal": "every bot still CONNECTED, no state change after linking",
            "connected": connected,
            "bots": len(result.outcomes),
            "state_changes": changes,
            "met": connected == len(result.outcomes) and changes == 0,
        },
    }


def verdict(met: bool | None) -> str:
    return "not judged" if met is None else ("met" if met else "NOT met")


def headlines(
    result: SoakResult, goals: dict[str, Any], growths: list[Growth]
) -> list[dict[str, Any]]:
    """A few figures for bench/run_all.py's summary table."""
    last = result.samples[-1]
    verdicts = judged(growths)
    growth_mb = " / ".join(_f(g.growth_mb, "+.1f") for g in verdicts)
    growth_pct = " / ".join(_f(g.growth_pct, "+.1f") for g in verdicts)

    memory = goals["memory_flat"]
    errors = goals["zero_errors"]
    keepalive = goals["keepalive"]
    messages = goals["messages"]
    bots = goals["bots_connected"]
    per_bot = last.browsers_pss_mb / len(result.bots) if result.bots else None
    cut = "" if result.completed else f", cut short at {format_s(round(result.ran_s))}"
    return [
        {
            "figure": f"anon. memory growth after warm-up, server / driver / browsers "
            f"({format_s(result.planned_s)} soak{cut})",
            "value": f"{growth_mb} MB ({growth_pct} %)",
            "goal": f"≤ {GOAL_GROWTH_PCT:g}% (or {GOAL_GROWTH_FLOOR_MB:g} MB) each",
            "met": memory["met"],
        },
        {
            "figure": "memory at the end (PSS): server / driver / per bot",
            "value": f"{_f(last.server_pss_mb, '.0f')} / {_f(last.driver_pss_mb, '.0f')} / "
            f"{_f(per_bot, '.0f')} MB",
            "goal": None,
            "met": None,
        },
        {
            "figure": "failed requests",
            "value": f"{errors['errors']} of {errors['requests']:,}",
            "goal": "0",
            "met": errors["met"],
        },
        {
            "figure": "keep-alive pings succeeded",
            "value": f"{_f(keepalive['success_rate_pct'])}% of {keepalive['pings']}",
            "goal": "100%",
            "met": keepalive["met"],
        },
        {
            "figure": "messages sent of accepted",
            "value": f"{messages['sent']} of {messages['accepted']} ({messages['dead']} dead)",
            "goal": "all",
            "met": messages["met"],
        },
        {
            "figure": "bots connected throughout",
            "value": f"{bots['connected']} of {bots['bots']}, {bots['state_changes']} changes",
            "goal": "all, 0 changes",
            "met": bots["met"],
        },
        *slope_headlines(goals),
    ]


def slope_headlines(goals: dict[str, Any]) -> list[dict[str, Any]]:
    """The --speed mode's verdict, one row a judged process: the slope, by how much it is
    missed, and what it would be at 1x if the growth follows the events."""
    slopes = goals.get("memory_slope")
    if slopes is None:
        return []
    speed = float(slopes["speed"])
    found = []
    for name, slope in slopes["mb_per_h"].items():
        met = slope is not None and slope < SLOPE_GOAL_MB_PER_H
        value = f"{_f(slope, '+.2f')} MB/hour"
        if slope is not None:
            if not met:
                value += f" (missed by {slope - SLOPE_GOAL_MB_PER_H:.2f})"
            value += f"; ≈ {slope / speed:+.2f} at 1x if per event"
        found.append(
            {
                "figure": f"{name} anon. memory slope after the windows filled, at {speed:g}x",
                "value": value,
                "goal": f"< {SLOPE_GOAL_MB_PER_H:g} MB/hour",
                "met": met,
            }
        )
    return found


def report(result: SoakResult, args: argparse.Namespace) -> tuple[dict[str, Any], list[Growth]]:
    print()
    print_memory_table(result)
    print()
    print_activity_table(result)
    print()
    print_routes(result.stats)
    print()
    growths = memory_growth(result)
    print_growth(growths)
    goals = evaluate(result, growths)
    if args.speed > 1:
        slopes = {
            g.component: g.slope_mb_per_h
            for g in growths
            if g.measure == "anon" and g.component in SLOPE_JUDGED
        }
        goals["memory_slope"] = {
            "goal": f"anonymous memory slope after the windows fill < {SLOPE_GOAL_MB_PER_H:g} "
            f"MB/hour for the server and the driver, at {args.speed:g}x the soak's load",
            "speed": args.speed,
            "mb_per_h": slopes,
            "met": all(v is not None and v < SLOPE_GOAL_MB_PER_H for v in slopes.values()),
        }

    print()
    m = goals["messages"]
    drained = "n/a" if result.drain_s is None else f"{result.drain_s:.1f}s"
    print(
        f"messages: {m['accepted']} accepted, {m['sent']} sent, {m['lost']} not sent "
        f"({m['dead']} dead); {result.traffic.incoming} incoming "
        f"({result.traffic.pings} !ping), {m['sent_including_replies'] - m['sent']} replies "
        f"sent; the simulator received {m['simulator_received']} (expected "
        f"{m['sent_including_replies']}); drained {drained} after the load stopped"
    )
    lat = result.send_latency_s
    print(
        f"accepted → sent: p50 {_f(lat['p50'])}s, p95 {_f(lat['p95'])}s, max {_f(lat['max'])}s "
        f"(SEND_RATE {args.send_rate or 'default 20'} a minute per bot, random gaps)"
    )
    for o in result.outcomes:
        notes = []
        if o.not_sent:
            notes.append(f"not sent {o.not_sent}")
        if o.changes_after_link:
            notes.append("changes: " + "; ".join(o.changes_after_link[:5]))
        if o.browser_pids > 1:
            notes.append(f"{o.browser_pids} browser processes over the run (restarted)")
        print(
            f"  {o.bot}: {o.state}, {o.sent}/{o.accepted} sent + {o.replies_sent} replies, "
            f"simulator {o.simulator_received}" + (f"; {'; '.join(notes)}" if notes else "")
        )
    k = goals["keepalive"]
    ka = result.keepalive
    latency = ka.get("latency") or {}
    print(
        f"keep-alive: {k['pings']} pings ({k['expected_pings']} expected at "
        f"{format_s(args.keepalive_interval)}), {k['failed']} failed: "
        f"{_f(k['success_rate_pct'])}% success (/api/keepalive says {ka.get('successRate')}%); "
        f"ping latency p50 {_f(latency.get('p50Ms'))} ms, p95 {_f(latency.get('p95Ms'))} ms"
    )

    print()
    if not result.completed:
        print(
            f"note: cut short after {result.ran_s:.0f}s of {result.planned_s:.0f}s; the "
            "memory verdict covers what ran"
        )
    memory = goals["memory_flat"]
    grown = ", ".join(
        f"{name} {_f(memory['growth_mb'][name], '+.1f')} MB "
        f"({_f(memory['growth_pct'][name], '+.1f')}%)"
        for name in ("server", "driver", "browsers")
    )
    print(f"memory (anonymous) flat after warm-up: {grown}: {verdict(memory['met'])}")
    e = goals["zero_errors"]
    print(f"zero errors: {e['errors']} of {e['requests']:,} requests failed: {verdict(e['met'])}")
    print(f"keep-alive: {_f(k['success_rate_pct'])}% of {k['pings']} pings: {verdict(k['met'])}")
    print(f"messages: {m['sent']} of {m['accepted']} sent: {verdict(m['met'])}")
    b = goals["bots_connected"]
    print(
        f"bots: {b['connected']} of {b['bots']} connected, {b['state_changes']} state "
        f"changes: {verdict(b['met'])}"
    )
    for row in slope_headlines(goals):
        print(f"{row['figure']}: {row['value']} (goal {row['goal']}: {verdict(row['met'])})")
    overall = all(g["met"] for g in goals.values())
    cut = "" if result.completed else f"; cut short after {format_s(round(result.ran_s))}"
    print(f"verdict: {'PASS' if overall else 'FAIL'} (memory flat after warm-up, zero errors{cut})")
    goals["overall"] = {"met": overall, "completed": result.completed}
    return goals, growths


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def log_problems(text: str) -> list[str]:
    return [line for line in text.splitlines() if LOG_PROBLEM_RE.search(line)]


def chromium_version(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        done = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--duration", type=duration_arg, default=600.0, help="load time: 90s, 10m, ... (10m)"
    )
    parser.add_argument(
        "--bots", type=int, default=5, help="bots, linked through the simulator (5)"
    )
    parser.add_argument("--clients", type=int, default=4, help="httpx clients loading (4)")
    parser.add_argument(
        "--load-rate",
        type=float,
        default=200.0,
        help="requests a second to /health and /api/keepalive in all; 0: unpaced (200)",
    )
    parser.add_argument(
        "--message-rate", type=float, default=1.0, help="messages POSTed a second, in all (1)"
    )
    parser.add_argument(
        "--incoming-every",
        type=duration_arg,
        default=5.0,
        help="a simulated incoming message this often, round-robin; 0: none (5s)",
    )
    parser.add_argument(
        "--keepalive-interval", type=duration_arg, default=2.0, help="KEEP_ALIVE_INTERVAL (2s)"
    )
    parser.add_argument(
        "--sample-every",
        type=duration_arg,
        default=None,
        help="seconds between samples (duration / 20, at most 30s)",
    )
    parser.add_argument(
        "--warmup",
        type=duration_arg,
        default=None,
        help="samples before this are not judged (duration / 5, at most 2m)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=duration_arg,
        default=120.0,
        help="time for the outbox to empty after the load (2m)",
    )
    parser.add_argument(
        "--send-rate", type=int, default=None, help="SEND_RATE for the server (its default, 20)"
    )
    parser.add_argument(
        "--chromium",
        type=Path,
        default=None,
        help="CHROMIUM_PATH for the server (default: what the server finds by itself)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="every rate this many times the soak's (10: the 10x mode, judged by slope) (1)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write figures")
    args = parser.parse_args(argv)
    if args.speed < 1:
        parser.error("--speed >= 1")
    if args.speed > 1:
        args.load_rate *= args.speed
        args.message_rate *= args.speed
        args.incoming_every /= args.speed
        args.keepalive_interval /= args.speed
        if args.send_rate is None:
            args.send_rate = round(20 * args.speed)
        # The default warm-up lasts until the windows are seen full (at least the time the
        # nominal rates need to fill them); a warm-up given on the command line is kept.
        args.until_windows_full = args.warmup is None
        if args.warmup is None:
            args.warmup = windows_full_after(args)
    else:
        args.until_windows_full = False
    if args.duration <= 0 or args.bots < 1 or args.clients < 1:
        parser.error("--duration > 0, --bots >= 1, --clients >= 1")
    if args.load_rate < 0 or args.message_rate <= 0 or args.incoming_every < 0:
        parser.error("--load-rate >= 0, --message-rate > 0, --incoming-every >= 0")
    if args.keepalive_interval <= 0:
        parser.error("--keepalive-interval must be greater than zero")
    if args.sample_every is None:
        args.sample_every = max(1.0, min(30.0, args.duration / 20))
    if args.warmup is None:
        args.warmup = min(120.0, args.duration / 5)
    if args.sample_every <= 0 or not 0 <= args.warmup < args.duration:
        parser.error("--sample-every > 0 and 0 <= --warmup < --duration")
    return args


def windows_full_after(args: argparse.Namespace) -> float:
    """Seconds until the keep-alive's ping window and the simulator's sent window are full:
    the messages POSTed plus the bots' `pong` replies (every other incoming message)."""
    pings = PING_WINDOW * float(args.keepalive_interval)
    replies = 0.5 / float(args.incoming_every) if args.incoming_every > 0 else 0.0
    sends = SENT_WINDOW / (float(args.message_rate) + replies)
    return max(pings, sends, 120.0)


def server_settings(args: argparse.Namespace, port: int) -> dict[str, str]:
    settings = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "WHATSAPP_SIMULATOR": "1",
        "BOT_ENGINE": "whatsapp",
        "KEEP_ALIVE_ENABLED": "true",
        "KEEPALIVE_URL": f"http://{common.LOOPBACK}:{port}/health",
        "KEEP_ALIVE_INTERVAL": f"{args.keepalive_interval * 1000:.0f}ms",
        "KEEP_ALIVE_START_DELAY": f"{KEEPALIVE_START_DELAY_S:g}s",
    }
    if args.send_rate is not None:
        settings["SEND_RATE"] = str(args.send_rate)
    if args.chromium is not None:
        settings["CHROMIUM_PATH"] = str(args.chromium)
    return settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chromium = args.chromium or find_chromium(None).path
    version = chromium_version(chromium)
    print(
        f"soak {format_s(args.duration)} (warm-up {format_s(args.warmup)}"
        f"{' or until the windows are full' if args.until_windows_full else ''}, a sample every "
        f"{format_s(args.sample_every)}): {args.bots} bots on the simulator, {args.clients} "
        f"clients at {args.load_rate:g} req/s on /health + /api/keepalive, "
        f"{args.message_rate:g} message(s)/s, an incoming message every "
        f"{format_s(args.incoming_every)}, keep-alive every {format_s(args.keepalive_interval)}; "
        f"{os.cpu_count()} CPUs; Chromium {chromium} ({version or '?'})",
        flush=True,
    )
    previous = {
        sig: signal.signal(sig, INTERRUPTS.handler) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    started = time.perf_counter()
    load_before = os.getloadavg()
    result: SoakResult | None = None
    problems: list[str] = []
    stop_s = exit_status = strays = None
    with tempfile.TemporaryDirectory(prefix="wakeful-soak-") as tmp:
        root = Path(tmp).resolve()
        data_dir = root / "data"
        data_dir.mkdir()
        (port,) = common.free_ports(1)
        server = common.start_wakeful(
            "wakeful", port, data_dir, root / "server.log", **server_settings(args, port)
        )
        try:
            ready_s = common.wait_ready(server, "/health", START_TIMEOUT_S)
            print(f"server ready in {ready_s:.1f}s on port {port}", flush=True)
            result = common.run_async(lambda: soak(server, args, data_dir))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            print(f"--- server output ---\n{server.log_text(3000)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("aborted", file=sys.stderr)
            return 130
        finally:
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)  # the clean-up is not interrupted
            alive = server.proc.poll() is None
            stop_s, exit_status = common.stop_server(server, STOP_TIMEOUT_S)
            if not alive:
                stop_s = None
            problems = log_problems(server.log_path.read_text(errors="replace"))
            strays = common.kill_strays(root)
            print(
                f"server stopped (status {exit_status}"
                + (f", {stop_s:.1f}s after SIGTERM" if stop_s is not None else "")
                + f"); {strays} stray process(es) killed",
                file=sys.stderr,
                flush=True,
            )
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    assert result is not None
    goals, growths = report(result, args)
    if problems:
        print(f"\nthe server logged {len(problems)} error line(s); the first ones:")
        for line in problems[:10]:
            print(f"  {line[:300]}")
    load_after = os.getloadavg()
    print(
        f"run time {time.perf_counter() - started:.0f}s; load average (1 min) "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} CPUs"
    )

    if args.json is not None:
        document = {
            "benchmark": "soak",
            "settings": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "warmup_until_windows_full": args.until_windows_full,
                "judged_from_s": next((x.t_s for x in result.samples if not x.warmup), None),
                "sample_every_s": args.sample_every,
                "bots": args.bots,
                "clients": args.clients,
                "load_rate_per_s": args.load_rate,
                "message_rate_per_s": args.message_rate,
                "incoming_every_s": args.incoming_every,
                "keepalive_interval_s": args.keepalive_interval,
                "send_rate_per_min": args.send_rate,
                "speed": args.speed,
                "drain_timeout_s": args.drain_timeout,
                "chromium": {"path": str(chromium) if chromium else None, "version": version},
            },
            "link_s": result.link_s,
            "ran_s": result.ran_s,
            "completed": result.completed,
            "samples": [asdict(s) for s in result.samples],
            "memory_growth": [asdict(g) for g in growths],
            "requests": {
                name: {
                    "requests": r.requests,
                    "errors": r.errors,
                    "error_kinds": dict(r.kinds),
                    "p50_ms": percentile(r.latencies_ms, 0.5),
                    "p99_ms": percentile(r.latencies_ms, 0.99),
                    "max_ms": max(r.latencies_ms) if r.latencies_ms else None,
                }
                for name, r in sorted(result.stats.routes.items())
            },
            "first_failures": [asdict(f) for f in result.stats.failures],
            "messages": {
                "incoming": result.traffic.incoming,
                "pings": result.traffic.pings,
                "drain_s": result.drain_s,
                "accepted_to_sent_s": result.send_latency_s,
                "bots": [asdict(o) for o in result.outcomes],
            },
            "keepalive": {
                k: result.keepalive.get(k)
                for k in ("pingCount", "failedPings", "successRate", "latency", "uptimePercent")
            },
            "server": {
                "stop_s": stop_s,
                "exit_status": exit_status,
                "stray_processes_killed": strays,
                "log_error_lines": problems[:20],
            },
            "goals": goals,
            "headlines": headlines(result, goals, growths),
            "load_average_1min": {"before": load_before[0], "after": load_after[0]},
            "machine": common.machine_info(
                ("psutil", "httpx", "uvloop", "starlette", "uvicorn"),
                memory_total_mb=round(psutil.virtual_memory().total / MB),
            ),
        }
        common.write_json(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
