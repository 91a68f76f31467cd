"""Code fingerprints: tokens follow the code that computes a step, and `plan` says why it is stale."""

from __future__ import annotations

import itertools
import shutil
import sys

import pytest
from pydantic import BaseModel, ConfigDict

from engine import fingerprint, graph, registry
from engine.fingerprint import code_fingerprint, code_modules
from engine.graph import compile_recipe
from engine.registry import OpSpec, list_ops
from engine.runner import execute
from engine.testing import put_in_lake, ramp_dataset

PACKAGE = {
    "pkg/__init__.py": "",
    "pkg/ops.py": '"""Ops of a plugin."""\nfrom .shared import helper\n\n\ndef op(x):\n'
                  "    from .kernels import k  # imported lazily, like the torch kernels\n\n"
                  "    return k.run(helper(x))\n",
    "pkg/shared.py": "def helper(x):\n    return x\n",
    "pkg/other.py": "def unused(x):\n    return x\n",
    "pkg/kernels/__init__.py": "",
    "pkg/kernels/k.py": "def run(x):\n    return x + 1\n",
}


def write_package(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.fixture(autouse=True)
def code_cache(tmp_path, monkeypatch):
    """Parsed-source summaries go to the test's folder, not the user's cache."""
    monkeypatch.setenv("REPLICALAKE_CODE_CACHE", str(tmp_path / "code-cache"))


@pytest.fixture
def package_fingerprint(tmp_path):
    """Fingerprint of `pkg.ops` in a fresh copy of PACKAGE with some files replaced.

    Each copy lives in its own folder, so the per-process caches never mix two versions."""
    copies = itertools.count()

    def make(changed: dict[str, str] | None = None) -> str:
        root = tmp_path / f"copy{next(copies)}"
        write_package(root, {**PACKAGE, **(changed or {})})
        return code_fingerprint("pkg.ops", (str(root),))

    return make


def test_code_modules_follow_lazy_and_relative_imports(tmp_path):
    write_package(tmp_path, PACKAGE)
    found = code_modules("pkg.ops", (str(tmp_path),))
    assert found == ("pkg.kernels.k", "pkg.ops", "pkg.shared")
    assert "pkg" not in sys.modules  # found and parsed, never imported


def test_whitespace_comments_and_docstrings_keep_the_fingerprint(package_fingerprint):
    base = package_fingerprint()
    reformatted = '"""Now documented."""\n\n\ndef run(x):  # add one\n\n    return (x +\n            1)\n'
    assert package_fingerprint({"pkg/kernels/k.py": reformatted}) == base
    assert package_fingerprint({"pkg/other.py": "def unused(x):\n    return x * 2\n"}) == base
    assert package_fingerprint({"pkg/__init__.py": "VERSION = 2\n"}) == base


def test_a_code_change_in_an_imported_module_changes_the_fingerprint(package_fingerprint):
    base = package_fingerprint()
    assert package_fingerprint({"pkg/kernels/k.py": "def run(x):\n    return x + 2\n"}) != base
    assert package_fingerprint({"pkg/shared.py": "def helper(x):\n    return -x\n"}) != base


def test_a_new_process_reads_summaries_instead_of_parsing(package_fingerprint, monkeypatch):
    base = package_fingerprint()

    def parse(*args):
        raise AssertionError("parsed a file whose summary is on disk")

    monkeypatch.setattr(fingerprint, "_summarise", parse)
    assert package_fingerprint() == base


def test_fingerprinting_every_op_imports_nothing():
    modules = sorted({spec.func.__module__ for spec in list_ops()})
    before = set(sys.modules)
    assert len({code_fingerprint(module) for module in modules}) == len(modules)
    assert set(sys.modules) == before
    zlp = code_modules("engine.ops.eels_zlp")
    assert {"engine.kernels.zlp", "engine.kernels.eels", "engine.ops.eels"} <= set(zlp)
    assert not {"engine", "engine.graph", "engine.kernels"} & set(zlp)


class _Scale(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: float = 2.0


def _scale(params: _Scale, data):
    """A plugin op: its code is this test module."""
    return data * params.factor


RECIPE = """\
version: 1
name: fp
sources:
  data: {catalog: lake, entry: raw/ramp}
steps:
  - id: part
    op: core.select
    inputs: {data: data}
    params: {ranges: {y: [2, 5]}}
  - id: scaled
    op: test.scale
    inputs: {data: part}
    params: {factor: 2}
  - id: total
    op: core.sum
    inputs: {data: scaled}
    params: {dims: [x]}
outputs:
  part: {zone: derived}
  scaled: {zone: derived}
  total: {zone: derived}
"""


@pytest.fixture
def ran(ramp_lake, write_recipe, monkeypatch):
    """The recipe, run once on the ramp lake: (lake, recipe path)."""
    monkeypatch.setitem(registry._OPS, "test.scale", OpSpec("test.scale", _scale, _Scale, ("data",)))
    recipe = write_recipe(RECIPE)
    execute(compile_recipe(recipe, ramp_lake), progress=False)
    return ramp_lake, recipe


def reasons(lake, recipe) -> dict[str, str]:
    return {row["id"]: row["why"] or row["status"] for row in compile_recipe(recipe, lake).rows()
            if row["output"]}


def test_a_run_records_the_code_and_leaves_everything_up_to_date(ran):
    lake, recipe = ran
    assert reasons(lake, recipe) == {"part": "up to date", "scaled": "up to date", "total": "up to date"}
    assert lake.provenance("derived", "fp/scaled")["code"] == code_fingerprint(__name__)


def test_changed_code_makes_its_step_and_descendants_stale(ran, monkeypatch):
    lake, recipe = ran
    real = graph.code_fingerprint
    monkeypatch.setattr(graph, "code_fingerprint",
                        lambda module: "edited" if module == __name__ else real(module))
    rows = {row["id"]: row for row in compile_recipe(recipe, lake).rows()}
    assert rows["scaled"]["status"] == "to compute (code changed)"
    assert reasons(lake, recipe) == {"part": "up to date", "scaled": "code changed",
                                     "total": "new input"}


def test_changed_params_new_input_and_missing_output_are_named(ran):
    lake, recipe = ran
    recipe.write_text(RECIPE.replace("factor: 2", "factor: 3"))
    assert reasons(lake, recipe) == {"part": "up to date", "scaled": "params changed",
                                     "total": "new input"}
    recipe.write_text(RECIPE)
    shutil.rmtree(lake.entry_path("derived", "fp/total"))
    assert reasons(lake, recipe) == {"part": "up to date", "scaled": "up to date",
                                     "total": "missing output"}
    put_in_lake(lake, "ramp", ramp_dataset() + 1)
    assert reasons(lake, recipe) == {"part": "new input", "scaled": "new input",
                                     "total": "missing output"}
