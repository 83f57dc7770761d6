"""Keep freed tensor memory in the process instead of handing it back to the kernel (glibc only).

PyTorch's CPU tensors come from malloc. glibc serves large blocks (a 4096 x 256 float tensor
is 4 MiB) with mmap, or trims them off the heap top when freed, so the next tensor of that
size is fresh memory and faults in page by page. Bound propagation allocates hundreds of such
temporaries per batch: measured on 2 cores, the MNIST pixel-mode verification of two unit
tests spent 19 s of 44 s in the kernel; with the thresholds below, 2 s of 33 s. The cost is
that a process keeps its peak heap until it exits, which suits processes that run one step:
`auditai` calls this first, and so do the verification benchmarks. Set AUDITAI_KEEP_FREED_MEMORY=0 to leave malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30
"""Blocks below 1 GiB come from the heap, and up to 1 GiB of free heap top is kept."""


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if applied (Linux with glibc, not opted out)."""
    if os.environ.get("AUDITAI_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
