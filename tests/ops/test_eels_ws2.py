"""recipes/eels_ws2_spectra.yaml on the real WS2 spectra (../shared/data/eels), reduced.

The whole chain runs on the nine ingested spectra with a small ZLP ensemble (~35 s on 2 cores);
the checks are the ones a smaller ensemble cannot fake: the vacuum spectra (pure ZLP) leave
nothing above the ZLP and never give a band gap, and the self-consistent fit reports which
specimen onsets are resolved above dE_I (most are not).
"""

from __future__ import annotations

import numpy as np
import pytest
from ruamel.yaml import YAML

import engine
from engine.ingest.eels_files import ingest_eels_files
from tests.conftest import REPO

RECIPE = REPO / "recipes" / "eels_ws2_spectra.yaml"
N_SPECIMEN = 6  # specimen_{14,15,16,19,20,21} come first in the ingested line, then 3 vacuum
# What the self-consistent fit says on these spectra (README, "Real spectra: WS2"): most onsets
# are not resolved above the specimen's dE_I. Measured in this reduced run (16 replicas, seed
# 7, automatic dE_I 1.546 eV; signed subtraction, issue 17 helper BG): network ZLP, 5 of the 6
# specimen fits not converged (3 flagged onset_below_de_i, each within its error of dE_I, 2
# failed), spectrum 16 at 1.82 +- 0.03 eV (b 0.55); vacuum ZLP, 5 (4 flagged, 1 failed),
# spectrum 16 at 1.82 +- 0.04 eV; with the vacuum ZLP at dE_I = 1.88 eV every specimen fit is
# flagged or failed. The specimen cluster has too few fits (4-5) for the pooled decision
# (eels_bandgap.POOL_DECIDE_PIXELS); its pooled onset is 1.84 +- 0.14 eV (network) and
# 1.47 +- 0.30 eV (vacuum ZLP) at dE_I 1.546.
MIN_UNRESOLVED = 3
@pytest.fixture
def ws2_lake(lake, shared_data):
    folder = shared_data / "eels" / "ws2_specimen4_lowloss"
    files = sorted(folder.glob("specimen_*.txt")) + sorted(folder.glob("vacuum_*.txt"))
    ingest_eels_files(lake, files, "ws2_specimen4", progress=False)
    return lake


def reduced_recipe(tmp_path, replicas: int, epochs: int, threshold: float):
    """The shipped recipe with a smaller, shorter-trained ensemble (steps and windows unchanged).

    At 12k of the recipe's 20k epochs only ~1 replica in 6 is below the validation chi2/n of 10
    (the median reaches it near 18k), so the reduced run keeps replicas below `threshold`.
    """
    yaml = YAML(typ="safe")
    recipe = yaml.load(RECIPE.read_text())
    (train,) = (s for s in recipe["steps"] if s["op"] == "eels.train_zlp")
    train["params"].update(replicas=replicas, epochs=epochs, stopping={"threshold": threshold})
    # The EELSfitter v1 preset has its own tests (tests/ops/test_eels_eelsfitter_v1.py): here it
    # only has to run, so its ensemble is tiny and every replica is kept.
    for step in recipe["steps"]:
        if step["op"] == "eels.eelsfitter_v1_train":
            step["params"].update(replicas=4, epochs=1000, chi2_keep=1000.0)
    for output in recipe["outputs"].values():
        output.pop("plots", None)
    path = tmp_path / "ws2_reduced.yaml"
    yaml.dump(recipe, path)
    return path


def test_ws2_chain_vacuum_is_zero_and_onsets_are_checked_against_de_i(ws2_lake, tmp_path):
    summary = engine.run(reduced_recipe(tmp_path, replicas=16, epochs=12000, threshold=30.0),
                         ws2_lake)
    assert {o.status for o in summary.outputs} == {"computed"}
    name = "eels-ws2-spectra"
    clusters = ws2_lake.open("derived", f"{name}/clusters")["cluster"].values[0]
    assert (clusters[:N_SPECIMEN] == 1).all() and (clusters[N_SPECIMEN:] == 0).all()

    inelastic = ws2_lake.open("derived", f"{name}/inelastic")
    above = inelastic.sel(energy=slice(1.0, 4.0))["inelastic"].values[0]
    specimen, vacuum = above[:N_SPECIMEN], above[N_SPECIMEN:]
    # Vacuum: the ZLP model follows the vacuum's own tail up to its dE_I (6 eV), so what is
    # left between 1 and 4 eV is noise: under 3% of the specimen's signal there.
    assert np.abs(vacuum.mean(axis=1)).max() < 0.03 * specimen.mean()
    assert specimen.mean() > 1000  # counts per channel: the specimen has a real signal

    for step in ("bandgap", "bandgap_vacuum"):
        bandgap = ws2_lake.open("derived", f"{name}/{step}").load()
        converged = bandgap["converged"].values[0]
        assert not converged[N_SPECIMEN:].any(), step  # vacuum never converges
        assert (~converged[:N_SPECIMEN]).sum() >= MIN_UNRESOLVED, step
        # what converges is self-consistent: above the specimen's dE_I by its error
        de_i = bandgap["de_i"].values[0, :N_SPECIMEN]
        e_bg, error = (bandgap[v].values[0, :N_SPECIMEN] for v in ("e_bg", "e_bg_error"))
        ok = converged[:N_SPECIMEN]
        assert (e_bg[ok] - np.nan_to_num(error[ok]) >= de_i[ok]).all(), step


