"""Benchmark: the shipped lhc_dimuon recipe (kinematics + cuts + histogram) vs uproot + numpy + hist.

Real events: the 2304 CMS 2010 dimuon events of scikit-hep-testdata's uproot-Zmumu.root, each
repeated with a random azimuthal rotation of both muons (and, at random, z -> -z), which keeps
every event's pt, |eta|, charges and pair mass, so the physics is the real sample's while the
floats of every copy differ (a plain tiling would compress to nothing). They are written with
uproot (the kinematic branches px, py, pz, E, Q of both muons, doubles and int32, LZ4 level 4
and ZLIB level 1) and ingested once with `ingest root`.

- lake: recipes/lhc_dimuon.yaml as shipped (lhc.kinematics on flat objects -> lhc.select ->
  lhc.histogram), with its source pointed at the ingested entry, compiled inside the timer (a
  user pays it every analysis) and computed with dask's synchronous scheduler (one core); also
  on every core (threads) for reference.
- baseline: uproot.iterate over each ROOT file in steps of the lake's chunk size, both muons'
  pt, eta and pair mass in numpy, the same cut, a `hist.Hist` fill.

Both read only the columns they need from files in the page cache; every side gets one untimed
warm-up and the same best-of-N, interleaved; wall and CPU seconds are reported (CPU seconds are
what a shared machine inflates least). Ingest is a one-off cost, reported with the break-even
count (analyses after which ingest has paid for itself). The histograms must agree exactly.

    python tests/benchmarks/bench_lhc_kinematics.py [--quick] [--events 10000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks._timing import compare, finish, header, measure, ratio, show  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MUON = ("px", "py", "pz", "E", "Q")
BRANCHES = tuple(f"{c}{i}" for i in (1, 2) for c in MUON)
BINS, START, STOP = 60, 60.0, 120.0
WORKDIR = Path("/tmp/replicalake-bench-lhc-kinematics")


def zmumu() -> dict[str, np.ndarray]:
    import skhep_testdata
    import uproot

    with uproot.open(skhep_testdata.data_path("uproot-Zmumu.root")) as handle:
        return handle["events"].arrays(list(BRANCHES), library="np")


def write_root(path: Path, events: int, compression, piece: int = 1_000_000) -> None:
    """`events` rotated copies of the Zmumu events (seeded), in steps of `piece`."""
    import uproot

    real = zmumu()
    rng = np.random.default_rng(0)
    dtypes = {name: real[name].dtype.newbyteorder("=") for name in BRANCHES}
    with uproot.recreate(path, compression=compression) as handle:
        handle.mktree("events", dtypes)
        for start in range(0, events, piece):
            n = min(piece, events - start)
            pick = rng.integers(0, len(real["E1"]), n)
            angle = rng.uniform(0, 2 * np.pi, n)
            cos, sin = np.cos(angle), np.sin(angle)
            flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
            out = {}
            for i in (1, 2):
                px, py = real[f"px{i}"][pick], real[f"py{i}"][pick]
                out[f"px{i}"] = cos * px - sin * py
                out[f"py{i}"] = sin * px + cos * py
                out[f"pz{i}"] = flip * real[f"pz{i}"][pick]
                out[f"E{i}"] = real[f"E{i}"][pick]
                out[f"Q{i}"] = real[f"Q{i}"][pick]
            handle["events"].extend(
                {name: np.ascontiguousarray(out[name], dtypes[name]) for name in BRANCHES}
            )


def pair_mass(arrays: dict) -> np.ndarray:
    """The pair's invariant mass, E^2 - p^2 in float64 as the lake computes it."""
    px, py = arrays["px1"] + arrays["px2"], arrays["py1"] + arrays["py2"]
    pz, energy = arrays["pz1"] + arrays["pz2"], arrays["E1"] + arrays["E2"]
    m2 = energy**2 - (px**2 + py**2 + pz**2)
    return np.sign(m2) * np.sqrt(np.abs(m2))


