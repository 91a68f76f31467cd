"""The notebook API, `import replicalake as rl` (engine/api.py): a light import, the lake's entries
as lazy Datasets, plan and run with `params=` (merged and checked like YAML), and the ingest
formats as functions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from ruamel.yaml import YAML

import engine
import replicalake as rl
from engine.errors import ConfigError, IngestError, OutputConflictError, RecipeError, UnknownEntryError
from engine.plan import Plan
from tests.conftest import REPO
from tests.test_graph import RECIPE

OVERRIDE = {"steps": {"total": {"params": {"dims": ["y"]}}}}


def recipe_dict() -> dict:
    return YAML(typ="safe", pure=True).load(RECIPE)


def test_import_replicalake_is_light():
    code = ("import sys, replicalake as rl; rl.ingest; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'xarray', 'dask', 'zarr', 'torch', 'prefect', 'matplotlib'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert rl.__version__ == engine.api.__version__ and callable(rl.run) and callable(rl.open_lake)


def test_lake_entries_and_lazy_datasets(ramp_lake):
    lake = rl.open_lake(ramp_lake.root)
    assert lake.entries() == ["raw/ramp"] and list(lake) == ["raw/ramp"] and len(lake) == 1
    ramp = lake["raw/ramp"]
    assert isinstance(ramp, xr.Dataset) and ramp["a"].chunks is not None  # lazy (dask-backed)
    assert lake["ramp"]["a"].shape == (8, 6) and "ramp" in lake and "nope" not in lake
    assert lake.provenance("ramp")["ingest"] == "testing"
    with pytest.raises(UnknownEntryError, match=r"no entry 'rmap' in the lake at .*did you mean"):
        lake["rmap"]
    with pytest.raises(KeyError):  # a dict-like miss is a KeyError too
        lake["raw/nope"]
    assert "1 entries: raw/ramp" in repr(lake)


def test_plan_run_and_params_round_trip(ramp_lake, write_recipe):
    recipe = write_recipe(RECIPE)
    lake = rl.open_lake(ramp_lake.root)
    plan = rl.plan(recipe, lake)
    assert isinstance(plan, Plan) and repr(plan) == "<Plan of 'smoke': 3 steps, 1 of 1 outputs to compute>"
    html = plan._repr_html_()
    assert "<table>" in html and "to compute" in html and "missing output" in html
    assert "projected peak of the run" in html and "derived/smoke/total" in html

    summary = rl.run(recipe, lake)
    assert [o.status for o in summary.outputs] == ["computed"]
    expected = [sum(10 * y + x for x in range(6)) for y in range(2, 6)]
    np.testing.assert_allclose(lake["smoke/total"]["a"].values, expected)
    assert "up to date" in rl.plan(recipe, lake)._repr_html_()

    # a params= variant of the file: checked like YAML, and not allowed over the file's outputs
    variant = rl.plan(recipe, lake, params=OVERRIDE)
    assert variant.step("total").dataset.sizes == {"x": 6} and variant.step("total").stale_reason == \
        "params changed"
    with pytest.raises(OutputConflictError, match=r"with params= overrides\) would replace outputs"):
        rl.run(recipe, lake, params=OVERRIDE)
    summary = rl.run(recipe, lake, params=OVERRIDE, replace=True)
    assert [o.status for o in summary.outputs] == ["computed"]
    assert lake["derived/smoke/total"].sizes == {"x": 6}
    assert lake.provenance("smoke/total")["recipe_params"] == OVERRIDE
    assert [o.status for o in rl.run(recipe, lake, params=OVERRIDE).outputs] == ["up to date"]


def test_report_and_lineage_from_python(ramp_lake, write_recipe):
    recipe = write_recipe(RECIPE)
    lake = rl.open_lake(ramp_lake.root)
    rl.run(recipe, lake)
    url = rl.report(recipe, lake)
    assert url.startswith(f"{ramp_lake.root}/reports/runs/smoke/") and url.endswith(".html")
    with open(url) as page:
        assert "derived/smoke/total" in page.read()
    graph = rl.lineage(lake)
    assert repr(graph).splitlines() == [
        "raw/ramp [input]: in the lake", "  -> smoke:part [core.select, step of smoke]",
        "    -> derived/smoke/total [core.sum, output of smoke]: up to date"]
    html = graph._repr_html_()
    assert html.startswith("<ul class='lineage'") and "color:#070" in html
    assert set(rl.lineage(lake, "raw/ramp").nodes) == set(graph.nodes)
    stale = rl.lineage(lake, recipes=[write_recipe(RECIPE.replace("dims: [x]", "dims: [y]"))])
    assert (stale.nodes["derived/smoke/total"].status, stale.nodes["derived/smoke/total"].why) == (
        "stale", "params changed")


def test_a_whole_recipe_as_a_dict(ramp_lake):
    data = recipe_dict()
    data["name"] = "from-a-dict"
    summary = rl.run(data, ramp_lake.root, params={"outputs": {"total": {"name": "dict/total"}}})
    assert [(o.name, o.status) for o in summary.outputs] == [("dict/total", "computed")]
    assert ramp_lake.provenance("derived", "dict/total")["recipe_path"] == "<dict>"
    named = {"outputs": {"total": {"name": "dict/total"}}}
    again = engine.run(data, ramp_lake, params=named, force=["total"])
    assert [o.status for o in again.outputs] == ["computed"]  # engine.run takes the same keywords


def test_params_errors_name_the_key(ramp_lake, write_recipe):
    recipe = write_recipe(RECIPE)
    with pytest.raises(RecipeError, match=r"steps.totl: no step 'totl' \(did you mean 'total'\?\); the "
                                          r"recipe's steps are part, total"):
        rl.plan(recipe, ramp_lake, params={"steps": {"totl": {"params": {}}}})
    with pytest.raises(RecipeError) as caught:
        rl.plan(recipe, ramp_lake, params={"steps": {"total": {"params": {"dimz": ["x"]}}}})
    (problem,) = caught.value.problems
    assert problem.file == f"{recipe} + params=" and problem.line is None
    assert problem.key == "steps[1].params.dimz" and "unknown key" in problem.message
    with pytest.raises(RecipeError, match=r"<dict>: name: String should match pattern"):
        rl.plan({**recipe_dict(), "name": "has space"}, ramp_lake)
    with pytest.raises(ConfigError, match="params= must be a dict"):
        rl.plan(recipe, ramp_lake, params=[("steps", {})])
    with pytest.raises(ConfigError, match="--force 'nope': is no step"):
        rl.run(recipe, ramp_lake, force="nope")


def test_merge_params_semantics():
    base = recipe_dict()
    merged = rl.merge_params(base, {"steps": {"part": {"params": {"ranges": {"x": [0, 1]}}}},
                                    "outputs": {"total": {"name": "t"}}, "description": "d"})
    assert merged["steps"][0]["params"]["ranges"] == {"y": [2, 5], "x": [0, 1]}  # mappings merge
    assert merged["outputs"]["total"] == {"zone": "derived", "name": "t"} and merged["description"] == "d"
    assert base["outputs"]["total"] == {"zone": "derived"}  # the input is left alone
    replaced = rl.merge_params(base, {"steps": {"total": {"params": {"dims": ["y"]}}}})
    assert replaced["steps"][1]["params"]["dims"] == ["y"]  # lists replace


def test_ingest_formats_are_functions(lake):
    assert {"synthetic_eels", "eels", "root", "nnpdf", "lhapdf"} <= set(dir(rl.ingest))
    assert "shape" in str(__import__("inspect").signature(rl.ingest.synthetic_eels))
    said = rl.ingest.synthetic_eels("img", shape=(4, 4, 64), chunks=(2, 2), progress=False, lake=lake)
    assert isinstance(said, str)
    image = rl.open_lake(lake.root)["raw/img"]
    assert image["counts"].shape == (4, 4, 64) and image["counts"].chunks is not None
    with pytest.raises(IngestError, match=r"ingest.synthetic_eels: shape: "):
        rl.ingest.synthetic_eels("bad", shape=(4, 4, 1), lake=lake)
    with pytest.raises(TypeError, match="takes 1 positional arguments"):
        rl.ingest.synthetic_eels("a", "b", lake=lake)
    with pytest.raises(AttributeError, match="no ingest format 'synthetic_eel' .*did you mean"):
        rl.ingest.synthetic_eel  # noqa: B018


def test_the_quickstart_example_runs_on_a_tiny_lake(lake, monkeypatch, capsys):
    """examples/eels_quickstart.py, cell by cell as a script: ingest, plan, run, a variant."""
    import runpy

    monkeypatch.setenv("QUICKSTART_SHAPE", "12 10 256")
    runpy.run_path(str(REPO / "examples" / "eels_quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "[('eels-thickness/thickness', 'computed')]" in out and "fixed ZLP end" in out
    assert lake.exists("derived", "eels-thickness/thickness_threshold")
    assert lake.provenance("derived", "eels-thickness/thickness")["recipe_params"] is None
