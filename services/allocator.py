"""glibc's malloc, told to keep handing large blocks back to the system when they are freed.

glibc serves a request of at least its mmap threshold (128 KiB at start) with a mapping of its
own, unmapped when freed. But each time such a block is freed it raises the threshold to that
block's size (up to 32 MiB), and the trim threshold to twice that: once a block of a few MB
(a profile backup packed and sealed, a media file, a large result) has come and gone, the next
ones of that size are carved out of the arenas instead, and what is freed there stays with the
process whenever something smaller sits above it. The 10x soak showed steps of ~10 MB in the
server's memory that the Python heap did not explain. Setting the threshold explicitly turns
that adjustment off for the life of the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # <malloc.h>
# Blocks this large or larger get a mapping of their own: a few system calls for each of the
# rare large buffers, instead of memory the process keeps.
LARGE_BLOCK_BYTES = 256 * 1024


def return_large_blocks(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold`. False where the C library is not glibc
    (musl, macOS): nothing is changed there."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold) == 1)
