"""Throughput of wakeful's /health next to a bare Starlette app, served the same way.

Prints figures; it is not a pass/fail test. Two servers run as subprocesses on free loopback
ports (127.0.0.1 only):

* wakeful itself, `python server.py` from the repo root, keep-alive disabled, SQLite in a
  temporary DATA_DIR;
* a bare Starlette app answering a constant JSON document on `/`, served by uvicorn with the
  settings server.py uses (one worker, loop="auto", h11 as server.py's protocol is,
  access_log=False, lifespan="on", proxy_headers=True, forwarded_allow_ips="*",
  server_header=False); the same app on httptools (uvicorn's default) is shown, not judged;
* with `--baseline DIR` (a checkout of an earlier commit, see `_common.baseline_checkout`),
  that commit's server too, side by side.

The goal (≥ 0.9 of the bare app) is judged on the server CPU time per request, measured from
/proc for each server: on a machine shared with other work, requests per second move with
whatever else runs, while the CPU a request costs does not (much); requests per second and
their ratio are printed beside it.

The load generator lives in this process: N keep-alive HTTP/1.1 connections made with raw
asyncio transports (one request in flight per connection, no pipelining), which costs far less
CPU than an HTTP client library so the client does not dominate a small machine. Targets are
measured in interleaved rounds (warm-up, then a timed window) and the median per target across
rounds is reported, so machine noise hits all targets alike.

    .venv/bin/python bench/health_throughput.py [--duration 5] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import _common as common  # noqa: E402

GOAL_RATIO = 0.9
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 5.0

BARE_APP_SOURCE = '''\
"""Bare Starlette app for bench/health_throughput.py: one route, constant JSON."""

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "pass"}, media_type="application/health+json")


app = Starlette(routes=[Route("/", health, methods=["GET", "HEAD"])])

if __name__ == "__main__":
    uvicorn.run(
        app,
        host=sys.argv[1],
        port=int(sys.argv[2]),
        workers=1,
        loop="auto",
        http=sys.argv[3],
        access_log=False,
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips="*",
        server_header=False,
        log_level="warning",
    )
'''


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# Load generator
# --------------------------------------------------------------------------------------------


class ResponseError(Exception):
    """The bytes on the wire are not an HTTP/1.1 response this client understands."""


@dataclass
class LoadStats:
    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


class Recorder:
    """Shared state of one load run: the window, the counters, the stop flag."""

    def __init__(self, window_start: float, window_end: float) -> None:
        self.window_start = window_start
        self.window_end = window_end
        self.stats = LoadStats()
        self.stopping = False
        self.completed = 0  # every answer, in the window or not (for CPU per request)

    def record(self, sent_at: float, done_at: float, ok: bool) -> None:
        self.completed += ok
        if self.window_start <= done_at < self.window_end:
            if ok:
                self.stats.ok += 1
                self.stats.latencies.append(done_at - sent_at)
            else:
                self.stats.errors += 1


class HttpClientProtocol(asyncio.Protocol):
    """One keep-alive connection: send a request, parse the response, send the next."""

    def __init__(self, request: bytes, recorder: Recorder, on_idle: Callable[[], None]) -> None:
        self.request = request
        self.recorder = recorder
        self.on_idle = on_idle
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.in_flight = False
        self.closed = asyncio.get_running_loop().create_future()
        # Parser state for the response being read.
        self.status = 0
        self.body_left = -1  # -1: reading the head; >= 0: bytes of fixed-length body left
        self.chunked = False
        self.close_after = False

    # asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)
        self.send()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            while self.in_flight and self.parse():
                self.finish(ok=self.status == 200)
                if self.close_after or self.recorder.stopping:
                    self.close()
                    return
                self.send()
        except (ResponseError, ValueError):
            self.finish(ok=False)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight:
            self.finish(ok=False)
        if not self.closed.done():
            self.closed.set_result(None)

    # helpers ------------------------------------------------------------------------------

    def send(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.in_flight = True
        self.status, self.body_left, self.chunked, self.close_after = 0, -1, False, False
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def finish(self, ok: bool) -> None:
        self.in_flight = False
        self.recorder.record(self.sent_at, time.perf_counter(), ok)
        if self.recorder.stopping:
            self.on_idle()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def parse(self) -> bool:
        """Consume one complete response from the buffer; False if more bytes are needed."""
        buf = self.buffer
        if self.body_left < 0 and not self.chunked:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    raise ResponseError("response head too large")
                return False
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            if not head.startswith(b"http/1.1 ") or len(head) < 12:
                raise ResponseError("bad status line")
            self.status = int(head[9:12])
            self.close_after = b"\r\nconnection: close" in head
            marker = head.find(b"\r\ncontent-length:")
            if marker >= 0:
                line_end = head.find(b"\r\n", marker + 2)
                value = head[marker + 17 : line_end if line_end >= 0 else len(head)]
                self.body_left = int(value.strip())
            elif b"\r\ntransfer-encoding: chunked" in head:
                self.chunked = True
            else:
                raise ResponseError("response without content-length or chunked encoding")
        if self.chunked:
            return self.parse_chunks()
        if len(buf) < self.body_left:
            return False
        del buf[: self.body_left]
        self.body_left = -1
        return True

    def parse_chunks(self) -> bool:
        buf = self.buffer
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return False
                del buf[: trailer_end + 4]
                self.chunked = False
                return True
            if len(buf) < line_end + 2 + size + 2:
                return False
            del buf[: line_end + 2 + size + 2]


async def run_load(
    port: int, path: str, connections: int, warmup: float, duration: float
) -> tuple[LoadStats, float]:
    """Drive `connections` keep-alive connections for warm-up + duration seconds.

    Returns the stats of requests completed inside the timed window, and its length.
    """
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: {common.LOOPBACK}\r\n\r\n".encode("ascii")
    start = time.perf_counter()
    recorder = Recorder(start + warmup, start + warmup + duration)
    protocols: list[HttpClientProtocol] = []
    idle = asyncio.Event()

    def on_idle() -> None:
        if all(not p.in_flight for p in protocols):
            idle.set()

    async def connect() -> HttpClientProtocol:
        _, proto = await asyncio.wait_for(
            loop.create_connection(
                lambda: HttpClientProtocol(request, recorder, on_idle), common.LOOPBACK, port
            ),
            timeout=CONNECT_TIMEOUT_S,
        )
        return proto

    async def keep_connected() -> None:
        """Hold one connection open until the window ends, reconnecting if it drops."""
        while time.perf_counter() < recorder.window_end:
            try:
                proto = await connect()
            except (OSError, TimeoutError):
                recorder.record(0.0, time.perf_counter(), ok=False)
                await asyncio.sleep(0.05)
                continue
            protocols.append(proto)
            remaining = recorder.window_end - time.perf_counter()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proto.closed), timeout=max(remaining, 0))

    tasks = [asyncio.create_task(keep_connected()) for _ in range(connections)]
    try:
        await asyncio.sleep(max(recorder.window_end - time.perf_counter(), 0))
        recorder.stopping = True
        await asyncio.wait(tasks, timeout=CONNECT_TIMEOUT_S + 1)
        # Let in-flight requests finish (they are outside the window, so not counted) so the
        # server is not left mid-response, then close everything.
        on_idle()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(idle.wait(), timeout=DRAIN_TIMEOUT_S)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for proto in protocols:
            proto.close()
        closing = [p.closed for p in protocols if not p.closed.done()]
        if closing:
            await asyncio.wait(closing, timeout=DRAIN_TIMEOUT_S)
    return recorder.stats, recorder.completed


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    server: common.Server
    path: str


@dataclass
class RoundResult:
    rps: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: int
    server_cpu: float | None  # fraction of one core used by the server during the run
    client_cpu: float  # fraction of one core used by this process during the run
    cpu_us_per_request: float | None = None  # server CPU time / answers, over the whole run


@dataclass
class TargetSummary:
    path: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    server_cpu: float | None
    client_cpu: float
    rounds: list[RoundResult]
    cpu_us_per_request: float | None = None


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def measure(target: Target, connections: int, warmup: float, duration: float) -> RoundResult:
    pid = target.server.proc.pid
    cpu_before = process_cpu_seconds(pid)
    client_before = time.process_time()
    wall_before = time.perf_counter()
    stats, completed = common.run_async(
        lambda: run_load(target.server.port, target.path, connections, warmup, duration)
    )
    window = duration
    wall = time.perf_counter() - wall_before
    cpu_after = process_cpu_seconds(pid)
    client_cpu = (time.process_time() - client_before) / wall
    server_cpu = per_request = None
    if cpu_before is not None and cpu_after is not None:
        server_cpu = (cpu_after - cpu_before) / wall
        per_request = (cpu_after - cpu_before) / completed * 1e6 if completed else None
    latencies = sorted(stats.latencies)
    return RoundResult(
        rps=stats.ok / window,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        ok=stats.ok,
        errors=stats.errors,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        cpu_us_per_request=per_request,
    )


def summarize(target: Target, rounds: list[RoundResult]) -> TargetSummary:
    cpus = [r.server_cpu for r in rounds if r.server_cpu is not None]
    costs = [r.cpu_us_per_request for r in rounds if r.cpu_us_per_request is not None]
    return TargetSummary(
        path=target.path,
        rps=statistics.median(r.rps for r in rounds),
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
        errors=sum(r.errors for r in rounds),
        requests=sum(r.ok for r in rounds),
        server_cpu=statistics.median(cpus) if cpus else None,
        client_cpu=statistics.median(r.client_cpu for r in rounds),
        rounds=rounds,
        cpu_us_per_request=statistics.median(costs) if costs else None,
    )


def rotated(items: list[Target], by: int) -> Iterator[Target]:
    """The targets in a different order each round, so none always runs first."""
    n = len(items)
    for i in range(n):
        yield items[(i + by) % n]


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=5.0, help="timed window, s (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up per window, s (1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent conns (32)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write figures")
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="REF",
        help=f"also run this commit's server side by side (e.g. {common.BASELINE_REF})",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1 or args.connections < 1:
        parser.error("--duration > 0, --warmup >= 0, --rounds >= 1, --connections >= 1")
    return args


def print_table(summaries: dict[str, TargetSummary]) -> None:
    header = f"{'target':<26} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
    header += f" {'srv cpu':>8} {'cli cpu':>8} {'µs CPU/req':>11}"
    print(header)
    print("-" * len(header))
    for name, s in summaries.items():
        srv = f"{s.server_cpu:.0%}" if s.server_cpu is not None else "n/a"
        cost = f"{s.cpu_us_per_request:.0f}" if s.cpu_us_per_request is not None else "n/a"
        print(
            f"{name:<26} {s.rps:>10.0f} {s.p50_ms:>8.2f} {s.p99_ms:>8.2f} {s.errors:>7d}"
            f" {srv:>8} {s.client_cpu:>8.0%} {cost:>11}"
        )


def cpu_ratio(ours: TargetSummary, bare: TargetSummary) -> float | None:
    """Requests per CPU-second, ours ÷ the bare app's: throughput when each gets a core."""
    if not ours.cpu_us_per_request or not bare.cpu_us_per_request:
        return None
    return bare.cpu_us_per_request / ours.cpu_us_per_request


