"""Benchmark: what a command that computes nothing costs, against importing the stack it needs.

An unchanged rerun of recipes/eels_thickness.yaml (on a small synthetic image) has only to parse
the recipe, open the sources' metadata, compute tokens, find the outputs up to date and their
PNGs present, and print: its wall time should be about that of importing xarray, dask.array and
zarr, which it cannot avoid. Prints, best of --repeats, interleaved so load changes hit all alike:

  - the baseline, `python -c "import xarray, dask.array, zarr"`,
  - `replicalake run recipes/eels_thickness.yaml` with every output up to date, and its ratio,
  - `replicalake --help`, and its ratio,

with the machine's load average before and after (the ratios mean little on a loaded machine).

    python tests/benchmarks/bench_noop.py [--repeats 7] [--shape 32 32 256]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "eels_thickness.yaml"


def replicalake() -> list[str]:
    """The console script beside this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("replicalake")
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine"]


def wall(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return time.perf_counter() - start, result.stdout


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 32, 256), metavar=("NY", "NX", "NE"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="replicalake-noop-") as tmp:
        env = {**os.environ, "REPLICALAKE_LAKE": str(Path(tmp) / "lake"),
               "REPLICALAKE_CATALOGS": str(REPO / "catalogs"), "COLUMNS": "200"}
        cli = replicalake()
        wall([*cli, "ingest", "synthetic-eels", "eels_demo", "--shape", *map(str, args.shape)], env)
        first, _ = wall([*cli, "run", str(RECIPE)], env)
        print(f"first run (computes, draws the PNG): {first:.2f} s")
        commands = {
            "import xarray, dask.array, zarr": [sys.executable, "-c", "import xarray, dask.array, zarr"],
            "replicalake run (unchanged)": [*cli, "run", str(RECIPE)],
            "replicalake --help": [*cli, "--help"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        print(f"load average before: {load()}")
        for _ in range(args.repeats):
            for name, command in commands.items():
                seconds, out = wall(command, env)
                if "run" in command and "nothing to compute" not in out:
                    raise SystemExit(f"the rerun computed something:\n{out}")
                times[name].append(seconds)
        print(f"load average after:  {load()}")
    best = {name: min(values) for name, values in times.items()}
    baseline = best["import xarray, dask.array, zarr"]
    print(f"best of {args.repeats}:")
    for name, seconds in best.items():
        print(f"  {name:34s} {seconds:6.2f} s  {seconds / baseline:5.2f}x the baseline")


if __name__ == "__main__":
    main()
