"""The outbox end to end: enqueue rate through the API, drain rate through a fast engine, and
how the queue resumes after a SIGKILL, on SQLite and on Postgres.

Prints figures; it is not a pass/fail test. For each backend (SQLite in a temporary DATA_DIR;
Postgres in a fresh temporary database, dropped at the end) the real app runs as
`python server.py` on a free loopback port with BOT_ENGINE=tests.engines:auto_engine (bots
connect by themselves ~60 ms after a start and every send is instant: "a fast engine"),
SEND_RATE=0 (unpaced) and a short OUTBOX_LEASE. The admin token creates the bots.

1. Enqueue. The bots are created with "start": false, so messages wait in the queue and the
   accept rate is measured alone: N messages (unique texts, round-robin over the bots) are
   POSTed to /api/sessions/{id}/messages from C keep-alive connections made with raw asyncio
   transports in this process (one request in flight per connection; cheaper than an HTTP
   client library, so the client does not dominate a 2-core machine). Accepted = 202.
2. Drain. The bots are started; drain rate = N / (the last `sentAt` - the start requests).
3. Resume after SIGKILL. The bots are stopped, M fresh messages queued, the bots started
   again, and once a quarter of the M are sent the server's process group gets SIGKILL. The
   stored states at the kill are read straight from the database, then the server is started
   again on the same data. Times are from the new process's start to: /health answering 200,
   the first bot CONNECTED again (restored at boot, BOT_START_STAGGER apart as in production),
   the first message sent by the new process, every bot connected, the messages that were
   claimed (`sending`) at the kill sent again (only once their lease runs out), and the queue
   empty. Finally every message accepted in this run (both batches) must be `sent`: lost = the
   accepted ids that are not.

4. Media (`--media N`, 100 by default; bench/_outbox_media.py): N images of 1 MiB accepted
   through the API (images/s, the server's memory while they are queued), then drained
   through the simulator by real Chromium (images/s, MB/s), in demo mode on SQLite.

    .venv/bin/python bench/outbox.py [--messages 10000] [--resume-messages 2000] [--bots 4]
        [--concurrency 32] [--backend sqlite|postgres|both] [--postgres-url URL] [--json PATH]
        [--media 100] [--media-concurrency 4] [--media-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import _common as common  # noqa: E402
import asyncpg  # noqa: E402
import httpx  # noqa: E402
from _outbox_media import print_media, run_media  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from bot.sender import IDLE_POLL  # noqa: E402
from tests.postgres_server import running_postgres  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-" + "x" * 16  # only ever sent to a loopback server we started
ENGINE = "tests.engines:auto_engine"
TO = "+15550001111"
LEASE_S = 2.0  # OUTBOX_LEASE: a message claimed at the kill is sent again after this
KILL_AT = 0.25  # SIGKILL once this share of the resume batch is sent
GOAL_ACCEPT_RATE = 1000.0  # messages a second, on SQLite
GOAL_CPU_MS_PER_ACCEPT = 1.0  # server CPU per accepted message, on every backend

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 600.0
POLL_S = 0.1
FAST_POLL_S = 0.02
PAGE = 500


# --------------------------------------------------------------------------------------------
# Load generator: keep-alive HTTP/1.1 over raw asyncio transports
# --------------------------------------------------------------------------------------------


class ResponseError(Exception):
    """The bytes on the wire are not an HTTP/1.1 response this client understands."""


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection, one request at a time; responses need a Content-Length."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.status = 0
        self.body_len = -1  # -1: reading the head
        self.closed: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            done = self._parse()
        except (ResponseError, ValueError) as exc:
            waiter.set_exception(ResponseError(str(exc)))
            self.close()
            return
        if done is not None:
            waiter.set_result(done)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self.buffer
        if self.body_len < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    raise ResponseError("response head too large")
                return None
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            if not head.startswith(b"http/1.1 ") or len(head) < 12:
                raise ResponseError("bad status line")
            self.status = int(head[9:12])
            marker = head.find(b"\r\ncontent-length:")
            if marker < 0:
                raise ResponseError("response without a content-length")
            line_end = head.find(b"\r\n", marker + 2)
            self.body_len = int(head[marker + 17 : line_end if line_end >= 0 else len(head)])
        if len(buf) < self.body_len:
            return None
        body = bytes(buf[: self.body_len])
        del buf[: self.body_len]
        self.body_len = -1
        return self.status, body

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("connection closed")
        self.waiter = self.loop.create_future()
        self.transport.write(data)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def open_connection(port: int) -> HttpConnection:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(HttpConnection, common.LOOPBACK, port), CONNECT_TIMEOUT_S
    )
    return proto


def post_message(session_id: str, message_text: str) -> bytes:
    body = json.dumps({"to": TO, "text": message_text}).encode()
    head = (
        f"POST /api/sessions/{session_id}/messages HTTP/1.1\r\n"
        f"Host: {common.LOOPBACK}\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


@dataclass
class EnqueueResult:
    messages: int
    accepted: int
    errors: int
    error_kinds: dict[str, int]
    seconds: float
    accepted_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    server_cpu: float | None  # share of one core the server used during the run
    client_cpu: float  # share of one core this process used
    ids: list[str] = field(repr=False)


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def enqueue(
    server: common.Server, bots: list[str], count: int, concurrency: int, tag: str
) -> EnqueueResult:
    """POST `count` messages over `concurrency` keep-alive connections (opened first)."""
    conns = await asyncio.gather(*(open_connection(server.port) for _ in range(concurrency)))
    indices = iter(range(count))
    ids: list[str] = []
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def worker(conn: HttpConnection) -> None:
        for i in indices:  # shared: each worker takes the next index
            request = post_message(bots[i % len(bots)], f"bench {tag} #{i}")
            sent_at = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(conn.request(request), REQUEST_TIMEOUT_S)
            except (OSError, ResponseError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                conn.close()
                try:
                    conn = await open_connection(server.port)
                except (OSError, TimeoutError) as again:
                    errors[f"reconnect {type(again).__name__}"] += 1
                    return
                continue
            if status == 202:
                latencies.append(time.perf_counter() - sent_at)
                ids.append(json.loads(body)["id"])
            else:
                errors[f"HTTP {status}"] += 1

    cpu_before = process_cpu_seconds(server.proc.pid)
    client_before = time.process_time()
    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        seconds = time.perf_counter() - start
        for conn in conns:
            conn.close()
    cpu_after = process_cpu_seconds(server.proc.pid)
    server_cpu = None
    if cpu_before is not None and cpu_after is not None:
        server_cpu = (cpu_after - cpu_before) / seconds
    latencies.sort()

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000

    return EnqueueResult(
        messages=count,
        accepted=len(ids),
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        seconds=seconds,
        accepted_per_s=len(ids) / seconds,
        p50_ms=ms(percentile(latencies, 0.50)),
        p99_ms=ms(percentile(latencies, 0.99)),
        max_ms=ms(latencies[-1] if latencies else None),
        server_cpu=server_cpu,
        client_cpu=(time.process_time() - client_before) / seconds,
        ids=ids,
    )


# --------------------------------------------------------------------------------------------
# Control: the API through httpx, the database directly while the server is dead
# --------------------------------------------------------------------------------------------


def api_client(port: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://{common.LOOPBACK}:{port}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=REQUEST_TIMEOUT_S,
    )


async def checked(response: httpx.Response, *expected: int) -> dict[str, Any]:
    if response.status_code not in expected:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text[:500]}"
        )
    document: dict[str, Any] = response.json()
    return document


async def create_bots(client: httpx.AsyncClient, count: int) -> list[str]:
    bots = []
    for i in range(count):
        created = await checked(
            await client.post("/api/sessions", json={"name": f"bench-{i}", "start": False}), 201
        )
        bots.append(created["id"])
    return bots


async def bot_action(client: httpx.AsyncClient, bots: list[str], action: str) -> None:
    responses = await asyncio.gather(
        *(client.post(f"/api/sessions/{bot}/{action}") for bot in bots)
    )
    for response in responses:
        await checked(response, 200)


async def outbox_counts(client: httpx.AsyncClient, bots: list[str]) -> Counter[str]:
    """Every bot's messages by status, summed (one small list request per bot)."""
    responses = await asyncio.gather(
        *(
            client.get(f"/api/sessions/{bot}/messages", params={"status": "dead", "limit": 1})
            for bot in bots
        )
    )
    total: Counter[str] = Counter()
    for response in responses:
        total.update((await checked(response, 200))["counts"])
    return total


