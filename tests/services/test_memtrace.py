"""The opt-in tracemalloc snapshots: nothing without the variable; numbered, comparable
snapshots with it."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from services.memtrace import ENV_DIR, ENV_EVERY, ENV_FRAMES, compare, start_from_env

kept: list[bytes] = []


def test_nothing_is_started_without_the_variable() -> None:
    assert start_from_env({}) is None
    assert start_from_env({ENV_DIR: ""}) is None
    assert not tracemalloc.is_tracing()


def test_snapshots_show_what_grew_between_them(tmp_path: Path) -> None:
    assert not tracemalloc.is_tracing()
    # A long period: only the snapshots this test asks for are written.
    writer = start_from_env({ENV_DIR: str(tmp_path / "traces"), ENV_EVERY: "3600"})
    assert writer is not None
    try:
        assert tracemalloc.is_tracing()
        first = writer.write()
        kept.extend(bytes(1000) for _ in range(200))  # this line should top the comparison
        second = writer.write()
    finally:
        writer.stop()
        kept.clear()
    assert not tracemalloc.is_tracing()
    assert [p.name for p in sorted((tmp_path / "traces").iterdir())] == [
        "snapshot-0001.json",
        "snapshot-0001.pickle",
        "snapshot-0002.json",
        "snapshot-0002.pickle",
    ]
    summary = json.loads(second.with_suffix(".json").read_text())
    assert summary["traced_bytes"] > 0
    assert summary["gc_objects"] >= sum(summary["types"].values()) > 0

    report = compare(first.with_suffix(".pickle"), second.with_suffix(".pickle"), top=1)
    top_line, where = report.splitlines()[0], report.splitlines()[1]
    grown_kib = float(top_line.split()[0])
    assert grown_kib >= 200 * 1000 / 1024
    assert "test_memtrace.py" in where


def test_a_bad_setting_is_refused_naming_it_and_nothing_is_started(tmp_path: Path) -> None:
    traces = str(tmp_path / "traces")
    for name, raw, expected in (
        (ENV_EVERY, "5m", "seconds"),
        (ENV_EVERY, "-1", "seconds"),
        (ENV_FRAMES, "0", "a whole number of frames"),
    ):
        with pytest.raises(ValueError, match=f"^{name}=") as refused:
            start_from_env({ENV_DIR: traces, name: raw})
        assert str(refused.value) == f"{name}={raw!r}: expected {expected} above 0"
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=r"^WAKEFUL_TRACEMALLOC=.*not a directory"):
        start_from_env({ENV_DIR: str(blocker / "traces")})
    assert not tracemalloc.is_tracing()
