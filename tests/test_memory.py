"""engine.memory's malloc setting, checked by what it is for (glibc only)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt setting")

# In a fresh interpreter, set up as the runner does, two worker threads each fill and free 40
# chunk-sized (8 MiB) buffers, as tasks do; print the minor page faults this cost per buffer
# page, and how much resident memory grew.
CHUNKS = """
import json, resource, threading
import numpy as np
from engine.memory import limit_heap_fragmentation
assert limit_heap_fragmentation()
PAGES = 8 * 2**20 // resource.getpagesize()
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()
def work():
    for _ in range(40):
        chunk = bytearray(PAGES * resource.getpagesize())  # as a codec's output buffer
        np.frombuffer(chunk, np.uint8).fill(1)
        del chunk
before, faults = resident(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
workers = [threading.Thread(target=work) for _ in range(2)]
for w in workers: w.start()
for w in workers: w.join()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"faults_per_page": faults / (80 * PAGES), "growth_mib": (resident() - before) / 2**20}))
"""


def chunk_churn() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHUNKS], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def test_chunk_buffers_are_reused_and_memory_stays_at_a_few_chunks():
    """Buffers freed by one task are reused by the next: far fewer than one page fault per page
    (a fresh mapping per buffer, the earlier 4 MiB pin, faults on every page: ~1 per page), and
    resident memory grows by a few live chunks (2 threads x 8 MiB, plus what the heap keeps),
    not by the 640 MiB allocated in all."""
    churn = chunk_churn()
    assert churn["faults_per_page"] < 0.1, churn
    assert 0 <= churn["growth_mib"] < 8 * 2 + 128, churn


# In a fresh interpreter: import engine.memory (nothing called), then, as a run does, a thread that
# starts before the workers and allocates (zarr's I/O loop), then two workers churning chunk-sized
# buffers; count the arenas glibc's malloc_info reports.
ARENAS = """
import ctypes, os, tempfile, threading
import numpy as np
import engine.memory
def churn():
    for _ in range(10):
        np.ones(2 * 2**20)  # 16 MiB
def start(n):
    threads = [threading.Thread(target=churn) for _ in range(n)]
    for t in threads: t.start()
    return threads
for t in start(1) + start(2): t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fdopen.restype = ctypes.c_void_p
with tempfile.TemporaryFile("w+") as out:
    stream = libc.fdopen(os.dup(out.fileno()), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    out.seek(0)
    print(out.read().count("<heap nr="))
"""


def test_importing_engine_memory_keeps_every_thread_on_one_arena():
    """The setting is made at import, before any thread allocates: with it made only when a run
    started, workers were handed the arenas that earlier threads had made, which fragmented
    (peak RSS 250 -> 313 MiB from 10^4 to 1.6e5 spectra, against 209 -> 253 with one arena)."""
    out = subprocess.run(
        [sys.executable, "-c", ARENAS], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert int(out) == 1, out


def test_trim_when_grown_trims_only_past_its_allowance(monkeypatch):
    """TrimWhenGrown hands the free heap back only when resident memory passed the allowance
    above where the compute started or the last trim left it (so chunk buffers are reused in
    between, not faulted in again), and re-arms from what the trim left."""
    import engine.memory

    trims = []
    monkeypatch.setattr(engine.memory, "release_free_heap", lambda: trims.append(1) or True)
    callback = engine.memory.TrimWhenGrown(allowance=100, every=2)
    # start 1000: limit 1100; 1100 is not above it; 1101 is, the trim leaves 1020 (limit 1120);
    # 1110 is not; 1130 is, and the trim leaves 1125 (limit 1225)
    readings = iter([1000, 1100, 1101, 1020, 1110, 1130, 1125, 1200])
    monkeypatch.setattr(callback, "_resident", lambda: next(readings))
    callback._start({})
    for task in range(10):  # looks every second task: 5 readings, and 1 after each trim
        callback._posttask(("t", task), None, {}, {}, 0)
        if task == 3:
            assert len(trims) == 1
    callback._finish({}, {}, False)
    assert callback.trims == len(trims) == 2
