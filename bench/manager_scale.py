"""How the bot manager scales with the number of sessions: memory, periodic sweeps, listing.

Prints figures; it is not a pass/fail test. For each N (default 1,000 and 10,000):

1. Memory and load. N idle sessions (half IDLE, half STOPPED, with realistic fields) are
   bulk-inserted into a real SQLite database in a temporary directory, as rows made by
   `SessionRecord.row()`. `tracemalloc` then measures the Python memory `BotManager.load()`
   keeps for the N in-memory `BotSession` objects (snapshot before and after, the manager
   still referenced), divided by N. The same is reported for the mixed database below, as
   `load()` leaves it: `load()` marks every session stored in a running state STOPPED ("the
   process ended while it was running", one batched write), so the 80% of the mix stored
   running are STOPPED in memory and on disk afterwards. `load()` itself is timed on fresh
   copies of both databases, with the statements it writes counted (none for the idle set).
2. Sweeps. A realistic mix: 60% CONNECTED (fresh heartbeat, recent activity), 10%
   DISCONNECTED (next retry in the future), 10% STOPPED, 10% IDLE, 10% CONNECTED but idle for
   more than 24 h. After `load()`, the sessions it marked STOPPED are put back as a process
   that has been running them holds them: the stored rows are written back in one bulk UPDATE
   (the transitions `load()` added deleted), so guarded writes (`WHERE state = old`) succeed,
   and the in-memory records get the same fields. The manager runs on a ScriptedEngine with a
   clock frozen at the moment the data describes, so repeated runs see the same world. Timed
   with `time.perf_counter`: `health_sweep_once()` (nothing changes state), `cleanup_once()`
   on a fresh load (it expires the idle 10%, and the time includes their database writes),
   and `cleanup_once()` again once nothing is left to expire. Database writes made during
   each run are counted.
3. Listing. The real app (`python server.py`, BOT_ENGINE=none, 127.0.0.1 only) is started
   on the prepared database; `GET /api/sessions` with the admin token is timed (one warm-up,
   then the median of 5) and its size reported. Its own `load()` marks the sessions stored
   running STOPPED too, so it lists the mix as a restarted process sees it.

Log lines the manager writes are formatted at LOG_LEVEL (INFO, the production default) and
then discarded, so their cost is counted but the terminal is not flooded.

    .venv/bin/python bench/manager_scale.py [--sizes 1000,10000] [--repeats 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import hashlib
import http.client
import io
import json
import os
import pstats
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import _common as common  # noqa: E402
from loguru import logger  # noqa: E402
from sqlalchemy import bindparam, delete, event, func, insert, select, text, update  # noqa: E402

from bot.manager import BotManager, ManagerConfig  # noqa: E402
from bot.policy import Policy  # noqa: E402
from bot.states import RUNNING_STATES, SessionState  # noqa: E402
from bot.store import (  # noqa: E402
    BotStore,
    SessionRecord,
    bot_sessions,
    session_transitions,
    users,
)
from services.alerts import Alerter  # noqa: E402
from services.database import Database  # noqa: E402
from services.metrics import Metrics  # noqa: E402
from tests.engines import ScriptedEngine  # noqa: E402

S = SessionState

ADMIN_TOKEN = "bench-admin-token-" + "x" * 16  # only ever sent to a loopback server we started
DB_NAME = "wakeful.db"
SEED = 20_260_101

GOAL_BYTES_PER_IDLE_SESSION = 20_000
GOAL_SWEEP_MS = 100.0
GOAL_SWEEP_AT_N = 10_000

OP_TIMEOUT_S = 600.0  # one in-process load / sweep / cleanup / bulk insert
START_TIMEOUT_S = 120.0  # the server answering /health
REQUEST_TIMEOUT_S = 120.0  # one GET /api/sessions
STOP_TIMEOUT_S = 30.0  # SIGTERM to exit (SHUTDOWN_TIMEOUT is 10 s, its watchdog 11 s)

# Shares of the sweep mix, and of the idle set the memory goal is about.
MIX = {"connected": 0.6, "disconnected": 0.1, "stopped": 0.1, "idle": 0.1, "inactive_24h": 0.1}
IDLE_MIX = {"idle": 0.5, "stopped": 0.5}
KIND_STATE = {
    "connected": S.CONNECTED,
    "inactive_24h": S.CONNECTED,
    "disconnected": S.DISCONNECTED,
    "stopped": S.STOPPED,
    "idle": S.IDLE,
}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    now: datetime
    kinds: dict[str, int]
    user_rows: list[dict[str, Any]] = field(default_factory=list)
    session_rows: list[dict[str, Any]] = field(default_factory=list)
    transition_rows: list[dict[str, Any]] = field(default_factory=list)


def _assign_kinds(n: int, shares: dict[str, float], rng: random.Random) -> list[str]:
    kinds: list[str] = []
    for kind, share in shares.items():
        kinds += [kind] * round(n * share)
    first = next(iter(shares))
    kinds = (kinds + [first] * n)[:n]
    rng.shuffle(kinds)
    return kinds


def _ago(now: datetime, rng: random.Random, low: timedelta, high: timedelta) -> datetime:
    return now - timedelta(seconds=rng.uniform(low.total_seconds(), high.total_seconds()))


H = timedelta(hours=1)
D = timedelta(days=1)
SEC = timedelta(seconds=1)


def _record(
    kind: str, index: int, sid: str, owner: str | None, now: datetime, rng: random.Random
) -> SessionRecord:
    """One session as the app would have stored it, `kind` being a slot of the mix."""
    created = _ago(now, rng, 70 * D, 90 * D)
    record = SessionRecord(
        id=sid,
        user_id=owner,
        name=f"support-bot-{index:05d}",
        state=KIND_STATE[kind],
        state_changed_at=created,
        created_at=created,
        webhook_url=f"https://hooks.example.com/wakeful/{sid}" if index % 2 else None,
        metadata={"team": "support", "region": "eu-west"} if index % 3 else {},
    )
    if kind == "idle":
        return record
    phone = f"1555{rng.randrange(10**7):07d}"
    if kind in ("connected", "inactive_24h", "disconnected"):
        # Started within the last days (younger than SESSION_MAX_AGE = 7 d).
        low, high = (50 * H, 6 * D) if kind == "inactive_24h" else (H, 5 * D)
        started = _ago(now, rng, low, high)
        activity = (
            _ago(now, rng, 25 * H, 48 * H) if kind == "inactive_24h" else _ago(now, rng, 0 * H, H)
        )
    else:  # stopped by its owner some time ago
        started = _ago(now, rng, 12 * D, 60 * D)
        activity = started + timedelta(seconds=rng.uniform(3600, 10 * 86400))
    connected = started + timedelta(seconds=rng.uniform(5, 40))
    record.started_at = started
    record.last_activity_at = activity
    record.last_connected_at = connected
    record.linked_as = phone
    record.want_running = kind != "stopped"
    if kind in ("connected", "inactive_24h"):
        record.state_changed_at = connected
        record.state_reason = f"connected as {phone}"
        record.last_heartbeat_at = _ago(now, rng, 0 * SEC, 60 * SEC)
        record.health = "healthy"
    elif kind == "disconnected":
        dropped = _ago(now, rng, 5 * SEC, 120 * SEC)
        attempts = rng.randint(1, 4)
        record.state_changed_at = dropped
        record.state_reason = "crash: the page crashed"
        record.last_disconnected_at = dropped
        record.last_heartbeat_at = dropped - timedelta(seconds=20)
        record.next_retry_at = now + timedelta(seconds=rng.uniform(5, 30))
        record.reconnect_attempts = attempts
        record.error_count = attempts + rng.randint(0, 5)
        record.health = "warning"
    else:
        stopped = activity + timedelta(seconds=30)
        record.state_changed_at = stopped
        record.state_reason = "stopped by its owner"
        record.last_heartbeat_at = stopped - timedelta(seconds=10)
        record.health = "inactive"
    return record


def _history(kind: str, record: SessionRecord) -> list[dict[str, Any]]:
    """The transitions that led to the record's state (what `session_transitions` holds)."""
    steps: list[tuple[str | None, str, str]] = [(None, "IDLE", "created")]
    if kind != "idle":
        steps += [
            ("IDLE", "CONNECTING", "started by its owner"),
            ("CONNECTING", "SCAN_QR", "waiting for the phone to scan the QR code"),
            ("SCAN_QR", "CONNECTING", "linked; loading chats"),
            ("CONNECTING", "CONNECTED", record.state_reason or "connected"),
        ]
    if kind in ("disconnected", "stopped"):
        steps.append(("CONNECTED", record.state.value, record.state_reason or ""))
    rows = []
    for position, (src, dst, reason) in enumerate(steps):
        if position == 0:
            at = record.created_at
        elif position == len(steps) - 1:
            at = record.state_changed_at
        else:
            assert record.started_at is not None
            at = record.started_at + timedelta(seconds=position)
        rows.append(
            {
                "session_id": record.id,
                "at": at,
                "from_state": src,
                "to_state": dst,
                "reason": reason,
            }
        )
    return rows


