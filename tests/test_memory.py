"""engine.memory's malloc setting, checked by what it is for (glibc only)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from engine.memory import MMAP_THRESHOLD_BYTES
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt setting")

# In a fresh interpreter (a clean heap, the setting made before any large buffer): free a
# chunk-sized buffer twice and print how many bytes of resident memory each free gave back.
FREE_TWICE = """
import resource, sys
import numpy as np
from engine.memory import MMAP_THRESHOLD_BYTES, limit_heap_fragmentation
assert limit_heap_fragmentation()
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()
for _ in range(2):
    chunk = np.ones(2 * MMAP_THRESHOLD_BYTES // 8)
    held = resident()
    del chunk
    print(held - resident())
"""


def freed_bytes() -> list[int]:
    out = subprocess.run([sys.executable, "-c", FREE_TWICE], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    return [int(line) for line in out.split()]


def test_chunk_sized_buffers_are_handed_back_to_the_kernel_every_time():
    """Pinned, every chunk-sized buffer leaves resident memory on free, so memory follows the live
    chunks rather than the heap's high-water mark. (Unpinned, glibc's threshold rises to the size
    of the first freed large buffer, and the next ones can then stay resident in the heap.)"""
    size = 2 * MMAP_THRESHOLD_BYTES
    assert all(freed > size // 2 for freed in freed_bytes())
