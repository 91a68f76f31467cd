"""Benchmark: measured / projected peak memory of every shipped recipe (goal: 0.5 to 1.25 each).

Each recipe of recipes/*.yaml runs as `replicalake run --json` in a fresh subprocess, on a fresh
temporary lake holding its inputs ingested small (tests/recipe_inputs.py). The run records its
projected peak (engine/projection.py, what `plan` prints) and the peak resident memory it
measured while computing (engine/peak_rss.py); this prints both, their ratio, and the child's
whole-life peak (getrusage: compile and plots included) for reference.

    python tests/benchmarks/bench_memory_projection.py                    # every recipe
    python tests/benchmarks/bench_memory_projection.py --quick            # eels_thickness, lhc_dimuon
    python tests/benchmarks/bench_memory_projection.py eels_thickness lhc_dimuon
    python tests/benchmarks/bench_memory_projection.py --epochs 300       # trainings cut short

`--epochs N` caps every training's epochs at N: what a training holds does not grow with its
epochs, and the shipped epochs take ~15 minutes for all recipes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from engine.registry import get_op  # noqa: E402
from engine.storage import Lake  # noqa: E402
from tests.benchmarks._timing import finish, header, show  # noqa: E402
from tests.recipe_inputs import prepare_inputs  # noqa: E402

GOAL = (0.5, 1.25)
KEEP_EVERY_REPLICA = 1e12  # a validation chi2/n threshold every replica reaches
MIB = 2**20
# Runs the command and reports its whole-life peak RSS (getrusage of the waited-for child).
_PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print('peak-rss-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
    "file=sys.stderr); sys.exit(code)"
)


def with_epochs_capped(recipe: Path, cap: int, folder: Path) -> Path:
    """A copy of the recipe whose trainings stop after at most `cap` epochs, keeping every
    replica (a short training reaches no validation threshold, and a run whose every replica
    was dropped stops at the next step)."""
    yaml = YAML(typ="safe")
    loaded = yaml.load(recipe.read_text())
    for step in loaded["steps"]:
        params = step.setdefault("params", {})
        if "epochs" in params:
            params["epochs"] = min(params["epochs"], cap)
        if "stopping" in get_op(step["op"]).params.model_fields:
            params["stopping"] = {**params.get("stopping", {}), "threshold": KEEP_EVERY_REPLICA}
    path = folder / recipe.name
    yaml.dump(loaded, path)
    return path


def run_recipe(recipe: Path, epochs: int | None) -> dict:
    """Ingest the recipe's inputs into a fresh lake and run it in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        folder = Path(tmp)
        prepare_inputs(recipe, Lake(str(folder / "lake")))
        path = with_epochs_capped(recipe, epochs, folder) if epochs else recipe
        command = [
            sys.executable,
            "-m",
            "engine",
            "run",
            str(path),
            "--lake",
            str(folder / "lake"),
            "--catalogs",
            str(REPO / "catalogs"),
            "--json",
            "--no-progress",
        ]
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, *command],
            capture_output=True,
            text=True,
            check=False,
            cwd=folder,
        )
        seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{recipe.name} failed:\n{done.stderr[-3000:]}")
    memory = json.loads(done.stdout)["memory"]
    child_kib = next(
        int(line.split()[1]) for line in done.stderr.splitlines()[::-1] if line.startswith("peak-rss-kib")
    )
    return {
        "recipe": recipe.stem,
        "seconds": seconds,
        "projected": memory["projected_bytes"],
        "measured": memory["measured_peak_bytes"],
        "process": child_kib * 1024,
    }


QUICK_RECIPES = ("eels_thickness", "lhc_dimuon")


def run(quick: bool = False, recipes=None, epochs: int | None = None) -> dict:
    names = recipes or (
        QUICK_RECIPES if quick else [path.stem for path in sorted((REPO / "recipes").glob("*.yaml"))]
    )
    result = header(
        "measured / projected peak memory of shipped recipes",
        1,
        recipes=len(names),
        epochs=epochs or "shipped",
    )
    print("| recipe | projected | measured (compute) | measured / projected | whole process | wall |")
    print("|---|---|---|---|---|---|")
    outside = []
    for name in names:
        row = run_recipe(REPO / "recipes" / f"{name}.yaml", epochs)
        ratio_ = row["measured"] / row["projected"]
        if not GOAL[0] <= ratio_ <= GOAL[1]:
            outside.append(name)
        print(
            f"| {name} | {row['projected'] / MIB:.0f} MiB | {row['measured'] / MIB:.0f} MiB | {ratio_:.2f} | "
            f"{row['process'] / MIB:.0f} MiB | {row['seconds']:.0f} s |",
            flush=True,
        )
        result.update(
            {
                f"{name}_projected_mib": round(row["projected"] / MIB),
                f"{name}_measured_mib": round(row["measured"] / MIB),
                f"{name}_measured_over_projected": round(ratio_, 3),
                f"{name}_process_mib": round(row["process"] / MIB),
                f"{name}_s": round(row["seconds"], 1),
            }
        )
    print(f"goal {GOAL[0]}-{GOAL[1]}: " + (f"outside for {', '.join(outside)}" if outside else "all inside"))
    result["outside_goal"] = len(outside)
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help="recipe file stems (default: all in recipes/)")
    parser.add_argument("--quick", action="store_true", help=f"only {' and '.join(QUICK_RECIPES)}")
    parser.add_argument("--epochs", type=int, default=None, help="cap every training's epochs")
    args = parser.parse_args()
    show(run(args.quick, args.recipes or None, args.epochs))


if __name__ == "__main__":
    main()
