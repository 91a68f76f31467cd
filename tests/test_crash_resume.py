"""A `replicalake run` killed with SIGKILL mid-write: nothing visible, and the rerun resumes.

The run is a real subprocess of the CLI (with the slow test op of tests/slow_ops.py registered),
killed with `kill -9` once some chunks are on disk; the rerun must reuse exactly the chunks whose
records survived, compute only the others, and publish bytes identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ruamel.yaml import YAML

import engine
from engine.catalog import LAKE_CATALOG, load_catalog
from engine.ingest.staging import staged_entry
from engine.integrity import find_damage
from engine.storage import Lake
from engine.testing import put_in_lake, ramp_dataset
from tests.conftest import REPO
from tests.test_graph import RECIPE

SLOW_RECIPE = """\
version: 1
name: slow
sources:
  data: {catalog: lake, entry: raw/big}
steps:
  - id: doubled
    op: testing.slow_double
    inputs: {data: data}
    params: {seconds: SECONDS}
outputs:
  doubled: {zone: derived}
"""
CHUNKS = 16  # 2048 x 2048 float32 in 512 x 512 chunks: 1 MiB each, so none are merged


def big_lake(root: Path, size: int = 2048) -> Lake:
    """A lake holding raw/big: a size x size ramp in 512 x 512 chunks (16 of them by default)."""
    lake = Lake(str(root))
    put_in_lake(lake, "big", ramp_dataset(size, size, 512))
    return lake


def start_cli(lake: Lake, log: Path, *args: str, gate: Path | None = None,
              stderr: Path | None = None) -> subprocess.Popen:
    """`replicalake ARGS` in a subprocess with the slow op registered; chunk computations go to `log`.

    Its blocks wait while the file `gate` exists; its stderr goes to the file `stderr` if given.
    """
    env = {**os.environ, "REPLICALAKE_LAKE": lake.root, "SLOW_OP_LOG": str(log), "COLUMNS": "200",
           "REPLICALAKE_CATALOGS": str(REPO / "catalogs"), "SLOW_OP_GATE": str(gate or "")}
    return subprocess.Popen([sys.executable, "-m", "tests.slow_ops", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True,
                            stderr=stderr.open("w") if stderr else subprocess.PIPE,
                            preexec_fn=_default_ctrl_c)


def _default_ctrl_c() -> None:
    """Ctrl-C as a terminal delivers it. A shell without job control starts background jobs with
    SIGINT ignored, and a Python started so never raises KeyboardInterrupt: the interrupt tests
    would then pass or fail by how the suite was launched."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def chunk_records(lake: Lake) -> list[Path]:
    return sorted((Path(lake.root) / ".tmp" / "resume").glob("*/chunks/a/*"))


def wait_for(condition, seconds: float = 180.0) -> None:  # (includes starting a process under load)
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run to write chunks")
        time.sleep(0.05)


def chunk_bytes(lake: Lake, entry: str) -> dict[str, bytes]:
    store = Path(lake.root) / entry / "a"
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


@pytest.fixture
def recipe(write_recipe):
    return write_recipe(SLOW_RECIPE.replace("SECONDS", "0.3"))


def test_sigkill_mid_write_then_rerun_resumes_to_identical_output(tmp_path, recipe):
    killed = big_lake(tmp_path / "killed")
    run = start_cli(killed, tmp_path / "first.log", "run", str(recipe), "--no-progress")
    wait_for(lambda: len(chunk_records(killed)) >= 4 or run.poll() is not None)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    # Nothing visible: no store in derived/, no catalog entry; the staging area is left to resume.
    assert not killed.exists("derived", "slow/doubled")
    assert "derived/slow/doubled" not in load_catalog(LAKE_CATALOG, killed).entries
    survived = len(chunk_records(killed))
    assert 4 <= survived < CHUNKS

    rerun_log = tmp_path / "rerun.log"
    rerun = start_cli(killed, rerun_log, "run", str(recipe), "--json")
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    (output,) = json.loads(stdout)["outputs"]
    assert output["status"] == "computed"
    assert output["chunks_resumed"] == survived
    assert output["chunks_written"] == CHUNKS - survived
    assert len(rerun_log.read_text().splitlines()) == CHUNKS - survived  # blocks recomputed
    assert not chunk_records(killed) and "derived/slow/doubled" in load_catalog(LAKE_CATALOG, killed).entries

    reference = big_lake(tmp_path / "reference")
    whole = start_cli(reference, tmp_path / "whole.log", "run", str(recipe), "--json")
    stdout, stderr = whole.communicate(timeout=120)
    assert whole.returncode == 0, stderr
    assert json.loads(stdout)["outputs"][0]["chunks_written"] == CHUNKS
    assert chunk_bytes(killed, "derived/slow/doubled") == chunk_bytes(reference, "derived/slow/doubled")
    np.testing.assert_array_equal(killed.open("derived", "slow/doubled")["a"].values,
                                  2 * ramp_dataset(2048, 2048, 512)["a"].values)
    assert find_damage(killed.fs, killed.entry_path("derived", "slow/doubled")) == []


