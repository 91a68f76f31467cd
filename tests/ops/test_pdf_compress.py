"""pdf.compress: a set in the lake -> compressed set (exportable) and the estimator table."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.errors import RecipeError, RunError
from engine.graph import compile_recipe
from engine.ingest.lhapdf import export_lhapdf
from engine.ingest.lhapdf_format import pdfset_from_arrays, read_lhapdf_set
from engine.kernels.compress import ESTIMATORS
from engine.testing import put_in_lake, raise_if_computes
from tests.kernels.test_compress import gaussian_process

N_X, FLAVOURS = 10, (1, 2, 21)


def gp_set(n: int = 300, seed: int = 7, kept: np.ndarray | None = None):
    """A Monte Carlo set of n Gaussian-process replicas (+ member 0) on one subgrid of 3 Q knots;
    the Q dependence is a known factor, so every Q knot carries the same replicas' shapes."""
    values, _, _ = gaussian_process(n, N_X, len(FLAVOURS), seed)
    xf = values.reshape(n, len(FLAVOURS), N_X)[..., None] * np.array([1.0, 1.1, 1.2])
    xf = np.concatenate([xf.mean(0, keepdims=True), xf])
    dataset = pdfset_from_arrays(
        [np.geomspace(1e-3, 0.9, N_X)],
        [np.array([1.5, 10.0, 100.0])],
        FLAVOURS,
        [xf],
        {"SetDesc": "GP replicas", "ErrorType": "replicas"},
    )
    if kept is not None:
        dataset["kept"] = ("member", np.concatenate([[True], kept]))
    return dataset.chunk({"member": 64}), xf


RECIPE = """
version: 1
name: compress-test
sources:
  pdf: {{catalog: lake, entry: raw/gp}}
steps:
  - id: compressed
    op: pdf.compress
    inputs: {{pdf: pdf}}
    params: {{replicas: {m}, generations: 300, seed: 2, random_trials: 40}}
outputs:
  compressed: {{zone: derived}}
"""


def test_compressed_set_is_exported_and_beats_random_subsets(lake, write_recipe, tmp_path):
    dataset, xf = gp_set()
    put_in_lake(lake, "gp", dataset)
    recipe = write_recipe(RECIPE.format(m=30))
    with raise_if_computes():
        compile_recipe(recipe, lake)
    engine.run(recipe, lake)
    out = lake.open("derived", "compress-test/compressed")
    chosen = out["chosen"].values
    assert chosen.size == 30 and np.unique(chosen).size == 30 and chosen.min() >= 1  # never member 0
    # members 1..M are the chosen source replicas whole (every Q knot), member 0 their average
    np.testing.assert_allclose(out["xf_0"].values[1:], xf[chosen])
    np.testing.assert_allclose(out["xf_0"].values[0], xf[chosen].mean(0))
    table = {name: out[name].values for name in ("erf_compressed", "erf_random_median")}
    assert out["erf_compressed"].attrs["estimators"].split() == list(ESTIMATORS)
    assert np.all(table["erf_compressed"] < table["erf_random_median"]), table
    setdir = export_lhapdf(lake, "compress-test/compressed", tmp_path / "export")
    back = read_lhapdf_set(setdir)
    assert back.attrs["lhapdf_info"]["NumMembers"] == 31
    assert back.attrs["lhapdf_info"]["ErrorType"] == "replicas"
    np.testing.assert_allclose(back["xf_0"].values, out["xf_0"].values, rtol=1e-7)


def test_replicas_dropped_by_post_fit_selection_are_never_chosen(lake, write_recipe):
    kept = np.ones(300, bool)
    kept[::3] = False
    dataset, _ = gp_set(kept=kept)
    put_in_lake(lake, "gp", dataset)
    engine.run(write_recipe(RECIPE.format(m=20)), lake)
    chosen = lake.open("derived", "compress-test/compressed")["chosen"].values
    assert np.all(kept[chosen - 1])


def test_m_at_least_n_is_refused_when_the_recipe_is_compiled(lake, write_recipe):
    dataset, _ = gp_set(n=12)
    put_in_lake(lake, "gp", dataset)
    with pytest.raises(RecipeError, match=r"replicas: M = 12 must be below the set's N = 12 replicas"):
        compile_recipe(write_recipe(RECIPE.format(m=12)), lake)


def test_m_at_least_the_kept_replicas_is_refused_at_run_time(lake, write_recipe):
    kept = np.zeros(12, bool)
    kept[:5] = True
    dataset, _ = gp_set(n=12, kept=kept)
    put_in_lake(lake, "gp", dataset)
    with pytest.raises(RunError, match=r"M = 6 must be below the N = 5 replicas the set keeps"):
        engine.run(write_recipe(RECIPE.format(m=6)), lake)


def test_an_ingested_lhapdf_set_is_compressed_like_a_fitted_one(lake, write_recipe, tmp_path):
    """The issue's other input: a set read from LHAPDF files (`ingest lhapdf`) compresses the
    same way (here the GP set exported, ingested back, and compressed)."""
    from engine.ingest.lhapdf import ingest_lhapdf

    dataset, xf = gp_set(n=120)
    put_in_lake(lake, "gp_fit", dataset)
    setdir = export_lhapdf(lake, "gp_fit", tmp_path / "export")
    ingest_lhapdf(lake, setdir, "gp", progress=False)
    engine.run(write_recipe(RECIPE.format(m=15)), lake)
    out = lake.open("derived", "compress-test/compressed")
    chosen = out["chosen"].values
    np.testing.assert_allclose(out["xf_0"].values[1:], xf[chosen], rtol=1e-7)
    assert np.all(out["erf_compressed"].values < out["erf_random_median"].values)
