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

What still grew with the image was mostly the heap's free memory: at the sampled peak of the
one-pass thickness run (mallinfo2) 33 MiB of free heap at 10^4 spectra, 98 at 1.6 x 10^5, 114 at
10^6, in a heap of 107 -> 158 MiB whose memory in use peaked at 74-83 -> 96-101. Small long-lived
objects (task results, the scheduler's state) land between the chunk buffers, and the holes they
split are too small for the next buffer, so the heap grows. TrimWhenGrown hands those holes back
during a compute, only when resident memory has grown TRIM_ALLOWANCE_BYTES since the last time
(so the chunk buffers of running tasks are reused, not faulted in again, in between): 10^6
spectra 286 -> 262 MiB for 39 trims and no measurable CPU; an allowance of 32 MiB gave 259 MiB
for 216 trims, 1.3M minor faults and +20% CPU; trimming whenever the free heap passed 32 MiB
(mallinfo2, itself ~2 ms on a fragmented heap) 234 MiB for +60% CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

from dask.callbacks import Callback

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 64 * 2**20  # above the lake's chunk buffers (an 8 MiB 32 x 32 x 2048 chunk)
TRIM_THRESHOLD_BYTES = 32 * 2**20  # freed memory kept at the top of the heap for the next task
ARENAS = 1
TRIM_ALLOWANCE_BYTES = 48 * 2**20  # growth of resident memory that makes TrimWhenGrown trim
TRIM_CHECK_EVERY = 4  # tasks between two looks at resident memory (~5 us each)


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


class TrimWhenGrown(Callback):
    """A dask callback (local schedulers) that hands the heap's free pages back (malloc_trim)
    whenever resident memory has grown `allowance` bytes above where the compute started or the
    last trim left it; `with TrimWhenGrown(): dask.compute(...)`. Nothing where there is no
    glibc or no /proc. See the module docstring for what it saves and costs."""

    def __init__(self, allowance: int = TRIM_ALLOWANCE_BYTES, every: int = TRIM_CHECK_EVERY) -> None:
        super().__init__()
        self.allowance, self.every = allowance, every
        self.trims = 0
        self._tasks = 0
        self._limit: int | None = None
        self._statm: int | None = None

    def _start(self, dsk) -> None:
        try:
            self._statm = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._statm = None
        now = self._resident()
        usable = now is not None and _libc() is not None and hasattr(_libc(), "malloc_trim")
        self._limit = now + self.allowance if usable else None

    def _resident(self) -> int | None:
        if self._statm is None:
            return None
        try:
            return int(os.pread(self._statm, 128, 0).split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        self._tasks += 1
        if self._limit is None or self._tasks % self.every:
            return
        now = self._resident()
        if now is not None and now > self._limit:
            release_free_heap()
            self.trims += 1
            self._limit = (self._resident() or now) + self.allowance

    def _finish(self, dsk, state, errored) -> None:
        if self._statm is not None:
            os.close(self._statm)
            self._statm = None


# At import, not only when a run starts: M_ARENA_MAX binds only threads that allocate after it.
limit_heap_fragmentation()
