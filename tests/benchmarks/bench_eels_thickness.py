"""Benchmark: thickness maps out-of-core — memory flat in image size, speed near read speed.

Prints, for synthetic images of growing size, the wall time and peak RSS of `replicalake run` on
the thickness recipe (align + thickness, as recipes/eels_thickness.yaml), then at one size the
ratio of (a) the thickness-only run and (b) exSpy's lazy `estimate_thickness` to (c) merely reading
the same zarr array once (all measured in this run, same machine, same threads).

    python tests/benchmarks/bench_eels_thickness.py                 # 10^4, 10^5, 10^6 spectra
    python tests/benchmarks/bench_eels_thickness.py --sides 100 316 --exspy-side 316

Images are generated once into --workdir (default /tmp/replicalake-bench) and reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
THRESHOLD = {"zlp_end": "threshold", "threshold_ev": 1.5}  # the same ZLP limit exSpy is given


# Runs a command and reports its exact peak RSS (getrusage of the waited-for child), so short
# runs are not under-reported as they are by sampling.
_PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
             "print('peak-rss-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
             "file=sys.stderr); sys.exit(code)")


def run_measured(command: list[str]) -> tuple[float, float, str]:
    """Run a command; return (seconds, peak RSS in MiB, stdout)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, *command], capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    peak = next(int(line.split()[1]) for line in done.stderr.splitlines()[::-1]
                if line.startswith("peak-rss-kib"))
    return seconds, peak / 1024, done.stdout


def replicalake(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def ensure_image(lake: Path, side: int, channels: int, chunk: int = 32) -> str:
    name = f"img{side}c{chunk}" + ("" if channels == 2048 else f"e{channels}")
    if not (lake / "raw" / name / "zarr.json").exists():
        seconds, rss, _ = run_measured(replicalake("ingest", "synthetic-eels", name, "--shape", str(side),
                                                   str(side), str(channels), "--chunks", str(chunk),
                                                   str(chunk), "--lake", str(lake), "--no-progress"))
        print(f"ingest {side}x{side}x{channels}: {seconds:.1f} s, peak RSS {rss:.0f} MiB, "
              f"{side * side / seconds:.0f} spectra/s")
    return name


def run_recipe(lake: Path, workdir: Path, entry: str, steps: str) -> tuple[float, float]:
    recipe = workdir / f"bench-{entry}.yaml"
    recipe.write_text(RECIPE.format(entry=entry, steps=steps))
    shutil.rmtree(lake / "derived" / "bench", ignore_errors=True)
    seconds, rss, out = run_measured(replicalake("run", str(recipe), "--lake", str(lake), "--json"))
    assert json.loads(out)["outputs"][0]["status"] == "computed"
    return seconds, rss


def time_read(lake: Path, entry: str) -> float:
    """Read every chunk of the counts once (decompress + a sum so nothing is skipped)."""
    import dask
    import dask.array as da

    array = da.from_zarr(str(lake / "raw" / entry / "counts"))
    start = time.perf_counter()
    dask.compute(array.sum(axis=-1), scheduler="threads")
    return time.perf_counter() - start


def time_engine_thickness(lake: Path, entry: str, params: dict) -> float:
    """Our thickness op computed in-process (no interpreter start-up), same threads as the read."""
    import dask
    import xarray as xr

    from engine.ops.eels import ThicknessParams, thickness

    image = xr.open_zarr(str(lake / "raw" / entry), consolidated=False)
    result = thickness(ThicknessParams(**params), image)
    start = time.perf_counter()
    dask.compute(result["t_over_lambda"].data, scheduler="threads")
    return time.perf_counter() - start


def time_exspy(lake: Path, entry: str) -> float:
    import dask
    import exspy
    import xarray as xr

    image = xr.open_zarr(str(lake / "raw" / entry), consolidated=False)
    axis = image["energy"].values
    signal = exspy.signals.LazyEELSSpectrum(image["counts"].data)
    signal.axes_manager[-1].offset = float(axis[0])
    signal.axes_manager[-1].scale = float(axis[1] - axis[0])
    signal.axes_manager[-1].units = "eV"
    start = time.perf_counter()
    result = signal.estimate_thickness(threshold=1.5)
    dask.compute(result.data, scheduler="threads")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[100, 316, 1000])
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--exspy-side", type=int, default=316)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/replicalake-bench"))
    parser.add_argument("--no-exspy", action="store_true")
    args = parser.parse_args()
    lake = args.workdir / "lake"
    lake.mkdir(parents=True, exist_ok=True)

    print("== peak RSS of `replicalake run` (align + thickness) vs image size ==")
    peaks = []
    for side in args.sides:
        entry = ensure_image(lake, side, args.channels)
        seconds, rss = run_recipe(lake, args.workdir, entry, ALIGN_AND_THICKNESS)
        peaks.append(rss)
        print(f"{side * side:>8} spectra: {seconds:6.1f} s wall (incl. ~2 s start-up), "
              f"peak RSS {rss:6.0f} MiB, {side * side / seconds:8.0f} spectra/s")
    print(f"peak RSS largest/smallest: {peaks[-1] / peaks[0]:.2f} (flat means ~1.0)")

    side = args.exspy_side
    entry = ensure_image(lake, side, args.channels)
    print(f"\n== {side * side} spectra x {args.channels} channels, threaded dask, in-process ==")
    read = min(time_read(lake, entry) for _ in range(2))
    ours = min(time_engine_thickness(lake, entry, THRESHOLD) for _ in range(2))
    first_minimum = min(time_engine_thickness(lake, entry, {}) for _ in range(2))
    print(f"read the zarr array once:      {read:6.2f} s  (baseline)")
    print(f"eels.thickness (threshold):    {ours:6.2f} s  ratio to read {ours / read:.2f}")
    print(f"eels.thickness (first minimum):{first_minimum:6.2f} s  ratio to read {first_minimum / read:.2f}")
    if not args.no_exspy:
        theirs = time_exspy(lake, entry)
        print(f"exSpy lazy estimate_thickness: {theirs:6.2f} s  ratio to read {theirs / read:.2f}; "
              f"exSpy / ours (same threshold) = {theirs / ours:.1f}x")


if __name__ == "__main__":
    main()
