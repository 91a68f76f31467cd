"""Benchmark: the shipped lhc_dimuon recipe (kinematics + cuts + histogram) vs uproot + numpy + hist.

Real events: the 2304 CMS 2010 dimuon events of scikit-hep-testdata's uproot-Zmumu.root, each
repeated with a random azimuthal rotation of both muons (and, at random, z -> -z), which keeps
every event's pt, |eta|, charges and pair mass, so the physics is the real sample's while the
floats of every copy differ (a plain tiling would compress to nothing). They are written with
uproot (the kinematic branches px, py, pz, E, Q of both muons, doubles and int32) and ingested
once with `ingest root`. Which file a user has decides the comparison, so each codec is a side:
LZ4 level 4 (what one picks for fast reading; the hardest baseline), ZLIB level 1 (ROOT's
default algorithm; the 2010 CMS source file uproot-Zmumu.root is ZLIB level 4) and, with
`--codecs lz4,zlib,lzma`, LZMA level 9 (CMS NanoAOD: PhysicsTools/NanoAOD's event content sets
LZMA 9; MiniAOD uses LZMA 4). Decoding speed hardly depends on the level. (E and |pz| repeat
across copies, so the stores compress a little better than real data would.)

- lake: recipes/lhc_dimuon.yaml as shipped (lhc.kinematics on flat objects -> lhc.select ->
  lhc.histogram), with its source pointed at the ingested entry, compiled inside the timer (a
  user pays it every analysis) and computed with dask's synchronous scheduler (one core); also
  on every core (threads) for reference, and on one core with the kernels in array operations
  instead of the numba passes of engine/kernels/lhc_fused.py (`lake_1core_array`), which
  gives what the numba kernels save an event.
- baseline: uproot.iterate over each ROOT file in steps of the lake's chunk size, both muons'
  pt, eta and pair mass in numpy, the same cut, a `hist.Hist` fill; pt as sqrt(px^2 + py^2), as
  scikit-hep's vector computes it (np.hypot, which this baseline used before, costs ~7x as much),
  eta as np.arcsinh(pz / pt).

Both read only the columns they need from files in the page cache; every side gets one untimed
warm-up and the same best-of-N, interleaved; wall and CPU seconds are reported (CPU seconds are
what a shared machine inflates least), with each side's minor page faults (fresh memory from the
kernel: glibc hands freed heap above M_TRIM_THRESHOLD back, and an analysis whose chunk needs
more than that faults its buffers in again every chunk). Ingest is a one-off cost, run as a user
runs it (`python -m engine ingest root`, in its own process, so that its heap does not flatter
the timings that follow), reported with the break-even count (analyses after which ingest has
paid for itself). So are numba's costs in a fresh process (importing it, its first dispatch,
and compiling the kernels into an empty cache or loading them from it; the warm-up hides them
from the timings), reported with the events after which they pay for themselves and with the
ratio a single fresh-process analysis gets. The histograms must agree exactly. `--trim-mib` is
a what-if: it sets glibc's M_TRIM_THRESHOLD in this process before timing (engine.memory sets
32 MiB), for both sides alike.

    python tests/benchmarks/bench_lhc_kinematics.py [--quick] [--events 10000000] [--repeats 3]
        [--codecs lz4,zlib] [--trim-mib 512]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
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
            pt = np.sqrt(arrays[f"px{i}"] ** 2 + arrays[f"py{i}"] ** 2)
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


def ingest_cli(lake_dir: Path, path: Path, step: int) -> None:
    """`replicalake ingest root` of one file into a new lake, in a process of its own."""
    shutil.rmtree(lake_dir, ignore_errors=True)
    command = [sys.executable, "-m", "engine", "ingest", "root", str(path), "bench_zmumu", "--tree", "events"]
    command += ["--step-size", str(step), "--lake", str(lake_dir)]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)


FIRST_CALLS = """
import numpy as np
from engine.kernels.lhc_hist import Axis, fill
from engine.kernels.lhc_kinematics import leading_regular
muons = [{c: np.linspace(1.0, 50.0, 100) * (1 + i) for c in ("px", "py", "pz", "E")} for i in (0, 1)]
for muon in muons:
    muon["Q"] = np.ones(100, np.int32)
leading = leading_regular(muons, 2, ("Q",)) if CALL else None
if CALL:
    fill([Axis.from_regular(60, 60.0, 120.0)], [leading.column("12_mass")], None, leading.column("1_Q") > 0)