def remaining(counts: Counter[str]) -> int:
    return counts["queued"] + counts["sending"]


async def wait_drained(client: httpx.AsyncClient, bots: list[str]) -> float:
    """Poll until nothing is queued or sending (DRAIN_TIMEOUT_S at most); returns the seconds
    waited."""
    start = time.perf_counter()
    deadline = start + DRAIN_TIMEOUT_S
    while True:
        counts = await outbox_counts(client, bots)
        if remaining(counts) == 0:
            return time.perf_counter() - start
        if time.perf_counter() > deadline:
            raise RuntimeError(
                f"the outbox did not drain within {DRAIN_TIMEOUT_S:.0f}s: {dict(counts)}"
            )
        await asyncio.sleep(POLL_S)


@dataclass
class StoredMessage:
    status: str
    attempts: int
    sent_at: datetime | None


async def all_messages(client: httpx.AsyncClient, bots: list[str]) -> dict[str, StoredMessage]:
    """Every stored message of the bots, paged through the API."""
    found: dict[str, StoredMessage] = {}
    for bot in bots:
        offset = 0
        while True:
            page = await checked(
                await client.get(
                    f"/api/sessions/{bot}/messages", params={"limit": PAGE, "offset": offset}
                ),
                200,
            )
            for m in page["messages"]:
                sent = datetime.fromisoformat(m["sentAt"]) if m["sentAt"] else None
                found[m["id"]] = StoredMessage(m["status"], m["attempts"], sent)
            offset += PAGE
            if offset >= page["total"]:
                break
    return found


