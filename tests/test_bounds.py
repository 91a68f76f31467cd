"""Hostile input refused before it costs anything: bounded counts and finite floats in every params
model, size and depth limits on YAML files and cut expressions, LHAPDF sets that claim more than
they hold, and wait times that are not numbers (engine/bounds.py and its users)."""

from __future__ import annotations

import math
import shutil
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from engine.config import checked_lock_timeout
from engine.errors import CatalogError, ConfigError, RecipeError
from engine.graph import compile_recipe
from engine.ingest.lhapdf_format import LhapdfFormatError, member_paths, read_lhapdf_set
from engine.ingest.registry import list_formats
from engine.kernels.lhc_expr import MAX_DEPTH, ExpressionError, parse
from engine.locks import output_locks
from engine.recipe import MAX_YAML_BYTES, MAX_YAML_DEPTH, load_recipe, load_recipe_text, parse_yaml
from engine.registry import list_ops
from engine.testing import raise_if_computes
from tests.test_cli import replicalake

ABSURD = 10**12  # above every bound in engine/bounds.py
IDENTIFIERS = {("pdf.evaluate", "flavours"), ("pdf.evaluate", "members")}  # ids, not counts
LHTOY = Path(__file__).parent / "data" / "lhapdf" / "LHToy"


# -- every params model ---------------------------------------------------------------------------
Leaf = tuple[tuple, type, Callable[[Any], Any]]


def _leaves(annotation: Any, loc: tuple, wrap: Callable[[Any], Any]) -> Iterator[Leaf]:
    """(error location, int or float, leaf value -> field value) of every number a field holds:
    through Optional, lists, mapping values, tuple items and nested models."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        yield from _leaves(args[0], loc, wrap)
    elif origin in (Union, UnionType):
        for arg in args:
            if arg is not NoneType:
                yield from _leaves(arg, loc, wrap)
    elif annotation in (int, float):
        yield loc, annotation, wrap
    elif origin is list:
        yield from _leaves(args[0], (*loc, 0), lambda v: wrap([v]))
    elif origin is dict:
        yield from _leaves(args[1], (*loc, "y"), lambda v: wrap({"y": v}))
    elif origin is tuple:
        for i, arg in enumerate(args):  # siblings 1, 2, ...: increasing, as ranges must be
            yield from _leaves(arg, (*loc, i),
                               lambda v, i=i: wrap([v if j == i else j + 1 for j in range(len(args))]))
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            key = field.alias or name  # what validation reads, and names in its errors
            yield from _leaves(field.annotation, (*loc, key), lambda v, key=key: wrap({key: v}))


def _numbers(owner: str, model: type[BaseModel]) -> list:
    return [pytest.param(model, loc, kind, wrap, id=f"{owner}:{'.'.join(map(str, loc))}")
            for loc, kind, wrap in _leaves(model, (), lambda v: v)
            if (owner, loc[0]) not in IDENTIFIERS]


MODELS = ([(spec.name, spec.params) for spec in list_ops()]
          + [(f"ingest {spec.name}", spec.params) for spec in list_formats()])
NUMBERS = [case for owner, model in MODELS for case in _numbers(owner, model)]
COUNTS = [case for case in NUMBERS if case.values[2] is int]
FLOATS = [case for case in NUMBERS if case.values[2] is float]


def _errors_at(model: type[BaseModel], value: dict, loc: tuple) -> list[dict]:
    """The errors validating `value` gives at `loc`, or, from a check of several fields
    together (a histogram's bins in all, a scan's grid points), at a key above it."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(value)
    return [error for error in info.value.errors() if error["loc"] == loc
            or (error["type"] == "value_error" and loc[:len(error["loc"])] == error["loc"])]


def test_the_audit_covers_counts_and_floats_of_every_op():
    assert len(list_ops()) >= 41 and len(COUNTS) > 60 and len(FLOATS) > 40


@pytest.mark.parametrize(("model", "loc", "kind", "wrap"), COUNTS)
def test_an_absurd_count_is_refused_naming_its_key(model, loc, kind, wrap):
    errors = _errors_at(model, wrap(ABSURD), loc)
    assert errors, f"{model.__name__}.{'.'.join(map(str, loc))} accepted {ABSURD}"
    assert any("less than or equal to" in e["msg"] or "at most" in e["msg"] for e in errors), errors


