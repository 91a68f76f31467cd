"""The contract every registered op keeps, checked for each one (like zarr's store tests).

A new op gets these checks by registering it and giving it an example in engine/op_examples.py:
its params model forbids unknown keys at every level, it has a docstring, building it on a tiny
valid input computes nothing and writes nothing, and its content token and dask graph come out
the same on every build (so an unchanged step is found up to date in the lake).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xarray as xr
from dask.base import tokenize
from pydantic import ValidationError

from engine import registry
from engine.op_examples import EXAMPLES, Step, build, built_inputs
from engine.testing import raise_if_computes

OPS = registry.op_names()


def example_of(name: str) -> Step:
    if name not in EXAMPLES:
        pytest.fail(f"op {name!r} has no example: add one in engine/op_examples.py "
                    "(`example(Step(name, inputs, params))`, a tiny valid call)")
    return EXAMPLES[name]


def open_models(schema: dict) -> list[str]:
    """Titles of the models in a JSON schema (the params model and those nested in it) that
    accept keys they do not declare."""
    models = [schema, *schema.get("$defs", {}).values()]
    return [model.get("title", "?") for model in models
            if "properties" in model and model.get("additionalProperties") is not False]


@pytest.mark.parametrize("name", OPS)
def test_params_forbid_unknown_keys(name):
    spec = registry.get_op(name)
    params = example_of(name).params
    with pytest.raises(ValidationError, match="not_a_param"):
        spec.params.model_validate({**params, "not_a_param": 1})
    assert not open_models(spec.params.model_json_schema()), (
        f"op {name!r}: params models {open_models(spec.params.model_json_schema())} accept unknown "
        "keys; give them model_config = ConfigDict(extra='forbid')")


@pytest.mark.parametrize("name", OPS)
def test_has_a_docstring(name):
    assert registry.get_op(name).summary, f"op {name!r} has no docstring (`replicalake ops` shows it)"


@pytest.mark.parametrize("name", OPS)
def test_building_computes_and_writes_nothing(name, tmp_path):
    step = example_of(name)
    built: dict = {}
    built_inputs(step, str(tmp_path), built)  # upstream ops are checked by their own examples
    with raise_if_computes():
        result, _ = build(step, str(tmp_path), built)
    assert isinstance(result, xr.Dataset), f"op {name!r} returned {type(result).__name__}"
    assert not list(Path(tmp_path).iterdir()), f"op {name!r} wrote to the lake while building"


@pytest.mark.parametrize("name", OPS)
def test_token_and_graph_are_deterministic(name, tmp_path):
    step = example_of(name)
    params = registry.get_op(name).params.model_validate(step.params)
    dumped = params.model_dump(mode="json")
    reloaded = type(params).model_validate(json.loads(json.dumps(dumped)))
    assert reloaded.model_dump(mode="json") == dumped, "params change on a JSON round trip"
    (first, first_token), (second, second_token) = (build(step, str(tmp_path)) for _ in range(2))
    assert first_token == second_token
    assert tokenize(first) == tokenize(second), (
        f"op {name!r} builds a different dask graph each time (random task names?)")
