"""Benchmark: selection + histogram from the lake vs uproot + numpy reading ROOT files.

The same events are written with uproot three times (uncompressed, LZ4 level 4 and ZLIB level 1,
flat float32 columns) and ingested with `ingest root`; then one analysis is timed, one core each
side: 3 cuts (mu_pt > 25, |mu_eta| < 2.1, met > 20) and a 120-bin fill of `mass`.

- lake: the recipe steps lhc.select -> lhc.histogram compiled by the engine (compile inside the
  timer: a user pays it every analysis) and computed with dask's synchronous scheduler; also on
  every core (threads) for reference.
- baseline: uproot.iterate over each ROOT file in steps of the lake's chunk size, a numpy mask
  and np.histogram per step, summed.

Both read only the four columns they need, from files in the page cache; every side gets one
untimed warm-up and the same best-of-N, interleaved. Ingest is a one-off cost: it is reported
beside the per-analysis gain with the break-even count (analyses after which ingest has paid for
itself). The histograms must agree exactly.

    python tests/benchmarks/bench_lhc_select.py [--quick] [--events 10000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks._timing import compare, finish, header, measure, ratio, show  # noqa: E402

COLUMNS = ("mu_pt", "mu_eta", "met", "mass")
CUT = "mu_pt > 25 and abs(mu_eta) < 2.1 and met > 20"
BINS, START, STOP = 120, 0.0, 240.0
WORKDIR = Path("/tmp/replicalake-bench-lhc")


def compressions():
    import uproot

    return {"none": None, "lz4": uproot.LZ4(4), "zlib": uproot.ZLIB(1)}


def write_root(path: Path, events: int, compression, piece: int = 1_000_000) -> None:
    """A ROOT file of `events` events with float32 columns shaped like a dimuon sample."""
    import uproot

    rng = np.random.default_rng(0)
    with uproot.recreate(path, compression=compression) as handle:
        handle.mktree("Events", dict.fromkeys(COLUMNS, np.float32))
        for start in range(0, events, piece):
            n = min(piece, events - start)
            mass = np.where(rng.random(n) < 0.3, rng.normal(91.2, 2.5, n), rng.exponential(60, n))
            handle["Events"].extend(
                {
                    "mu_pt": rng.exponential(30, n).astype(np.float32),
                    "mu_eta": rng.normal(0, 1.5, n).astype(np.float32),
                    "met": rng.exponential(25, n).astype(np.float32),
                    "mass": mass.astype(np.float32),
                }
            )


def baseline(path: Path, step: int) -> np.ndarray:
    """uproot + numpy: the way one would write this analysis without a lake."""
    import uproot

    counts = np.zeros(BINS, np.int64)
    for arrays in uproot.iterate({str(path): "Events"}, list(COLUMNS), step_size=step, library="np"):
        keep = (arrays["mu_pt"] > 25) & (np.abs(arrays["mu_eta"]) < 2.1) & (arrays["met"] > 20)
        counts += np.histogram(arrays["mass"][keep], BINS, (START, STOP))[0]
    return counts


def write_recipe(workdir: Path) -> Path:
    recipe = workdir / "bench_lhc.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
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
        """)
    )
    return recipe


def lake_analysis(recipe: Path, lake, scheduler: str) -> np.ndarray:
    """Compile the recipe and compute its histogram: what one analysis from the lake costs."""
    from engine.graph import compile_recipe

    counts = compile_recipe(recipe, lake).step("mass").dataset["counts"]
    return counts.compute(scheduler=scheduler).values


def run(
    quick: bool = False,
    events: int | None = None,
    step: int | None = None,
    repeats: int = 3,
    workdir: Path = WORKDIR,
) -> dict:
    from engine.ingest.root_files import ingest_root_files
    from engine.storage import Lake

    events = events or (1_000_000 if quick else 10_000_000)
    step = step or (250_000 if quick else 1_000_000)
    result = header("LHC selection + histogram: lake vs uproot + numpy", repeats, events=events, chunk=step)
    workdir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, compression in compressions().items():
        files[name] = workdir / f"events_{events}_{name}.root"
        if not files[name].exists():
            write_root(files[name], events, compression)
        result[f"root_{name}_mib"] = round(files[name].stat().st_size / 2**20, 1)
    lake_dir = workdir / "lake"
    ingest, ingest_cpu = {}, {}
    for name, path in files.items():  # one-off cost, measured from each format
        shutil.rmtree(lake_dir, ignore_errors=True)
        lake = Lake(str(lake_dir))
        ingest[name], ingest_cpu[name], _ = measure(
            lambda p=path, to=lake: ingest_root_files(to, [p], "bench_events", "Events", step_size=step)
        )
    recipe = write_recipe(workdir)
    sides = {f"uproot_{name}": (lambda p=path: baseline(p, step)) for name, path in files.items()}
    sides["lake_1core"] = lambda: lake_analysis(recipe, lake, "synchronous")
    sides["lake_threads"] = lambda: lake_analysis(recipe, lake, "threads")
    timings = compare(sides, repeats)
    reference = timings["uproot_zlib"].value
    for name, timing in timings.items():
        if not np.array_equal(timing.value, reference):
            raise SystemExit(f"{name}: histogram differs from uproot + numpy on the zlib file")
    lake_s = timings["lake_1core"].wall
    cores = os.cpu_count() or 1
    print(f"{events} events, {len(COLUMNS)} float32 columns, chunks of {step}; cut '{CUT}', {BINS}-bin fill")
    for name, timing in timings.items():
        result[f"{name}_s"] = round(timing.wall, 4)
        result[f"{name}_cpu_s"] = round(timing.cpu, 4)
        result[f"{name}_mevents_per_s"] = round(events / timing.wall / 1e6, 2)
    result["cores"] = cores
    for name in files:
        base_s = timings[f"uproot_{name}"].wall
        gain = base_s - lake_s
        result[f"speedup_vs_uproot_{name}"] = ratio(base_s, lake_s)
        result[f"ingest_from_{name}_s"] = round(ingest[name], 3)
        # analyses after which ingest + n lake analyses cost less than n uproot analyses
        result[f"break_even_analyses_{name}"] = round(ingest[name] / gain, 1) if gain > 0 else None
        # the same in CPU seconds, which a shared machine distorts less
        cpu_gain = timings[f"uproot_{name}"].cpu - timings["lake_1core"].cpu
        result[f"speedup_vs_uproot_{name}_cpu"] = ratio(
            timings[f"uproot_{name}"].cpu, timings["lake_1core"].cpu
        )
        result[f"ingest_from_{name}_cpu_s"] = round(ingest_cpu[name], 3)
        result[f"break_even_analyses_{name}_cpu"] = (
            round(ingest_cpu[name] / cpu_gain, 1) if cpu_gain > 0 else None
        )
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10^6 events in chunks of 250000")
    parser.add_argument("--events", type=int, default=None, help="default 10^7 (10^6 with --quick)")
    parser.add_argument("--step", type=int, default=None, help="events per step / lake chunk")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    args = parser.parse_args()
    show(run(args.quick, args.events, args.step, args.repeats, args.workdir))


if __name__ == "__main__":
    main()