async def stored_states(db_url: str) -> tuple[dict[str, int], list[str]]:
    """Counts by status and the ids in `sending`, read from the database itself."""
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT status, count(*) FROM outbox_messages GROUP BY status")
                )
            ).all()
            sending = (
                await conn.execute(text("SELECT id FROM outbox_messages WHERE status = 'sending'"))
            ).all()
    finally:
        await engine.dispose()
    return {str(status): int(n) for status, n in rows}, [str(r[0]) for r in sending]


async def wait_health(server: common.Server, start: float) -> float:
    """Seconds from `start` until GET /health answers 200, probing every FAST_POLL_S (for
    START_TIMEOUT_S at most)."""
    deadline = time.perf_counter() + START_TIMEOUT_S
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.perf_counter() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"{server.name} exited with status {server.proc.returncode}.\n"
                    f"--- {server.name} output ---\n{server.log_text()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get(f"http://{common.LOOPBACK}:{server.port}/health")
                if response.status_code == 200:
                    return time.perf_counter() - start
            await asyncio.sleep(FAST_POLL_S)
    raise RuntimeError(f"{server.name} did not answer /health within {START_TIMEOUT_S:.0f}s")


# --------------------------------------------------------------------------------------------
# One backend
# --------------------------------------------------------------------------------------------


@dataclass
class ResumeResult:
    queued: int
    sent_before_kill: int
    sending_at_kill: int
    states_at_kill: dict[str, int]
    health_s: float
    first_connected_s: float | None
    all_connected_s: float | None
    first_sent_s: float | None
    leased_resent_s: float | None
    drained_s: float | None
    reclaimed: int  # messages claimed more than once (at least once: maybe sent twice)


@dataclass
class BackendResult:
    backend: str
    bots: int
    ready_s: float
    enqueue: EnqueueResult
    drain_s: float
    drain_per_s: float
    resume_enqueue: EnqueueResult
    resume: ResumeResult
    accepted_total: int
    lost: int
    lost_missing: int  # not stored at all
    lost_by_status: dict[str, int]  # stored, but not `sent`
    dead: int


