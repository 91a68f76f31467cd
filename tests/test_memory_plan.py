"""`plan` projects a run's peak memory from what each op declares; `run` refuses to go above a
budget and records its measured peak beside the projection."""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys

import dask
import psutil
import pytest

import engine
from engine import config, registry, runner
from engine.errors import ConfigError, MemoryBudgetError
from engine.graph import compile_recipe
from engine.op_examples import EXAMPLES, build, built_inputs
from engine.ops.needs import NUMBA_RUNTIME_BYTES, TORCH_RUNTIME_BYTES, task_need
from engine.projection import BASELINE_BYTES, Projection, StepNeed
from engine.runner import execute
from engine.testing import put_in_lake, raise_if_computes, ramp_dataset
from tests.conftest import REPO, lake_files
from tests.recipe_inputs import INPUTS
from tests.test_cli import replicalake

MIB = 2**20
RECIPE = """\
version: 1
name: memory
sources:
  data: {catalog: lake, entry: raw/ENTRY, chunks: {y: CHUNK, x: 64}}
steps:
  - id: part
    op: core.select
    inputs: {data: data}
    params: {ranges: {y: [0, 10000]}}
  - id: total
    op: core.mean
    inputs: {data: part}
    params: {dims: [x]}
outputs:
  total: {zone: derived}
"""


@pytest.fixture
def memory_lake(lake):
    """raw/tall: a 256 x 64 ramp; raw/taller: 512 x 64, twice the data in the same chunks."""
    put_in_lake(lake, "tall", ramp_dataset(256, 64, chunks=32))
    put_in_lake(lake, "taller", ramp_dataset(512, 64, chunks=32))
    return lake


def recipe_text(entry: str = "tall", chunk: int = 32) -> str:
    return RECIPE.replace("ENTRY", entry).replace("CHUNK", str(chunk))


def projection_of(lake, write_recipe, **kwargs) -> Projection:
    return compile_recipe(write_recipe(recipe_text(**kwargs)), lake).projection(threads=2)


def need(projection: Projection, step: str) -> StepNeed:
    return next(n for n in projection.needs if n.step == step)


def test_projection_follows_chunk_size_not_data_size(memory_lake, write_recipe):
    base = projection_of(memory_lake, write_recipe)
    double_chunks = projection_of(memory_lake, write_recipe, chunk=64)
    double_data = projection_of(memory_lake, write_recipe, entry="taller")
    per_task = need(base, "part").task_bytes
    assert per_task == registry.get_op("core.select").memory * 2 * (32 * 64 * 4)  # in + out chunk
    assert need(double_chunks, "part").task_bytes == pytest.approx(2 * per_task, rel=0.05)
    assert need(double_data, "part").task_bytes == per_task
    assert double_data.total_bytes == base.total_bytes
    # 8 chunks a step, 2 threads: the two largest tasks are the selection's
    assert base.total_bytes == BASELINE_BYTES + 2 * per_task
    assert double_chunks.total_bytes - BASELINE_BYTES == pytest.approx(4 * per_task, rel=0.05)


def test_up_to_date_steps_cost_nothing(memory_lake, write_recipe):
    recipe = write_recipe(recipe_text())
    engine.run(recipe, memory_lake)
    plan = compile_recipe(recipe, memory_lake)
    assert plan.projection().needs == () and plan.projection().total_bytes == BASELINE_BYTES
    rows = plan.rows()
    assert [row["projected_peak_bytes"] for row in rows] == [None, None, None]


def test_a_single_task_step_takes_one_thread_and_torch_counts_once():
    training = StepNeed("fit", "replicas.train", 100 * MIB, 1, False, "torch")
    predicting = StepNeed("predict", "replicas.predict", 10 * MIB, 8, True, "torch")
    projection = Projection(threads=4, needs=(training, predicting))
    assert projection.total_bytes == BASELINE_BYTES + TORCH_RUNTIME_BYTES + (100 + 3 * 10) * MIB
    assert projection.step_bytes("fit") == BASELINE_BYTES + TORCH_RUNTIME_BYTES + 100 * MIB
    assert projection.largest == training


