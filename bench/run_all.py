"""Run every benchmark in bench/, gather their figures in one file and print one summary.

Every `bench/*.py` whose name does not start with `_` (other than this script) is a benchmark:
a new script is run without being listed anywhere. Each one runs as
`python bench/<name>.py --json <temporary file> [its extra options]`, its output going to the
terminal as it runs; then its figures are read back. The file written (bench/results.json)
holds, keyed by script: the options, exit status, run time and every figure the script
wrote, with its headline figures; and the machine: CPU model, cores, RAM, OS, Python,
Chromium, the versions of the main packages, the commit, the date, the load average.

At the end a table gives a few headline figures per benchmark (figure, value, goal, met?),
printed as text and as Markdown (also written to bench/results.md) for the README's
Performance section. A script's headlines come from the `headlines` list in its JSON when it
writes one (bench/soak.py does), else from an extractor here (the four older scripts), else
from any goals its JSON states.

Ctrl-C reaches the running script too: bench/soak.py then stops its load early and still
reports; the other scripts clean up and exit. The benchmarks not yet started are skipped and
the figures gathered so far are written.

    .venv/bin/python bench/run_all.py [--only soak,outbox] [--skip outbox] [--soak 90s]
        [--args 'outbox=--backend sqlite'] [--json bench/results.json]
        [--markdown bench/results.md] [--merge] [--list]

From make: `make bench`, `make bench SOAK=90s`, `make bench ONLY=soak`, `make bench SKIP=outbox`,
`make bench ARGS="--args 'outbox=--backend sqlite'"`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import _common as common  # noqa: E402
import psutil  # noqa: E402

from bot.engines.whatsapp.browser import (  # noqa: E402
    DEBIAN_CHROMIUM,
    DEBIAN_HEADLESS_SHELL,
    find_chromium,
)

BENCH_DIR = Path(__file__).resolve().parent
THIS = Path(__file__).resolve().name
# Run in this order (quick ones first, the long soak last); others alphabetically before soak.
ORDER = ("health_throughput", "manager_scale", "browser_sessions", "outbox", "soak")
PACKAGES = ("uvicorn", "starlette", "sqlalchemy", "aiosqlite", "asyncpg", "playwright", "httpx")
VERSION_TIMEOUT_S = 15.0
# The scripts that run the baseline commit's server beside this one's (--baseline REF).
BASELINE_AWARE = ("health_throughput", "outbox", "overhead")

Headline = dict[str, Any]  # figure, value, goal (None: no goal), met (None: not judged)


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


def discover() -> list[str]:
    """The benchmark scripts' names (without .py), in the order they are run."""
    names = [
        p.stem
        for p in BENCH_DIR.glob("*.py")
        if not p.name.startswith("_") and p.name != THIS and p.is_file()
    ]

    def key(name: str) -> tuple[float, str]:
        if name in ORDER:
            return float(ORDER.index(name)), name
        return ORDER.index("soak") - 0.5, name

    return sorted(names, key=key)


def names_arg(text: str) -> list[str]:
    return [n.strip().removesuffix(".py") for n in text.split(",") if n.strip()]


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _os_name() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return None


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    memory = psutil.virtual_memory().total
    picked = find_chromium(None)
    chromium = {
        str(path): _run([str(path), "--version"])
        for path in (DEBIAN_CHROMIUM, DEBIAN_HEADLESS_SHELL)
        if path.exists()
    }
    commit = _run(["git", "rev-parse", "--short=12", "HEAD"])
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu_model": _cpu_model(),
        "cpus_logical": os.cpu_count(),
        "cpus_physical": psutil.cpu_count(logical=False),
        "memory_total_gib": round(memory / 1024**3, 1),
        "os": _os_name(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "chromium": chromium,
        "chromium_picked": {
            "path": str(picked.path) if picked.path else None,
            "why": picked.source,
            "version": chromium.get(str(picked.path)) if picked.path else None,
        },
        "packages": {name: _version(name) for name in PACKAGES},
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
    }


def describe_machine(m: dict[str, Any]) -> str:
    picked = m["chromium_picked"]
    physical = m["cpus_physical"]
    cores = f"{m['cpus_logical']} cores"
    if physical not in (None, m["cpus_logical"]):
        cores += f" ({physical} physical)"
    return (
        f"{m['cpu_model'] or 'unknown CPU'}, {cores}, {m['memory_total_gib']:g} GiB RAM; "
        f"{m['os'] or m['platform']} (Linux {m['kernel']}); Python {m['python']}; "
        f"{picked['version'] or 'Chromium ?'} ({picked['path']})"
    )


# --------------------------------------------------------------------------------------------
# Headline figures
# --------------------------------------------------------------------------------------------


def row(figure: str, value: str, goal: str | None = None, met: bool | None = None) -> Headline:
    return {"figure": figure, "value": value, "goal": goal, "met": met}