class Backend:
    """Where a backend's servers keep their data, and how to reach its database directly."""

    def __init__(self, name: str, data_dir: Path, db_url: str, env: dict[str, str]) -> None:
        self.name = name
        self.data_dir = data_dir
        self.db_url = db_url  # an async SQLAlchemy URL
        self.env = env


def server_settings(backend: Backend) -> dict[str, str]:
    return {
        "BOT_ENGINE": ENGINE,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "SEND_RATE": "0",
        "OUTBOX_LEASE": f"{LEASE_S:g}s",
        **backend.env,
    }


async def run_backend(
    backend: Backend, args: argparse.Namespace, servers: list[common.Server]
) -> BackendResult:
    name = backend.name
    (port,) = common.free_ports(1)
    server = common.start_wakeful(
        f"wakeful ({name})",
        port,
        backend.data_dir,
        backend.data_dir.parent / f"{name}-1.log",
        **server_settings(backend),
    )
    servers.append(server)
    ready_s = await asyncio.to_thread(common.wait_ready, server, "/health", START_TIMEOUT_S)
    tag = uuid.uuid4().hex[:8]
    async with api_client(port) as client:
        bots = await create_bots(client, args.bots)

        # 1. Enqueue with the bots stopped, then 2. drain.
        first = await enqueue(server, bots, args.messages, args.concurrency, f"{tag}-a")
        print(
            f"  enqueue: {first.accepted} accepted in {first.seconds:.2f}s = "
            f"{first.accepted_per_s:,.0f}/s, p50 {first.p50_ms or 0:.1f} ms, "
            f"p99 {first.p99_ms or 0:.1f} ms, errors {first.errors}",
            flush=True,
        )
        started_wall = datetime.now(UTC)
        await bot_action(client, bots, "start")
        await wait_drained(client, bots)
        stored = await all_messages(client, bots)
        last_sent = max((m.sent_at for m in stored.values() if m.sent_at), default=started_wall)
        drain_s = (last_sent - started_wall).total_seconds()
        drain_per_s = first.accepted / drain_s if drain_s > 0 else float("nan")
        print(
            f"  drain: {first.accepted} sent in {drain_s:.2f}s = {drain_per_s:,.0f}/s", flush=True
        )

        # 3. A fresh batch, draining, then SIGKILL.
        await bot_action(client, bots, "stop")
        second = await enqueue(server, bots, args.resume_messages, args.concurrency, f"{tag}-b")
        base_sent = (await outbox_counts(client, bots))["sent"]
        await bot_action(client, bots, "start")
        while True:
            counts = await outbox_counts(client, bots)
            if counts["sent"] - base_sent >= KILL_AT * second.accepted or remaining(counts) == 0:
                break
            await asyncio.sleep(FAST_POLL_S)
    os.killpg(server.proc.pid, signal.SIGKILL)
    killed_wall = datetime.now(UTC)
    server.proc.wait()
    states, sending_ids = await stored_states(backend.db_url)
    sent_before_kill = states.get("sent", 0) - base_sent
    print(
        f"  SIGKILL with {sent_before_kill} of {second.accepted} sent, "
        f"{len(sending_ids)} in `sending` (stored: {states})",
        flush=True,
    )

    (port,) = common.free_ports(1)
    restarted_wall = datetime.now(UTC)
    restarted = time.perf_counter()
    server = common.start_wakeful(
        f"wakeful ({name}, restarted)",
        port,
        backend.data_dir,
        backend.data_dir.parent / f"{name}-2.log",
        **server_settings(backend),
    )
    servers.append(server)
    health_s = await wait_health(server, restarted)
    async with api_client(port) as client:
        await wait_drained(client, bots)
        stored = await all_messages(client, bots)
        sessions = [await checked(await client.get(f"/api/sessions/{bot}"), 200) for bot in bots]

    def since_restart(moments: list[datetime]) -> list[float]:
        return sorted((m - restarted_wall).total_seconds() for m in moments)

    connected = since_restart(
        [datetime.fromisoformat(s["stateChangedAt"]) for s in sessions if s["isConnected"]]
    )
    new_sends = since_restart(
        [m.sent_at for m in stored.values() if m.sent_at is not None and m.sent_at > killed_wall]
    )
    leased = since_restart(
        [m.sent_at for i in sending_ids if (m := stored.get(i)) and m.sent_at is not None]
    )
    resume = ResumeResult(
        queued=second.accepted,
        sent_before_kill=sent_before_kill,
        sending_at_kill=len(sending_ids),
        states_at_kill=states,
        health_s=health_s,
        first_connected_s=connected[0] if connected else None,
        all_connected_s=connected[-1] if len(connected) == len(bots) else None,
        first_sent_s=new_sends[0] if new_sends else None,
        leased_resent_s=leased[-1] if leased and len(leased) == len(sending_ids) else None,
        drained_s=new_sends[-1] if new_sends else None,
        reclaimed=sum(1 for m in stored.values() if m.attempts > 1),
    )
    accepted = first.ids + second.ids
    not_sent = [
        stored.get(i) for i in accepted if (m := stored.get(i)) is None or m.status != "sent"
    ]
    lost_by_status = Counter(m.status for m in not_sent if m is not None)
    return BackendResult(
        backend=name,
        bots=len(bots),
        ready_s=ready_s,
        enqueue=first,
        drain_s=drain_s,
        drain_per_s=drain_per_s,
        resume_enqueue=second,
        resume=resume,
        accepted_total=len(accepted),
        lost=len(not_sent),
        lost_missing=sum(1 for m in not_sent if m is None),
        lost_by_status=dict(lost_by_status),
        dead=sum(1 for m in stored.values() if m.status == "dead"),
    )


