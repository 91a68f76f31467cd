"""A newcomer's first hour with the command: --version, `ops NAME`, tables a pipe can read, Ctrl-C,
a copied recipe that would replace the original's outputs (--replace), recomputing on purpose
(--force), and Prefect's telemetry kept quiet offline."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from rich.console import Console

from engine import cli
from engine.testing import ramp_dataset
from tests.conftest import REPO
from tests.test_cli import replicalake
from tests.test_corpus import tree_hash
from tests.test_crash_resume import SLOW_RECIPE, big_lake, start_cli, wait_for
from tests.test_graph import RECIPE

TWO_OUTPUTS = RECIPE.replace("outputs:\n", "outputs:\n  part: {zone: derived}\n")


def message(text: str) -> str:
    return " ".join(text.split())


# -- --version, ops NAME -------------------------------------------------------------------------
def test_version(monkeypatch, capsys):
    code, out, _ = replicalake(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"replicalake {version('replicalake')}"


def test_ops_name_shows_one_op_in_full(monkeypatch, capsys):
    code, out, _ = replicalake(monkeypatch, capsys, "ops", "eels.cluster")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "eels.cluster (version 1)" and "inputs: image" in lines
    assert "  n_clusters: int = 5 (>= 1, <= 10000)" in lines  # type, default, bounds
    assert "  feature: Literal = 'log_peak3' (one of 'log_peak3', 'log_zlp', 'log_total')" in lines
    assert "      number of clusters K" in lines  # each param's description
    assert "Centroids are sorted descending" in out  # the whole doc, not its first line only
    code, out, _ = replicalake(monkeypatch, capsys, "ops", "eels.cluster", "--json")
    shown = json.loads(out)
    assert shown["name"] == "eels.cluster"
    assert shown["params"]["properties"]["feature"]["enum"] == ["log_peak3", "log_zlp", "log_total"]


def test_ops_lists_literal_choices_and_an_unknown_name_is_one_line(monkeypatch, capsys):
    code, out, _ = replicalake(monkeypatch, capsys, "ops")
    assert code == 0 and "device: Literal = 'auto' (one of 'auto', 'cpu', 'cuda')" in out
    code, _, err = replicalake(monkeypatch, capsys, "ops", "core.summ")
    assert code == 1 and "unknown op 'core.summ' (did you mean 'core.sum'" in message(err)


# -- tables: rows when piped, a table on a terminal -------------------------------------------------
def test_piped_ops_is_one_line_per_op_that_grep_finds():
    done = subprocess.run([sys.executable, "-m", "engine", "ops"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "40"}, check=False)  # narrow: must not matter
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "op\tinputs\tparams\twhat it does"
    (train,) = [line for line in lines if line.startswith("replicas.train\t")]
    name, inputs, params, doc = train.split("\t")
    assert inputs == "data" and "epochs: int = 5000" in params
    assert doc.startswith("Train one network per pseudo-data replica")
    assert not any(mark in done.stdout for mark in "┃│━─")  # no table drawing


def test_piped_plan_run_and_catalog_are_rows_with_whole_paths(ramp_lake, write_recipe, monkeypatch, capsys):
    recipe = write_recipe(TWO_OUTPUTS)
    code, out, _ = replicalake(monkeypatch, capsys, "plan", recipe)
    rows = [line.split("\t") for line in out.splitlines() if not line.startswith("#")]
    assert code == 0 and rows[0] == ["step", "op", "dims", "chunks", "size", "est. peak", "status"]
    assert rows[-1][0] == "total"
    assert rows[-1][-1] == "to compute (missing output); -> derived/smoke/total, wave 2 of 2"
    assert out.splitlines()[-1].startswith("# projected peak of the run: ")
    code, out, _ = replicalake(monkeypatch, capsys, "run", recipe, "--no-progress")
    outputs = {line.split("\t")[0]: line.split("\t")[1] for line in out.splitlines()[1:] if "\t" in line}
    assert code == 0 and outputs == {"derived/smoke/part": "computed", "derived/smoke/total": "computed"}
    code, out, _ = replicalake(monkeypatch, capsys, "catalog", "list")
    urls = [line.split("\t")[1] for line in out.splitlines()[1:] if "\t" in line]
    assert code == 0 and f"{ramp_lake.root}/derived/smoke/total" in urls


def test_on_a_terminal_tables_are_drawn(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=screen, force_terminal=True, width=60))
    cli.print_table("demo", ("a", "b"), [("x\ny", "[not markup]")], caption="note")
    drawn = screen.getvalue()
    assert "┃" in drawn and "[not markup]" in drawn and "note" in drawn


MIXED_CHUNKS = """\
version: 1
name: mixed
sources:
  data: {catalog: lake, entry: raw/mixed}