@pytest.mark.slow  # ~15 s: real subprocesses
def test_changed_params_after_a_kill_start_afresh_and_drop_the_old_staging(tmp_path, recipe, write_recipe):
    lake = big_lake(tmp_path / "lake")
    run = start_cli(lake, tmp_path / "first.log", "run", str(recipe), "--no-progress")
    wait_for(lambda: len(chunk_records(lake)) >= 2 or run.poll() is not None)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    (old_staging,) = (Path(lake.root) / ".tmp" / "resume").iterdir()
    changed = write_recipe(SLOW_RECIPE.replace("SECONDS", "0.01"), "changed.yaml")
    rerun = start_cli(lake, tmp_path / "rerun.log", "run", str(changed), "--json")
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    assert json.loads(stdout)["outputs"][0]["chunks_resumed"] == 0
    assert not old_staging.exists()


def test_output_published_but_not_yet_listed_is_listed_by_the_next_run(ramp_lake, write_recipe):
    """A kill between the rename into place and the catalog update: the rerun lists the output."""
    engine.run(write_recipe(RECIPE), ramp_lake)
    catalog = Path(ramp_lake.root) / "catalog.yaml"
    doc = YAML(typ="safe", pure=True).load(catalog.read_text())
    del doc["entries"]["derived/smoke/total"]
    YAML(typ="safe", pure=True).dump(doc, catalog)
    assert "derived/smoke/total" not in load_catalog(LAKE_CATALOG, ramp_lake).entries
    summary = engine.run(write_recipe(RECIPE), ramp_lake)
    assert summary.outputs[0].status == "up to date"
    assert "derived/smoke/total" in load_catalog(LAKE_CATALOG, ramp_lake).entries


def staged_ingests(lake: Lake, name: str) -> list[str]:
    return lake.tmp_paths(f"raw-{name}")


def test_a_killed_ingest_shows_nothing_and_the_next_one_removes_what_it_staged(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    ingest = ("ingest", "synthetic-eels", "img", "--chunks", "16", "16", "--no-progress")
    first = start_cli(lake, tmp_path / "unused.log", *ingest, "--shape", "256", "256", "2048")
    wait_for(lambda: any(Path(p, "counts").exists() for p in staged_ingests(lake, "img"))
             or first.poll() is not None)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the ingest finished before it could be killed"
    leftover = staged_ingests(lake, "img")
    assert len(leftover) == 1 and not lake.exists("raw", "img")
    other = Path(lake.path(".tmp", "raw-img2-0123456789ab"))  # another name's staging: not ours to remove
    other.mkdir()

    second = start_cli(lake, tmp_path / "unused.log", *ingest, "--shape", "16", "16", "256")
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr
    assert "a killed ingest of raw/img staged it" in stderr
    assert staged_ingests(lake, "img") == [] and other.exists()
    assert lake.open("raw", "img")["counts"].shape == (16, 16, 256)


def test_a_live_ingest_keeps_its_staging_when_another_ingest_of_the_name_starts(lake):
    with staged_entry(lake, "raw", "img") as first:
        live = first.path
        with staged_entry(lake, "raw", "img") as second:
            assert second.path != live and Path(live).is_dir()  # its lock is held: not a leftover
            assert staged_ingests(lake, "img") == sorted([live, second.path])
