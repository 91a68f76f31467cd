"""glibc malloc settings: resident memory bounded by chunk size, small buffers reused.

Two settings, both measured:
- The mmap threshold. glibc raises it each time a large block is freed, up to 32 MiB, after which
  chunk-sized numpy buffers (a 64 x 64 x 2048 float32 chunk is 32 MiB) come from the heap arenas
  of the worker threads and fragment them: measured on the thickness recipe, peak RSS grew from
  388 MiB (10^4 spectra) to 847 MiB (10^6 spectra). Pinning the threshold at 4 MiB hands such
  buffers back to the OS on free and kept the 10^6-spectrum run at 454 MiB.
- The trim threshold. Pinning the mmap threshold also pins this one at its 128 KiB default: glibc
  hands the top of a heap back to the kernel whenever that much of it is free. A training step
  allocates and frees activations of a few hundred kB, so every step faulted zeroed pages in again
  and started on cold caches. Keeping up to 32 MiB free per heap made the EFT training step
  faster (README, benchmarks) for at most that much resident memory per heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers
MMAP_THRESHOLD_BYTES = 4 * 2**20
TRIM_THRESHOLD_BYTES = 32 * 2**20


@functools.cache
def tune_malloc() -> bool:
    """Pin glibc's mmap and trim thresholds (once per process); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
        return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) & bool(
            mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