def _n(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def health_throughput(doc: dict[str, Any]) -> list[Headline]:
    results = doc["results"]
    health, keepalive = results["wakeful /health"], results["wakeful /api/keepalive"]
    errors = sum(int(r["errors"]) for r in results.values())
    ratio, goal = doc["ratio_health"], doc["goal"]
    before = doc.get("ratio_health_baseline")
    value = _n(ratio, ".2f")
    if ratio is not None and ratio < goal:
        value += f" (missed by {goal - ratio:.2f})"
    if before is not None:
        value += f"; before: {before:.2f}"
    return [
        row(
            "/health requests per CPU-second ÷ bare Starlette (same uvicorn, h11)",
            value,
            f"≥ {goal:g}",
            doc["goal_met"],
        ),
        row(
            "/health req/s, p99",
            f"{health['rps']:,.0f} req/s, p99 {health['p99_ms']:.2f} ms",
        ),
        row(
            "/api/keepalive req/s, p99",
            f"{keepalive['rps']:,.0f} req/s, p99 {keepalive['p99_ms']:.2f} ms",
        ),
        row("failed requests", str(errors), "0", errors == 0),
    ]


def manager_scale(doc: dict[str, Any]) -> list[Headline]:
    goals = doc["goals"]
    memory, sweep, cleanup = goals["memory"], goals["health_sweep"], goals["cleanup"]
    at = sweep.get("judged_at_n")
    where = f" at {at:,} sessions" if at else ""
    found = [
        row(
            "Python memory per idle session",
            f"{memory['worst_bytes_per_session'] / 1000:.1f} KB",
            "< 20 KB",
            memory["met"],
        ),
        row(
            f"health sweep{where}",
            f"{_n(sweep['worst_median_ms'], '.1f')} ms",
            "< 100 ms",
            sweep["met"],
        ),
        row(
            f"cleanup sweep, nothing to expire{where}",
            f"{_n(cleanup['worst_median_ms'], '.1f')} ms",
            "< 100 ms",
            cleanup["met"],
        ),
    ]
    largest = max(doc["results"], key=lambda r: r["n"])
    api = largest.get("api")
    if api:
        found.append(
            row(
                f"GET /api/sessions (first page) at {largest['n']:,}",
                f"{api['list_timing']['median_ms']:.1f} ms",
            )
        )
    return found


def browser_sessions(doc: dict[str, Any]) -> list[Headline]:
    picked = doc["settings"]["picked"]["binary"]
    wakeful = doc["results"][f"wakeful/{picked}"]
    return [
        row(
            "memory per bot ÷ plain Playwright defaults (chromium)",
            _n(doc["goal_ratio"], ".2f"),
            f"≤ {doc['goal']:g}",
            doc["goal_met"],
        ),
        row(
            "memory per bot ÷ wakeful before #19 (same binary, "
            f"{doc['settings'].get('page', 'light')} page)",
            _n(doc.get("per_bot_ratio"), ".2f"),
            f"≤ {doc.get('per_bot_goal', 0.8):g}",
            doc.get("per_bot_goal_met"),
        ),
        row(
            f"wakeful per bot ({picked}): PSS, processes",
            f"{_n(wakeful['pss_mean_mb'], '.0f')} MB, {_n(wakeful['processes_mean'], '.0f')}",
        ),
        row(
            f"start→QR, {wakeful['bots']} bots (median / max)",
            f"{_n(wakeful['start_to_qr_median_s'], '.2f')} / "
            f"{_n(wakeful['start_to_qr_max_s'], '.2f')} s",
        ),
        row(
            "bots showing a QR",
            f"{wakeful['ok']} of {wakeful['bots']}",
            "all",
            wakeful["ok"] == wakeful["bots"],
        ),
    ]


def outbox(doc: dict[str, Any]) -> list[Headline]:
    goals = doc["goals"]
    by = {r["backend"]: r for r in doc["results"]}
    found = []
    cpu = goals.get("cpu_per_accept")
    if cpu is not None:
        for name, ms in cpu["ms"].items():
            was = cpu["before_ms"].get(name)
            value = _n(ms, ".2f") + " ms"
            if ms is not None and ms > 1.0:
                value += f" (missed by {ms - 1.0:.2f})"
            if was is not None:
                value += f"; before: {was:.2f} ms"
            found.append(row(f"server CPU per accept ({name})", value, "≤ 1.0 ms", cpu["met"]))
    for name, r in by.items():
        judged = name == "sqlite"
        found.append(
            row(
                f"messages accepted/s ({name})",
                f"{r['enqueue']['accepted_per_s']:,.0f}/s, "
                f"p99 {_n(r['enqueue']['p99_ms'], '.0f')} ms",
                f"≥ {1000:,}" if judged else None,
                goals["accept_rate"]["met"] if judged else None,
            )
        )
    found.append(
        row(
            f"drained/s ({doc['settings']['bots']} bots)",
            ", ".join(f"{r['drain_per_s']:,.0f}/s ({n})" for n, r in by.items()),
        )
    )
    found.append(
        row(
            "messages lost across a SIGKILL",
            ", ".join(f"{r['lost']} of {r['accepted_total']:,} ({n})" for n, r in by.items()),
            "0",
            goals["zero_lost"]["met"],
        )
    )
    return found


EXTRACTORS: dict[str, Callable[[dict[str, Any]], list[Headline]]] = {
    "health_throughput": health_throughput,
    "manager_scale": manager_scale,
    "browser_sessions": browser_sessions,
    "outbox": outbox,
}


def generic(doc: dict[str, Any]) -> list[Headline]:
    """Whatever goals a script's JSON states: `goals: {name: {goal, met, ...}}` or
    `goal` / `goal_met`."""
    found = []
    goals = doc.get("goals")
    if isinstance(goals, dict):
        for name, g in goals.items():
            if isinstance(g, dict) and "met" in g:
                figures = {
                    k: v
                    for k, v in g.items()
                    if k not in ("goal", "met") and isinstance(v, int | float | str)
                }
                value = ", ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in figures.items()
                )
                found.append(row(name, value or "see results.json", g.get("goal"), g["met"]))
    if not found and "goal_met" in doc:
        found.append(row("goal", "see results.json", str(doc.get("goal")), doc["goal_met"]))
    return found or [row("figures", "see results.json")]


