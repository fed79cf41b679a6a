"""SQLite connection churn: what bursts of concurrent queries cost in memory and threads,
with SQLAlchemy's default pool (5 kept, 10 more opened for a burst and closed when returned)
and with wakeful's (SQLITE_POOL_SIZE kept once opened, no overflow).

Each variant runs in a fresh child process (its own malloc arenas): a warm-up of `--warmup`
bursts, then `--bursts` more; every burst checks out `--concurrency` connections at once and
runs a small read and a small write on each. Printed per variant: connections opened
(each one an aiosqlite thread), and the process's anonymous memory (Pss_Anon + Pss_Shmem +
SwapPss, as the soak reads it) after the warm-up and at the end, as MB per 1,000 bursts, and the
wall-clock and CPU time a burst takes (CPU: the process's, all threads).

    .venv/bin/python bench/db_pool_churn.py [--bursts 500] [--warmup 100] [--concurrency 12]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import _common as common  # noqa: E402
from sqlalchemy import event, text  # noqa: E402

from services.database import SQLITE_POOL_SIZE, Database  # noqa: E402
from services.memtrace import anonymous_bytes  # noqa: E402

MB = 1024 * 1024
VARIANTS = ("default", "wakeful")


async def run_variant(variant: str, bursts: int, warmup: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wakeful-churn-") as tmp:
        db = Database(f"sqlite+aiosqlite:///{Path(tmp) / 'wakeful.db'}")
        if variant == "default":
            # SQLAlchemy's own pool for a SQLite file, as before SQLITE_POOL_SIZE.
            await db.engine.dispose()
            from sqlalchemy.ext.asyncio import create_async_engine

            db.engine = create_async_engine(db.url, connect_args={"timeout": 15})
        opened = 0

        def count(_dbapi: Any, _record: Any) -> None:
            nonlocal opened
            opened += 1

        event.listen(db.engine.sync_engine, "connect", count)
        async with db.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))

        async def one(i: int) -> None:
            async with db.engine.begin() as conn:
                await conn.execute(text("SELECT count(*) FROM t"))
                await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": "x" * 200})
                await conn.execute(text("DELETE FROM t WHERE id < :i"), {"i": i - 1000})

        async def burst(k: int) -> None:
            await asyncio.gather(*(one(k * concurrency + j) for j in range(concurrency)))

        for k in range(warmup):
            await burst(k)
        anon_warm = anonymous_bytes() or 0
        opened_warm = opened
        started, cpu_started = time.perf_counter(), time.process_time()
        for k in range(warmup, warmup + bursts):
            await burst(k)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        anon_end = anonymous_bytes() or 0
        result = {
            "variant": variant,
            "connections_opened": opened - opened_warm,
            "anon_after_warmup_mb": anon_warm / MB,
            "anon_end_mb": anon_end / MB,
            "mb_per_1000_bursts": (anon_end - anon_warm) / MB / bursts * 1000,
            "wall_ms_per_burst": wall / bursts * 1000,
            "cpu_ms_per_burst": cpu / bursts * 1000,
        }
        await db.dispose()
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bursts", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None, help="write figures (for run_all)")
    parser.add_argument("--variant", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:  # the child
        figures = asyncio.run(run_variant(args.variant, args.bursts, args.warmup, args.concurrency))
        print(json.dumps(figures))
        return 0
    print(
        f"{args.bursts} bursts of {args.concurrency} concurrent connections (after "
        f"{args.warmup}); wakeful's pool: {SQLITE_POOL_SIZE}, no overflow"
    )
    results: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        done = subprocess.run(
            [
                *(sys.executable, __file__, "--variant", variant),
                *("--bursts", str(args.bursts), "--warmup", str(args.warmup)),
                *("--concurrency", str(args.concurrency)),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{variant:>8}: {r['connections_opened']} connections (and aiosqlite threads) "
            f"opened; anonymous memory "
            f"{r['anon_after_warmup_mb']:.1f} → {r['anon_end_mb']:.1f} MB "
            f"({r['mb_per_1000_bursts']:+.2f} MB per 1,000 bursts); "
            f"{r['wall_ms_per_burst']:.1f} ms a burst, {r['cpu_ms_per_burst']:.1f} ms CPU"
        )
        results[variant] = r
    if args.json is not None:
        common.write_json(args.json, document(args, results))
    return 0


def document(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures, with headlines for bench/run_all.py (diagnostic: no goal of its own)."""
    ours, default = results["wakeful"], results["default"]
    return {
        "benchmark": "db_pool_churn",
        "settings": {
            "bursts": args.bursts,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "sqlite_pool_size": SQLITE_POOL_SIZE,
        },
        "results": results,
        "headlines": [
            {
                "figure": f"SQLite connections opened in {args.bursts} bursts of "
                f"{args.concurrency}: wakeful's pool / SQLAlchemy's default",
                "value": f"{ours['connections_opened']} / {default['connections_opened']}",
                "goal": None,
                "met": None,
            },
            {
                "figure": "CPU a burst: wakeful's pool / SQLAlchemy's default",
                "value": f"{ours['cpu_ms_per_burst']:.1f} / {default['cpu_ms_per_burst']:.1f} ms",
                "goal": None,
                "met": None,
            },
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
