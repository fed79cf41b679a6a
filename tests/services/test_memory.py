"""The memory budget's reading of the container limit and its arithmetic, on literal
cgroup files and literal samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.memory import (
    DRIVER_ESTIMATE_MB,
    MB,
    Limit,
    MemoryBudget,
    MemoryFullError,
    Sample,
    read_limit,
)


def cgroup_tree(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_line)
    return root, proc


def test_cgroup_v2_memory_max_inside_a_container(tmp_path: Path):
    root, proc = cgroup_tree(tmp_path, "0::/\n", {"memory.max": "536870912\n"})
    assert read_limit(None, root, proc) == Limit(512 * MB, "cgroup v2 memory.max")


def test_cgroup_v2_the_tightest_limit_on_the_path_wins(tmp_path: Path):
    root, proc = cgroup_tree(
        tmp_path,
        "0::/outer/inner\n",
        {
            "memory.max": "max\n",
            "outer/memory.max": "1073741824\n",
            "outer/inner/memory.max": "max",
        },
    )
    assert read_limit(None, root, proc).bytes == 1024 * MB


def test_cgroup_v1_limit_in_bytes_and_its_no_limit_value(tmp_path: Path):
    root, proc = cgroup_tree(
        tmp_path,
        "5:cpu:/\n4:memory:/docker/abc\n",
        {
            "memory/memory.limit_in_bytes": "9223372036854771712\n",
            "memory/docker/abc/memory.limit_in_bytes": "268435456\n",
        },
    )
    assert read_limit(None, root, proc) == Limit(256 * MB, "cgroup v1 memory.limit_in_bytes")
    unlimited, proc2 = cgroup_tree(
        tmp_path / "u", "4:memory:/\n", {"memory/memory.limit_in_bytes": "9223372036854771712"}
    )
    assert read_limit(None, unlimited, proc2).source.startswith("the machine's memory")


def test_memory_limit_mb_overrides_the_cgroup(tmp_path: Path):
    root, proc = cgroup_tree(tmp_path, "0::/\n", {"memory.max": "536870912\n"})
    assert read_limit(1024, root, proc) == Limit(1024 * MB, "MEMORY_LIMIT_MB")


def budget(limit_mb: int, sample: Sample) -> MemoryBudget:
    return MemoryBudget(Limit(limit_mb * MB, "MEMORY_LIMIT_MB"), sampler=lambda: sample)


def test_the_arithmetic_of_a_512_mb_plan():
    idle = Sample(server=100 * MB, driver=0, bots=0, bot_count=0)
    plan = budget(512, idle)
    # 512 less 10 % headroom, less the server and the driver's estimate (no bot ran yet).
    assert round(plan.room_for_bots_mb(idle)) == round(512 * 0.9 - 100 - DRIVER_ESTIMATE_MB)
    assert plan.next_fits(idle)
    plan.check_room()
    one = Sample(server=100 * MB, driver=120 * MB, bots=180 * MB, bot_count=1)
    plan = budget(512, one)
    assert plan.per_bot_mb(one) == 180
    assert not plan.next_fits(one)
    with pytest.raises(MemoryFullError) as refused:
        plan.check_room()
    assert "the budget is 512 MB (MEMORY_LIMIT_MB)" in str(refused.value)
    assert "1 bot(s) use 180 MB" in str(refused.value)


def test_how_many_fit_on_bigger_plans():
    one = Sample(server=100 * MB, driver=120 * MB, bots=180 * MB, bot_count=1)
    assert budget(1024, one).bots_that_fit(one) == 3
    assert budget(8192, one).bots_that_fit(one) == 39
    assert budget(8192, one).per_bot_limit_mb(one) == int(8192 * 0.9 - 220)