def headlines_of(name: str, doc: dict[str, Any]) -> list[Headline]:
    listed = doc.get("headlines")
    if isinstance(listed, list) and listed:
        return [row(str(h["figure"]), str(h["value"]), h.get("goal"), h.get("met")) for h in listed]
    extractor = EXTRACTORS.get(name)
    if extractor is not None:
        try:
            return extractor(doc)
        except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as exc:
            note = row(
                "headline figures",
                f"not read ({type(exc).__name__}: {exc}); the JSON's shape changed?",
            )
            return [note, *generic(doc)]
    return generic(doc)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    argv: list[str]
    exit_status: int | None
    seconds: float
    started_at: str
    figures: dict[str, Any] | None
    interrupted: bool

    def entry(self) -> dict[str, Any]:
        headlines = self.headlines()
        return {
            "script": f"bench/{self.name}.py",
            "argv": self.argv,
            "exit_status": self.exit_status,
            "seconds": round(self.seconds, 1),
            "started_at": self.started_at,
            "interrupted": self.interrupted,
            "headlines": headlines,
            "figures": self.figures,
        }

    def headlines(self) -> list[Headline]:
        if self.figures is not None:
            found = headlines_of(self.name, self.figures)
            if self.exit_status != 0:
                found.insert(0, row("run", f"exit status {self.exit_status}", "0", False))
            return found
        what = "interrupted" if self.interrupted else f"failed (exit status {self.exit_status})"
        return [row("run", f"{what}, no figures", "figures", False)]


def run_one(name: str, extra: list[str], json_path: Path) -> Run:
    argv = [sys.executable, str(BENCH_DIR / f"{name}.py"), "--json", str(json_path), *extra]
    shown = " ".join(shlex.quote(a) for a in [f"bench/{name}.py", *extra])
    print(f"\n{'=' * 100}\n{shown}\n{'=' * 100}", flush=True)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    start = time.perf_counter()
    interrupted = False
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    while True:
        try:
            status = proc.wait()
            break
        except KeyboardInterrupt:
            # The script got the same Ctrl-C (one process group): let it clean up and report.
            interrupted = True
    seconds = time.perf_counter() - start
    figures = None
    if json_path.exists():
        with contextlib.suppress(OSError, ValueError):
            figures = json.loads(json_path.read_text())
    print(f"--- bench/{name}.py: exit status {status} after {seconds:.0f}s", flush=True)
    return Run(name, extra, status, seconds, started_at, figures, interrupted)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def met_text(met: bool | None, markdown: bool = False) -> str:
    if met is None:
        return "–"
    if met:
        return "yes"
    return "**NO**" if markdown else "NO"


