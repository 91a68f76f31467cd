"""Measure the peak resident memory of one run, to record beside its projection.

getrusage's ru_maxrss is the peak over the whole life of the process: in a long-lived process (a
test session, `replicalake serve`, a notebook) it reports whatever ran before. On Linux, writing
5 to /proc/self/clear_refs resets the high-water mark (VmHWM) to the current resident size, so
VmHWM read after the run is this run's own peak. Where that is not possible (macOS, a read-only
/proc) ru_maxrss is recorded instead: an upper bound of the run's peak.
"""

from __future__ import annotations

import resource
import sys

CLEAR_REFS = "/proc/self/clear_refs"
STATUS = "/proc/self/status"
RESET_HIGH_WATER_MARK = "5"


class PeakRss:
    """`with PeakRss() as peak: ...` then `peak.bytes`: the most resident memory inside the block."""

    def __init__(self) -> None:
        self.bytes: int | None = None
        self._reset = False

    def __enter__(self) -> PeakRss:
        try:
            with open(CLEAR_REFS, "w") as handle:
                handle.write(RESET_HIGH_WATER_MARK)
            self._reset = _high_water_mark() is not None
        except OSError:
            self._reset = False
        return self

    def __exit__(self, *exc_info) -> None:
        self.bytes = (_high_water_mark() if self._reset else None) or _process_peak()


def _high_water_mark() -> int | None:
    """VmHWM of /proc/self/status in bytes (None where there is no such line)."""
    try:
        with open(STATUS) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB
    except OSError:
        return None
    return None


def _process_peak() -> int:
    """ru_maxrss in bytes: the kernel reports KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
