"""Host and device memory policy.

For now: the host allocator. Offload and block swap join this module with the memory modes.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024


def tune_host_allocator(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make glibc return large freed buffers to the OS at once; True if applied.

    glibc serves big allocations with mmap (and unmaps them when freed) only until the first big free: then it raises
    its mmap threshold to that size and serves later big tensors from the heap, where freed space is kept and reused
    imperfectly. A streaming loop that allocates and frees the same big activations chunk after chunk then shows a
    peak RSS that creeps up (by several percent, depending on allocation order) although live memory is flat.
    Fixing the threshold keeps RSS equal to what is really held. A user's own MALLOC_MMAP_THRESHOLD_ wins.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