def make_dataset(n: int, shares: dict[str, float], now: datetime, seed: int) -> Dataset:
    """N sessions: one in five owned by the admin, the rest by users holding four each."""
    rng = random.Random(seed)
    kinds = _assign_kinds(n, shares, rng)
    data = Dataset(now=now, kinds=dict(Counter(kinds)))
    seen: set[str] = set()
    for index, kind in enumerate(kinds):
        owner: str | None = None
        if index % 5:
            owner = f"u_{index // 5:08x}"
            if index % 5 == 1:
                data.user_rows.append(
                    {
                        "id": owner,
                        "name": f"customer {index // 5}",
                        "token_hash": hashlib.sha256(f"bench-{owner}".encode()).hexdigest(),
                        "created_at": now - 100 * D,
                    }
                )
        sid = f"bot_{rng.getrandbits(48):012x}"
        while sid in seen:
            sid = f"bot_{rng.getrandbits(48):012x}"
        seen.add(sid)
        record = _record(kind, index, sid, owner, now, rng)
        data.session_rows.append(record.row())
        data.transition_rows += _history(kind, record)
    return data


async def prepare(n: int, now: datetime, mix_db: Path, idle_db: Path) -> dict[str, int]:
    """Both databases of one N; returns the mix's count per kind."""
    mix = make_dataset(n, MIX, now, SEED + n)
    await write_database(mix_db, mix)
    kinds = mix.kinds
    del mix
    await write_database(idle_db, make_dataset(n, IDLE_MIX, now, SEED + n + 1))
    return kinds


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path.resolve()}"


