"""Runs at the same time, as real `replicalake run` subprocesses: one writer per output, never corruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.integrity import find_damage
from engine.locks import lock_path
from engine.testing import ramp_dataset
from tests.conftest import REPO
from tests.test_crash_resume import SLOW_RECIPE, big_lake, chunk_records, start_cli, wait_for

OTHER_NAME = SLOW_RECIPE.replace("doubled: {zone: derived}", "doubled: {zone: derived, name: slow/other}")


def finish(process, seconds: float = 120) -> tuple[str, str]:
    stdout, stderr = process.communicate(timeout=seconds)
    return stdout, stderr


def test_second_run_of_the_same_recipe_waits_then_finds_it_up_to_date(tmp_path, write_recipe):
    lake = big_lake(tmp_path / "lake", 1024)
    recipe = write_recipe(SLOW_RECIPE.replace("SECONDS", "0.1"))
    gate = tmp_path / "gate"
    gate.touch()  # the first run's chunks wait until the others are started and checked
    first = start_cli(lake, tmp_path / "first.log", "run", str(recipe), "--json", gate=gate)
    wait_for(lambda: Path(lake.root, ".tmp", "resume").exists() or first.poll() is not None)
    refused = start_cli(lake, tmp_path / "refused.log", "run", str(recipe), "--lock-timeout", "0")
    second_err = tmp_path / "second.err"
    second = start_cli(lake, tmp_path / "second.log", "run", str(recipe), "--json", stderr=second_err)
    _, refused_err = finish(refused)
    wait_for(lambda: "waiting for" in second_err.read_text() or second.poll() is not None)
    gate.unlink()
    first_out, first_err = finish(first)
    second_out, _ = finish(second)

    assert refused.returncode == 1
    assert "derived/slow/doubled is being written by pid" in " ".join(refused_err.split())
    assert f"pid {first.pid}" in refused_err and "--lock-timeout" in refused_err
    assert first.returncode == 0, first_err
    assert json.loads(first_out)["outputs"][0]["chunks_written"] == 4
    assert second.returncode == 0, second_err.read_text()
    assert "waiting for derived/slow/doubled" in " ".join(second_err.read_text().split())
    assert json.loads(second_out)["outputs"][0]["status"] == "up to date"
    assert not (tmp_path / "second.log").exists()  # the waiting run computed no chunk
    assert find_damage(lake.fs, lake.entry_path("derived", "slow/doubled")) == []
    np.testing.assert_array_equal(lake.open("derived", "slow/doubled")["a"].values,
                                  2 * ramp_dataset(1024, 1024, 512)["a"].values)


@pytest.mark.slow  # ~20 s: real subprocesses
def test_runs_writing_different_outputs_proceed_in_parallel(tmp_path, write_recipe):
    lake = big_lake(tmp_path / "lake", 1024)
    gate = tmp_path / "gate"
    gate.touch()  # chunks wait: both runs must be inside their compute at the same time
    one = start_cli(lake, tmp_path / "one.log", "run", str(write_recipe(SLOW_RECIPE.replace("SECONDS", "0"))),
                    "--json", "--lock-timeout", "0", gate=gate)
    other = start_cli(lake, tmp_path / "other.log", "run",
                      str(write_recipe(OTHER_NAME.replace("SECONDS", "0"), "other.yaml")),
                      "--json", "--lock-timeout", "0", gate=gate)
    staging = Path(lake.root, ".tmp", "resume")

    def both_staged() -> bool:
        names = {p.name.rsplit("-", 1)[0] for p in staging.glob("*")} if staging.exists() else set()
        return names == {"derived__slow__doubled", "derived__slow__other"} or None not in (one.poll(),
                                                                                        other.poll())

    wait_for(both_staged)
    assert one.poll() is None and other.poll() is None, "a run ended while the other was computing"
    gate.unlink()
    for process in (one, other):
        stdout, stderr = finish(process)
        assert process.returncode == 0, stderr
        assert json.loads(stdout)["outputs"][0]["chunks_written"] == 4
    first = lake.open("derived", "slow/doubled")["a"].values
    np.testing.assert_array_equal(first, lake.open("derived", "slow/other")["a"].values)


@pytest.mark.slow  # ~20 s: real subprocesses
def test_lock_of_a_killed_run_does_not_block_the_next(tmp_path, write_recipe):
    lake = big_lake(tmp_path / "lake", 1024)
    recipe = write_recipe(SLOW_RECIPE.replace("SECONDS", "1"))
    first = start_cli(lake, tmp_path / "first.log", "run", str(recipe), "--no-progress")
    wait_for(lambda: chunk_records(lake) or first.poll() is not None)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert f'"pid": {first.pid}' in lock_path(lake, "derived/slow/doubled").read_text()
    rerun = start_cli(lake, tmp_path / "rerun.log", "run", str(recipe), "--json", "--lock-timeout", "0")
    stdout, stderr = finish(rerun)
    assert rerun.returncode == 0, stderr
    assert json.loads(stdout)["outputs"][0]["status"] == "computed"


@pytest.mark.slow  # ~20 s: real subprocesses
def test_reads_are_pinned_a_republish_waits_for_the_run_reading_it(tmp_path, write_recipe):
    lake = big_lake(tmp_path / "lake", 1024)
    recipe = write_recipe(SLOW_RECIPE.replace("SECONDS", "0"))
    gate = tmp_path / "gate"
    gate.touch()
    run = start_cli(lake, tmp_path / "run.log", "run", str(recipe), "--json", gate=gate)
    wait_for(lambda: Path(lake.root, ".tmp", "resume").exists() or run.poll() is not None)
    republish_err = tmp_path / "republish.err"
    script = ("import sys; from engine.storage import Lake; from engine.testing import put_in_lake, "
              "ramp_dataset; put_in_lake(Lake(sys.argv[1]), 'big', 3 * ramp_dataset(1024, 512, 512))")
    republish = subprocess.Popen([sys.executable, "-c", script, lake.root], cwd=REPO,
                                 stderr=republish_err.open("w"))
    wait_for(lambda: "waiting for raw/big" in republish_err.read_text() or republish.poll() is not None)
    assert republish.poll() is None, "the republish did not wait for the run reading raw/big"
    gate.unlink()
    stdout, stderr = finish(run)
    assert run.returncode == 0 and republish.wait(timeout=120) == 0, stderr
    assert "it is being read by another run" in republish_err.read_text()
    old = ramp_dataset(1024, 1024, 512)["a"].values
    np.testing.assert_array_equal(lake.open("derived", "slow/doubled")["a"].values, 2 * old)
    new = 3 * ramp_dataset(1024, 512, 512)["a"].values  # another shape: put_in_lake tokens big data by shape
    np.testing.assert_array_equal(lake.open("raw", "big")["a"].values, new)
    rerun = start_cli(lake, tmp_path / "rerun.log", "run", str(recipe), "--json")
    stdout, stderr = finish(rerun)
    assert json.loads(stdout)["outputs"][0]["status"] == "computed"
    np.testing.assert_array_equal(lake.open("derived", "slow/doubled")["a"].values, 2 * new)