async def create_database(admin_url: str) -> tuple[str, str]:
    """A fresh database; returns (its name, its libpq URL for DATABASE_URL)."""
    admin = make_url(admin_url).set(drivername="postgresql")
    name = f"wakeful_bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin.render_as_string(hide_password=False), timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, admin.set(database=name).render_as_string(hide_password=False)


async def drop_database(admin_url: str, name: str) -> None:
    admin = make_url(admin_url).set(drivername="postgresql")
    conn = await asyncpg.connect(admin.render_as_string(hide_password=False), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def baseline_enqueue(
    name: str, args: argparse.Namespace, root: Path, baseline_root: Path
) -> EnqueueResult | None:
    """The enqueue step alone against the baseline commit's server, on a fresh database of
    the same backend: the commit before measured side by side in the same run."""
    workdir = root / f"{name}-baseline"
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True)
    env: dict[str, str] = {}
    pg_name: str | None = None
    server: common.Server | None = None
    try:
        if name == "postgres":
            pg_name, libpq_url = await create_database(args.postgres_url)
            env = {"DATABASE_URL": libpq_url}
        backend = Backend(name, data_dir, "", env)
        (port,) = common.free_ports(1)
        server = common.start_wakeful_in(
            baseline_root,
            f"baseline ({name})",
            port,
            data_dir,
            workdir / "baseline.log",
            server_settings(backend),
        )
        await asyncio.to_thread(common.wait_ready, server, "/health", START_TIMEOUT_S)
        async with api_client(port) as client:
            bots = await create_bots(client, args.bots)
            result = await enqueue(server, bots, args.messages, args.concurrency, "base")
        print(
            f"  baseline {args.baseline}: {result.accepted} accepted, "
            f"{_f(cpu_ms_per_message(result), '.2f')} ms of server CPU each",
            flush=True,
        )
        return result
    finally:
        if server is not None:
            common.stop_server(server, STOP_TIMEOUT_S)
        if pg_name is not None:
            await drop_database(args.postgres_url, pg_name)