async def write_database(path: Path, data: Dataset) -> None:
    """Migrate a fresh database to the app's schema, then bulk-insert the rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = Database(sqlite_url(path))
    try:
        async with asyncio.timeout(OP_TIMEOUT_S):
            await db.migrate()
            async with db.engine.begin() as conn:
                if data.user_rows:
                    await conn.execute(insert(users), data.user_rows)
                await conn.execute(insert(bot_sessions), data.session_rows)
                await conn.execute(insert(session_transitions), data.transition_rows)
            async with db.engine.connect() as conn:
                await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    finally:
        await db.dispose()


def copy_database(src: Path, dst: Path) -> None:
    """A consistent copy through SQLite's backup API (safe whatever the WAL holds)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for stale in (dst, dst.with_name(dst.name + "-wal"), dst.with_name(dst.name + "-shm")):
        stale.unlink(missing_ok=True)
    with (
        contextlib.closing(sqlite3.connect(src)) as source,
        contextlib.closing(sqlite3.connect(dst)) as target,
    ):
        source.backup(target)


# --------------------------------------------------------------------------------------------
# In-process measurements
# --------------------------------------------------------------------------------------------


class FrozenClock:
    """The moment the data describes: every run sees the same ages and the same deadlines."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return time.monotonic()


class WriteCounter:
    """Counts INSERT / UPDATE / DELETE statements sent through one Database."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        event.listen(db.engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        statement = str(args[2]).lstrip()[:6].upper()
        if statement in ("INSERT", "UPDATE", "DELETE"):
            self.count += 1


def build_manager(db: Database, clock: FrozenClock) -> BotManager:
    return BotManager(
        store=BotStore(db),
        engine=ScriptedEngine(),
        policy=Policy(),  # the defaults Settings has
        clock=clock,
        alerter=Alerter([], clock),
        metrics=Metrics(),
        config=ManagerConfig(),
    )


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    runs_ms: list[float]
    writes: list[int]
    results: list[dict[str, Any]]


def timing(runs: list[tuple[float, int, dict[str, Any]]]) -> Timing:
    ms = [seconds * 1000 for seconds, _, _ in runs]
    return Timing(
        median_ms=statistics.median(ms),
        min_ms=min(ms),
        runs_ms=[round(v, 3) for v in ms],
        writes=[w for _, w, _ in runs],
        results=[r for _, _, r in runs],
    )


async def timed_run(
    step: Callable[[], Awaitable[dict[str, Any]]], counter: WriteCounter
) -> tuple[float, int, dict[str, Any]]:
    gc.collect()
    writes_before = counter.count
    start = time.perf_counter()
    async with asyncio.timeout(OP_TIMEOUT_S):
        result = await step()
    elapsed = time.perf_counter() - start
    return elapsed, counter.count - writes_before, result


@dataclass
class MemoryResult:
    sessions: int
    bytes_per_session: float
    total_bytes: int
    peak_bytes_per_session: float  # traced peak during load (rows + records + sessions at once)
    top: list[dict[str, Any]]


