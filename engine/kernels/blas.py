"""One BLAS thread per process, for kernels that run inside dask worker threads.

Every chunk task already has a worker thread of its own, so numpy's OpenBLAS pool (one thread
per core) only oversubscribes the cores, and its threads spin after each small matrix product:
measured 0.31 against 0.18 CPU-s per band-gap kernel call on 1024 spectra of the 10^6 EELS
chain, and 1.6-1.9 against 0.81-0.88 CPU-s on the batched EELS ZLP training (2 cores).
"""

from __future__ import annotations

import functools


@functools.cache
def one_blas_thread() -> None:
    """Limit numpy's BLAS to one thread, once per process (process-wide, set from a task)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # no threadpoolctl: OMP/OPENBLAS_NUM_THREADS=1 in the environment does it
        return
    threadpool_limits(1, user_api="blas")
