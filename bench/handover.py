"""Handover benchmark: two real `python server.py` nodes on one Postgres database, in demo
mode (real Chromium, the simulator), as a platform's deploy runs them.

Node A links N bots and sends messages; node B starts with its own DATA_DIR and passes its
health check; then A gets SIGTERM (a deploy) or SIGKILL (a crash). Printed figures: seconds
from the signal to every bot CONNECTED on B, seconds with two browsers on one bot's link
(sampled every 100 ms from the process table; goal 0), messages lost (goal 0) and messages
sent more than once (attempts > 1 after the signal: at most those in flight at a SIGKILL).

Goals: the SIGTERM handover of 10 bots under 15 s; the SIGKILL takeover within the lease
time plus 10 s.

The browser is the one the image runs (Debian's headless shell, what the server picks by
itself when it is installed); `--chromium PATH` measures another one.

    python bench/handover.py [--bots 10] [--postgres-url URL] [--chromium PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import _common as common  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bot.engines.whatsapp.browser import find_chromium  # noqa: E402

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
ADMIN = "admin-token-for-handover-bench"
LEASE_SECONDS = 10
WAIT = 180.0


def env(database_url: str, chromium: Path) -> dict[str, str]:
    return {
        "ADMIN_TOKEN": ADMIN,
        "SESSION_ENCRYPTION_KEY": "handover-bench-encryption-key-0001",
        "DATABASE_URL": database_url,
        "WHATSAPP_SIMULATOR": "1",
        "CHROMIUM_PATH": str(chromium),
        "BOT_START_STAGGER": "200ms",
        "BOT_START_CONCURRENCY": "3",
        "PROFILE_BACKUP_DELAY": "2s",
        "SHUTDOWN_TIMEOUT": "30s",
        "NODE_LEASE": f"{LEASE_SECONDS}s",
        "NODE_RENEW_INTERVAL": "2s",
        "SEND_RATE": "600",
        "LOG_LEVEL": "INFO",
    }


def api(port: int, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(
        method,
        f"http://127.0.0.1:{port}{path}",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
        **kw,
    )


def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def states(port: int, bots: list[str]) -> dict[str, tuple[str, str | None]]:
    found = {}
    for bot in bots:
        document = api(port, "GET", f"/api/sessions/{bot}").json()
        found[bot] = (document["state"], document.get("node"))
    return found


class TwoBrowserWatch:
    """Samples the process table: for each bot, is a browser running on its profile in both
    nodes' DATA_DIRs at once? Accumulates those seconds."""

    def __init__(self, dirs: list[Path], bots: list[str]) -> None:
        self.dirs = [str(d.resolve()) for d in dirs]
        self.bots = bots
        self.overlap = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            holders: dict[str, set[str]] = {bot: set() for bot in self.bots}
            for process in psutil.process_iter(["cmdline"]):
                line = " ".join(process.info.get("cmdline") or [])
                if "--user-data-dir" not in line:
                    continue
                for root in self.dirs:
                    for bot in self.bots:
                        if f"{root}/profiles/{bot}" in line:
                            holders[bot].add(root)
            now = time.monotonic()
            if any(len(roots) > 1 for roots in holders.values()):
                self.overlap += now - last
            last = now
            self._stop.wait(0.1)

    def __enter__(self) -> TwoBrowserWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


async def _create_db(admin: str, name: str, drop: bool) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin, timeout=10)
    try:
        if drop:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _outbox(url: str) -> list[tuple[str, str, int]]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch("SELECT id, status, attempts FROM outbox_messages")
    finally:
        await conn.close()
    return [(r["id"], r["status"], r["attempts"]) for r in rows]