"""


def numba_one_off(workdir: Path) -> dict[str, float]:
    """CPU seconds that the numba kernels (engine/kernels/lhc_fused.py) add to a fresh process:
    importing numba, its first dispatch and compiling into an empty cache (cold) or loading from
    it (cached), each measured as a process that calls the kernels once less one that does not."""
    cache = workdir / "numba_cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}

    def child(call: bool) -> float:
        code = f"CALL = {call}\n{FIRST_CALLS}"
        return measure(lambda: subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env))[1]

    cold = child(True) - child(False)
    cached = min(child(True) for _ in range(3)) - min(child(False) for _ in range(3))
    return {"numba_cold_cpu_s": round(cold, 3), "numba_cached_cpu_s": round(cached, 3)}


def counting_faults(func, faults: list[int]):
    """func, appending the minor page faults of each call to `faults`."""

    def call():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        value = func()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return value

    return call


def array_kernels(func):
    """func() with the ops' kernels in array operations (lhc_kinematics.leading_regular_array,
    lhc_hist.fill_array) instead of the numba passes: what the numba kernels gain."""
    from engine.kernels.lhc_hist import fill_array
    from engine.kernels.lhc_kinematics import leading_regular_array
    from engine.ops import lhc

    kept = lhc.leading_regular, lhc.fill
    lhc.leading_regular, lhc.fill = leading_regular_array, fill_array
    try:
        return func()
    finally:
        lhc.leading_regular, lhc.fill = kept


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
    codecs: tuple[str, ...] = ("lz4", "zlib"),
    trim_mib: int | None = None,
) -> dict:
    import uproot

    import engine.memory  # noqa: F401  (the runner's malloc settings, as `replicalake run` has them)
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
    known = {"lz4": uproot.LZ4(4), "zlib": uproot.ZLIB(1), "lzma": uproot.LZMA(9)}
    if "lz4" not in codecs or not set(codecs) <= set(known):
        raise SystemExit(f"--codecs: expected lz4 and any of {', '.join(known)}, found {','.join(codecs)}")
    for name, compression in {c: known[c] for c in codecs}.items():
        files[name] = workdir / f"zmumu_{events}_{name}.root"
        if not files[name].exists():
            write_root(files[name], events, compression)
        result[f"root_{name}_mib"] = round(files[name].stat().st_size / 2**20, 1)
    lake_dir = workdir / f"lake_{events}_{step}"  # one per size: a quick run beside a full one
    ingest = {}
    for name, path in files.items():  # one-off cost, measured from each format (CPU: children)
        ingest[name] = measure(lambda p=path: ingest_cli(lake_dir, p, step))
    result.update(numba_one_off(workdir))  # before anything in this process imports numba
    lake = Lake(str(lake_dir))
    result["lake_mib"] = round(lake.size(lake.entry_path("raw", "bench_zmumu")) / 2**20, 1)
    recipe = write_recipe(workdir, "bench_zmumu", f"_{events}_{step}")
    if trim_mib is not None:
        result["malloc_trim_threshold_mib"] = trim_mib
        if not _set_trim_threshold(trim_mib):
            raise SystemExit("--trim-mib needs glibc")
    sides = {f"uproot_{name}": (lambda p=path: baseline(p, step)) for name, path in files.items()}
    sides["lake_1core"] = lambda: lake_analysis(recipe, lake, "synchronous")
    sides["lake_threads"] = lambda: lake_analysis(recipe, lake, "threads")
    sides["lake_1core_array"] = lambda: array_kernels(lambda: lake_analysis(recipe, lake, "synchronous"))
    faults: dict[str, list[int]] = {name: [] for name in sides}
    timings = compare({name: counting_faults(f, faults[name]) for name, f in sides.items()}, repeats)
    reference = timings["uproot_lz4"].value
    for name, timing in timings.items():
        if not np.array_equal(timing.value, reference):
            raise SystemExit(f"{name}: histogram differs from uproot + numpy + hist on the lz4 file")
    result["z_peak_entries"] = int(reference.sum())
    for name, timing in timings.items():
        result[f"{name}_s"] = round(timing.wall, 4)
        result[f"{name}_cpu_s"] = round(timing.cpu, 4)
        result[f"{name}_mevents_per_s"] = round(events / timing.wall / 1e6, 2)
        result[f"{name}_min_page_faults"] = min(faults[name][1:])  # timed calls, not the warm-up
    lake_s, lake_cpu = timings["lake_1core"].wall, timings["lake_1core"].cpu
    for name in files:
        base = timings[f"uproot_{name}"]
        result[f"speedup_vs_uproot_{name}"] = ratio(base.wall, lake_s)
        result[f"cpu_speedup_vs_uproot_{name}"] = ratio(base.cpu, lake_cpu)
        result[f"ingest_from_{name}_s"] = round(ingest[name][0], 3)
        result[f"ingest_from_{name}_cpu_s"] = round(ingest[name][1], 3)
        # analyses after which ingest + n lake runs cost less than n uproot runs, in wall and CPU time
        for unit, spent, gain in (
            ("", ingest[name][0], base.wall - lake_s),
            ("cpu_", ingest[name][1], base.cpu - lake_cpu),
        ):
            result[f"{unit}break_even_analyses_{name}"] = round(spent / gain, 1) if gain > 0 else None
        # a fresh process (one `replicalake run`) pays numba's cached one-off besides the analysis
        result[f"cpu_speedup_fresh_process_vs_uproot_{name}"] = ratio(
            base.cpu, lake_cpu + result["numba_cached_cpu_s"]
        )
    gain = (timings["lake_1core_array"].cpu - lake_cpu) / events  # CPU-s an event the kernels save
    for kind in ("cold", "cached"):
        spent = result[f"numba_{kind}_cpu_s"]
        result[f"numba_{kind}_break_even_mevents"] = round(spent / gain / 1e6, 1) if gain > 0 else None
    return finish(result)


def _set_trim_threshold(mib: int) -> bool:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    return bool(name) and bool(ctypes.CDLL(name).mallopt(-1, mib * 2**20))  # -1: M_TRIM_THRESHOLD


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10^6 events in chunks of 250000")
    parser.add_argument("--events", type=int, default=None, help="default 10^7 (10^6 with --quick)")
    parser.add_argument("--step", type=int, default=None, help="events per step / lake chunk")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--codecs", default="lz4,zlib", help="ROOT files to compare: lz4,zlib,lzma")
    parser.add_argument("--trim-mib", type=int, default=None, help="what-if: glibc M_TRIM_THRESHOLD")
    args = parser.parse_args()
    codecs = tuple(c.strip() for c in args.codecs.split(",") if c.strip())
    show(run(args.quick, args.events, args.step, args.repeats, args.workdir, codecs, args.trim_mib))


if __name__ == "__main__":
    main()
