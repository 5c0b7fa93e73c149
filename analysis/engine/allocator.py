"""Keep a long numeric pass's heap from growing with the dataset (glibc's dynamic mmap threshold).

glibc serves an allocation above ``M_MMAP_THRESHOLD`` (128 KiB at start) with its own ``mmap`` and gives it back
on ``free``; but each such free of a block up to 32 MiB *raises* the threshold to that block's size, so from then
on tensors of a few MiB — a top-k buffer, a batch of maps — come from the ordinary heap, whose freed space is
fragmented by the small blocks between them and is rarely returned. An extraction over ResNet-18's layer3 and
layer4 grew from 0.36 to 0.67 GB (and, on another run, 1.3 GB) of anonymous memory between 1,000 and 4,000
images this way, with nothing held that grows; fixing the threshold keeps it at 0.31 GB whatever the images
(``benchmarks/bench_scale.py``). Setting the threshold explicitly turns the dynamic adjustment off (``man
mallopt``); ``MALLOC_MMAP_THRESHOLD_`` in the environment does the same before the process starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["fix_mmap_threshold"]

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
DEFAULT_THRESHOLD = 128 * 1024


def fix_mmap_threshold(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process; False where the C library is not glibc
    (then nothing changes)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
    if not done:
        logger.warning("mallopt(M_MMAP_THRESHOLD, %d) was refused", threshold)
    return done