def test_each_runtime_counts_once_and_only_where_a_step_loads_it():
    thickness = StepNeed("t", "eels.thickness", 8 * MIB, 16, True, "numba")
    histogram = StepNeed("h", "lhc.histogram", 1 * MIB, 16, True, "numba")
    summed = StepNeed("s", "core.sum", 2 * MIB, 16, True, None)
    training = StepNeed("fit", "replicas.train", 100 * MIB, 1, False, "torch")
    both = Projection(threads=2, needs=(thickness, histogram, summed, training))
    assert both.runtime_bytes == BASELINE_BYTES + TORCH_RUNTIME_BYTES + NUMBA_RUNTIME_BYTES
    assert both.step_bytes("s") == BASELINE_BYTES + 2 * 2 * MIB
    assert both.step_bytes("t") == BASELINE_BYTES + NUMBA_RUNTIME_BYTES + 2 * 8 * MIB
    # the declaration reaches the plan: a recipe with eels.thickness projects numba's runtime
    assert registry.get_op("eels.thickness").memory.runtime == "numba"


def test_plan_prints_each_step_and_the_total(memory_lake, write_recipe, monkeypatch, capsys):
    recipe = write_recipe(recipe_text())
    code, out, _ = replicalake(monkeypatch, capsys, "plan", recipe, "--max-memory", "4GiB", "--json")
    plan = json.loads(out)
    projection = compile_recipe(recipe, memory_lake).projection()
    assert code == 0 and plan["memory"] == {"projected_bytes": projection.total_bytes,
                                            "threads": projection.threads, "max_memory_bytes": 4 * 2**30}
    assert [row["projected_peak_bytes"] for row in plan["steps"]] == [
        None, projection.step_bytes("part"), projection.step_bytes("total")]
    code, out, _ = replicalake(monkeypatch, capsys, "plan", recipe, "--max-memory", "4GiB")
    assert code == 0 and "projected peak of the run" in out and "(budget 4.0 GiB)" in out


@pytest.mark.parametrize("command", ["plan", "run"])
def test_over_budget_is_refused_naming_the_step_and_its_chunking(memory_lake, write_recipe, monkeypatch,
                                                                 capsys, command):
    recipe = write_recipe(recipe_text())
    before = lake_files(memory_lake)
    code, _, err = replicalake(monkeypatch, capsys, command, recipe, "--max-memory", "100MB")
    message = " ".join(err.split())
    assert code == 1
    assert "projected peak memory" in message and "above the budget of 95.37 MiB" in message
    assert "step 'part' (core.select)" in message
    assert re.search(r"[0-9.]+ KiB per task x \d+ threads?; give it smaller chunks", message)
    assert "set sources.data.chunks in the recipe (now y: 32, x: 64)" in message
    assert "Nothing was run" in message
    assert lake_files(memory_lake) == before


def test_budget_from_the_environment_and_bad_values(memory_lake, write_recipe, monkeypatch):
    plan = compile_recipe(write_recipe(recipe_text()), memory_lake)
    monkeypatch.setenv(config.MAX_MEMORY_ENV, "1MiB")
    with pytest.raises(MemoryBudgetError, match=r"budget of 1\.00 MiB \(--max-memory or \$REPLICALAKE"):
        execute(plan, progress=False)
    monkeypatch.setenv(config.MAX_MEMORY_ENV, "lots")
    with pytest.raises(ConfigError, match=r"\$REPLICALAKE_MAX_MEMORY: expected a positive size such "
                                          r"as 4GiB, 500MB or a number of bytes, found 'lots'"):
        config.max_memory()
    monkeypatch.delenv(config.MAX_MEMORY_ENV)
    assert config.max_memory() == int(0.75 * psutil.virtual_memory().total)
    assert [config.parse_bytes(v) for v in ("4GiB", "500MB", "2g", "1234", "1.5 KiB")] == [
        4 * 2**30, 500 * 10**6, 2 * 10**9, 1234, 1536]
    with pytest.raises(ConfigError, match=r"--max-memory: expected a positive size .* found '0'"):
        config.parse_bytes("0")


