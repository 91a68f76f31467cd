"""Running plans: publishing, provenance, skipping up-to-date outputs, failing cleanly."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import engine
from engine.graph import compile_recipe
from engine.ops.core import as_delayed
from engine.runner import execute
from engine.testing import repeated_tasks
from tests.conftest import lake_files
from tests.test_graph import RECIPE

TWO_OUTPUTS = RECIPE.replace("outputs:\n", "outputs:\n  part: {zone: derived, name: smoke/part}\n")


def test_run_publishes_correct_values_with_provenance(ramp_lake, write_recipe):
    summary = engine.run(write_recipe(RECIPE), ramp_lake)
    assert [o.status for o in summary.outputs] == ["computed"]
    result = xr.open_zarr(ramp_lake.entry_url("derived", "smoke/total"), consolidated=False)
    expected = [sum(10 * y + x for x in range(6)) for y in range(2, 6)]
    np.testing.assert_allclose(result["a"].values, expected)
    prov = result.attrs["replicalake"]
    assert prov["step"] == "total" and prov["op"] == "core.sum" and prov["params"]["dims"] == ["x"]
    assert set(prov["inputs"]) == {"data"} and prov["versions"]["zarr"]
    assert prov["token"] == compile_recipe(write_recipe(RECIPE), ramp_lake).step("total").token
    assert not any(p.startswith(".tmp/") for p in lake_files(ramp_lake))


def test_rerun_computes_nothing_and_param_change_recomputes_only_downstream(ramp_lake, write_recipe):
    first = engine.run(write_recipe(TWO_OUTPUTS), ramp_lake)
    assert {o.step: o.status for o in first.outputs} == {"part": "computed", "total": "computed"}
    again = engine.run(write_recipe(TWO_OUTPUTS), ramp_lake)
    assert {o.status for o in again.outputs} == {"up to date"}
    changed = TWO_OUTPUTS.replace("{dims: [x]}", "{dims: [x], skipna: false}")
    third = engine.run(write_recipe(changed), ramp_lake)
    assert {o.step: o.status for o in third.outputs} == {"part": "up to date", "total": "computed"}


def test_up_to_date_outputs_feed_downstream_steps_from_the_lake(ramp_lake, write_recipe):
    engine.run(write_recipe(TWO_OUTPUTS), ramp_lake)
    changed = TWO_OUTPUTS.replace("{dims: [x]}", "{dims: [x], skipna: false}")
    plan = compile_recipe(write_recipe(changed), ramp_lake)
    part = plan.step("part")
    assert part.up_to_date and part.dataset["a"].data.name.startswith("open_dataset")
    assert not plan.step("total").up_to_date


def test_failure_during_compute_leaves_lake_unchanged(ramp_lake, write_recipe, monkeypatch):
    plan = compile_recipe(write_recipe(RECIPE), ramp_lake)
    before = lake_files(ramp_lake)

    def explode(block):
        raise RuntimeError("disk on fire")

    step = plan.step("total")
    step.dataset = step.dataset.map_blocks(explode, template=step.dataset)
    with pytest.raises(RuntimeError, match="disk on fire"):
        execute(plan, progress=False)
    assert lake_files(ramp_lake) == before


def test_plots_are_written_to_reports(ramp_lake, write_recipe):
    text = RECIPE.replace("total: {zone: derived}",
                          "total: {zone: derived, plots: [{variable: a, kind: line}]}")
    summary = engine.run(write_recipe(text), ramp_lake)
    (report,) = summary.outputs[0].reports
    assert report.endswith("reports/derived/smoke/total/a.png")
    with open(report, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def _shared_work():
    """A costly task feeding two outputs, as a training feeds a model and its predictions."""
    trained = dask.delayed(np.arange, pure=True)(6.0)
    weights = da.from_delayed(trained, (6,), float)
    return trained, weights, (weights * 2).sum()


def test_repeated_tasks_finds_work_that_a_delayed_array_copies():
    trained, weights, total = _shared_work()
    copied = dask.delayed(float, pure=True)(total)  # finalises `total`: its graph is fused and copied
    graph = {**weights.__dask_graph__(), **copied.__dask_graph__()}
    assert trained.key in repeated_tasks(graph)


def test_repeated_tasks_is_empty_when_shared_work_is_kept_by_key():
    _, weights, total = _shared_work()
    kept = dask.delayed(float, pure=True)(as_delayed(total))
    assert repeated_tasks({**weights.__dask_graph__(), **kept.__dask_graph__()}) == {}
