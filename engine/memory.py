"""Keep resident memory bounded by chunk size on glibc, without a page fault per buffer page.

Every task allocates and frees chunk-sized buffers (a 32 x 32 x 2048 float32 chunk is 8 MiB).
Measured on `replicalake run` of align + thickness (2-core machine, load 8-12; the process's own
rusage), 10^4 -> 10^6 synthetic spectra:

- glibc left alone serves them from one heap arena per thread and raises its mmap threshold as
  large blocks are freed; the arenas fragment: peak RSS 278 -> 432 MiB, 24.0 CPU-s at 10^6.
- this module's earlier setting, the mmap threshold pinned at 4 MiB, made every buffer a fresh
  mapping: peak 216 -> 271 MiB, but 10.1M minor page faults and 54.0 CPU-s at 10^6, 31.9 s
  of it in the kernel (2.3x the CPU of the same run with buffers reused).
- now: buffers up to 64 MiB come from one arena (M_ARENA_MAX 1), which keeps up to 32 MiB of
  freed memory at its top before giving it back (M_TRIM_THRESHOLD); the few chunk-sized blocks
  are recycled by task after task: peak 266 -> 386 MiB, 0.11M faults, 23.5 CPU-s (1.9 s
  kernel) at 10^6. Peak grows with the number of chunks (+120 MiB over 100x the data, against
  +55 pinned); trimming every 64 tasks as well lowered it to 347 MiB for 1.1M faults.

One arena serialises malloc calls between worker threads; the heavy work runs in numpy and the
codecs with few, large allocations, and on 2 cores it cost nothing measurable (not measured on
more cores).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 64 * 2**20  # above the lake's chunk buffers (zarr_io.TARGET_CHUNK_BYTES 8 MiB)
TRIM_THRESHOLD_BYTES = 32 * 2**20  # freed memory kept at the top of the heap for the next task
ARENAS = 1


@functools.cache
def limit_heap_fragmentation() -> bool:
    """Set glibc's malloc up as above (once per process); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    settings = (
        (M_ARENA_MAX, ARENAS),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
    )
    try:
        libc = ctypes.CDLL(name)
        return all([libc.mallopt(option, value) for option, value in settings])
    except (OSError, AttributeError):
        return False