async def measure_memory(src: Path, workdir: Path, n: int, clock: FrozenClock) -> MemoryResult:
    """On a copy of `src`: `load()` writes (it marks the sessions stored running STOPPED)."""
    path = workdir / "memory.db"
    copy_database(src, path)
    db = Database(sqlite_url(path))
    try:
        manager = build_manager(db, clock)
        async with asyncio.timeout(OP_TIMEOUT_S):
            # Warm up: the pooled connection, the compiled SELECT and the imports stay out.
            warm = await manager.store.all_sessions()
            del warm
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.take_snapshot()
                await manager.load()
                gc.collect()
                after = tracemalloc.take_snapshot()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        if len(manager.sessions) != n:
            raise RuntimeError(f"loaded {len(manager.sessions)} sessions, expected {n}")
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
        after = after.filter_traces(ignore)
        before = before.filter_traces(ignore)
        total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        top = [
            {
                "where": _short(str(stat.traceback[0])),
                "bytes_per_session": round(stat.size_diff / n, 1),
                "blocks_per_session": round(stat.count_diff / n, 2),
            }
            for stat in after.compare_to(before, "lineno")[:8]
        ]
        result = MemoryResult(n, total / n, total, peak / n, top)
        del manager  # kept referenced until the "after" snapshot
        return result
    finally:
        await db.dispose()
        remove_database(path)


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _short(location: str) -> str:
    root = str(REPO_ROOT) + os.sep
    if location.startswith(root):
        return location[len(root) :]
    marker = "site-packages" + os.sep
    at = location.find(marker)
    return location[at + len(marker) :] if at >= 0 else location


@dataclass
class Loaded:
    """A manager that has just run `load()` on a fresh copy of a database."""

    db: Database
    counter: WriteCounter
    manager: BotManager
    stored: list[SessionRecord]  # the rows as they were before load()
    transitions_before: int  # the highest transition id before load()
    run: tuple[float, int, dict[str, Any]]  # load(): seconds, writes, {"marked_stopped": k}


@contextlib.asynccontextmanager
async def loaded_copy(src: Path, path: Path, clock: FrozenClock) -> AsyncIterator[Loaded]:
    copy_database(src, path)
    db = Database(sqlite_url(path))
    try:
        counter = WriteCounter(db)
        manager = build_manager(db, clock)
        async with asyncio.timeout(OP_TIMEOUT_S):
            # Also warms the pooled connection and the compiled SELECT up, out of the timing.
            stored = await manager.store.all_sessions()
            async with db.engine.connect() as conn:
                last = await conn.scalar(select(func.max(session_transitions.c.id)))

        async def load() -> dict[str, Any]:
            await manager.load()
            return {}

        seconds, writes, _ = await timed_run(load, counter)
        running = {r.id for r in stored if r.state in RUNNING_STATES}
        marked = sum(1 for sid in running if manager.sessions[sid].state is S.STOPPED)
        yield Loaded(
            db, counter, manager, stored, int(last or 0), (seconds, writes, {"marked": marked})
        )
    finally:
        await db.dispose()
        remove_database(path)


async def restore_running(loaded: Loaded) -> int:
    """Undo what `load()` did to the sessions stored running, so the mix is what a process
    that has been running it holds: the stored rows written back in one bulk UPDATE, the
    transitions `load()` added deleted, and the in-memory records given the same fields.
    Returns how many sessions were put back."""
    sessions = loaded.manager.sessions
    changed = [r for r in loaded.stored if sessions[r.id].record != r]
    if changed:
        rows = [{f"v_{k}": v for k, v in record.row().items()} for record in changed]
        columns = [k for k in changed[0].row() if k != "id"]
        statement = (
            update(bot_sessions)
            .where(bot_sessions.c.id == bindparam("v_id"))
            .values({k: bindparam(f"v_{k}") for k in columns})
        )
        async with asyncio.timeout(OP_TIMEOUT_S), loaded.db.engine.begin() as conn:
            await conn.execute(statement, rows)
            await conn.execute(
                delete(session_transitions).where(
                    session_transitions.c.id > loaded.transitions_before
                )
            )
        for stored in changed:
            record = sessions[stored.id].record
            for f in fields(SessionRecord):
                setattr(record, f.name, getattr(stored, f.name))
    # Memory, disk and the data as generated must now agree.
    wanted = Counter(r.state.value for r in loaded.stored)
    in_memory = Counter(s.state.value for s in sessions.values())
    async with loaded.db.engine.connect() as conn:
        by_state = select(bot_sessions.c.state, func.count()).group_by(bot_sessions.c.state)
        on_disk = Counter({str(state): int(count) for state, count in await conn.execute(by_state)})
    if not wanted == in_memory == on_disk:
        raise RuntimeError(
            f"the mix was not restored: stored {dict(wanted)}, in memory {dict(in_memory)}, "
            f"on disk {dict(on_disk)}"
        )
    return len(changed)


@dataclass
class LoadResult:
    """`BotManager.load()` on fresh copies of one database (the writes are its marking of
    the sessions stored running as STOPPED, in one transaction)."""

    timing: Timing
    marked_stopped: int