def baseline(path: Path, step: int) -> np.ndarray:
    """uproot + numpy + hist: the way one would write this analysis without a lake."""
    import hist
    import uproot

    counts = hist.Hist(hist.axis.Regular(BINS, START, STOP))
    for arrays in uproot.iterate({str(path): "events"}, list(BRANCHES), step_size=step, library="np"):
        keep = arrays["Q1"] * arrays["Q2"] < 0
        for i in (1, 2):
            pt = np.hypot(arrays[f"px{i}"], arrays[f"py{i}"])
            eta = np.arcsinh(arrays[f"pz{i}"] / pt)
            keep &= (pt > 20) & (np.abs(eta) < 2.4)
        counts.fill(pair_mass(arrays)[keep])
    return counts.values().astype(np.int64)


def write_recipe(workdir: Path, entry: str, tag: str = "") -> Path:
    """recipes/lhc_dimuon.yaml with its source pointed at the ingested entry."""
    import yaml

    recipe = yaml.safe_load((REPO / "recipes" / "lhc_dimuon.yaml").read_text())
    recipe["sources"] = {"events": {"catalog": "lake", "entry": f"raw/{entry}"}}
    path = workdir / f"bench_lhc_dimuon{tag}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def lake_analysis(recipe: Path, lake, scheduler: str) -> np.ndarray:
    """Compile the recipe and compute its histogram: what one analysis from the lake costs."""
    from engine.graph import compile_recipe

    counts = compile_recipe(recipe, lake).step("mass").dataset["counts"]
    return counts.compute(scheduler=scheduler).values.astype(np.int64)


def run(
    quick: bool = False,
    events: int | None = None,
    step: int | None = None,
    repeats: int = 3,
    workdir: Path = WORKDIR,
) -> dict:
    import uproot

    from engine.ingest.root_files import ingest_root_files
    from engine.storage import Lake

    events = events or (1_000_000 if quick else 10_000_000)
    step = step or (250_000 if quick else 1_000_000)
    result = header(
        "LHC dimuon kinematics on real CMS events: lake vs uproot + numpy + hist",
        repeats,
        events=events,
        chunk=step,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, compression in {"lz4": uproot.LZ4(4), "zlib": uproot.ZLIB(1)}.items():
        files[name] = workdir / f"zmumu_{events}_{name}.root"
        if not files[name].exists():
            write_root(files[name], events, compression)
        result[f"root_{name}_mib"] = round(files[name].stat().st_size / 2**20, 1)
    lake_dir = workdir / f"lake_{events}_{step}"  # one per size: a quick run beside a full one
    ingest = {}
    for name, path in files.items():  # one-off cost, measured from each format
        shutil.rmtree(lake_dir, ignore_errors=True)
        lake = Lake(str(lake_dir))
        ingest[name], _, _ = measure(
            lambda p=path, to=lake: ingest_root_files(to, [p], "bench_zmumu", "events", step_size=step)
        )
    result["lake_mib"] = round(lake.size(lake.entry_path("raw", "bench_zmumu")) / 2**20, 1)
    recipe = write_recipe(workdir, "bench_zmumu", f"_{events}_{step}")
    sides = {f"uproot_{name}": (lambda p=path: baseline(p, step)) for name, path in files.items()}
    sides["lake_1core"] = lambda: lake_analysis(recipe, lake, "synchronous")
    sides["lake_threads"] = lambda: lake_analysis(recipe, lake, "threads")
    timings = compare(sides, repeats)
    reference = timings["uproot_lz4"].value
    for name, timing in timings.items():
        if not np.array_equal(timing.value, reference):
            raise SystemExit(f"{name}: histogram differs from uproot + numpy + hist on the lz4 file")
    result["z_peak_entries"] = int(reference.sum())
    for name, timing in timings.items():
        result[f"{name}_s"] = round(timing.wall, 4)
        result[f"{name}_cpu_s"] = round(timing.cpu, 4)
        result[f"{name}_mevents_per_s"] = round(events / timing.wall / 1e6, 2)
    lake_s, lake_cpu = timings["lake_1core"].wall, timings["lake_1core"].cpu
    for name in files:
        base = timings[f"uproot_{name}"]
        result[f"speedup_vs_uproot_{name}"] = ratio(base.wall, lake_s)
        result[f"cpu_speedup_vs_uproot_{name}"] = ratio(base.cpu, lake_cpu)
        result[f"ingest_from_{name}_s"] = round(ingest[name], 3)
        gain = base.wall - lake_s  # analyses after which ingest + n lake runs cost less than n uproot runs
        result[f"break_even_analyses_{name}"] = round(ingest[name] / gain, 1) if gain > 0 else None
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
