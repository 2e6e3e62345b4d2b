"""Keep freed CPU memory inside the process between training steps (Linux with glibc).

Why: glibc hands large blocks (above a threshold that starts at 128 KiB) to the kernel with mmap and
gives the heap's free top back whenever it passes a trim threshold. A training step frees its activations
at its end, so the next step's activations are fresh pages again, and every first touch of a 4 KiB page is
a page fault (costly in a virtual machine). Fixing the two thresholds keeps those pages: blocks up to
32 MiB (glibc's largest mmap threshold on 64-bit) come from the heap, and the heap is not trimmed, so a
process stays at its peak resident memory instead of dropping between steps. Values are untouched: this
changes where memory comes from, not what is computed. BENCHMARKS.md has the measured effect per method.

Opt out with POINTLIFT_KEEP_FREED_MEMORY=0. Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

ENV = "POINTLIFT_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt's int takes: in practice, never trim

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (and the DataLoader workers it forks later);
    True when they are set. Idempotent; cheap after the first call."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success
    _applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _applied
