"""`pdf.evaluate`: lazy, chunked over members and points, equal to the kernel; recipes and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import engine
from engine.errors import OpError, RecipeError, RunError
from engine.graph import compile_recipe
from engine.ingest.lhapdf import ingest_lhapdf
from engine.ingest.lhapdf_format import read_lhapdf_set
from engine.kernels.pdf_interp import evaluate as kernel_evaluate
from engine.kernels.pdf_interp import hermite_grid
from engine.ops import pdf_grid
from engine.registry import get_op
from engine.testing import put_in_lake, raise_if_computes
from tests.conftest import lake_files

TOY = Path(__file__).resolve().parents[1] / "data" / "lhapdf" / "LHToy"


def _points(n=1000, seed=0, q_low=1.4142135623730951, chunk=300) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset({"x": ("point", np.exp(rng.uniform(np.log(1e-5), 0, n))),
                       "q": ("point", np.exp(rng.uniform(np.log(q_low), np.log(1000), n)))}
                      ).chunk({"point": chunk})


def _expected(pdf: xr.Dataset, x, q) -> np.ndarray:
    grid = hermite_grid([pdf.xf_0.values, pdf.xf_1.values], [pdf.x_0.values, pdf.x_1.values],
                        [pdf.q_0.values, pdf.q_1.values])
    return kernel_evaluate(grid, np.asarray(x), np.asarray(q)).reshape(pdf.sizes["member"],
                                                                       pdf.sizes["flavour"], -1)


def run_op(pdf, points, **params):
    spec = get_op("pdf.evaluate")
    return spec.func(spec.params(**params), pdf=pdf, points=points)


def test_lazy_chunked_and_equal_to_the_kernel():
    pdf = read_lhapdf_set(TOY).chunk({"member": 2})
    points = _points()
    with raise_if_computes():
        out = run_op(pdf, points)
    assert out.xf.dims == ("member", "flavour", "point")
    assert out.xf.chunks == ((2, 1), (7,), (300, 300, 300, 100))
    np.testing.assert_allclose(out.xf.values, _expected(pdf, points.x, points.q), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(out.x.values, points.x.values)


def test_member_and_flavour_selection_and_gluon_as_zero():
    pdf = read_lhapdf_set(TOY)
    points = _points(50)
    out = run_op(pdf, points, members=[2], flavours=[0, 2])
    assert out.member.values.tolist() == [2] and out.flavour.values.tolist() == [21, 2]
    full = _expected(pdf, points.x, points.q)
    np.testing.assert_allclose(out.xf.values[0], full[2][[6, 4]], rtol=1e-12, atol=1e-15)


def test_multidimensional_points_keep_their_dims():
    pdf = read_lhapdf_set(TOY)
    xx, qq = np.meshgrid(np.geomspace(1e-4, 0.9, 6), np.geomspace(2, 900, 5), indexing="ij")
    points = xr.Dataset({"x": (("ix", "iq"), xx), "q": (("ix", "iq"), qq)})
    out = run_op(pdf, points)
    assert out.xf.dims == ("member", "flavour", "ix", "iq")
    np.testing.assert_allclose(out.xf.values.reshape(3, 7, -1), _expected(pdf, xx.ravel(), qq.ravel()),
                               rtol=1e-12, atol=1e-15)


def test_member_chunks_are_split_to_bound_the_tables(monkeypatch):
    monkeypatch.setattr(pdf_grid, "TABLE_BYTES", 4 * 8 * 7 * (13 * 4 + 13 * 5) * 2)  # 2 members' tables
    pdf = read_lhapdf_set(TOY).chunk({"member": 3})
    points = _points(200)
    out = run_op(pdf, points)
    assert out.xf.chunks[0] == (2, 1)
    np.testing.assert_allclose(out.xf.values, _expected(pdf, points.x, points.q), rtol=1e-12, atol=1e-15)


def test_output_chunks_stay_bounded_for_many_members(monkeypatch):
    monkeypatch.setattr(pdf_grid, "OUTPUT_CHUNK_BYTES", 3 * 7 * 8 * 64)
    out = run_op(read_lhapdf_set(TOY), _points(1000, chunk=1000))
    assert max(out.xf.chunks[2]) == 64


@pytest.mark.parametrize(("params", "points", "message"), [
    ({"flavours": [5]}, None, r"flavour \[5\] not in the PDF set; it has flavours "
                              r"\[-3, -2, -1, 1, 2, 3, 21\]"),
    ({"members": [7]}, None, r"member \[7\] not in the PDF set"),
    ({"q": "Q"}, None, r"the points have no variable 'Q'; they have x, q"),
    ({}, xr.Dataset({"x": ("a", [0.1]), "q": ("b", [10.0])}), r"along the same point dims"),
    ({}, xr.Dataset({"x": ("point", [0.1, 2.0]), "q": ("point", [10.0, 10.0])}),
     r"1 of 2 points are outside the PDF grid \(x in \[1e-05, 1\], Q in \[1.41421, 1000\] GeV\): those "
     r"points have x in \[2, 2\]"),
])
def test_bad_requests_are_op_errors(params, points, message):
    with pytest.raises(OpError, match=message):
        run_op(read_lhapdf_set(TOY), _points(10) if points is None else points, **params)


def test_not_a_pdf_set_is_named():
    with pytest.raises(OpError, match="input 'pdf' is not a PDF set: expected a PDF set with variables xf_0"):
        run_op(xr.Dataset({"a": ("x", [1.0])}), _points(10))


RECIPE = """\
version: 1
name: toy-values
sources:
  pdf: {catalog: lake, entry: raw/toy}
  points: {catalog: lake, entry: raw/kinematics}
steps:
  - id: xf
    op: pdf.evaluate
    inputs: {pdf: pdf, points: points}
    params: {flavours: [21, 2]}
outputs:
  xf: {zone: derived}
"""


def test_recipe_over_an_ingested_set(lake, write_recipe):
    ingest_lhapdf(lake, TOY, "toy", progress=False)
    points = _points(2000, seed=3)
    put_in_lake(lake, "kinematics", points)
    engine.run(write_recipe(RECIPE), lake)
    result = lake.open("derived", "toy-values/xf").load()
    expected = _expected(read_lhapdf_set(TOY), points.x, points.q)[:, [6, 4]]
    np.testing.assert_allclose(result.xf.values, expected, rtol=1e-12, atol=1e-15)


def test_kinematics_outside_the_grid_fail_the_run_and_write_nothing(lake, write_recipe):
    ingest_lhapdf(lake, TOY, "toy", progress=False)
    put_in_lake(lake, "kinematics", _points(100, q_low=1.0, seed=4))
    before = lake_files(lake)
    with pytest.raises(RunError, match=r"points are outside the PDF grid .* set extrapolation: nearest"):
        engine.run(write_recipe(RECIPE), lake)
    assert lake_files(lake) == before
    engine.run(write_recipe(RECIPE.replace("{flavours: [21, 2]}", "{flavours: [21], extrapolation: nan}")),
               lake)
    assert np.isnan(lake.open("derived", "toy-values/xf").xf.values).any()


def test_unknown_param_is_a_recipe_error(lake, write_recipe):
    ingest_lhapdf(lake, TOY, "toy", progress=False)
    put_in_lake(lake, "kinematics", _points(10))
    with pytest.raises(RecipeError, match="extrapolation"):
        compile_recipe(write_recipe(RECIPE.replace("flavours: [21, 2]", "extrapolation: linear")), lake)