def run_once(
    sig: signal.Signals,
    bots_wanted: int,
    postgres_url: str,
    chromium: Path,
    root: Path,
    logs: Path | None,
) -> dict[str, Any]:
    admin = make_url(postgres_url).set(drivername="postgresql")
    name = f"wakeful_handover_{uuid.uuid4().hex[:10]}"
    asyncio.run(_create_db(admin.render_as_string(hide_password=False), name, False))
    database = admin.set(database=name).render_as_string(hide_password=False)
    port_a, port_b = common.free_ports(2)
    dir_a, dir_b = root / f"{sig.name}-a", root / f"{sig.name}-b"
    dir_a.mkdir(parents=True)
    dir_b.mkdir(parents=True)
    log_dir = logs or root
    log_dir.mkdir(parents=True, exist_ok=True)
    settings = env(database, chromium)
    a = common.start_wakeful("A", port_a, dir_a, log_dir / f"{sig.name}-a.log", **settings)
    b = None
    try:
        common.wait_ready(a, "/health", 60)
        bots = []
        for n in range(bots_wanted):
            created = api(port_a, "POST", "/api/sessions", json={"name": f"bot{n}"})
            created.raise_for_status()
            bots.append(created.json()["id"])
        for bot in bots:
            until(lambda bot=bot: states(port_a, [bot])[bot][0] == "SCAN_QR", WAIT, "a QR")
            api(port_a, "POST", f"/api/sessions/{bot}/simulator", json={"action": "scan"})
        until(
            lambda: all(s == "CONNECTED" for s, _ in states(port_a, bots).values()),
            WAIT,
            "every bot linked on A",
        )
        time.sleep(3)  # past PROFILE_BACKUP_DELAY: a SIGKILL finds the link backed up
        messages = []
        for bot in bots:
            for n in range(3):
                sent = api(
                    port_a,
                    "POST",
                    f"/api/sessions/{bot}/messages",
                    json={"to": "+15550001111", "text": f"{bot} {n}"},
                )
                messages.append(sent.json()["id"])
        b = common.start_wakeful("B", port_b, dir_b, log_dir / f"{sig.name}-b.log", **settings)
        common.wait_ready(b, "/health", 60)
        # "CONNECTED" alone is not the handover: after a SIGKILL the old node's rows still
        # say CONNECTED, with its lease, until the lease expires. Each bot must be on B.
        node_b = api(port_b, "GET", "/api/metrics").json()["cluster"]["node"]
        with TwoBrowserWatch([dir_a, dir_b], bots) as watch:
            signalled = time.monotonic()
            signalled_at = time.strftime("%H:%M:%S")
            if sig is signal.SIGTERM:
                common.stop_server(a, 60)
            else:
                a.proc.send_signal(signal.SIGKILL)
                a.proc.wait(timeout=10)
                a.log_file.close()
            for bot in bots:
                sent = api(
                    port_b,
                    "POST",
                    f"/api/sessions/{bot}/messages",
                    json={"to": "+15550001111", "text": f"{bot} after"},
                )
                messages.append(sent.json()["id"])
            until(
                lambda: all(
                    seen == ("CONNECTED", node_b) for seen in states(port_b, bots).values()
                ),
                WAIT,
                "every bot CONNECTED on B",
            )
            handover = time.monotonic() - signalled
            print(f"{sig.name} sent at {signalled_at}; every bot on B {time.strftime('%H:%M:%S')}")
            deadline = time.monotonic() + 60
            rows = asyncio.run(_outbox(database))
            while time.monotonic() < deadline and any(r[1] != "sent" for r in rows):
                time.sleep(0.5)
                rows = asyncio.run(_outbox(database))
        lost = sum(1 for r in rows if r[1] != "sent") + len(set(messages) - {r[0] for r in rows})
        twice = sum(1 for r in rows if r[2] > 1)
        return {
            "signal": sig.name,
            "bots": bots_wanted,
            "seconds_to_all_connected_on_b": round(handover, 2),
            "seconds_two_browsers_on_one_link": round(watch.overlap, 2),
            "messages": len(messages),
            "messages_lost": lost,
            "messages_sent_again": twice,
        }
    finally:
        if b is not None:
            common.stop_server(b, 60)
        if a.proc.poll() is None:
            common.stop_server(a, 60)
        common.kill_strays(root)
        asyncio.run(_create_db(admin.render_as_string(hide_password=False), name, True))


def headlines(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A few figures for bench/run_all.py's summary table."""
    rows = []
    for result in results:
        term = result["signal"] == "SIGTERM"
        goal = 15.0 if term else LEASE_SECONDS + 10.0
        seconds = result["seconds_to_all_connected_on_b"]
        rows += [
            {
                "figure": f"{result['signal']}: {result['bots']} bots CONNECTED on the new node",
                "value": f"{seconds:.1f} s",
                "goal": f"< {goal:.0f} s",
                "met": seconds < goal,
            },
            {
                "figure": f"{result['signal']}: seconds with two browsers on one link",
                "value": f"{result['seconds_two_browsers_on_one_link']:.1f} s",
                "goal": "0",
                "met": result["seconds_two_browsers_on_one_link"] == 0,
            },
            {
                "figure": f"{result['signal']}: messages lost / sent again",
                "value": f"{result['messages_lost']} / {result['messages_sent_again']} "
                f"of {result['messages']}",
                "goal": "0 / 0" if term else "0 / ≤ in flight",
                "met": result["messages_lost"] == 0
                and (not term or result["messages_sent_again"] == 0),
            },
        ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bots", type=int, default=10)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--signal", choices=["SIGTERM", "SIGKILL"], action="append", help="only this one"
    )
    parser.add_argument(
        "--logs", type=Path, help="keep both nodes' logs here (to see where the time went)"
    )
    parser.add_argument(
        "--chromium",
        type=Path,
        default=None,
        help="CHROMIUM_PATH for both nodes (default: what the server picks, as in the image)",
    )
    args = parser.parse_args()
    chromium = args.chromium or find_chromium(None).path
    if chromium is None:
        parser.error("no Debian Chromium found: install chromium-headless-shell or --chromium")
    print(f"browser: {chromium}", flush=True)
    wanted = [signal.Signals[name] for name in args.signal or ["SIGTERM", "SIGKILL"]]
    results = []
    with tempfile.TemporaryDirectory(prefix="wakeful-handover-") as tmp:
        for sig in wanted:
            result = run_once(sig, args.bots, args.postgres_url, chromium, Path(tmp), args.logs)
            results.append(result)
            goal = 15.0 if sig is signal.SIGTERM else LEASE_SECONDS + 10.0
            print(
                f"{sig.name}: {result['bots']} bots CONNECTED on the new node "
                f"{result['seconds_to_all_connected_on_b']:.1f}s after the signal "
                f"(goal < {goal:.0f}s); two browsers on one link "
                f"{result['seconds_two_browsers_on_one_link']:.1f}s (goal 0); "
                f"messages {result['messages']}, lost {result['messages_lost']} (goal 0), "
                f"sent again {result['messages_sent_again']}"
            )
    if args.json:
        common.write_json(
            args.json,
            {
                "machine": common.machine_info(["httpx", "psutil"]),
                "chromium": str(chromium),
                "results": results,
                "headlines": headlines(results),
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
