"""Compiling recipes: reference, params and source errors; laziness; tokens."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from engine import registry
from engine.errors import OpError, RecipeError
from engine.graph import compile_recipe
from engine.ops.core import SelectParams, select
from engine.projection import BASELINE_BYTES
from engine.testing import raise_if_computes
from tests.conftest import lake_files

RECIPE = """\
version: 1
name: smoke
sources:
  data: {catalog: lake, entry: raw/ramp}
steps:
  - id: part
    op: core.select
    inputs: {data: data}
    params: {ranges: {y: [2, 5]}}
  - id: total
    op: core.sum
    inputs: {data: part}
    params: {dims: [x]}
outputs:
  total: {zone: derived}
"""


def compile_text(write_recipe, lake, text):
    return compile_recipe(write_recipe(text), lake)


def test_compiling_computes_nothing(ramp_lake, write_recipe):
    with raise_if_computes():
        plan = compile_text(write_recipe, ramp_lake, RECIPE)
    assert [s.id for s in plan.steps] == ["data", "part", "total"]
    assert plan.step("total").dataset.sizes == {"y": 4}
    assert plan.step("total").status == "to compute"


def test_the_guard_does_catch_computation(ramp_lake, write_recipe):
    plan = compile_text(write_recipe, ramp_lake, RECIPE)
    with raise_if_computes(), pytest.raises(AssertionError, match="computed task"):
        plan.step("total").dataset.load()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("op: core.sum", "op: core.summ", r"recipe.yaml:11: steps\[1\].op: unknown op 'core.summ' "
                                          r"\(did you mean 'core.sum'"),
        ("inputs: {data: part}", "inputs: {data: prat}", r"recipe.yaml:12: steps\[1\].inputs.data: "
                                                         r"unknown input 'prat' \(did you mean 'part'"),
        ("inputs: {data: part}", "inputs: {dat: part}", r"op 'core.sum' has no input 'dat' "
                                                        r"\(did you mean 'data'"),
        ("total: {zone: derived}", "totl: {zone: derived}", r"recipe.yaml:15: outputs.totl: output "
                                                            r"'totl' is not a step id"),
        ("inputs: {data: data}", "inputs: {data: total}", r"steps form a cycle"),
    ],
)
def test_reference_errors(ramp_lake, write_recipe, old, new, expected):
    before = lake_files(ramp_lake)
    with pytest.raises(RecipeError, match=expected):
        compile_text(write_recipe, ramp_lake, RECIPE.replace(old, new))
    assert lake_files(ramp_lake) == before


def test_duplicate_ids_are_reported(ramp_lake, write_recipe):
    with pytest.raises(RecipeError, match="id 'data' is already used by sources.data"):
        compile_text(write_recipe, ramp_lake, RECIPE.replace("id: part", "id: data"))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("params: {dims: [x]}", "params: {dims: x}", r"recipe.yaml:13: steps\[1\].params.dims: "
                                                     r"Input should be a valid list \(found \"x\"\)"),
        ("params: {dims: [x]}", "params: {dims: [x], skipnan: true}",
         r"steps\[1\].params.skipnan: unknown key.*did you mean 'skipna'"),
        ("params: {dims: [x]}", "params: {}", r"steps\[1\].params.dims: required key is missing"),
        ("{ranges: {y: [2, 5]}}", "{ranges: {y: [two, 5]}}",
         r"recipe.yaml:9: steps\[0\].params.ranges.y\[0\]: .*valid number"),
    ],
)
def test_param_errors(ramp_lake, write_recipe, old, new, expected):
    with pytest.raises(RecipeError, match=expected):
        compile_text(write_recipe, ramp_lake, RECIPE.replace(old, new))


def test_param_errors_of_several_steps_come_together(ramp_lake, write_recipe):
    text = RECIPE.replace("params: {dims: [x]}", "params: {dims: 3}").replace(
        "{ranges: {y: [2, 5]}}", "{ranges: 5}")
    with pytest.raises(RecipeError) as info:
        compile_text(write_recipe, ramp_lake, text)
    assert len(info.value.problems) == 2


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("entry: raw/ramp", "entry: raw/rmap", r"recipe.yaml:4: sources.data.entry: no entry "
                                               r"'raw/rmap' \(did you mean 'raw/ramp'"),
        ("catalog: lake", "catalog: eel", r"sources.data.catalog: no catalog 'eel' \(did you mean 'eels'"),
        ("{catalog: lake, entry: raw/ramp}", "{catalog: eels, entry: synthetic_demo}",
         r"sources.data: cannot open: entry 'synthetic_demo' points at .*raw/eels_demo, which holds "
         r"no zarr store; ingest it first"),
    ],
)
def test_source_errors(ramp_lake, write_recipe, old, new, expected):
    with pytest.raises(RecipeError, match=expected):
        compile_text(write_recipe, ramp_lake, RECIPE.replace(old, new))


def test_op_checks_name_the_step(ramp_lake, write_recipe):
    with pytest.raises(RecipeError, match=r"recipe.yaml:10: steps\[1\]: op 'core.sum': dim 'z' is not "
                                          r"in the data"):
        compile_text(write_recipe, ramp_lake, RECIPE.replace("dims: [x]", "dims: [z]"))
    with pytest.raises(RecipeError, match=r"range \[20.0, 30.0\] of 'y' selects nothing"):
        compile_text(write_recipe, ramp_lake, RECIPE.replace("[2, 5]", "[20, 30]"))


def test_a_range_on_a_dim_without_coordinate_is_an_op_check_not_a_traceback():
    data = xr.Dataset({"a": (("y", "x"), np.zeros((3, 4)))})
    with pytest.raises(OpError, match="dim 'x' has no coordinate, so a range of values cannot select"):
        select(SelectParams(ranges={"x": (0, 1)}), data)
    assert select(SelectParams(labels={"x": [1, 2]}), data).sizes["x"] == 2


def test_tokens_change_with_params_and_only_downstream(ramp_lake, write_recipe):
    base = compile_text(write_recipe, ramp_lake, RECIPE)
    same = compile_text(write_recipe, ramp_lake, RECIPE)
    changed = compile_text(write_recipe, ramp_lake, RECIPE.replace("[2, 5]", "[1, 5]"))
    assert [s.token for s in base.steps] == [s.token for s in same.steps]
    assert base.step("data").token == changed.step("data").token
    assert base.step("part").token != changed.step("part").token
    assert base.step("total").token != changed.step("total").token


def test_plan_rows_show_dims_chunks_bytes_and_memory(ramp_lake, write_recipe):
    plan = compile_text(write_recipe, ramp_lake, RECIPE)
    rows = plan.rows()
    total = rows[-1]
    assert total["dims"] == {"y": 4} and total["bytes"] == 4 * 4 + 4 * 8
    assert total["output"] == "derived/smoke/total"
    # core.sum's declared multiplier of one chunk in (2 x 4 float32) and out (2 float32), on
    # each of its 2 chunks at once, above the process baseline; the source does not run
    sums = registry.get_op("core.sum").memory * (2 * 4 * 4 + 2 * 4)
    threads = min(2, plan.projection().threads)
    assert total["projected_peak_bytes"] == BASELINE_BYTES + threads * int(sums)
    assert rows[0]["projected_peak_bytes"] is None
