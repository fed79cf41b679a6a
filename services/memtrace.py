"""Opt-in tracemalloc snapshots of the running server, for whoever hunts a memory growth.

`WAKEFUL_TRACEMALLOC=DIR` (unset: nothing is imported, started or scheduled) starts
tracemalloc with `WAKEFUL_TRACEMALLOC_FRAMES` frames (25) and writes `DIR/snapshot-NNNN.pickle`
every `WAKEFUL_TRACEMALLOC_EVERY` seconds (300) and on SIGUSR2, together with
`DIR/snapshot-NNNN.json`: tracemalloc's traced total, the process's RSS and anonymous memory,
the live objects' counts by type and the allocator's arenas. Compare two snapshots with
`python -m services.memtrace DIR/snapshot-0002.pickle DIR/snapshot-0005.pickle`.

Tracing costs time and memory (every allocation carries its traceback): this is a debugging
aid, not a mode to run a production server in.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from services.procmem import anonymous, smaps_rollup

ENV_DIR = "WAKEFUL_TRACEMALLOC"
ENV_FRAMES = "WAKEFUL_TRACEMALLOC_FRAMES"
ENV_EVERY = "WAKEFUL_TRACEMALLOC_EVERY"
DEFAULT_FRAMES = 25
DEFAULT_EVERY_S = 300.0
TOP_TYPES = 40


def anonymous_bytes() -> int | None:
    """Linux: the process's own pages (Pss_Anon + Pss_Shmem + SwapPss), as the soak reads them."""
    fields = smaps_rollup()
    return None if fields is None else anonymous(fields)


def rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class SnapshotWriter:
    """Numbered snapshots in `directory`; `write()` is safe from any thread, one at a time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0
        self.stopped = threading.Event()
        self.restore: Callable[[], None] = lambda: None
        self._lock = threading.Lock()

    def write(self) -> Path:
        with self._lock:
            self.count += 1
            stem = self.directory / f"snapshot-{self.count:04d}"
            gc.collect()  # what is garbage is not a growth
            snapshot = tracemalloc.take_snapshot()
            snapshot.dump(str(stem.with_suffix(".pickle")))
            traced, peak = tracemalloc.get_traced_memory()
            types = Counter(type(o).__qualname__ for o in gc.get_objects())
            summary: dict[str, Any] = {
                "at": time.time(),
                "traced_bytes": traced,
                "traced_peak_bytes": peak,
                "tracemalloc_overhead_bytes": tracemalloc.get_tracemalloc_memory(),
                "rss_bytes": rss_bytes(),
                "anonymous_bytes": anonymous_bytes(),
                "threads": threading.active_count(),
                "gc_objects": sum(types.values()),
                "types": dict(types.most_common(TOP_TYPES)),
            }
            stem.with_suffix(".json").write_text(json.dumps(summary, indent=1))
            return stem

    def stop(self) -> None:
        self.stopped.set()
        self.restore()
        tracemalloc.stop()


def start_from_env(environ: Mapping[str, str] = os.environ) -> SnapshotWriter | None:
    """Start tracing when `WAKEFUL_TRACEMALLOC` names a directory; None (and nothing done)
    otherwise."""
    target = environ.get(ENV_DIR)
    if not target:
        return None
    frames = _positive(environ, ENV_FRAMES, DEFAULT_FRAMES, int, "a whole number of frames")
    every = _positive(environ, ENV_EVERY, DEFAULT_EVERY_S, float, "seconds")
    directory = Path(target)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"{ENV_DIR}={target!r}: not a directory this process can write ({exc.strerror})"
        ) from None
    tracemalloc.start(frames)
    writer = SnapshotWriter(directory)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR2"):
        previous = signal.signal(signal.SIGUSR2, lambda _sig, _frame: _write_in_thread(writer))

        def restore() -> None:
            signal.signal(signal.SIGUSR2, previous)

        writer.restore = restore

    def every_so_often() -> None:
        while not writer.stopped.wait(every):
            writer.write()

    threading.Thread(target=every_so_often, name="memtrace", daemon=True).start()
    return writer


def _positive(
    environ: Mapping[str, str],
    name: str,
    default: float,
    kind: Callable[[str], float],
    expected: str,
) -> Any:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: expected {expected} above 0")
    return value


def _write_in_thread(writer: SnapshotWriter) -> None:
    # A signal handler runs between bytecodes of the main thread: the snapshot (seconds for a
    # big heap) is taken elsewhere so the event loop is not held up by more than it must be.
    threading.Thread(target=writer.write, name="memtrace-signal", daemon=True).start()


def compare(older: Path, newer: Path, top: int = 25, key: str = "traceback") -> str:
    """What grew between two snapshots, biggest first, tracemalloc's own frames left out."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    old = tracemalloc.Snapshot.load(str(older)).filter_traces(ignore)
    new = tracemalloc.Snapshot.load(str(newer)).filter_traces(ignore)
    lines = []
    for stat in new.compare_to(old, key)[:top]:
        lines.append(
            f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks "
            f"(now {stat.size / 1024:.1f} KiB)"
        )
        frames = stat.traceback.format(limit=12, most_recent_first=True)
        lines.extend("    " + frame for frame in frames)
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print("usage: python -m services.memtrace OLDER.pickle NEWER.pickle [top] [key]")
        sys.exit(2)
    top_n = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    print(compare(Path(sys.argv[1]), Path(sys.argv[2]), top_n, *sys.argv[4:5]))