def load_result(runs: list[tuple[float, int, dict[str, Any]]]) -> LoadResult:
    return LoadResult(timing(runs), int(runs[0][2]["marked"]))


async def measure_load(src: Path, workdir: Path, clock: FrozenClock, repeats: int) -> LoadResult:
    runs = []
    for attempt in range(repeats):
        async with loaded_copy(src, workdir / f"load-{attempt}.db", clock) as loaded:
            runs.append(loaded.run)
    return load_result(runs)


@dataclass
class SweepResult:
    load: LoadResult
    restored: int  # sessions put back into their running state after load()
    sweep: Timing
    cleanup_steady: Timing
    cleanup_expiring: Timing
    expired_per_run: list[int]


async def measure_sweeps(
    mix_db: Path, workdir: Path, n: int, clock: FrozenClock, repeats: int
) -> SweepResult:
    expiring: list[tuple[float, int, dict[str, Any]]] = []
    sweeps: list[tuple[float, int, dict[str, Any]]] = []
    steady: list[tuple[float, int, dict[str, Any]]] = []
    loads: list[tuple[float, int, dict[str, Any]]] = []
    restored = 0
    for attempt in range(repeats):
        async with loaded_copy(mix_db, workdir / f"sweep-{attempt}.db", clock) as loaded:
            loads.append(loaded.run)
            restored = await restore_running(loaded)
            manager, counter = loaded.manager, loaded.counter
            if len(manager.sessions) != n:
                raise RuntimeError(f"loaded {len(manager.sessions)} sessions, expected {n}")
            if attempt == 0:
                # The full mix, running: nothing is due, no level changes.
                for _ in range(repeats):
                    sweeps.append(await timed_run(manager.health_sweep_once, counter))
            # A fresh load: the 10% idle for > 24 h are expired, with their writes.
            expiring.append(await timed_run(manager.cleanup_once, counter))
            if attempt == 0:
                # What cleanup costs once nothing is left to expire.
                for _ in range(repeats):
                    steady.append(await timed_run(manager.cleanup_once, counter))
    return SweepResult(
        load=load_result(loads),
        restored=restored,
        sweep=timing(sweeps),
        cleanup_steady=timing(steady),
        cleanup_expiring=timing(expiring),
        expired_per_run=[int(r["removed"]) for _, _, r in expiring],
    )


async def profile_steps(mix_db: Path, workdir: Path, clock: FrozenClock, top: int) -> str:
    """cProfile of one sweep and one expiring cleanup (this thread only: the SQLite work
    runs in aiosqlite's thread and shows up here as waiting)."""
    out = io.StringIO()
    async with loaded_copy(mix_db, workdir / "profile.db", clock) as loaded:
        await restore_running(loaded)
        manager = loaded.manager
        async with asyncio.timeout(OP_TIMEOUT_S):
            for name, step in (
                ("health_sweep_once", manager.health_sweep_once),
                ("cleanup_once (expiring)", manager.cleanup_once),
            ):
                profiler = cProfile.Profile()
                profiler.enable()
                await step()
                profiler.disable()
                out.write(f"\n--- cProfile: {name} ---\n")
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# The real server
# --------------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def http_get(port: int, path: str, token: str | None) -> tuple[int, bytes, float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn = http.client.HTTPConnection(common.LOOPBACK, port, timeout=REQUEST_TIMEOUT_S)
    try:
        start = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status, body, time.perf_counter() - start
    finally:
        conn.close()


@dataclass
class ApiResult:
    ready_s: float
    first_ms: float
    list_timing: Timing
    response_bytes: int
    rss_mb_loaded: float | None
    rss_mb_after_lists: float | None
    history_ms: float | None
    history_bytes: int | None
    shutdown_s: float
    exit_status: int | None
    shutdown_errors: list[str]
    states_after_shutdown: dict[str, int]


