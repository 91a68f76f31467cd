"""engine.memory's malloc settings, checked by what they are for (glibc only)."""

from __future__ import annotations

import platform
import resource

import numpy as np
import pytest

from engine.memory import MMAP_THRESHOLD_BYTES, tune_malloc

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt settings")


def _page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_freed_step_sized_buffers_are_reused_without_page_faults():
    """A training step frees and reallocates activations of a few hundred kB: after the first
    round they must come back from the heap, not as fresh pages from the kernel."""
    assert tune_malloc()
    size = 2**20 // 8  # 1 MiB of float64, above glibc's default 128 KiB trim threshold
    np.ones(size).sum()
    before = _page_faults()
    for _ in range(50):
        np.ones(size).sum()
    assert _page_faults() - before < 50  # one round would fault 256 pages if the heap were trimmed


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def test_chunk_sized_buffers_are_handed_back_to_the_kernel():
    """Above the pinned mmap threshold a freed buffer leaves resident memory at once, so it follows
    the live chunks rather than the heap's high-water mark (glibc's own threshold would have
    risen to 32 MiB after the first such free and kept the next ones in the heap)."""
    assert tune_malloc()
    size = 2 * MMAP_THRESHOLD_BYTES
    for _ in range(2):  # the second round is the one a risen threshold would keep
        chunk = np.ones(size // 8)
        held = _resident_bytes()
        del chunk
        assert held - _resident_bytes() > size // 2
