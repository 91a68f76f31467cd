"""Benchmark: thickness maps out-of-core — memory flat in image size, speed near read speed.

Prints, for synthetic images of growing size, the wall time, CPU time and peak RSS of
`replicalake run` on the thickness recipe (one pass: eels.thickness with align_zlp, as
recipes/eels_thickness.yaml), on the two-step chain it replaced (eels.align_zlp, then
eels.thickness on the aligned image) and on a recipe that only reads the image (core.sum over
energy; the one pass and the chain are printed as ratios to it); then at one size, in process,
(a) merely reading the zarr array once (dask's from_zarr, and through xarray as the engine's
ops read it), (b) our thickness op with exSpy's fixed ZLP limit and (c) with the first-minimum
limit, both on the unaligned spectra, (d) align then first-minimum thickness, (e) the same in
one pass, and (f) exSpy's lazy `estimate_thickness` with the same fixed limit on the same store.
Then the comparison as a HyperSpy user meets it: (g) exSpy on the image saved by HyperSpy itself
to `.hspy` (HDF5), with HyperSpy's default compression (gzip) and without any (the fastest file a
user can choose: the hardest baseline), against (h) our fixed-limit thickness on the entry
`replicalake ingest eels` made of the gzip file; the ingest is a one-off cost, run as a user runs
it (its own process) and reported with its break-even, as the LHC benchmark reports the ROOT
ingest.
(a)-(h) each open their input, build their dask graph and compute inside the timer, on the same
threads; each gets one untimed warm-up and the same best-of-N, interleaved. Last, the one-pass
kernel alone per 32 x 32-pixel chunk: compiled (numpy spectra) against the array path (cupy
spectra, and numpy before the compiled kernel).

    python tests/benchmarks/bench_eels_thickness.py                 # 10^4, 10^5, 10^6 spectra
    python tests/benchmarks/bench_eels_thickness.py --quick         # 10^4 spectra
    python tests/benchmarks/bench_eels_thickness.py --sides 100 1000 --exspy-side 1000

Images are generated once into --workdir (default /tmp/replicalake-bench) and reused.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks._timing import compare, finish, header, ratio, show  # noqa: E402

RECIPE = """\
version: 1
name: bench
sources:
  image: {{catalog: lake, entry: raw/{entry}}}
steps:
{steps}
outputs:
  thickness: {{zone: derived}}
"""
ALIGN_AND_THICKNESS = """\
  - {id: aligned, op: eels.align_zlp, inputs: {image: image}}
  - {id: thickness, op: eels.thickness, inputs: {image: aligned}}
"""
ONE_PASS = """\
  - {id: thickness, op: eels.thickness, inputs: {image: image}, params: {align_zlp: true}}
"""
READ = """\
  - {id: thickness, op: core.sum, inputs: {data: image}, params: {dims: [energy], skipna: false}}
"""
# read: the same store read once through the same engine (every chunk decoded, summed per
# spectrum), the floor `replicalake run` of the one pass is held against
RECIPES = {"one_pass": ONE_PASS, "two_step": ALIGN_AND_THICKNESS, "read": READ}
THRESHOLD = {"zlp_end": "threshold", "threshold_ev": 1.5}  # the same ZLP limit exSpy is given
WORKDIR = Path("/tmp/replicalake-bench")


# Runs a command and reports its exact peak RSS (getrusage of the waited-for child), so short
# runs are not under-reported as they are by sampling.
_PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print('peak-rss-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
    "file=sys.stderr); sys.exit(code)"
)


def run_measured(command: list[str]) -> tuple[float, float, str, float]:
    """Run a command; return (wall seconds, peak RSS in MiB, stdout, CPU seconds)."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *command], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    peak = next(
        int(line.split()[1]) for line in done.stderr.splitlines()[::-1] if line.startswith("peak-rss-kib")
    )
    cpu_s = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    return seconds, peak / 1024, done.stdout, cpu_s