steps:
  - id: kept
    op: core.select
    inputs: {data: data}
    params: {ranges: {y: [0, 63]}}
outputs:
  kept: {zone: derived}
"""


def test_plan_of_an_output_whose_variables_have_different_chunks(lake, write_recipe, monkeypatch, capsys):
    """Regression (issue 18): `plan` raised "inconsistent chunks along dimension y" from
    Dataset.chunks, with a traceback, once an output was up to date: the run stores each variable
    with its own chunks (a small map's chunks are merged, engine/zarr_io.py; a cube's are kept),
    as recipes/eels_dielectric.yaml's thickness map beside its spectra."""
    from engine.testing import put_in_lake

    rng = np.random.default_rng(18)
    cube = rng.random((64, 64, 256), dtype=np.float32)  # 1 MiB chunks of 32 x 32 x 256: kept
    source = xr.Dataset({"a": (("y", "x", "energy"), cube), "b": (("y", "x"), cube.sum(-1))},
                        coords={"y": np.arange(64), "x": np.arange(64)})
    put_in_lake(lake, "mixed", source.chunk({"y": 32, "x": 32}))
    recipe = write_recipe(MIXED_CHUNKS)
    code, _, err = replicalake(monkeypatch, capsys, "run", recipe, "--no-progress")
    assert code == 0, err
    stored = xr.open_zarr(f"{lake.root}/derived/mixed/kept", consolidated=False)
    assert stored["a"].chunks[0] != stored["b"].chunks[0]  # the case that crashed
    code, out, err = replicalake(monkeypatch, capsys, "plan", recipe, "--json")
    assert code == 0 and "Traceback" not in err, err
    steps = {row["id"]: row for row in json.loads(out)["steps"]}
    assert steps["kept"]["status"] == "up to date"
    assert steps["kept"]["chunks"] == {"y": 64, "x": 64, "energy": 256}  # the largest of any variable
    code, out, err = replicalake(monkeypatch, capsys, "plan", recipe)
    assert code == 0 and "up to date" in out, err


