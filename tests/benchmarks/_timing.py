"""Fair timing for the benchmarks: same warm-up, same best-of-N, interleaved repeats, wall and CPU.

`compare({"ours": f, "baseline": g}, repeats=3)` warms every side up (`warmup` untimed calls
each), then runs `repeats` rounds; in each round every side runs once, the order rotating from
round to round, so a change of machine load hits all sides alike. Each call is timed in wall
seconds and in CPU seconds of this process and its waited-for children (time.process_time plus
RUSAGE_CHILDREN), which a shared machine inflates far less than wall time. A side's result is the
best (smallest) wall time of its rounds, the CPU time of that round and the value it returned.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timing:
    """One side of a comparison: best wall seconds, CPU seconds of that round, every round's wall."""

    wall: float = float("inf")
    cpu: float = float("nan")
    walls: list[float] = field(default_factory=list)
    value: Any = None


def _cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(func: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds, returned value) of one call."""
    cpu, start = _cpu(), time.perf_counter()
    value = func()
    return time.perf_counter() - start, _cpu() - cpu, value


def compare(sides: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Time every side `repeats` times, interleaved, after `warmup` untimed calls of each."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, found {repeats} and {warmup}")
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    timings = {name: Timing() for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu, value = measure(sides[name])
            timing = timings[name]
            timing.walls.append(wall)
            if wall < timing.wall:
                timing.wall, timing.cpu, timing.value = wall, cpu, value
    return timings


def load_avg() -> float:
    """The 1-minute load average (compare with os.cpu_count(): above it, the machine is shared)."""
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    """What a benchmark result depends on besides the code."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    for module in ("numpy", "torch", "dask", "zarr"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info


def header(title: str, repeats: int, **settings: Any) -> dict[str, Any]:
    """Print a benchmark's title, load average, repeats and settings; return them as the result's start."""
    extra = ", ".join(f"{key} {value}" for key, value in settings.items())
    print(
        f"== {title} ==\nload average {load_avg()} on {os.cpu_count()} cores, best of {repeats}"
        + (f", {extra}" if extra else ""),
        flush=True,
    )
    return {"load_avg": load_avg(), "repeats": repeats, **settings}


def finish(result: dict[str, Any]) -> dict[str, Any]:
    """Add the load average at the end (the larger of start and end is what the numbers saw)."""
    result["load_avg"] = max(result.get("load_avg", 0.0), load_avg())
    return result


def show(result: Mapping[str, Any]) -> None:
    """Print a run() result, one named number a line."""
    width = max(map(len, result), default=0)
    for key, value in result.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {text}")


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator to 3 decimals; None (JSON null) where undefined."""
    return round(numerator / denominator, 3) if denominator > 0 else None