def count_states(path: Path) -> dict[str, int]:
    """Sessions per stored state (what the next boot will see)."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
            rows = conn.execute("SELECT state, COUNT(*) FROM bot_sessions GROUP BY state")
            return {str(state): int(count) for state, count in rows}
    except sqlite3.Error:
        return {}


def measure_api(
    db_path: Path, workdir: Path, n: int, repeats: int, with_history: bool
) -> ApiResult:
    data_dir = workdir / "server-data"
    copy_database(db_path, data_dir / DB_NAME)
    server = common.start_wakeful(
        "server.py",
        common.free_ports(1)[0],
        data_dir,
        workdir / "server.log",
        ADMIN_TOKEN=ADMIN_TOKEN,
        BOT_ENGINE="none",
    )
    stopped: tuple[float, int | None] | None = None
    try:
        ready_s = common.wait_ready(
            server, "/health", START_TIMEOUT_S, probe_timeout=REQUEST_TIMEOUT_S
        )
        rss_loaded = rss_mb(server.proc.pid)
        status, body, first = http_get(server.port, "/api/sessions", ADMIN_TOKEN)
        if status != 200:
            raise RuntimeError(f"GET /api/sessions: HTTP {status}: {body[:300]!r}")
        total = json.loads(body)["total"]
        if total != n:
            raise RuntimeError(f"GET /api/sessions listed {total} sessions, expected {n}")
        runs: list[tuple[float, int, dict[str, Any]]] = []
        size = len(body)
        for _ in range(repeats):
            status, body, seconds = http_get(server.port, "/api/sessions", ADMIN_TOKEN)
            if status != 200:
                raise RuntimeError(f"GET /api/sessions: HTTP {status}")
            size = len(body)
            runs.append((seconds, 0, {}))
        rss_after = rss_mb(server.proc.pid)
        history_ms = history_bytes = None
        if with_history:
            status, body, seconds = http_get(
                server.port, "/api/sessions?include=history", ADMIN_TOKEN
            )
            if status != 200:
                raise RuntimeError(f"GET /api/sessions?include=history: HTTP {status}")
            history_ms, history_bytes = seconds * 1000, len(body)
    finally:
        stopped = common.stop_server(server, STOP_TIMEOUT_S)
    log = server.log_path.read_text(errors="replace")
    problems = [
        line.strip()[:300]
        for line in log.splitlines()
        if "did not all stop" in line or "did not finish" in line or "Traceback" in line
    ]
    return ApiResult(
        ready_s=ready_s,
        first_ms=first * 1000,
        list_timing=Timing(
            median_ms=statistics.median(seconds * 1000 for seconds, _, _ in runs),
            min_ms=min(seconds * 1000 for seconds, _, _ in runs),
            runs_ms=[round(seconds * 1000, 3) for seconds, _, _ in runs],
            writes=[],
            results=[],
        ),
        response_bytes=size,
        rss_mb_loaded=rss_loaded,
        rss_mb_after_lists=rss_after,
        history_ms=history_ms,
        history_bytes=history_bytes,
        shutdown_s=stopped[0],
        exit_status=stopped[1],
        shutdown_errors=problems,
        states_after_shutdown=count_states(data_dir / DB_NAME),
    )


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def configure_logging(level: str) -> None:
    """Format the manager's log lines at `level` (their cost is real), then drop them."""

    def discard(_message: Any) -> None:
        return None

    logger.remove()
    logger.configure(extra={"component": "wakeful"})
    logger.add(
        discard,
        level=level,
        format="{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[component]: <9} | "
        "{message}\n",
    )


def parse_sizes(value: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {value!r}") from None
    if not sizes or any(size < 10 for size in sizes):
        raise argparse.ArgumentTypeError("sizes must be integers >= 10")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--sizes", type=parse_sizes, default=[1000, 10000], help="session counts (1000,10000)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (5)")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level the manager's (discarded) log lines are formatted at (INFO)",
    )
    parser.add_argument("--no-api", action="store_true", help="skip the server measurement")
    parser.add_argument(
        "--history", action="store_true", help="also time GET /api/sessions?include=history"
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile a sweep and a cleanup at the largest N"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write figures")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'N':>7} {'B/idle sess':>11} {'B/mix sess':>10} {'load ms':>15} {'sweep ms':>14} "
        f"{'cleanup ms':>14} {'cleanup+expire ms':>22} {'list ms':>14} {'list MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        sweep, steady, expiring = r["sweep"], r["cleanup_steady"], r["cleanup_expiring"]
        load_idle, load_mix = r["load_idle"]["timing"], r["load_mix"]["timing"]
        api = r.get("api")
        list_ms = (
            f"{api['list_timing']['median_ms']:.1f}/{api['list_timing']['min_ms']:.1f}"
            if api
            else "n/a"
        )
        list_mb = f"{api['response_bytes'] / 1e6:.2f}" if api else "n/a"
        expired = r["expired_per_run"][0] if r["expired_per_run"] else 0
        print(
            f"{r['n']:>7} {r['memory_idle']['bytes_per_session']:>11.0f} "
            f"{r['memory_mix']['bytes_per_session']:>10.0f} "
            f"{load_idle['median_ms']:>7.1f}/{load_mix['median_ms']:<7.1f} "
            f"{sweep['median_ms']:>6.1f}/{sweep['min_ms']:<7.1f}"
            f"{steady['median_ms']:>6.1f}/{steady['min_ms']:<7.1f}"
            f"{expiring['median_ms']:>8.0f}/{expiring['min_ms']:<6.0f}({expired:>5} exp)"
            f" {list_ms:>14} {list_mb:>8}"
        )
    print("(times are median/min of the runs; load ms: median for the idle set / the mix, whose")
    print(" load() marks the sessions stored running STOPPED; sweep and cleanup run over the mix")
    print(" put back to running after load(); cleanup ms: nothing to expire; cleanup+expire ms:")
    print(" a fresh load of the mix, expiring the 10% idle > 24 h, writes included)")


