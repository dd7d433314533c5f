"""Keep freed memory in the process heap instead of handing it back to the kernel (glibc only).

Why (issue 15): glibc serves an allocation above its mmap threshold (dynamic, at most 32 MB) with
a fresh ``mmap`` and unmaps it on ``free``, and it trims the heap's free top back to the kernel.
A training step allocates and frees the same large activations every step (at hidden 256 and
2,000 stocks, (N, L, H) is 41 MB), so every step faults all of them in again, page by page, and
the kernel zeroes each page. Measured on the 2-core CI VM, one forward+backward at hidden 256:
6.0 M minor page faults and 5.9 s per step (14 s of the 30 s CPU time in the kernel) by default,
0.24 M faults and 2.8 s with the heap kept (2.1x; 1.2x at the demo's hidden 32); a forward-only
pass over 4,000 stock-days (scoring): 3.35 s -> 1.87 s (1.8x). PyTorch's CPU
tuning guide gets the same effect by preloading jemalloc/tcmalloc; ``mallopt`` needs no extra
library and works after start-up, so an Airflow task process can switch it on itself.

Cost: the process keeps its peak heap until it exits (RSS does not shrink between steps); a
training or scoring process reaches that peak every step anyway. Freed blocks are reused, so the
heap does not grow beyond the peak.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_TRIM_NEVER = 2**31 - 1  # the largest int mallopt takes: trim only above 2 GB of free heap top

_retained = False


def _mallopt():
    """glibc's ``mallopt``, or None where the C library is not glibc (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def can_retain() -> bool:
    """True where :func:`retain_freed_memory` can take effect (changes nothing)."""
    return _mallopt() is not None


def retain_freed_memory() -> bool:
    """Serve every allocation from the heap (no per-allocation mmap) and stop trimming it.

    Idempotent. Returns True where it took effect (Linux with glibc), False elsewhere, where the
    allocator is left as it is.
    """
    global _retained
    mallopt = None if _retained else _mallopt()
    if mallopt is not None:
        _retained = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, _TRIM_NEVER) == 1
    return _retained


def heap_mode(default_heap: bool) -> str:
    """The benches' ``--default-heap`` switch: keep freed memory as the trainer does unless asked
    not to; returns the label they print."""
    if default_heap:
        return "glibc default"
    return "kept" if retain_freed_memory() else "not glibc: default"
