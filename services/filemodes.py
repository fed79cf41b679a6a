"""Files only this service's user may read: DATA_DIR 0700, the SQLite database 0600.

The database holds sealed secrets, token hashes and every message; the umask of a container
is usually 022, which left wakeful.db readable by any local user. Existing paths are
tightened too (a volume created by an earlier version), when we own them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from loguru import logger

log = logger.bind(component="files")


def private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)


def private_database(path: Path) -> None:
    """The SQLite file (created empty here, so SQLite never creates it with the umask's mode)
    and its WAL companions, which SQLite creates with the main file's mode."""
    private_dir(path.parent)
    if not path.exists():
        # A path we cannot create is SQLite's to report, in its own words, when it opens it.
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        if candidate.exists():
            _tighten(candidate, 0o600)


def _tighten(path: Path, mode: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        current = path.stat()
        if current.st_mode & 0o777 == mode or current.st_uid != os.getuid():
            return
        try:
            path.chmod(mode)
        except OSError:
            log.warning("Could not make {} private (mode {:o})", path, mode)