@pytest.mark.parametrize(("model", "loc", "kind", "wrap"), FLOATS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_float_is_refused_naming_its_key(model, loc, kind, wrap, bad):
    errors = _errors_at(model, wrap(bad), loc)
    assert [e for e in errors if e["type"] == "finite_number"], errors


def test_bounds_show_in_the_ops_listing_and_its_schema(monkeypatch, capsys):
    code, out, _ = replicalake(monkeypatch, capsys, "ops")
    assert code == 0
    assert "replicas: int = 100 (> 0, <= 10000)" in out
    assert "hidden: list = [10, 15, 5] (items <= 64, each <= 4096)" in out
    schema = next(s for s in list_ops() if s.name == "eels.train_zlp").params.model_json_schema()
    assert schema["properties"]["replicas"]["maximum"] == 10_000


def test_an_absurd_count_fails_validate_with_file_line_and_key(write_recipe):
    recipe = write_recipe("""
        version: 1
        name: bomb
        steps:
          - id: data
            op: replicas.toy_regression
            params: {n_points: 1e12}
        """)
    with pytest.raises(RecipeError, match=r"recipe.yaml:6: steps\[0\].params.n_points: Input should be "
                                          r"less than or equal to 20000 \(found 1000000000000.0\)"):
        compile_recipe(recipe)


# -- YAML files -----------------------------------------------------------------------------------
def test_a_50_mb_recipe_is_refused_before_parsing(tmp_path):
    path = tmp_path / "huge.yaml"
    with path.open("w") as handle:
        handle.write("version: 1\nname: huge\ndescription: [\n")
        for _ in range(50):
            handle.write("1, " * (2**20 // 3))
        handle.write("]\n")
    size = path.stat().st_size
    assert size > 50 * 10**6
    with pytest.raises(RecipeError, match=f"huge.yaml: the file is {size} bytes; expected a YAML file of "
                                          f"at most {MAX_YAML_BYTES} bytes"):
        load_recipe(path)


def test_catalog_and_other_yaml_text_over_the_limit_is_refused():
    text = "version: 2\ndescription: '" + "x" * MAX_YAML_BYTES + "'\n"
    with pytest.raises(CatalogError, match=f"big.yaml: the file is {len(text)} bytes"):
        parse_yaml(text, "big.yaml", CatalogError)


def _nested_flow(depth: int) -> str:
    return "version: 1\nname: deep\ndescription: " + "[" * depth + "1" + "]" * depth + "\n"


@pytest.mark.parametrize("depth", [MAX_YAML_DEPTH + 1, 400, 5000])
def test_deeply_nested_yaml_is_refused_with_its_line(depth):
    with pytest.raises(RecipeError, match=f"deep.yaml:3: (description: )?YAML nested deeper than "
                                          f"{MAX_YAML_DEPTH} levels of maps and lists"):
        load_recipe_text(_nested_flow(depth), "deep.yaml")


def test_nesting_at_the_limit_is_plain_data():
    data, _ = parse_yaml(_nested_flow(MAX_YAML_DEPTH - 1), "deep.yaml")
    assert data["name"] == "deep"


def test_nesting_through_aliases_counts_too():
    anchors = "\n".join(f"  a{i}: &a{i} [*a{i - 1}]" for i in range(1, 70))
    text = f"version: 1\nname: deep\nx:\n  a0: &a0 [1]\n{anchors}\n"
    with pytest.raises(RecipeError, match="YAML nested deeper than 64 levels"):
        load_recipe_text(text, "alias.yaml")


# -- cut expressions ------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["(" * 100 + "x" + ")" * 100, "+".join(["x"] * 500) + " > 0",
                                  "not " * 200 + "b", "-" * 300 + "x", "x**" * 200 + "x",
                                  "sqrt(" * 80 + "x" + ")" * 80],
                         ids=["parentheses", "chain", "not", "negation", "power", "calls"])
def test_deep_expressions_are_refused_before_recursion(text):
    with pytest.raises(ExpressionError, match=f"expected at most {MAX_DEPTH} nested levels"):
        parse(text)


def test_expressions_below_the_depth_limit_parse():
    parse("(" * (MAX_DEPTH - 2) + "x > 1" + ")" * (MAX_DEPTH - 2))
    parse(" + ".join(["x"] * (MAX_DEPTH - 2)) + " > 0")


def test_an_infinite_literal_is_refused_with_a_caret():
    with pytest.raises(ExpressionError, match="expected a finite number, found '1e999' at position 5"):
        parse("x < 1e999")


# -- LHAPDF sets ----------------------------------------------------------------------------------
@pytest.fixture
def toy_set(tmp_path) -> Path:
    return Path(shutil.copytree(LHTOY, tmp_path / "LHToy"))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_member_count_far_above_the_files_is_refused_without_allocating(toy_set):
    tracemalloc.start()
    with pytest.raises(LhapdfFormatError, match=r"LHToy.info: NumMembers is 1000000000000, so expected "
                       r"LHToy_0000.dat .. LHToy_999999999999.dat; found 3 member files, missing "
                       r"LHToy_0003.dat, LHToy_0004.dat, LHToy_0005.dat ..."):
        member_paths(toy_set, {"NumMembers": 10**12})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2**20


def test_nan_and_inf_grid_values_are_refused_unless_allowed(toy_set):
    lines = (toy_set / "LHToy_0001.dat").read_text().splitlines()
    lines[9] = " ".join(["nan", *lines[9].split()[1:-1], "-inf"])
    (toy_set / "LHToy_0001.dat").write_text("\n".join(lines) + "\n")
    with pytest.raises(LhapdfFormatError, match=r"LHToy_0001.dat:10: expected finite values, found 2 NaN or "
                       r"inf \(the first, 'nan', in column 1\); pass --allow-nonfinite"):
        read_lhapdf_set(toy_set)
    kept = read_lhapdf_set(toy_set, allow_nonfinite=True)["xf_0"]
    assert int(np.isnan(kept).sum()) == 1 and int(np.isinf(kept).sum()) == 1


def test_non_finite_knots_are_refused(toy_set):
    _edit(toy_set / "LHToy_0000.dat", "1.4142135623730951 2.0 3.0 4.75", "1.4142135623730951 2.0 3.0 inf")
    with pytest.raises(LhapdfFormatError, match="LHToy_0000.dat:5: expected finite Q knots, found inf"):
        read_lhapdf_set(toy_set)


def test_ingest_cli_refuses_a_nan_set_and_keeps_it_with_the_option(toy_set, lake, monkeypatch, capsys):
    lines = (toy_set / "LHToy_0002.dat").read_text().splitlines()
    lines[12] = " ".join(["nan", *lines[12].split()[1:]])
    (toy_set / "LHToy_0002.dat").write_text("\n".join(lines) + "\n")
    code, _, err = replicalake(monkeypatch, capsys, "ingest", "lhapdf", toy_set, "toy", "--no-progress")
    assert code == 1 and "LHToy_0002.dat:13: expected finite values" in " ".join(err.split())
    assert not lake.exists("raw", "toy")
    code, _, err = replicalake(monkeypatch, capsys, "ingest", "lhapdf", toy_set, "toy", "--no-progress",
                               "--allow-nonfinite")
    assert code == 0, err


# -- wait times -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_lock_timeout_that_is_no_wait_is_refused_before_compiling(value, monkeypatch, capsys, tmp_path):
    code, _, err = replicalake(monkeypatch, capsys, "run", tmp_path / "never-read.yaml",
                               "--lock-timeout", value)
    assert code == 1
    assert f"--lock-timeout: expected a finite number of seconds >= 0, found {float(value)}" in err


def test_lock_timeout_checks_library_callers_too(lake):
    assert checked_lock_timeout(None) is None and checked_lock_timeout(0.0) == 0.0
    with pytest.raises(ConfigError, match="found nan"), output_locks(lake, ["derived/x"], "test", math.nan):
        pass


# -- plots ----------------------------------------------------------------------------------------
def test_a_plot_of_an_unknown_variable_fails_validate_naming_it_and_the_choices(ramp_lake, write_recipe):
    recipe = write_recipe("""
        version: 1
        name: plots
        sources:
          data: {catalog: lake, entry: raw/ramp}
        steps:
          - id: total
            op: core.sum
            inputs: {data: data}
            params: {dims: [x]}
        outputs:
          total:
            plots:
              - {variable: a, kind: line}
              - {variable: a, kind: band, points: [b]}
        """)
    with raise_if_computes(), pytest.raises(RecipeError) as info:
        compile_recipe(recipe, ramp_lake)
    message = str(info.value)
    assert "checking op checks" in message
    assert ("recipe.yaml:14: outputs.total.plots[1].variable: plot 1 (band of 'a'): variable 'a_quantile' "
            "is not in the output; its variables are a") in message
    assert ("outputs.total.plots[1].points[0]: plot 1 (band of 'a'): variable 'b' is not in the "
            "output") in message
    assert "plots[0]" not in message
