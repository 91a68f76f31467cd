"""Benchmark: selection + histogram from the lake vs uproot + numpy on the same events.

Writes a ROOT file of N events with flat float32 columns (uproot, in pieces), ingests it with
`ingest root`, then times the same analysis two ways on one core (and the lake also on all
cores): 3 cuts (mu_pt > 25, |mu_eta| < 2.1, met > 20) and a 120-bin fill of `mass`.

- lake: recipe steps lhc.select -> lhc.histogram compiled by the engine, computed with dask;
- baseline: uproot.iterate over the ROOT file in steps of the same size, numpy mask and
  np.histogram per step, summed.

Both read only the columns they need. Prints events/s per core and the ratio lake/baseline,
measured in this run; the histograms must agree exactly.

    python tests/benchmarks/bench_lhc_select.py                 # 10^7 events
    python tests/benchmarks/bench_lhc_select.py --events 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np

COLUMNS = ("mu_pt", "mu_eta", "met", "mass")
CUT = "mu_pt > 25 and abs(mu_eta) < 2.1 and met > 20"
BINS, START, STOP = 120, 0.0, 240.0


def write_root(path: Path, events: int, piece: int = 1_000_000) -> None:
    """A ROOT file of `events` events with float32 columns shaped like a dimuon sample."""
    import uproot

    rng = np.random.default_rng(0)
    with uproot.recreate(path) as handle:
        handle.mktree("Events", dict.fromkeys(COLUMNS, np.float32))
        for start in range(0, events, piece):
            n = min(piece, events - start)
            handle["Events"].extend({
                "mu_pt": rng.exponential(30, n).astype(np.float32),
                "mu_eta": rng.normal(0, 1.5, n).astype(np.float32),
                "met": rng.exponential(25, n).astype(np.float32),
                "mass": np.where(rng.random(n) < 0.3, rng.normal(91.2, 2.5, n),
                                 rng.exponential(60, n)).astype(np.float32)})


def baseline(path: Path, step: int) -> np.ndarray:
    """uproot + numpy: the way one would write this analysis without a lake."""
    import uproot

    counts = np.zeros(BINS, np.int64)
    for arrays in uproot.iterate({str(path): "Events"}, list(COLUMNS), step_size=step, library="np"):
        keep = (arrays["mu_pt"] > 25) & (np.abs(arrays["mu_eta"]) < 2.1) & (arrays["met"] > 20)
        counts += np.histogram(arrays["mass"][keep], BINS, (START, STOP))[0]
    return counts


def lake_plan(workdir: Path, lake):
    from engine.graph import compile_recipe

    recipe = workdir / "bench_lhc.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        version: 1
        name: bench-lhc
        sources: {{events: {{catalog: lake, entry: raw/bench_events}}}}
        steps:
          - {{id: cut, op: lhc.select, inputs: {{events: events}}, params: {{cut: "{CUT}"}}}}
          - id: mass
            op: lhc.histogram
            inputs: {{events: cut}}
            params: {{axes: [{{variable: mass, bins: {BINS}, start: {START}, stop: {STOP}}}]}}
        outputs: {{mass: {{}}}}
        """))
    return compile_recipe(recipe, lake)


def timed(func, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--step", type=int, default=1_000_000, help="events per step / lake chunk")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/replicalake-bench-lhc"))
    args = parser.parse_args()

    from engine.ingest.root_files import ingest_root_files
    from engine.storage import Lake

    args.workdir.mkdir(parents=True, exist_ok=True)
    root = args.workdir / f"events_{args.events}.root"
    if not root.exists():
        start = time.perf_counter()
        write_root(root, args.events)
        print(f"wrote {root} ({root.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.1f} s")
    lake_dir = args.workdir / "lake"
    shutil.rmtree(lake_dir, ignore_errors=True)
    lake = Lake(str(lake_dir))
    start = time.perf_counter()
    ingest_root_files(lake, [root], "bench_events", "Events", step_size=args.step)
    ingest_s = time.perf_counter() - start
    plan = lake_plan(args.workdir, lake)
    counts = plan.step("mass").dataset["counts"]

    base_s, base_counts = timed(lambda: baseline(root, args.step), args.repeat)
    one_s, one_counts = timed(lambda: counts.compute(scheduler="synchronous").values, args.repeat)
    cores = os.cpu_count() or 1
    all_s, all_counts = timed(lambda: counts.compute(scheduler="threads").values, args.repeat)
    for name, values in (("lake, 1 core", one_counts), (f"lake, {cores} threads", all_counts)):
        if not np.array_equal(values, base_counts):
            raise SystemExit(f"{name}: histogram differs from uproot + numpy")
    n = args.events
    print(f"{n} events, {len(COLUMNS)} float32 columns, chunks of {args.step}; cut '{CUT}', "
          f"{BINS}-bin fill; best of {args.repeat}")
    print(f"ingest root -> lake: {ingest_s:.1f} s ({n / ingest_s / 1e6:.2f} M events/s)")
    print(f"uproot + numpy, 1 core:   {base_s:.2f} s  {n / base_s / 1e6:6.1f} M events/s per core")
    print(f"lake, 1 core:             {one_s:.2f} s  {n / one_s / 1e6:6.1f} M events/s per core  "
          f"({base_s / one_s:.2f}x uproot + numpy)")
    print(f"lake, {cores} threads:          {all_s:.2f} s  {n / all_s / cores / 1e6:6.1f} M events/s per "
          f"core ({base_s / all_s:.2f}x uproot + numpy on 1 core)")


if __name__ == "__main__":
    main()