async def bench_backend(name: str, args: argparse.Namespace, root: Path) -> BackendResult | None:
    """Run one backend; None (with a line saying why) when Postgres does not answer."""
    workdir = root / name
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True)
    servers: list[common.Server] = []
    pg_name: str | None = None
    try:
        if name == "sqlite":
            db_url = f"sqlite+aiosqlite:///{(data_dir / 'wakeful.db').resolve()}"
            backend = Backend(name, data_dir, db_url, {})
        else:
            try:
                pg_name, libpq_url = await create_database(args.postgres_url)
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                shown = make_url(args.postgres_url).render_as_string(hide_password=True)
                print(f"postgres: skipped, {shown} does not answer ({type(exc).__name__}: {exc})")
                return None
            async_url = make_url(libpq_url).set(drivername="postgresql+asyncpg")
            backend = Backend(
                name,
                data_dir,
                async_url.render_as_string(hide_password=False),
                {"DATABASE_URL": libpq_url},
            )
        print(f"{name}:", flush=True)
        return await run_backend(backend, args, servers)
    except Exception:
        for server in servers:
            status = server.proc.poll()
            print(
                f"--- {server.name} (exit status {status}) output ---\n{server.log_text(2000)}",
                file=sys.stderr,
            )
        raise
    finally:
        for server in reversed(servers):
            common.stop_server(server, STOP_TIMEOUT_S)  # also closes the log of a dead one
        if pg_name is not None:
            await drop_database(args.postgres_url, pg_name)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _f(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def cpu_ms_per_message(e: EnqueueResult) -> float | None:
    """Server CPU per accepted message: 1000 / this is the rate one free core would reach."""
    if e.server_cpu is None or not e.accepted:
        return None
    return e.server_cpu * e.seconds / e.accepted * 1000


def table_rows(r: BackendResult) -> list[tuple[str, str]]:
    e, z = r.enqueue, r.resume
    return [
        ("accepted/s", _f(e.accepted_per_s, ",.0f")),
        ("accept p50 / p99 ms", f"{_f(e.p50_ms, '.1f')} / {_f(e.p99_ms, '.1f')}"),
        ("accept errors", str(e.errors + r.resume_enqueue.errors)),
        ("server / client CPU", f"{_f(e.server_cpu, '.0%')} / {e.client_cpu:.0%}"),
        ("server CPU ms per accept", _f(cpu_ms_per_message(e), ".2f")),
        ("drain/s", _f(r.drain_per_s, ",.0f")),
        ("at kill: sent / sending", f"{z.sent_before_kill} / {z.sending_at_kill}"),
        ("resume: /health s", _f(z.health_s, ".2f")),
        ("resume: 1st bot CONNECTED s", _f(z.first_connected_s, ".2f")),
        ("resume: 1st new sent s", _f(z.first_sent_s, ".2f")),
        ("resume: all bots CONNECTED s", _f(z.all_connected_s, ".2f")),
        (
            "resume: leased re-sent s",
            _f(z.leased_resent_s, ".2f") if z.sending_at_kill else "none leased",
        ),
        ("resume: queue drained s", _f(z.drained_s, ".2f")),
        ("claimed twice (maybe dup)", str(z.reclaimed)),
        ("lost", f"{r.lost} of {r.accepted_total}"),
    ]


def print_table(results: list[BackendResult]) -> None:
    rows = [table_rows(r) for r in results]
    width = max(len(label) for label, _ in rows[0])
    header = f"{'':<{width}}" + "".join(f" {r.backend:>14}" for r in results)
    print(header)
    print("-" * len(header))
    for i, (label, _) in enumerate(rows[0]):
        print(f"{label:<{width}}" + "".join(f" {row[i][1]:>14}" for row in rows))


def evaluate_goals(
    results: list[BackendResult], before: dict[str, EnqueueResult | None]
) -> dict[str, Any]:
    sqlite = next((r for r in results if r.backend == "sqlite"), None)
    rate = sqlite.enqueue.accepted_per_s if sqlite else None
    cpu = {r.backend: cpu_ms_per_message(r.enqueue) for r in results}
    return {
        "cpu_per_accept": {
            "goal": f"<= {GOAL_CPU_MS_PER_ACCEPT:g} ms of server CPU per accepted message "
            "on every backend",
            "ms": cpu,
            "before_ms": {
                name: cpu_ms_per_message(e) if e is not None else None for name, e in before.items()
            },
            "met": all(v is not None and v <= GOAL_CPU_MS_PER_ACCEPT for v in cpu.values()),
        },
        "accept_rate": {
            "goal": f">= {GOAL_ACCEPT_RATE:,.0f} messages/s accepted on SQLite",
            "sqlite_per_s": rate,
            "met": None if rate is None else rate >= GOAL_ACCEPT_RATE,
        },
        "zero_lost": {
            "goal": "every accepted message sent, across a SIGKILL, on every backend",
            "lost": {r.backend: r.lost for r in results},
            "met": all(r.lost == 0 for r in results),
        },
    }


def _verdict(met: bool | None) -> str:
    return "not judged" if met is None else ("met" if met else "NOT met")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=10_000, help="enqueue/drain batch (10000)")
    parser.add_argument(
        "--resume-messages", type=int, default=2_000, help="batch killed mid-drain (2000)"
    )
    parser.add_argument("--bots", type=int, default=4, help="bots (4)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections (32)")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TEST_DATABASE_URL"),
        help="a server where temporary databases may be created "
        "($TEST_DATABASE_URL, else the test suite's own embedded Postgres)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write figures")
    parser.add_argument("--media", type=int, default=100, help="1 MiB images (100; 0: none)")
    parser.add_argument("--media-concurrency", type=int, default=4, help="connections (4)")
    parser.add_argument("--media-only", action="store_true", help="only the media phase")
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="REF",
        help=f"also measure this commit's accepts side by side (e.g. {common.BASELINE_REF})",
    )
    args = parser.parse_args(argv)
    args.embedded_postgres = args.postgres_url is None
    if min(args.messages, args.resume_messages, args.bots, args.concurrency) < 1:
        parser.error("--messages, --resume-messages, --bots and --concurrency must be >= 1")
    return args


