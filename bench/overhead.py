"""The fixed overhead of the bots: the server process and Playwright's Node driver, idle.

Prints figures; it is not a pass/fail test. `python server.py` runs in demo mode
(WHATSAPP_SIMULATOR=1, the WhatsApp engine) on a free loopback port with its own temporary
DATA_DIR; one bot is created and left showing its QR code (the driver starts with the first
bot). A few seconds later the PSS of the server process and of its children apart from the
bot's browser tree (the driver) is read from /proc/PID/smaps_rollup, and their anonymous
part; the browser's is shown too. With `--baseline REF`, that commit's
server is measured the same way, one after the other, in the same run.

Goal (issue 19): server + driver at most 150 MB PSS idle.

    .venv/bin/python bench/overhead.py [--settle 5] [--baseline REF] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import _common as common  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402

from services.procmem import anonymous, smaps_rollup  # noqa: E402

GOAL_MB = 150.0
ADMIN_TOKEN = "bench-overhead-admin-token-" + "x" * 16  # only sent to our loopback server
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
MB = 1024 * 1024


@dataclass
class Overhead:
    name: str
    server_pss_mb: float
    server_anon_mb: float
    driver_pss_mb: float
    driver_anon_mb: float
    browser_pss_mb: float

    @property
    def total_mb(self) -> float:
        return self.server_pss_mb + self.driver_pss_mb


def pss_and_anon(pids: list[int]) -> tuple[float, float]:
    pss = anon = 0
    for pid in pids:
        fields = smaps_rollup(pid) or {}
        pss += fields.get("Pss", 0)
        anon += anonymous(fields)
    return pss / MB, anon / MB


def measure(name: str, root: Path, workdir: Path, settle: float) -> Overhead:
    data_dir = workdir / name / "data"
    data_dir.mkdir(parents=True)
    (port,) = common.free_ports(1)
    server = common.start_wakeful_in(
        root,
        name,
        port,
        data_dir,
        workdir / name / "server.log",
        {"WHATSAPP_SIMULATOR": "1", "BOT_ENGINE": "whatsapp", "ADMIN_TOKEN": ADMIN_TOKEN},
    )
    try:
        common.wait_ready(server, "/health", START_TIMEOUT_S)
        with httpx.Client(
            base_url=f"http://{common.LOOPBACK}:{port}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30,
        ) as api:
            created = api.post("/api/sessions", json={"name": "overhead"})
            created.raise_for_status()
            bot = created.json()["id"]
            deadline = time.monotonic() + START_TIMEOUT_S
            while api.get(f"/api/sessions/{bot}").json()["state"] != "SCAN_QR":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: the bot showed no QR code in time")
                time.sleep(0.25)
        time.sleep(settle)
        proc = psutil.Process(server.proc.pid)
        children = proc.children(recursive=True)
        browser: set[int] = set()
        for child in children:
            with contextlib.suppress(psutil.Error):
                if any(a.startswith("--user-data-dir=") for a in child.cmdline()):
                    browser.add(child.pid)
                    browser.update(c.pid for c in child.children(recursive=True))
        drivers = [c.pid for c in children if c.pid not in browser]
        server_pss, server_anon = pss_and_anon([proc.pid])
        driver_pss, driver_anon = pss_and_anon(drivers)
        browser_pss, _ = pss_and_anon(sorted(browser))
        return Overhead(name, server_pss, server_anon, driver_pss, driver_anon, browser_pss)
    finally:
        common.stop_server(server, STOP_TIMEOUT_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after /health (5)")
    parser.add_argument("--baseline", default=None, metavar="REF", help="also measure REF")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write figures")
    args = parser.parse_args(argv)
    found: list[Overhead] = []
    with (
        tempfile.TemporaryDirectory(prefix="wakeful-overhead-") as tmp,
        common.baseline_checkout(args.baseline) as baseline_root,
    ):
        workdir = Path(tmp)
        try:
            found.append(measure("wakeful", REPO_ROOT, workdir, args.settle))
            if baseline_root is not None:
                found.append(measure(str(args.baseline), baseline_root, workdir, args.settle))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    header = (
        f"{'':<10} {'server PSS':>10} {'anon':>6} {'driver PSS':>10} {'anon':>6} {'total':>7}"
        f" {'bot PSS':>8}"
    )
    print(header)
    print("-" * len(header))
    for o in found:
        print(
            f"{o.name:<10} {o.server_pss_mb:>10.1f} {o.server_anon_mb:>6.1f} "
            f"{o.driver_pss_mb:>10.1f} {o.driver_anon_mb:>6.1f} {o.total_mb:>7.1f}"
            f" {o.browser_pss_mb:>8.1f}"
        )
    ours = found[0]
    met = ours.total_mb <= GOAL_MB
    miss = "" if met else f", missed by {ours.total_mb - GOAL_MB:.0f} MB"
    print(
        f"\nserver + driver, one bot showing its QR: {ours.total_mb:.0f} MB PSS "
        f"(goal ≤ {GOAL_MB:g} MB: "
        f"{'met' if met else 'NOT met'}{miss})"
        + (f"; before: {found[1].total_mb:.0f} MB" if len(found) > 1 else "")
    )
    if args.json is not None:
        before = found[1] if len(found) > 1 else None
        common.write_json(
            args.json,
            {
                "benchmark": "overhead",
                "results": [{**asdict(o), "total_mb": o.total_mb} for o in found],
                "headlines": [
                    {
                        "figure": "server + Playwright driver, one bot showing its QR (PSS)",
                        "value": f"{ours.total_mb:.0f} MB{miss}"
                        + (f"; before: {before.total_mb:.0f} MB" if before else ""),
                        "goal": f"≤ {GOAL_MB:g} MB",
                        "met": met,
                    }
                ],
                "machine": common.machine_info(("playwright",)),
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