def start_bare(name: str, tmpdir: Path, port: int, protocol: str) -> common.Server:
    return common.start_server(
        name,
        [sys.executable, str(tmpdir / "_bare_app.py"), common.LOOPBACK, str(port), protocol],
        tmpdir,
        dict(os.environ, PYTHONUNBUFFERED="1"),
        port,
        tmpdir / f"{name}.stderr.log",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers: list[common.Server] = []
    with (
        tempfile.TemporaryDirectory(prefix="wakeful-bench-") as tmp,
        common.baseline_checkout(args.baseline) as baseline_root,
    ):
        tmpdir = Path(tmp)
        data_dir = tmpdir / "data"
        data_dir.mkdir()
        (tmpdir / "_bare_app.py").write_text(BARE_APP_SOURCE)
        try:
            wakeful_port, bare_port, tools_port, base_port = common.free_ports(4)
            wakeful = common.start_wakeful(
                "wakeful", wakeful_port, data_dir, tmpdir / "wakeful.stderr.log"
            )
            servers.append(wakeful)
            bare = start_bare("bare", tmpdir, bare_port, "h11")
            servers.append(bare)
            tools = start_bare("bare-httptools", tmpdir, tools_port, "httptools")
            servers.append(tools)
            baseline = None
            if baseline_root is not None:
                base_dir = tmpdir / "baseline-data"
                base_dir.mkdir()
                baseline = common.start_wakeful_in(
                    baseline_root, "baseline", base_port, base_dir, tmpdir / "baseline.log", {}
                )
                servers.append(baseline)
            try:
                common.wait_ready(wakeful, "/health", START_TIMEOUT_S)
                common.wait_ready(bare, "/", START_TIMEOUT_S)
                common.wait_ready(tools, "/", START_TIMEOUT_S)
                if baseline is not None:
                    common.wait_ready(baseline, "/health", START_TIMEOUT_S)
            except RuntimeError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2

            targets = [
                Target("wakeful /health", wakeful, "/health"),
                Target("wakeful /api/keepalive", wakeful, "/api/keepalive"),
                Target("bare /", bare, "/"),
                Target("bare / (httptools)", tools, "/"),
            ]
            if baseline is not None:
                targets.append(Target(f"{args.baseline} /health", baseline, "/health"))
            print(
                f"{args.rounds} round(s) x {len(targets)} targets, {args.connections} "
                f"connections, {args.warmup:g}s warm-up + {args.duration:g}s window each, "
                f"{os.cpu_count()} CPUs"
            )
            results: dict[str, list[RoundResult]] = {t.name: [] for t in targets}
            for round_no in range(args.rounds):
                for target in rotated(targets, round_no):
                    if target.server.proc.poll() is not None:
                        print(
                            f"error: {target.server.name} died during the benchmark.\n"
                            f"{target.server.log_text()}",
                            file=sys.stderr,
                        )
                        return 2
                    result = measure(target, args.connections, args.warmup, args.duration)
                    results[target.name].append(result)
                    print(
                        f"  round {round_no + 1}: {target.name:<26} {result.rps:>9.0f} req/s"
                        f"  p99 {result.p99_ms:6.2f} ms  errors {result.errors}",
                        flush=True,
                    )
        finally:
            for server in reversed(servers):
                common.stop_server(server, STOP_TIMEOUT_S)

    summaries = {t.name: summarize(t, results[t.name]) for t in targets}
    print()
    print_table(summaries)
    bare_s = summaries["bare /"]
    bare_rps = bare_s.rps
    health = summaries["wakeful /health"]
    ratio_rps = health.rps / bare_rps if bare_rps else 0.0
    ratio_keepalive = summaries["wakeful /api/keepalive"].rps / bare_rps if bare_rps else 0.0
    ratio_health = cpu_ratio(health, bare_s)
    met = ratio_health is not None and ratio_health >= GOAL_RATIO
    print()
    if ratio_health is None:
        print("wakeful /health ÷ bare by CPU per request: n/a (no /proc)")
    else:
        miss = "" if met else f", missed by {GOAL_RATIO - ratio_health:.2f}"
        print(
            f"wakeful /health ÷ bare (requests per CPU-second): {ratio_health:.2f}  "
            f"(goal ≥ {GOAL_RATIO}: {'met' if met else 'NOT met'}{miss})"
        )
    print(f"wakeful /health ÷ bare (requests per second, as the machine allowed): {ratio_rps:.2f}")
    tools_ratio = cpu_ratio(health, summaries["bare / (httptools)"])
    if tools_ratio is not None:
        print(f"wakeful /health ÷ bare on httptools (CPU, not judged): {tools_ratio:.2f}")
    baseline_ratio = None
    if args.baseline and f"{args.baseline} /health" in summaries:
        baseline_ratio = cpu_ratio(summaries[f"{args.baseline} /health"], bare_s)
        if baseline_ratio is not None:
            print(f"{args.baseline} /health ÷ bare (CPU, the commit before): {baseline_ratio:.2f}")
    print(f"wakeful /api/keepalive ÷ bare: {ratio_keepalive:.2f}  (requests per second, no goal)")
    client_cpu = max(s.client_cpu for s in summaries.values())
    if client_cpu > 0.9:
        print(
            f"note: the load generator used {client_cpu:.0%} of a core; the figures may be "
            "client-bound (the ratio then understates the difference)."
        )

    if args.json is not None:
        document = {
            "benchmark": "health_throughput",
            "settings": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "rounds": args.rounds,
                "connections": args.connections,
                "baseline": args.baseline,
            },
            "results": {name: asdict(s) for name, s in summaries.items()},
            "ratio_health": ratio_health,
            "ratio_health_rps": ratio_rps,
            "ratio_health_httptools": tools_ratio,
            "ratio_health_baseline": baseline_ratio,
            "ratio_keepalive": ratio_keepalive,
            "goal": GOAL_RATIO,
            "goal_met": met,
            "machine": common.machine_info(("uvicorn", "starlette", "uvloop", "httptools", "h11")),
        }
        common.write_json(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