# -- Ctrl-C --------------------------------------------------------------------------------------------
def test_an_interrupt_is_one_line_and_exit_130(ramp_lake, write_recipe, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("engine.graph.compile_recipe", interrupted)
    code, out, err = replicalake(monkeypatch, capsys, "validate", write_recipe(RECIPE))
    assert code == 130 and err == "interrupted; rerun to resume\n" and out == ""


def test_sigint_during_a_run_then_the_rerun_resumes(tmp_path, write_recipe):
    lake = big_lake(tmp_path / "lake", 1024)
    recipe = write_recipe(SLOW_RECIPE.replace("SECONDS", "0"))
    gate = tmp_path / "gate"
    gate.touch()  # the run's chunks wait: it is mid-compute when interrupted
    run = start_cli(lake, tmp_path / "first.log", "run", str(recipe), "--no-progress", gate=gate)
    # Interrupted while a block is computing (the staging folder appears before the compute).
    wait_for(lambda: Path(f"{gate}.started").exists() or run.poll() is not None)
    assert run.poll() is None, run.communicate()
    run.send_signal(signal.SIGINT)
    gate.unlink()  # the blocks already running finish, then the process exits
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stdout + stderr
    # The message is a line of its own (a warning from a worker thread winding down may follow it).
    assert "interrupted; rerun to resume" in stderr.splitlines() and "Traceback" not in stderr
    assert not lake.exists("derived", "slow/doubled")
    assert list(Path(lake.root, ".tmp", "resume").iterdir())  # what was written is kept
    rerun = start_cli(lake, tmp_path / "rerun.log", "run", str(recipe), "--json")
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    assert json.loads(stdout)["outputs"][0]["status"] == "computed"
    np.testing.assert_array_equal(lake.open("derived", "slow/doubled")["a"].values,
                                  2 * ramp_dataset(1024, 1024, 512)["a"].values)


# -- a copied recipe over the original's outputs: --replace ----------------------------------------------
def test_a_copied_recipe_is_refused_the_originals_outputs_unless_replace(ramp_lake, write_recipe, monkeypatch,
                                                                          capsys):
    original = write_recipe(RECIPE)
    copy = write_recipe(RECIPE.replace("[2, 5]", "[1, 5]"), "copy.yaml")
    assert replicalake(monkeypatch, capsys, "run", original, "--no-progress")[0] == 0
    before = tree_hash(Path(ramp_lake.root))
    code, out, err = replicalake(monkeypatch, capsys, "run", copy, "--no-progress")
    said = message(err)
    assert code == 1, out
    assert (f"recipe 'smoke' ({copy}) would replace outputs another recipe published: derived/smoke/total "
            f"(step 'total') was published by recipe 'smoke' ({original})") in said
    assert "Nothing was run" in said and "--replace" in said and "Traceback" not in err
    assert tree_hash(Path(ramp_lake.root)) == before

    code, out, _ = replicalake(monkeypatch, capsys, "run", copy, "--replace", "--json")
    assert code == 0 and json.loads(out)["outputs"][0]["status"] == "computed"
    assert ramp_lake.provenance("derived", "smoke/total")["recipe_path"] == str(copy)
    code, _, err = replicalake(monkeypatch, capsys, "run", original, "--no-progress")  # now it is the copy's
    assert code == 1 and f"was published by recipe 'smoke' ({copy})" in message(err)


def test_editing_a_recipe_in_place_or_from_another_folder_is_the_same_recipe(ramp_lake, write_recipe,
                                                                              monkeypatch, capsys):
    recipe = write_recipe(RECIPE)
    assert replicalake(monkeypatch, capsys, "run", recipe, "--no-progress")[0] == 0
    write_recipe(RECIPE.replace("[2, 5]", "[1, 5]"))  # the same file, edited
    monkeypatch.chdir(recipe.parent)  # and named relative to another working folder
    code, out, err = replicalake(monkeypatch, capsys, "run", recipe.name, "--json")
    assert code == 0, err
    assert json.loads(out)["outputs"][0]["status"] == "computed"


# -- recomputing on purpose: --force STEP --------------------------------------------------------------
def test_force_recomputes_that_steps_outputs_and_those_after_it(ramp_lake, write_recipe, monkeypatch, capsys):
    recipe = write_recipe(TWO_OUTPUTS)
    assert replicalake(monkeypatch, capsys, "run", recipe, "--no-progress")[0] == 0
    part_store = Path(ramp_lake.entry_path("derived", "smoke/part"), "zarr.json")
    stamp = part_store.stat().st_mtime_ns

    def statuses(*args: str) -> dict[str, str]:
        code, out, err = replicalake(monkeypatch, capsys, "run", recipe, *args, "--json")
        assert code == 0, err
        return {o["step"]: o["status"] for o in json.loads(out)["outputs"]}

    assert statuses() == {"part": "up to date", "total": "up to date"}
    assert statuses("--force", "total") == {"part": "up to date", "total": "computed"}
    assert part_store.stat().st_mtime_ns == stamp  # exactly that step's output
    code, out, _ = replicalake(monkeypatch, capsys, "plan", recipe, "--force", "part", "--json")
    assert [row["status"] for row in json.loads(out)["steps"][1:]] == ["to compute (forced)"] * 2
    assert statuses("--force", "part") == {"part": "computed", "total": "computed"}  # and downstream
    assert statuses() == {"part": "up to date", "total": "up to date"}


def test_force_of_no_step_is_one_line(ramp_lake, write_recipe, monkeypatch, capsys):
    recipe = write_recipe(RECIPE)
    code, _, err = replicalake(monkeypatch, capsys, "run", recipe, "--force", "totl")
    assert code == 1
    assert ("--force 'totl': is no step (did you mean 'total'?); the recipe's steps are part, total"
            in message(err))
    code, _, err = replicalake(monkeypatch, capsys, "run", recipe, "--force", "data")
    assert code == 1 and "--force 'data': is a source, not a step" in message(err)


# -- Prefect offline ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("given, expected", [(None, False), ("true", True)])
def test_flows_turn_prefect_telemetry_off_unless_set(given, expected, tmp_path):
    """Offline, the server's telemetry heartbeat logs "ERROR | Failed to send telemetry" in every
    `run --prefect`; engine.flows turns it off before Prefect reads its settings (a value set wins)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    if given is not None:
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = given
    code = ("import os, engine.flows; from prefect.settings import get_current_settings; "
            "print(get_current_settings().server.analytics_enabled, os.environ['DO_NOT_TRACK'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(expected), "1"]
