"""The host allocator: keep freed memory in the process for the next allocation instead of handing it back to the
operating system at once.

By default glibc's malloc serves every block above its mmap threshold (128 KiB, rising with use to at most
32 MiB) with a fresh mmap and unmaps it on free, and gives the heap's free top back above its trim threshold.
A distillation on a CPU allocates and frees activations of megabytes to hundreds of megabytes in every step, so
each new block is faulted in again, page by page, and zeroed by the kernel. Raising both thresholds to 1 GiB
serves these blocks from the heap, which the process keeps: the peak resident memory stays what it was, and the
kernel's share of the CPU time falls (benchmarks/bench_host_memory.py measures it, with and without).
Any program gets the same from GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...;
the suite sets it itself, once per process, in make_runtime. CLOM_KEEP_FREED_MEMORY=0 leaves malloc as it is.
On a C library without glibc's mallopt (macOS, musl) nothing changes. CUDA memory has its own caching allocator
and is not concerned.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV_SWITCH = "CLOM_KEEP_FREED_MEMORY"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
THRESHOLD = 1 << 30  # 1 GiB: blocks larger than this are still mapped and unmapped on their own

_state: dict[str, bool] = {}


def keep_freed_host_memory() -> bool:
    """Raise glibc malloc's mmap and trim thresholds (once per process); True when they are raised."""
    if "applied" not in _state:
        _state["applied"] = _raise_thresholds()
    return _state["applied"]


def _raise_thresholds() -> bool:
    if os.environ.get(ENV_SWITCH, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl's mallopt accepts nothing
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1
