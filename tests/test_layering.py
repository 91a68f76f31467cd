"""The architecture holds: the import contracts of pyproject.toml, and commands that compute
nothing import nothing heavy (a CPU user without torch, cupy or prefect can validate and plan, and
an unchanged rerun costs about the imports of xarray, dask and zarr)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from tests.conftest import REPO
from tests.recipe_inputs import INPUTS, prepare_inputs
from tests.test_graph import RECIPE

HEAVY = {"torch", "matplotlib", "prefect"}
PLOTTED = RECIPE.replace("  total: {zone: derived}\n",
                         "  total:\n    zone: derived\n    plots: [{variable: a, kind: line}]\n")
# The `replicalake` command as the console script runs it, writing at exit (typer ends with
# sys.exit) the top-level packages it imported to the file named by its first argument.
CLI_LISTING_IMPORTS = """
import atexit, sys
listing = sys.argv.pop(1)
atexit.register(lambda: open(listing, "w").write("\\n".join({m.split(".")[0] for m in sys.modules})))
sys.argv[0] = "replicalake"
from engine.cli import main
main()
"""


def test_import_contracts_hold():
    """`lint-imports` checks the layer contracts of pyproject.toml ([tool.importlinter])."""
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), "lint-imports is missing: `pip install -e '.[dev]'` installs import-linter"
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def cli_imports(tmp_path: Path, *args: object) -> tuple[set[str], str]:
    """(top-level packages imported, stdout) of one `replicalake ARGS` in a fresh interpreter."""
    listing = tmp_path / "imported.txt"
    result = subprocess.run([sys.executable, "-c", CLI_LISTING_IMPORTS, str(listing), *map(str, args)],
                            cwd=REPO, capture_output=True, text=True, check=False,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stdout + result.stderr
    return set(listing.read_text().split()), result.stdout


def test_commands_that_compute_nothing_import_neither_torch_matplotlib_nor_prefect(
        ramp_lake, write_recipe, tmp_path):
    recipe = write_recipe(PLOTTED)
    engine.run(recipe, ramp_lake)  # computes and draws: the run below finds all of it done
    commands = {"--help": ["--help"], "ops": ["ops"], "validate": ["validate", recipe],
                "plan": ["plan", recipe], "unchanged run": ["run", recipe, "--no-progress"]}
    heavy = {}
    for name, args in commands.items():
        imported, out = cli_imports(tmp_path, *args)
        heavy[name] = sorted(imported & HEAVY)
    assert "nothing to compute" in out
    assert heavy == {name: [] for name in commands}


# Shipped recipes that train networks: their graphs declare torch-trained ensembles (architecture,
# weight shapes) and map them over chunks, all without torch. Nor may planning them import
# dask.distributed (dask's rechunk asks it whether a client runs unless told a method).
TRAINING_RECIPES = ["replicas_closure_1d", "lhc_eft_toy", "pdf_dis_fit"]


@pytest.mark.parametrize("stem", TRAINING_RECIPES)
def test_validate_and_plan_of_training_recipes_import_neither_torch_matplotlib_nor_prefect(
        lake, tmp_path, stem):
    recipe = REPO / "recipes" / f"{stem}.yaml"
    if INPUTS[stem]:
        pytest.importorskip("nnpdf_data")  # the pdf recipe reads NNPDF commondata (the pdf extra)
    prepare_inputs(recipe, lake)
    heavy = {}
    for command in ("validate", "plan"):
        imported, _ = cli_imports(tmp_path, command, recipe, "--lake", lake.root_url)
        heavy[command] = sorted(imported & (HEAVY | {"distributed"}))
    assert heavy == {"validate": [], "plan": []}


def test_torch_free_kernels_import_no_torch():
    """The kernels ops use while building a graph: architectures, the EFT toy, the PDF fit basis."""
    code = ("import sys; import engine.kernels.architecture, engine.kernels.eft_toy, "
            "engine.kernels.pdf_basis; print('torch' in sys.modules); sys.exit('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_engine_and_its_ops_import_neither_torch_cupy_prefect_matplotlib_nor_numba():
    """numba (~0.5 s to import) loads only where a kernel computes numpy chunks."""
    code = ("import sys, engine, engine.cli, engine.runner; from engine.registry import list_ops; "
            "list_ops(); heavy = {'torch', 'cupy', 'prefect', 'matplotlib', 'numba'} & set(sys.modules); "
            "print(sorted(heavy)); sys.exit(bool(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
