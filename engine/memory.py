"""Keep resident memory bounded by chunk size on glibc.

glibc raises its mmap threshold each time a large block is freed, up to 32 MiB, after which
chunk-sized numpy buffers (a 64 x 64 x 2048 float32 chunk is 32 MiB) come from the heap arenas
of the worker threads and fragment them: measured on the thickness recipe, peak RSS grew from
388 MiB (10^4 spectra) to 847 MiB (10^6 spectra). Pinning the threshold at 4 MiB hands such
buffers back to the OS on free and kept the 10^6-spectrum run at 454 MiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 4 * 2**20


@functools.cache
def limit_heap_fragmentation() -> bool:
    """Pin glibc's mmap threshold (once per process); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    variant = os.environ.get("H8_MALLOC", "pin4")
    try:
        libc = ctypes.CDLL(name)
        if variant == "pin4":
            return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
        if variant == "none":
            return True
        if variant == "big64":
            libc.mallopt(M_TRIM_THRESHOLD, 128 * 2**20)
            return bool(libc.mallopt(M_MMAP_THRESHOLD, 64 * 2**20))
        if variant == "arena":
            return bool(libc.mallopt(M_ARENA_MAX, 2))
        if variant == "arena1":
            return bool(libc.mallopt(M_ARENA_MAX, 1))
        if variant.startswith("b64a1t"):
            libc.mallopt(M_ARENA_MAX, 1)
            libc.mallopt(M_TRIM_THRESHOLD, int(variant[6:]) * 2**20)
            return bool(libc.mallopt(M_MMAP_THRESHOLD, 64 * 2**20))
        if variant == "big64arena1":
            libc.mallopt(M_ARENA_MAX, 1)
            libc.mallopt(M_TRIM_THRESHOLD, 128 * 2**20)
            return bool(libc.mallopt(M_MMAP_THRESHOLD, 64 * 2**20))
        if variant in ("trim", "trimbig"):
            if variant == "trimbig":
                libc.mallopt(M_TRIM_THRESHOLD, 128 * 2**20)
                libc.mallopt(M_MMAP_THRESHOLD, 64 * 2**20)
            from dask.callbacks import Callback

            Callback(posttask=lambda *a: libc.malloc_trim(0)).register()
            return True
    except (OSError, AttributeError):
        return False
    return False
