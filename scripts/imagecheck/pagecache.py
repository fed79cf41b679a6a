"""Drop the built image's files from the page cache before the CMD starts.

A platform runs an image on a host that did not build it: the image's files are read from
disk. Here the build has just written them, and a file's pages as its writer left them in the
cache can map differently from pages read back from disk (measured: Playwright's Node binary,
as pip wrote it, added 55 MB of file-backed PSS to the driver; after the cache was dropped,
31 MB). The memory the check prints is meant to be the deployed one, so the build's cache is
dropped first: clean pages only (after a sync), nothing else on the machine is touched.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def drop_file_cache(rootfs: Path) -> int:
    """Ask the kernel to drop the cached pages of every regular file under `rootfs` (on its
    own filesystem: the chroot's /proc, /sys and /dev mounts are not walked). Returns how
    many files were dropped."""
    os.sync()
    device = rootfs.stat().st_dev
    dropped = 0
    for directory, subdirs, files in os.walk(rootfs):
        # Mount points inside the chroot (proc, sys, dev, bind mounts) are other devices.
        subdirs[:] = [d for d in subdirs if _same_device(Path(directory, d), device)]
        for name in files:
            if _drop_one(Path(directory, name), device):
                dropped += 1
    return dropped


def _same_device(path: Path, device: int) -> bool:
    try:
        return path.lstat().st_dev == device
    except OSError:
        return False


def _drop_one(path: Path, device: int) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # a socket, a FIFO's peer gone, a symlink, no permission
        return False
    try:
        info = os.fstat(fd)
        if info.st_dev != device or not stat.S_ISREG(info.st_mode):
            return False
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    finally:
        os.close(fd)
