"""Keep resident memory bounded by chunk size on glibc, without a page fault per buffer page.

Every task allocates and frees chunk-sized buffers (a 32 x 32 x 2048 float32 chunk is 8 MiB:
the compressed bytes, the decoded chunk, kernel temporaries). Measured on `replicalake run` of
the thickness recipe (2-core machine shared with other work, load 8-10; the process's own
rusage), 10^4 -> 1.6 x 10^5 synthetic spectra of 2048 channels:

- the mmap threshold pinned at 4 MiB (an earlier setting) makes every buffer a fresh mapping:
  peak 216 -> 246 MiB, but 0.74M minor page faults at 1.6e5 against 0.05-0.15M (10.1M at 10^6,
  31.9 s of kernel time: 2.3x the CPU of the same run with buffers reused).
- buffers up to 64 MiB from one arena (M_ARENA_MAX 1), which keeps up to 32 MiB of freed memory
  at its top before giving it back (M_TRIM_THRESHOLD): the few chunk-sized blocks are recycled
  by task after task. Set when a run started, though, it bound only threads that had not
  allocated yet; the worker threads were handed arenas that earlier threads (zarr's I/O loop,
  opened while the recipe was compiled) had made, and those fragmented: peak 250 -> 313 MiB,
  232 MiB still resident after the run and a malloc_trim (161 with one arena).
- so the setting is made when this module is imported, which the runner and the ingest do before
  they open a store: peak 209-221 -> 242-253 MiB, 0.05-0.15M faults; 275-317 MiB at 10^6
  (three runs; 386 before). What is left of the growth is live, not freed memory the heap
  keeps: the task graph and dask's state grow with the number of chunks (resident before the
  compute 155 -> 173 MiB from 10^4 to 10^6, tracemalloc's peak of Python-visible memory during
  it 45 -> 58 -> 72 MiB). Trimming after tasks was measured too and is not used: after every task
  213 -> 251 MiB for 0.73M faults at 1.6e5; whenever resident memory had grown 64 MiB, 275 MiB
  at 10^6 as without it, for 0.77M faults and twice the kernel time.

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
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


@functools.cache
def limit_heap_fragmentation() -> bool:
    """Set glibc's malloc up as above (once per process); False where there is no glibc."""
    libc = _libc()
    settings = (
        (M_ARENA_MAX, ARENAS),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
    )
    try:
        return libc is not None and all([libc.mallopt(option, value) for option, value in settings])
    except AttributeError:
        return False


def release_free_heap() -> bool:
    """Hand the heap's free pages back to the kernel (malloc_trim), so that what runs next shows
    its own memory in the growth of resident memory (tests/benchmarks/calibrate_op_memory.py)
    instead of reusing what earlier work freed. False where there is no glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)  # returns whether anything was released: either is fine
    return True


# At import, not only when a run starts: M_ARENA_MAX binds only threads that allocate after it.
limit_heap_fragmentation()