def evaluate_goals(results: list[dict[str, Any]]) -> dict[str, Any]:
    memory_ok = all(
        r["memory_idle"]["bytes_per_session"] < GOAL_BYTES_PER_IDLE_SESSION for r in results
    )
    judged = [r for r in results if r["n"] <= GOAL_SWEEP_AT_N]
    at_n = max((r["n"] for r in judged), default=None)
    worst_sweep = max((r["sweep"]["median_ms"] for r in judged), default=None)
    worst_cleanup = max((r["cleanup_steady"]["median_ms"] for r in judged), default=None)
    return {
        "memory": {
            "goal": f"< {GOAL_BYTES_PER_IDLE_SESSION} bytes per idle session (tracemalloc)",
            "worst_bytes_per_session": max(r["memory_idle"]["bytes_per_session"] for r in results),
            "met": memory_ok,
        },
        "health_sweep": {
            "goal": f"< {GOAL_SWEEP_MS:.0f} ms median at N = {GOAL_SWEEP_AT_N}, nothing changing",
            "judged_at_n": at_n,
            "worst_median_ms": worst_sweep,
            "met": None if worst_sweep is None else worst_sweep < GOAL_SWEEP_MS,
        },
        "cleanup": {
            "goal": f"< {GOAL_SWEEP_MS:.0f} ms median at N = {GOAL_SWEEP_AT_N}, nothing to expire",
            "judged_at_n": at_n,
            "worst_median_ms": worst_cleanup,
            "met": None if worst_cleanup is None else worst_cleanup < GOAL_SWEEP_MS,
            "expiring_run": "reported, no goal: it writes each expired session",
        },
    }


def _verdict(met: bool | None) -> str:
    return "not judged" if met is None else ("met" if met else "NOT met")


