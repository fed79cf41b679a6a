"""The image check measures memory as a deployed container would have it: the build's
cached pages of the image's files are dropped first, so the first start reads them from
disk. `fincore` (util-linux, on every Debian) reads what the page cache holds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from scripts.imagecheck.pagecache import drop_file_cache


def cached_bytes(path: Path) -> int:
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def test_the_files_a_build_just_wrote_are_read_from_disk_afterwards(tmp_path: Path) -> None:
    deep = tmp_path / "usr" / "local" / "bin"
    deep.mkdir(parents=True)
    binary = deep / "node"
    binary.write_bytes(os.urandom(2 * 2**20))  # written, so its pages are in the cache
    (tmp_path / "link").symlink_to(binary)
    os.mkfifo(tmp_path / "fifo")  # opened without blocking, and left alone
    assert cached_bytes(binary) > 0

    dropped = drop_file_cache(tmp_path)

    assert dropped == 1
    assert cached_bytes(binary) == 0
    assert binary.read_bytes()[:4]  # still there, read back from disk
