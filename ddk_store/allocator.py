"""Allocator tuning for the store's large per-batch arrays: reuse freed memory instead of faulting in fresh pages.

A stage-2 read of an 8-row batch at T = 1024 allocates about 16 MB of short-lived arrays (the stored arrays, the
decoded ids and log-probs, the batch's tensors); a stage-1 unit about as much per 24 rows. glibc's malloc serves
each allocation above its mmap threshold (128 KiB, adapting up to 32 MiB) with fresh pages and unmaps them at free,
and trims the heap top above its trim threshold, so every batch page-faults all of its memory again and the kernel
zeroes every page: measured at 55% of a read's CPU on the 2-core build machine (docs/benchmarks.md, store section).

:func:`tune_allocator` fixes the mmap threshold at 32 MiB (glibc's maximum; larger arrays still get their own
mapping) and the trim threshold at 512 MiB, so freed blocks stay in the heap and the next batch reuses them. Memory
stays bounded by what was live at the peak (the prefetch depth times a batch). Called once per process by every
console command (entry.py) and by the benchmarks; a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

#: mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 512 << 20

_done: bool | None = None


def tune_allocator() -> bool:
    """Apply the thresholds once per process. Returns whether glibc accepted them (False elsewhere)."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # musl and others: no mallopt
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