def print_goals(goals: dict[str, Any]) -> None:
    mem, sweep, cleanup = goals["memory"], goals["health_sweep"], goals["cleanup"]
    print(
        f"memory:  worst {mem['worst_bytes_per_session']:.0f} B per idle session "
        f"(goal < {GOAL_BYTES_PER_IDLE_SESSION} B): {_verdict(mem['met'])}"
    )
    where = sweep["judged_at_n"]
    note = "" if where == GOAL_SWEEP_AT_N else f" (judged at N = {where}, not {GOAL_SWEEP_AT_N})"
    print(
        f"sweep:   worst median {_fmt(sweep['worst_median_ms'])} ms "
        f"(goal < {GOAL_SWEEP_MS:.0f} ms){note}: {_verdict(sweep['met'])}"
    )
    print(
        f"cleanup: worst median {_fmt(cleanup['worst_median_ms'])} ms with nothing to expire "
        f"(goal < {GOAL_SWEEP_MS:.0f} ms){note}: {_verdict(cleanup['met'])}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    sizes: list[int] = args.sizes
    print(
        f"sizes {', '.join(map(str, sizes))}; {args.repeats} timed run(s) per figure; "
        f"{os.cpu_count()} CPUs; log lines formatted at {args.log_level} and discarded"
    )
    results: list[dict[str, Any]] = []
    profile_text = ""
    with tempfile.TemporaryDirectory(prefix="wakeful-scale-") as tmp:
        root = Path(tmp)
        for n in sizes:
            workdir = root / f"n{n}"
            now = datetime.now(UTC).replace(microsecond=0)
            clock = FrozenClock(now)
            mix_db = workdir / "mix" / DB_NAME
            idle_db = workdir / "idle" / DB_NAME

            started = time.perf_counter()
            kinds = common.run_async(lambda: prepare(n, now, mix_db, idle_db))  # noqa: B023
            prep_s = time.perf_counter() - started
            print(f"\nN = {n}: databases prepared in {prep_s:.1f}s (mix {kinds})", flush=True)

            memory_idle = common.run_async(
                lambda: measure_memory(idle_db, workdir, n, clock)  # noqa: B023
            )
            memory_mix = common.run_async(
                lambda: measure_memory(mix_db, workdir, n, clock)  # noqa: B023
            )
            print(
                f"  memory: {memory_idle.bytes_per_session:.0f} B per idle session, "
                f"{memory_mix.bytes_per_session:.0f} B per session of the mix as load() leaves "
                f"it (peak during load {memory_idle.peak_bytes_per_session:.0f} B/session)",
                flush=True,
            )
            load_idle = common.run_async(
                lambda: measure_load(idle_db, workdir, clock, args.repeats)  # noqa: B023
            )
            sweeps = common.run_async(
                lambda: measure_sweeps(mix_db, workdir, n, clock, args.repeats)  # noqa: B023
            )
            load_mix = sweeps.load
            print(
                f"  load(): {load_idle.timing.median_ms:.1f} ms for the idle set "
                f"(writes {load_idle.timing.writes[0]}), {load_mix.timing.median_ms:.1f} ms for "
                f"the mix, marking the {load_mix.marked_stopped} stored running STOPPED "
                f"(writes {load_mix.timing.writes[0]})",
                flush=True,
            )
            print(
                f"  over the mix put back to running ({sweeps.restored} sessions): "
                f"health_sweep_once {sweeps.sweep.median_ms:.1f} ms, cleanup_once "
                f"{sweeps.cleanup_steady.median_ms:.1f} ms (nothing to expire), "
                f"{sweeps.cleanup_expiring.median_ms:.0f} ms expiring "
                f"{sweeps.expired_per_run[0]} (writes {sweeps.cleanup_expiring.writes[0]})",
                flush=True,
            )
            for label, t in (("sweep", sweeps.sweep), ("cleanup", sweeps.cleanup_steady)):
                if any(t.writes):
                    print(f"  warning: the {label} runs wrote to the database: {t.writes}")
            entry: dict[str, Any] = {
                "n": n,
                "mix": kinds,
                "prepare_s": round(prep_s, 2),
                "load_ms": round(load_mix.timing.median_ms, 1),
                "load_idle": asdict(load_idle),
                "load_mix": asdict(load_mix),
                "restored_running": sweeps.restored,
                "memory_idle": asdict(memory_idle),
                "memory_mix": asdict(memory_mix),
                "sweep": asdict(sweeps.sweep),
                "cleanup_steady": asdict(sweeps.cleanup_steady),
                "cleanup_expiring": asdict(sweeps.cleanup_expiring),
                "expired_per_run": sweeps.expired_per_run,
            }
            if not args.no_api:
                try:
                    api = measure_api(mix_db, workdir, n, args.repeats, args.history)
                except RuntimeError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                entry["api"] = asdict(api)
                history = (
                    f", include=history {api.history_ms:.0f} ms "
                    f"({(api.history_bytes or 0) / 1e6:.1f} MB)"
                    if api.history_ms is not None
                    else ""
                )
                print(
                    f"  GET /api/sessions {api.list_timing.median_ms:.1f} ms median "
                    f"(first {api.first_ms:.1f} ms, {api.response_bytes / 1e6:.2f} MB){history}; "
                    f"server ready in {api.ready_s:.1f}s, RSS {_fmt(api.rss_mb_loaded)} MB; "
                    f"SIGTERM to exit {api.shutdown_s:.1f}s (status {api.exit_status})",
                    flush=True,
                )
                for line in api.shutdown_errors:
                    print(f"  server log: {line}")
                print(f"  stored states after the server's shutdown: {api.states_after_shutdown}")
            results.append(entry)
            if args.profile and n == max(sizes):
                profile_text = common.run_async(
                    lambda: profile_steps(mix_db, workdir, clock, 25)  # noqa: B023
                )

    print()
    print_table(results)
    largest = results[-1]
    print(f"\nwhere the idle sessions' memory goes at N = {largest['n']} (bytes per session):")
    for item in largest["memory_idle"]["top"][:6]:
        print(f"  {item['bytes_per_session']:>8.1f}  {item['where']}")
    apis = [r["api"] for r in results if "api" in r]
    if len(apis) >= 2 and apis[0]["rss_mb_loaded"] and apis[-1]["rss_mb_loaded"]:
        delta_n = results[-1]["n"] - results[0]["n"]
        per = (apis[-1]["rss_mb_loaded"] - apis[0]["rss_mb_loaded"]) * 1024 * 1024 / delta_n
        print(f"server RSS grows by ~{per:.0f} B per extra session (after load, before lists)")
    goals = evaluate_goals(results)
    print()
    print_goals(goals)
    if profile_text:
        print(profile_text)

    if args.json is not None:
        document = {
            "benchmark": "manager_scale",
            "settings": {
                "sizes": sizes,
                "repeats": args.repeats,
                "log_level": args.log_level,
                "mix": MIX,
                "idle_mix": IDLE_MIX,
            },
            "results": results,
            "goals": goals,
            "machine": common.machine_info(
                ("sqlalchemy", "aiosqlite", "uvloop", "starlette", "uvicorn"),
                sqlite=sqlite3.sqlite_version,
                tmpdir=tempfile.gettempdir(),
            ),
        }
        common.write_json(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