def replicalake(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def ensure_image(lake: Path, side: int, channels: int, chunk: int = 32) -> str:
    name = f"img{side}c{chunk}" + ("" if channels == 2048 else f"e{channels}")
    if not (lake / "raw" / name / "zarr.json").exists():
        seconds, rss, _, _ = run_measured(
            replicalake(
                "ingest",
                "synthetic-eels",
                name,
                "--shape",
                str(side),
                str(side),
                str(channels),
                "--chunks",
                str(chunk),
                str(chunk),
                "--lake",
                str(lake),
                "--no-progress",
            )
        )
        print(
            f"ingest {side}x{side}x{channels}: {seconds:.1f} s, peak RSS {rss:.0f} MiB, "
            f"{side * side / seconds:.0f} spectra/s"
        )
    return name


def run_recipe(lake: Path, workdir: Path, entry: str, steps: str) -> tuple[float, float, float]:
    recipe = workdir / f"bench-{entry}.yaml"
    recipe.write_text(RECIPE.format(entry=entry, steps=steps))
    shutil.rmtree(lake / "derived" / "bench", ignore_errors=True)
    seconds, rss, out, cpu = run_measured(replicalake("run", str(recipe), "--lake", str(lake), "--json"))
    if json.loads(out)["outputs"][0]["status"] != "computed":
        raise SystemExit(f"{recipe}: the thickness output was not computed:\n{out}")
    return seconds, rss, cpu


def read_once(lake: Path, entry: str) -> None:
    """Read every chunk of the counts once (decompress + a sum so nothing is skipped)."""
    import dask
    import dask.array as da

    dask.compute(da.from_zarr(str(lake / "raw" / entry / "counts")).sum(axis=-1), scheduler="threads")


def read_once_xarray(lake: Path, entry: str) -> None:
    """The same read as the engine's ops get it: the store opened as the lake opens it (xarray's
    coordinates and indexes, zarr_io's direct chunk reads), every chunk decoded and summed per
    spectrum; the fair floor for our thickness."""
    import dask

    from engine.zarr_io import open_dataset

    image = open_dataset(str(lake / "raw" / entry), consolidated=False)
    dask.compute(image["counts"].data.sum(axis=-1), scheduler="threads")


def engine_thickness(lake: Path, entry: str, params: dict, align: bool = False) -> None:
    """Our thickness op in-process (no interpreter start-up): open, build the graph, compute;
    with align, on the output of eels.align_zlp (the two-step chain)."""
    import dask

    from engine.ops.eels import AlignParams, ThicknessParams, align_zlp, thickness
    from engine.zarr_io import open_dataset

    image = open_dataset(str(lake / "raw" / entry), consolidated=False)
    if align:
        image = align_zlp(AlignParams(), image)
    result = thickness(ThicknessParams(**params), image)
    dask.compute(result["t_over_lambda"].data, scheduler="threads")


def lake_as_exspy_signal(lake: Path, entry: str):
    """The lake's image as exSpy's LazyEELSSpectrum (its energy axis calibrated), read through
    xarray from the store."""
    import logging
    import warnings

    import exspy
    import xarray as xr

    for name in ("hyperspy", "exspy"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="hyperspy")
    image = xr.open_zarr(str(lake / "raw" / entry), consolidated=False)
    axis = image["energy"].values
    signal = exspy.signals.LazyEELSSpectrum(image["counts"].data)
    signal.axes_manager[-1].offset = float(axis[0])
    signal.axes_manager[-1].scale = float(axis[1] - axis[0])
    signal.axes_manager[-1].units = "eV"
    return signal


def exspy_thickness(lake: Path, entry: str) -> None:
    """exSpy's lazy estimate_thickness with the same fixed ZLP limit: open, build, compute."""
    import dask

    result = lake_as_exspy_signal(lake, entry).estimate_thickness(threshold=1.5)
    dask.compute(result.data, scheduler="threads")


HSPY_COMPRESSIONS = {"gzip": {}, "none": {"compression": None}}  # HyperSpy's default; uncompressed


def ensure_hspy(lake: Path, entry: str, workdir: Path, compression: str) -> Path:
    """The image as a HyperSpy user holds it: saved by HyperSpy to .hspy (HSPY_COMPRESSIONS),
    once into --workdir."""
    path = workdir / f"{entry}-{compression}.hspy"
    if not path.exists():
        lake_as_exspy_signal(lake, entry).save(path, **HSPY_COMPRESSIONS[compression])
    return path


def hspy_compression(path: Path) -> str:
    """The compression HyperSpy stored the spectra with (the read's cost depends on it)."""
    import h5py

    found = []
    with h5py.File(path, "r") as file:
        file.visititems(lambda _, item: found.append(f"{item.compression}-{item.compression_opts}")
                        if isinstance(item, h5py.Dataset) and item.ndim == 3 else None)
    return ",".join(found)


def exspy_hspy_thickness(path: Path) -> None:
    """exSpy's lazy estimate_thickness on the .hspy file, loaded as HyperSpy loads it."""
    import dask
    import hyperspy.api as hs

    result = hs.load(path, lazy=True).estimate_thickness(threshold=1.5)
    dask.compute(result.data, scheduler="threads")


def ingest_hspy(lake: Path, path: Path, name: str) -> tuple[float, float]:
    """`replicalake ingest eels FILE.hspy NAME` in its own process, into a fresh entry: (wall,
    CPU seconds)."""
    shutil.rmtree(lake / "raw" / name, ignore_errors=True)
    seconds, _, _, cpu = run_measured(
        replicalake("ingest", "eels", str(path), name, "--lake", str(lake), "--no-progress")
    )
    return seconds, cpu


def kernel_per_chunk(lake: Path, entry: str, result: dict, repeats: int) -> None:
    """The one-pass kernel alone on one 32 x 32-pixel chunk in memory, one thread: the compiled
    loop numpy spectra get (eels_onepass) against the array path cupy spectra get (the kernel
    numpy spectra got before), interleaved, 20 calls a round."""
    import xarray as xr

    from engine.kernels import eels
    from engine.kernels.eels_onepass import aligned_thickness

    image = xr.open_zarr(str(lake / "raw" / entry), consolidated=False)
    energy = image["energy"].values
    flat = image["counts"][:32, :32].values.reshape(-1, energy.size)
    e0, d = eels._axis(flat, energy)
    eels.aligned_log_ratio_thickness(flat, energy)  # compiled (or loaded from numba's cache)

    def calls(kernel):
        return lambda: [kernel(flat, e0, d, None, None, eels.ZLP_SEARCH_EV) for _ in range(20)]

    kernels = {"array": calls(eels._aligned_thickness), "compiled": calls(aligned_thickness)}
    timings = compare(kernels, repeats)
    for name, timing in timings.items():
        result[f"kernel_{name}_ms_per_chunk"] = round(timing.wall / 20 * 1e3, 3)
        result[f"kernel_{name}_cpu_ms_per_chunk"] = round(timing.cpu / 20 * 1e3, 3)
    result["kernel_array_over_compiled_cpu"] = ratio(timings["array"].cpu, timings["compiled"].cpu)


def counts_codec(lake: Path, entry: str) -> str:
    """The codecs the image's counts are stored with (the read's cost depends on them: a store
    ingested before the byte-shuffle spectra codec is reused from --workdir as it is)."""
    import zarr

    codecs = zarr.open_array(str(lake / "raw" / entry / "counts"), mode="r").metadata.codecs
    return "+".join(
        "-".join(str(v) for k, v in codec.to_dict().get("configuration", {}).items() if k != "typesize")
        or codec.to_dict()["name"]
        for codec in codecs
    )


def run(
    quick: bool = False,
    sides=None,
    channels: int = 2048,
    exspy_side: int | None = None,
    workdir: Path = WORKDIR,
    exspy: bool = True,
    repeats: int = 3,
) -> dict:
    import engine.zarr_io  # noqa: F401  (every side, exSpy's too, reads through the engine's zarr pipeline)

    sides = sides or ([100] if quick else [100, 316, 1000])
    exspy_side = exspy_side or (100 if quick else 316)
    result = header("EELS thickness out-of-core, and against exSpy", repeats, channels=channels)
    lake = workdir / "lake"
    lake.mkdir(parents=True, exist_ok=True)
    print("`replicalake run` (one pass, and the two-step chain) vs image size")
    peaks = {name: [] for name in RECIPES}
    for side in sides:
        entry = ensure_image(lake, side, channels)
        for name, steps in RECIPES.items():
            seconds, rss, cpu = run_recipe(lake, workdir, entry, steps)
            peaks[name].append(rss)
            print(
                f"{side * side:>8} spectra, {name:8}: {seconds:6.1f} s wall (incl. ~2 s start-up), "
                f"{cpu:6.1f} CPU-s, peak RSS {rss:6.0f} MiB, {side * side / seconds:8.0f} spectra/s",
                flush=True,
            )
            key = f"run_{name}_{side * side}_spectra"
            result[f"{key}_s"] = round(seconds, 2)
            result[f"{key}_cpu_s"] = round(cpu, 2)
            result[f"{key}_peak_rss_mib"] = round(rss)
        for name in ("one_pass", "two_step"):
            key = f"run_{name}_{side * side}_spectra"
            read = f"run_read_{side * side}_spectra"
            result[f"{key}_over_read"] = ratio(result[f"{key}_s"], result[f"{read}_s"])
            result[f"{key}_cpu_over_read"] = ratio(result[f"{key}_cpu_s"], result[f"{read}_cpu_s"])
    if len(sides) > 1:
        for name in RECIPES:
            result[f"{name}_peak_rss_largest_over_smallest"] = ratio(peaks[name][-1], peaks[name][0])

    side = exspy_side
    entry = ensure_image(lake, side, channels)
    print(
        f"{side * side} spectra x {channels} channels, threaded dask, in-process; every side opens "
        f"the store, builds its graph and computes inside the timer",
        flush=True,
    )
    sides_ = {
        "read": lambda: read_once(lake, entry),
        "read_xarray": lambda: read_once_xarray(lake, entry),
        "ours_threshold": lambda: engine_thickness(lake, entry, THRESHOLD),
        "ours_first_minimum": lambda: engine_thickness(lake, entry, {}),
        "ours_align_then_first_minimum": lambda: engine_thickness(lake, entry, {}, align=True),
        "ours_one_pass_first_minimum": lambda: engine_thickness(lake, entry, {"align_zlp": True}),
    }
    if exspy:
        hspy = {kind: ensure_hspy(lake, entry, workdir, kind) for kind in HSPY_COMPRESSIONS}
        ingested = f"{entry}-from-hspy"
        result["ingest_hspy_s"], result["ingest_hspy_cpu_s"] = ingest_hspy(lake, hspy["gzip"], ingested)
        sides_["exspy_threshold"] = lambda: exspy_thickness(lake, entry)
        for kind, path in hspy.items():
            result[f"hspy_{kind}_compression"] = hspy_compression(path)
            sides_[f"exspy_hspy_{kind}_threshold"] = lambda path=path: exspy_hspy_thickness(path)
        sides_["ours_threshold_ingested_hspy"] = lambda: engine_thickness(lake, ingested, THRESHOLD)
    timings = compare(sides_, repeats)
    kernel_per_chunk(lake, entry, result, repeats)
    read = timings["read"].wall
    result["spectra"] = side * side
    result["counts_codec"] = counts_codec(lake, entry)
    for name, timing in timings.items():
        result[f"{name}_s"] = round(timing.wall, 3)
        result[f"{name}_cpu_s"] = round(timing.cpu, 3)
        if name != "read":  # wall, and CPU: the fair figure on a shared machine
            result[f"{name}_over_read"] = ratio(timing.wall, read)
            result[f"{name}_cpu_over_read"] = ratio(timing.cpu, timings["read"].cpu)
        if name.startswith("ours"):  # against the read through the same opener as the engine's
            result[f"{name}_cpu_over_read_xarray"] = ratio(timing.cpu, timings["read_xarray"].cpu)
    if exspy:
        result["exspy_over_ours"] = ratio(timings["exspy_threshold"].wall, timings["ours_threshold"].wall)
        result["exspy_over_ours_cpu"] = ratio(timings["exspy_threshold"].cpu, timings["ours_threshold"].cpu)
        result["exspy_over_ours_one_pass_cpu"] = ratio(
            timings["exspy_threshold"].cpu, timings["ours_one_pass_first_minimum"].cpu
        )
        ours = timings["ours_threshold_ingested_hspy"]
        for kind in HSPY_COMPRESSIONS:
            theirs = timings[f"exspy_hspy_{kind}_threshold"]
            result[f"exspy_hspy_{kind}_over_ours"] = ratio(theirs.wall, ours.wall)
            result[f"exspy_hspy_{kind}_over_ours_cpu"] = ratio(theirs.cpu, ours.cpu)
            for unit, key in (("wall", "ingest_hspy_s"), ("cpu", "ingest_hspy_cpu_s")):
                saved = getattr(theirs, unit) - getattr(ours, unit)  # per analysis
                result[f"hspy_{kind}_break_even_analyses_{unit}"] = (
                    round(result[key] / saved, 1) if saved > 0 else None
                )
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^4 spectra only")
    parser.add_argument("--sides", type=int, nargs="+", default=None, help="default 100 316 1000")
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--exspy-side", type=int, default=None, help="default 316")
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--no-exspy", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    show(
        run(
            args.quick,
            args.sides,
            args.channels,
            args.exspy_side,
            args.workdir,
            not args.no_exspy,
            args.repeats,
        )
    )


if __name__ == "__main__":
    main()
