"""A process's memory as Linux accounts it in /proc/PID/smaps_rollup: PSS (shared pages split
among the processes that map them) and its anonymous part (what the process allocated itself:
heaps, shared memory with its children, their swapped-out part), mapped files excluded."""

from __future__ import annotations

from pathlib import Path

ANON_FIELDS = ("Pss_Anon", "Pss_Shmem", "SwapPss")


def smaps_rollup(pid: int | str = "self") -> dict[str, int] | None:
    """Bytes by field (Rss, Pss, Pss_Anon, ...); None when the process is gone or the file
    cannot be read."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return None
    fields: dict[str, int] = {}
    for line in lines:
        name, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            fields[name] = int(words[0]) * 1024
    return fields


def anonymous(fields: dict[str, int]) -> int:
    """The anonymous part of a rollup, in bytes."""
    return sum(fields.get(name, 0) for name in ANON_FIELDS)
