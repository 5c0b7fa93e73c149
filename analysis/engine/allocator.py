"""Keep a long numeric pass's memory from growing with the dataset: glibc's dynamic mmap threshold, and the pages
of a memory-mapped cache read once (:func:`release_mapped_rows`).

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
import mmap

import numpy as np

__all__ = ["fix_mmap_threshold", "release_mapped_rows"]

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


def release_mapped_rows(array: np.ndarray, first: int, last: int) -> None:
    """Hand rows ``[first, last)`` of a memory-mapped array (``np.memmap``, rows along axis 0) back to the kernel.

    A pass that reads (or writes) an activation cache once would otherwise keep every page it touched mapped, and
    counted in the process's resident set, until the kernel needs the memory: the resident set then grows with the
    dataset although nothing is held. ``madvise(MADV_DONTNEED)`` unmaps them; they stay in the page cache (a later
    read finds them there), and written pages of a shared file mapping keep their data (the kernel writes them back
    as usual). Pages shared with the neighbouring rows are released too, which only costs a re-read. A no-op for
    arrays that are not memory-mapped, or where ``madvise`` is missing.
    """
    mapping = getattr(array, "_mmap", None)
    if mapping is None or not hasattr(mmap, "MADV_DONTNEED") or last <= first:
        return
    try:
        start_of_mapping = np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
    except (ValueError, TypeError):  # a closed or empty mapping
        return
    row_bytes = array.strides[0]
    begin = array.ctypes.data - start_of_mapping + first * row_bytes
    end = min(len(mapping), array.ctypes.data - start_of_mapping + last * row_bytes)
    begin -= begin % mmap.PAGESIZE
    end = -(-end // mmap.PAGESIZE) * mmap.PAGESIZE
    end = min(end, len(mapping))
    if end > begin >= 0:
        mapping.madvise(mmap.MADV_DONTNEED, begin, end - begin)
