"""Keep freed memory in the process on CPU, instead of returning it to the kernel.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh `mmap`
and unmaps it on free, so a training step that allocates the same large activations every
step pays for zeroing new pages every step. In the block-sparse attention at T = 16 that was
about 40% of the step (docs/benchmarks.md). PyTorch has no caching allocator on CPU; Intel's
CPU tuning guide swaps in jemalloc/tcmalloc for the same reason. We tell glibc instead: no
mmap, and do not trim the heap while under 1 GiB is free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_BYTES = 1 << 30


def retain_freed_memory() -> bool:
    """Tune glibc malloc as above; False (and a log line) where libc is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("allocator: no glibc mallopt here; keeping the default allocator")
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))
