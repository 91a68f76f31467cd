"""recipes/eels_ws2_spectra.yaml on the real WS2 spectra (../shared/data/eels), reduced.

The whole chain runs on the nine ingested spectra with a small ZLP ensemble (~35 s on 2 cores);
the checks are the ones a smaller ensemble cannot fake: the vacuum spectra (pure ZLP) leave
nothing above the ZLP, and the specimen spectra give the band gap this chain measures.
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
# Median E_BG of the six specimen spectra in this reduced run, measured with ZLP training seeds
# 7 (the recipe's) to 11: 0.765, 0.855, 0.624, 0.582, 0.946 eV; mean 0.75, sd 0.15: the bound
# is that +-2 sd. The full recipe gives 0.89. The published 1.6 (+0.3/-0.2) eV lies above it:
# the ZLP tail under the onset pulls this chain low (README, "Real spectra: WS2"), so the bound
# pins what the chain measures; a fix that reaches the published gap must move it.
GAP_RANGE_EV = (0.45, 1.05)


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
    for output in recipe["outputs"].values():
        output.pop("plots", None)
    path = tmp_path / "ws2_reduced.yaml"
    yaml.dump(recipe, path)
    return path


def test_ws2_chain_vacuum_is_zero_and_the_gap_is_reproduced(ws2_lake, tmp_path):
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

    bandgap = ws2_lake.open("derived", f"{name}/bandgap")
    e_bg = bandgap["e_bg"].values[0]
    assert bandgap["converged"].values[0, :N_SPECIMEN].all()
    assert np.isfinite(e_bg[:N_SPECIMEN]).all()
    assert GAP_RANGE_EV[0] < np.median(e_bg[:N_SPECIMEN]) < GAP_RANGE_EV[1]