def media_only(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="wakeful-outbox-media-") as tmp:
        result = common.run_async(
            lambda: run_media(Path(tmp), ADMIN_TOKEN, args.media, args.media_concurrency)
        )
    print_media(result)
    if args.json is not None:
        common.write_json(args.json, {"benchmark": "outbox-media", "media": asdict(result)})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.media_only:
        return media_only(args)
    names = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    print(
        f"{args.messages} messages to enqueue and drain, then {args.resume_messages} killed "
        f"mid-drain; {args.bots} bots, {args.concurrency} connections, {os.cpu_count()} CPUs; "
        f"engine {ENGINE} (instant sends), SEND_RATE=0, OUTBOX_LEASE={LEASE_S:g}s, "
        f"BOT_START_STAGGER at its default"
    )
    started = time.perf_counter()
    load_before = os.getloadavg()
    results: list[BackendResult] = []
    before: dict[str, EnqueueResult | None] = {}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="wakeful-outbox-"))
        baseline_root = stack.enter_context(common.baseline_checkout(args.baseline))
        if "postgres" in names and args.postgres_url is None:
            try:
                args.postgres_url = stack.enter_context(running_postgres())
            except Exception as exc:  # no embedded Postgres here: say so, measure SQLite
                print(f"postgres: skipped, the embedded server did not start ({exc})")
                names = [n for n in names if n != "postgres"]
        for name in names:
            try:
                if baseline_root is not None:
                    before[name] = common.run_async(
                        lambda: baseline_enqueue(name, args, Path(tmp), baseline_root)  # noqa: B023
                    )
                result = common.run_async(
                    lambda: bench_backend(name, args, Path(tmp))  # noqa: B023
                )
            except RuntimeError as exc:
                print(f"error: {name}: {exc}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print("interrupted; servers stopped, temporary databases dropped", file=sys.stderr)
                return 130
            if result is not None:
                results.append(result)
    if not results:
        print("error: no backend was measured", file=sys.stderr)
        return 2
    print()
    print_table(results)
    print(
        "(times after `resume:` are from the restarted process's start. A message claimed at "
        "the kill is claimable\n"
        f" again once OUTBOX_LEASE={LEASE_S:g}s has run out (an idle worker looks again within "
        f"{IDLE_POLL:g}s). Bots are restored\n"
        " BOT_START_STAGGER (default 5s) apart, so the last connects ~5s x (bots - 1) after "
        "the first.)"
    )
    goals = evaluate_goals(results, before)
    rate = goals["accept_rate"]["sqlite_per_s"]
    print()
    cpu = goals["cpu_per_accept"]
    for name, ms in cpu["ms"].items():
        was = cpu["before_ms"].get(name)
        miss = (
            ""
            if ms is None or ms <= GOAL_CPU_MS_PER_ACCEPT
            else (f", missed by {ms - GOAL_CPU_MS_PER_ACCEPT:.2f} ms")
        )
        print(
            f"server CPU per accepted message ({name}): {_f(ms, '.2f')} ms"
            + (f" (before: {was:.2f} ms)" if was is not None else "")
            + f" (goal <= {GOAL_CPU_MS_PER_ACCEPT:g} ms): "
            + ("met" if ms is not None and ms <= GOAL_CPU_MS_PER_ACCEPT else "NOT met")
            + miss
        )
    print(
        f"accepted/s on SQLite: {_f(rate, ',.0f')} (goal >= {GOAL_ACCEPT_RATE:,.0f}): "
        f"{_verdict(goals['accept_rate']['met'])}"
    )
    lost = ", ".join(f"{r.backend} {r.lost}" for r in results)
    print(f"lost: {lost} (goal 0): {_verdict(goals['zero_lost']['met'])}")
    load_after = os.getloadavg()
    media = None
    if args.media > 0:
        with tempfile.TemporaryDirectory(prefix="wakeful-outbox-media-") as tmp:
            media = common.run_async(
                lambda: run_media(Path(tmp), ADMIN_TOKEN, args.media, args.media_concurrency)
            )
        print()
        print_media(media)
    print(
        f"run time {time.perf_counter() - started:.0f}s; load average (1 min) "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} CPUs"
    )
    for r in results:
        ms = cpu_ms_per_message(r.enqueue)
        if r.enqueue.server_cpu is not None and ms is not None:
            bound = (
                "CPU-bound: that is what one core gives"
                if r.enqueue.server_cpu >= 0.9
                else "under 90%: other processes took CPU from it, so a quiet machine does more"
            )
            print(
                f"{r.backend}: the server used {r.enqueue.server_cpu:.0%} of a core while "
                f"accepting, {ms:.2f} ms each (~{1000 / ms:,.0f}/s per free core); {bound}"
            )

    if args.json is not None:
        document = {
            "benchmark": "outbox",
            "settings": {
                "messages": args.messages,
                "resume_messages": args.resume_messages,
                "bots": args.bots,
                "concurrency": args.concurrency,
                "engine": ENGINE,
                "send_rate": 0,
                "outbox_lease_s": LEASE_S,
                "kill_at_share_sent": KILL_AT,
                "baseline": args.baseline,
            },
            "load_average_1min": {"before": load_before[0], "after": load_after[0]},
            "results": [
                {
                    **asdict(r),
                    "enqueue": {k: v for k, v in asdict(r.enqueue).items() if k != "ids"},
                    "server_cpu_ms_per_accept": cpu_ms_per_message(r.enqueue),
                    "resume_enqueue": {
                        k: v for k, v in asdict(r.resume_enqueue).items() if k != "ids"
                    },
                }
                for r in results
            ],
            "goals": goals,
            "media": asdict(media) if media is not None else None,
            "machine": common.machine_info(
                ("sqlalchemy", "aiosqlite", "asyncpg", "uvloop", "starlette", "uvicorn"),
                sqlite=sqlite3.sqlite_version,
            ),
        }
        common.write_json(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