def summary_rows(benchmarks: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, entry in benchmarks.items():
        for h in entry["headlines"]:
            rows.append([name, h["figure"], h["value"], h["goal"] or "–", met_text(h["met"])])
    return rows


HEADER = ["bench", "figure", "value", "goal", "met?"]


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(HEADER, widths, strict=True)).rstrip()]
    lines.append("-" * len(lines[0]))
    previous = None
    for r in rows:
        shown = ["" if r[0] == previous else r[0], *r[1:]]
        previous = r[0]
        lines.append("  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True)).rstrip())
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    previous = None
    for r in rows:
        bench = "" if r[0] == previous else f"`{r[0]}`"
        previous = r[0]
        met = "**NO**" if r[4] == "NO" else r[4]
        lines.append("| " + " | ".join([bench, *(cell(c) for c in r[1:4]), met]) + " |")
    return "\n".join(lines)


def markdown_document(results: dict[str, Any], rows: list[list[str]]) -> str:
    m = results["machine"]
    when = results["finished_at"][:10]
    commit = m["git_commit"] or "?"
    dirty = " (with uncommitted changes)" if m["git_dirty"] else ""
    return (
        f"Measured on {when}, commit {commit}{dirty}: {describe_machine(m)}.\n\n"
        + markdown_table(rows)
        + "\n"
    )


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None, available: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", type=names_arg, default=None, help="these only: soak,outbox")
    parser.add_argument("--skip", type=names_arg, default=[], help="not these: outbox")
    parser.add_argument("--soak", default=None, metavar="DURATION", help="soak --duration (10m)")
    parser.add_argument(
        "--args",
        action="append",
        default=[],
        metavar="NAME=OPTIONS",
        help="extra options for one script, e.g. 'outbox=--backend sqlite' (repeatable)",
    )
    parser.add_argument(
        "--json", type=Path, default=BENCH_DIR / "results.json", help="bench/results.json"
    )
    parser.add_argument(
        "--markdown", type=Path, default=BENCH_DIR / "results.md", help="bench/results.md"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the entries of the scripts not run now from the existing --json file",
    )
    parser.add_argument(
        "--baseline",
        default=common.BASELINE_REF,
        metavar="REF",
        help="the commit measured side by side where a script can (--baseline ''; none) "
        f"({common.BASELINE_REF}, the commit before issue 19's work)",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    unknown = [n for n in [*(args.only or []), *args.skip] if n not in available]
    extra: dict[str, list[str]] = {}
    for item in args.args:
        name, sep, options = item.partition("=")
        if not sep:
            parser.error(f"--args {item!r}: expected NAME=OPTIONS")
        if name not in available:
            unknown.append(name)
        extra.setdefault(name, []).extend(shlex.split(options))
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; there are: {', '.join(available)}"
        )
    if args.soak is not None:
        extra.setdefault("soak", []).extend(["--duration", args.soak])
    if args.baseline:
        for name in BASELINE_AWARE:
            extra.setdefault(name, []).extend(["--baseline", args.baseline])
    args.extra = extra
    return args


def main(argv: list[str] | None = None) -> int:
    available = discover()
    args = parse_args(argv, available)
    if args.list:
        print("\n".join(f"bench/{n}.py" for n in available))
        return 0
    selected = [
        n for n in available if (args.only is None or n in args.only) and n not in args.skip
    ]
    started = time.perf_counter()
    load_before = os.getloadavg()
    info = machine()
    print(f"benchmarks: {', '.join(selected)}")
    print(f"machine: {describe_machine(info)}")
    print(f"load average (1 min) {load_before[0]:.1f}", flush=True)

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="wakeful-bench-all-") as tmp:
        for name in selected:
            run = run_one(name, args.extra.get(name, []), Path(tmp) / f"{name}.json")
            runs.append(run)
            if run.interrupted:
                skipped = selected[len(runs) :]
                if skipped:
                    print(f"interrupted: not running {', '.join(skipped)}", file=sys.stderr)
                break

    benchmarks: dict[str, dict[str, Any]] = {}
    if args.merge and args.json.exists():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            previous = json.loads(args.json.read_text())["benchmarks"]
            benchmarks.update({k: v for k, v in previous.items() if k in available})
    for run in runs:
        benchmarks[run.name] = run.entry()
    benchmarks = {n: benchmarks[n] for n in available if n in benchmarks}
    load_after = os.getloadavg()
    results = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "command": [f"bench/{THIS}", *(argv if argv is not None else sys.argv[1:])],
        "machine": info,
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
        "benchmarks": benchmarks,
    }
    rows = summary_rows(benchmarks)
    results["summary"] = [dict(zip(HEADER, r, strict=True)) for r in rows]
    common.write_json(args.json, results)
    markdown = markdown_document(results, rows)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown)

    print(f"\n{'=' * 100}\nsummary ({describe_machine(info)})\n")
    print(text_table(rows))
    print(f"\nas Markdown (also in {args.markdown}):\n")
    print(markdown)
    failed = [r.name for r in runs if r.exit_status != 0]
    not_met = sorted({r[0] for r in rows if r[4] == "NO"})
    print(
        f"run time {results['seconds']:.0f}s; load average (1 min) {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after, on {os.cpu_count()} CPUs"
    )
    if not_met:
        print(f"goals not met: {', '.join(not_met)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 130 if any(r.interrupted for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
