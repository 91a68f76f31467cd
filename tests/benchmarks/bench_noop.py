"""Benchmark: what a command that computes nothing costs, against importing the stack it needs.

An unchanged rerun of recipes/eels_thickness.yaml (on a small synthetic image) has only to parse
the recipe, open the sources' metadata, compute tokens, find the outputs up to date and their
PNGs present, and print: its wall time should be about that of importing xarray, dask.array and
zarr, which it cannot avoid. Prints, best of --repeats (wall, and CPU of the child processes),
interleaved so load changes hit all alike:

  - the baseline, `python -c "import xarray, dask.array, zarr"`,
  - `replicalake run recipes/eels_thickness.yaml` with every output up to date, and its ratio,
  - `replicalake --help`, and its ratio,

with the machine's load average (the wall ratios mean little on a loaded machine: see the CPU).

    python tests/benchmarks/bench_noop.py [--quick] [--repeats 7] [--shape 32 32 256]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks._timing import compare, finish, header, ratio, show  # noqa: E402

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


def run(quick: bool = False, repeats: int | None = None, shape=(32, 32, 256)) -> dict:
    repeats = repeats or (3 if quick else 7)
    result = header("commands that compute nothing vs importing their stack", repeats)
    with tempfile.TemporaryDirectory(prefix="replicalake-noop-") as tmp:
        env = {
            **os.environ,
            "REPLICALAKE_LAKE": str(Path(tmp) / "lake"),
            "REPLICALAKE_CATALOGS": str(REPO / "catalogs"),
            "COLUMNS": "200",
        }
        cli = replicalake()
        wall([*cli, "ingest", "synthetic-eels", "eels_demo", "--shape", *map(str, shape)], env)
        first, _ = wall([*cli, "run", str(RECIPE)], env)
        print(f"first run (computes, draws the PNG): {first:.2f} s")

        def command(args: list[str], must_say: str | None = None):
            def call():
                _, out = wall(args, env)
                if must_say and must_say not in out:
                    raise SystemExit(f"{' '.join(args)} did not say {must_say!r}:\n{out}")

            return call

        timings = compare(
            {
                "import_stack": command([sys.executable, "-c", "import xarray, dask.array, zarr"]),
                "run_unchanged": command([*cli, "run", str(RECIPE)], "nothing to compute"),
                "help": command([*cli, "--help"]),
            },
            repeats,
            warmup=0,
        )
    baseline = timings["import_stack"].wall
    for name, timing in timings.items():
        print(
            f"  {name:16s} {timing.wall:6.2f} s wall, {timing.cpu:6.2f} s CPU  "
            f"{timing.wall / baseline:5.2f}x the baseline"
        )
        result[f"{name}_s"] = round(timing.wall, 3)
        result[f"{name}_cpu_s"] = round(timing.cpu, 3)
        if name != "import_stack":
            result[f"{name}_over_import_stack"] = ratio(timing.wall, baseline)
    result["first_run_s"] = round(first, 2)
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="best of 3")
    parser.add_argument("--repeats", type=int, default=None, help="default 7 (quick 3)")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 32, 256), metavar=("NY", "NX", "NE"))
    args = parser.parse_args()
    show(run(args.quick, args.repeats, args.shape))


if __name__ == "__main__":
    main()
