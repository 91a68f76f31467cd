"""The EELSfitter v1 preset on the real WS2 spectra (../shared/data/eels) and its bad inputs.

The default test trains a small, short ensemble (4 replicas, 1000 epochs, kept below chi2/n
1000 instead of v1's 3) and checks what holds for any ensemble: the subtraction is exactly zero
below dE_0 = dE_I - 0.5 eV (the ZLP is the data there), the fit never places E_BG above its
first point, and building computes nothing.
The slow test is the reproduction itself: v1's settings (100 replicas, 25k epochs) on
specimen 14, whose E_BG v1 published as 1.600 eV, the first point of its fit.
"""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.errors import OpError, RecipeError
from engine.graph import compile_recipe
from engine.ingest.eels_files import ingest_eels_files
from engine.testing import raise_if_computes

N_SPECIMEN = 6  # specimen_{14,15,16,19,20,21}, then vacuum_{17,22,23}

RECIPE = """
version: 1
name: v1-test
sources:
  image: {{catalog: lake, entry: raw/ws2}}
steps:
  - id: aligned
    op: eels.align_zlp
    inputs: {{image: image}}
  - id: clusters
    op: eels.cluster
    inputs: {{image: aligned}}
    params: {{n_clusters: 2, seed: 1}}
  - id: v1_model
    op: eels.eelsfitter_v1_train
    inputs: {{image: image, clusters: clusters}}
    params: {{replicas: {replicas}, epochs: {epochs}, seed: {seed}{extra}}}
  - id: v1
    op: eels.eelsfitter_v1
    inputs: {{image: image, model: v1_model}}
outputs:
  v1_model: {{zone: models}}
  v1: {{zone: derived}}
"""


def recipe_text(replicas=4, epochs=1000, seed=0, extra=", chi2_keep: 1000.0"):
    return RECIPE.format(replicas=replicas, epochs=epochs, seed=seed, extra=extra)


@pytest.fixture
def ws2_lake(lake, shared_data):
    folder = shared_data / "eels" / "ws2_specimen4_lowloss"
    files = sorted(folder.glob("specimen_*.txt")) + sorted(folder.glob("vacuum_*.txt"))
    ingest_eels_files(lake, files, "ws2", progress=False)
    return lake


def test_preset_subtracts_nothing_below_de_0_and_fits_below_its_first_point(ws2_lake, write_recipe):
    path = write_recipe(recipe_text())
    with raise_if_computes():
        compile_recipe(path, ws2_lake)
    summary = engine.run(path, ws2_lake)
    assert {o.status for o in summary.outputs} == {"computed"}
    model = ws2_lake.open("models", "v1-test/v1_model")
    assert model.attrs["kind"] == "eelsfitter v1 ensemble" and model.attrs["cluster"] == 1
    assert model["weight_0"].shape == (4, 1, 10) and model["target_energy"].shape == (50,)
    # targets: 30 bins from -0.475 to 1.875 eV, then 20 pseudo-points ln I = 0.5 on 12-16 eV
    target = model["target_energy"].values
    assert target[0] == pytest.approx(-0.475) and target[29] == pytest.approx(1.875)
    assert (model["target_ln_i"].values[30:] == 0.5).all()
    # 1000 epochs leave chi2/n far above 3 (v1 trains 25k): the test keeps below 1000
    assert model["kept"].values.tolist() == (model["chi2_train"].values < 1000).tolist()

    out = ws2_lake.open("derived", "v1-test/v1")
    spectra = out.isel(y=0, x=slice(0, N_SPECIMEN))
    # below dE_0 = 1.38 eV the matched ZLP is the data: nothing is left, in every replica
    below = spectra["inelastic_quantile"].sel(energy=slice(-0.3, 1.3)).values
    assert np.abs(below).max() == 0.0
    first, e_bg = spectra["first_fit_energy"].values, spectra["e_bg"].values
    fitted = np.isfinite(e_bg)
    assert fitted.any()
    assert (e_bg[fitted] <= first[fitted] + 1e-9).all()
    assert (first[fitted] > 1.38).all()  # the first point with >= 20 counts lies in the blend
    at_first = spectra["at_first_point"].values
    assert at_first.tolist() == (np.abs(e_bg - first) < 1e-3).tolist()


def test_bad_settings_are_named(ws2_lake, write_recipe):
    with pytest.raises(RecipeError, match="de_i must lie below de_ii"):
        compile_recipe(write_recipe(recipe_text(extra=", de_i: 3.0, de_ii: 2.0")), ws2_lake)
    with pytest.raises(RecipeError, match="cluster 5 does not exist: the cluster map has 2"):
        compile_recipe(write_recipe(recipe_text(extra=", cluster: 5")), ws2_lake)
    wrong_model = recipe_text().replace("{image: image, model: v1_model}", "{image: image, model: clusters}")
    with pytest.raises((RecipeError, OpError), match="not an eels.eelsfitter_v1_train ensemble"):
        compile_recipe(write_recipe(wrong_model), ws2_lake)


@pytest.mark.slow
def test_preset_reproduces_the_published_gap_of_specimen_14(ws2_lake, write_recipe):
    # v1's settings. Measured (100 replicas, 25k epochs, ~1 min of one quiet core): specimen 14's
    # E_BG = 1.5931 eV through this recipe (seed 0), and 1.600, 1.593, 1.600, 1.600, 1.600 eV from
    # the kernel alone with seeds 0-4 (the pooled targets' summation order differs), each on or
    # 0.007 eV below the first fitted point, 1.600 eV (where the replica mean reaches 20 counts);
    # b 1.36-1.71; 51-68 of 100 replicas kept (v1: 55). Bounds: a channel either side of 1.600 eV
    # for the first point, E_BG within 0.02 eV below it.
    engine.run(write_recipe(recipe_text(replicas=100, epochs=25000, extra="")), ws2_lake)
    out = ws2_lake.open("derived", "v1-test/v1").isel(y=0, x=0)
    e_bg, first = float(out["e_bg"]), float(out["first_fit_energy"])
    print(f"specimen 14: E_BG {e_bg:.4f} eV, first point {first:.3f}, b {float(out['exponent']):.3f}")
    assert 1.575 - 1e-6 <= first <= 1.625 + 1e-6
    assert first - 0.02 <= e_bg <= first + 1e-6
    assert 1.2 < float(out["exponent"]) < 2.2
    kept = int(ws2_lake.open("models", "v1-test/v1_model")["kept"].sum())
    assert 30 <= kept <= 80
