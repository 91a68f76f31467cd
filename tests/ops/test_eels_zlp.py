"""The EELS chain end to end on a small synthetic image: cluster -> windows -> ZLP -> bands."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.errors import RecipeError
from engine.graph import compile_recipe
from engine.ingest.synthetic_eels import ingest_synthetic_eels
from engine.storage import Lake
from engine.testing import raise_if_computes
from tests.conftest import REPO

SMALL = {"replicas: 100, epochs: 5000": "replicas: 12, epochs: 4000",
         "{catalog: eels, entry: synthetic_demo}": "{catalog: lake, entry: raw/img}",
         "n_clusters: 5": "n_clusters: 4"}


def chain_recipe(folder, **changes):
    text = (REPO / "recipes" / "eels_bandgap.yaml").read_text()
    for old, new in {**SMALL, **changes}.items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "chain.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chain")
    lake = Lake(str(folder / "lake"))
    ingest_synthetic_eels(lake, "img", (32, 32, 1024), seed=5, chunks=(16, 16), progress=False)
    recipe = chain_recipe(folder)
    return lake, recipe, engine.run(recipe, lake)


def test_compiling_the_chain_computes_nothing(chain):
    lake, recipe, _ = chain
    text = recipe.read_text().replace("seed: 7", "seed: 8")  # a stale plan, nothing cached
    recipe.with_name("stale.yaml").write_text(text)
    with raise_if_computes():
        plan = compile_recipe(recipe.with_name("stale.yaml"), lake)
    assert plan.step("inelastic").dataset["inelastic_quantile"].dims == ("quantile", "y", "x", "energy")


def test_chain_publishes_model_bands_and_maps(chain):
    lake, _, summary = chain
    assert {o.status for o in summary.outputs} == {"computed"}
    model = lake.open("models", "eels-bandgap/zlp_model")
    assert model.attrs["kind"] == "eels zlp ensemble" and model["weight_0"].shape == (12, 2, 10)
    assert int(model["kept"].sum()) >= 6
    bandgap = lake.open("derived", "eels-bandgap/bandgap")
    assert bandgap["e_bg"].shape == (32, 32) and bool(bandgap["converged"].any())
    reports = [r for o in summary.outputs for r in o.reports]
    assert any(r.endswith("cluster.png") for r in reports) and any(r.endswith("e_bg.png") for r in reports)


def test_subtracted_bands_are_ordered_and_zero_on_the_gain_side(chain):
    lake, recipe, _ = chain
    plan = compile_recipe(recipe, lake)  # every output is up to date: the bands come from the lake
    bands = plan.step("inelastic").dataset["inelastic_quantile"].isel(y=slice(0, 8), x=slice(0, 8)).load()
    low, mid, high = (bands.isel(quantile=i).values for i in range(3))
    assert np.all(low <= mid + 1e-3) and np.all(mid <= high + 1e-3)
    gain = bands["energy"].values < -0.5
    np.testing.assert_allclose(mid[..., gain], 0.0, atol=1e-3)


def test_windows_must_come_from_the_same_clusters(chain, tmp_path):
    lake, _, _ = chain
    recipe = chain_recipe(tmp_path, **{"inputs: {image: aligned, clusters: clusters, windows: windows}\n"
                                       "    params: {replicas":
                                       "inputs: {image: aligned, clusters: clusters, windows: thickness}\n"
                                       "    params: {replicas"})
    with pytest.raises(RecipeError, match=r"variable 'de_i' is not in the data"):
        compile_recipe(recipe, lake)