def vacuum_zlp_fits(ws2_lake, tmp_path, de_i: float) -> dict:
    """The vacuum-ZLP chain (no training, seconds) at the specimen's dE_I, fitted with windows
    from 1.0 eV (the recipe's) and from 1.55 eV: {window start: bandgap dataset}."""
    path = reduced_recipe(tmp_path, replicas=2, epochs=10, threshold=1e12)
    yaml = YAML(typ="safe")
    recipe = yaml.load(path.read_text())
    needed = ("aligned", "clusters", "windows", "inelastic_vacuum", "bandgap_vacuum")
    recipe["steps"] = [s for s in recipe["steps"] if s["id"] in needed]
    recipe["name"] = f"ws2-{de_i}".replace(".", "p")
    (windows,) = (s for s in recipe["steps"] if s["id"] == "windows")
    windows["params"]["de_i"] = [6.0, de_i]
    (fit,) = (s for s in recipe["steps"] if s["id"] == "bandgap_vacuum")
    assert fit["params"]["window_ev"][0] == 1.0
    late = {**fit, "id": "bandgap_late", "params": {**fit["params"], "window_ev": [1.55, 3.0]}}
    recipe["steps"].append(late)
    recipe["outputs"] = {"bandgap_vacuum": {"zone": "derived"}, "bandgap_late": {"zone": "derived"}}
    yaml.dump(recipe, path)
    engine.run(path, ws2_lake)
    return {start: ws2_lake.open("derived", f"{recipe['name']}/{step}").load()
            for start, step in ((1.0, "bandgap_vacuum"), (1.55, "bandgap_late"))}


def test_ws2_vacuum_zlp_e_bg_against_de_i_and_window_start(ws2_lake, tmp_path):
    """Issue 17's real-data check with the measured vacuum ZLP, at the specimen's dE_I 1.55 and
    1.88 eV and window starts 1.0 and 1.55 eV. Measured: at dE_I 1.55 only spectrum 16
    converges, E_BG = 1.821 +- 0.035 eV from either window start (the window starts at dE_I
    either way); at dE_I 1.88 every specimen fit is flagged or failed (its fit of spectrum 16
    lands at 0.09 eV). No spectrum converges at both, so E_BG's stability in dE_I cannot be
    shown: the onset is not resolved above dE_I (README, "Real spectra: WS2"). The specimen
    cluster's pooled onset (5 fits; too few to decide on) moves with dE_I: 1.47 +- 0.31 eV
    at 1.55, 2.02 +- 0.40 at 1.88. Vacuum spectra never converge."""
    runs = {de_i: vacuum_zlp_fits(ws2_lake, tmp_path, de_i) for de_i in (1.55, 1.88)}
    converged = {}
    for de_i, fits in runs.items():
        early, late = fits[1.0], fits[1.55]
        for bandgap in (early, late):
            assert not bandgap["converged"].values[0, N_SPECIMEN:].any()
        ok = early["converged"].values[0, :N_SPECIMEN]
        np.testing.assert_array_equal(ok, late["converged"].values[0, :N_SPECIMEN])
        change = np.abs(early["e_bg"].values[0, :N_SPECIMEN] - late["e_bg"].values[0, :N_SPECIMEN])
        assert (change[ok] < 0.1).all()  # measured 0.000
        assert (~ok).sum() >= 5  # measured 5 at dE_I 1.55, 6 at 1.88
        converged[de_i] = ok
        onset, error = (early[v].values[0, 0] for v in ("e_bg_cluster", "e_bg_cluster_error"))
        assert onset - error < de_i  # measured 1.47 - 0.31, 2.02 - 0.40
    assert not (converged[1.55] & converged[1.88]).any()