def test_run_records_measured_peak_beside_the_projection(memory_lake, write_recipe, monkeypatch, capsys):
    recipe = write_recipe(recipe_text())
    projected = compile_recipe(recipe, memory_lake).projection().total_bytes
    resident = psutil.Process().memory_info().rss
    summary = engine.run(recipe, memory_lake)
    memory = summary.memory
    assert memory["projected_bytes"] == projected
    # the computation's own peak: at least what the process held as it began, at most the
    # process's lifetime peak (which an earlier, bigger test may have set; the kernel counts
    # resident pages per thread in batches, hence the slack)
    lifetime_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert 0.9 * resident <= memory["measured_peak_bytes"] <= lifetime_peak + 4 * MIB
    assert summary.outputs[0].memory == memory and summary.to_dict()["memory"] == memory
    assert memory_lake.provenance("derived", "memory/total")["memory"] == memory
    code, out, _ = replicalake(monkeypatch, capsys, "run", write_recipe(recipe_text(chunk=64)))
    assert code == 0 and "measured / projected" in out


@pytest.mark.parametrize("name", registry.op_names())
def test_every_op_declares_a_memory_need_that_projects_without_computing(name, tmp_path):
    spec = registry.get_op(name)
    assert spec.memory is not None, (
        f"op {name!r} declares no memory need: give register_op a memory= multiplier of its chunk "
        "bytes, or a function of (params, inputs, output) (engine/registry.py MemoryNeed)")
    step = EXAMPLES[name]
    built: dict = {}
    inputs = {key: dataset for key, (dataset, _) in built_inputs(step, str(tmp_path), built).items()}
    output, _ = build(step, str(tmp_path), built)
    with raise_if_computes():
        needed = task_need(spec.memory, spec.params.model_validate(step.params), inputs, output)
    assert isinstance(needed, int) and needed > 0


def test_projection_imports_no_torch(memory_lake, write_recipe):
    """`plan` of a recipe that trains nothing stays light: nothing in the projection loads torch."""
    recipe = write_recipe(recipe_text())
    code = ("import sys; from engine.graph import compile_recipe; from engine.storage import Lake; "
            f"plan = compile_recipe({str(recipe)!r}, Lake({memory_lake.root!r})); plan.rows(); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)


def test_every_shipped_recipe_has_its_inputs_listed():
    assert set(INPUTS) == {path.stem for path in (REPO / "recipes").glob("*.yaml")}


def test_a_cluster_run_is_not_held_to_this_machine_and_says_its_peak_is_unmeasured(
        memory_lake, write_recipe, monkeypatch):
    """Workers of a dask.distributed cluster are other processes, with their own memory limits."""
    monkeypatch.setattr(runner, "check_scheduler", lambda address: None)
    monkeypatch.setattr(runner, "_compute", lambda writes, address, progress, label: dask.compute(*writes))
    monkeypatch.setenv(config.MAX_MEMORY_ENV, "1MiB")
    summary = execute(compile_recipe(write_recipe(recipe_text()), memory_lake), scheduler="tcp://cluster:8786",
                      progress=False)
    assert summary.memory["measured_peak_bytes"] is None
    assert "dask.distributed workers" in summary.memory["note"]
    assert memory_lake.provenance("derived", "memory/total")["memory"] == summary.memory


def test_the_measured_peak_is_the_blocks_own():
    """A buffer freed inside the block still counts; what the process held before it does not.

    The heap's free pages go back to the kernel first: late in a test session the heap holds
    freed regions larger than the buffer, which malloc reuses from resident pages, so the buffer
    would not raise the resident size at all (seen once in CI: peak == resident at 1.1 GB)."""
    import numpy as np

    from engine.memory import release_free_heap
    from engine.peak_rss import PeakRss

    held = np.ones(256 * MIB // 8)  # the process's peak so far, but not this block's
    del held
    release_free_heap()
    with PeakRss() as peak:
        resident = psutil.Process().memory_info().rss
        buffer = np.ones(96 * MIB // 8)
        del buffer
    assert resident + 90 * MIB <= peak.bytes <= resident + 120 * MIB
