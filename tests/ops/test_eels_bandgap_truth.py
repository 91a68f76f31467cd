"""Issue 17's known truth for self-consistent band gaps: a thin specimen beside vacuum.

The "bandgap" scene of the generator (engine/kernels/eels_synth.py): t/lambda 0.1, ~6e7 counts,
the real unmonochromated ZLP (split Pearson VII, FWHM ~0.39 eV), an indirect gap E_g = 1.4 eV
(b = 1.5) and a vacuum strip. The chain subtracts the measured vacuum ZLP (zlp: vacuum, stretched
to the specimen) with dE_II from the vacuum, and fits b free over [1.0, 2.5] eV from each pixel's
dE_I, which the recipe sets by hand to 1.2, 1.55, 1.88 or 2.2 eV. The method must say so when
dE_I lies above the gap (the onset is then not resolved above dE_I) and must not follow dE_I
below it.

Measured (16 x 16 pixels, seed 5; specimen = 192 pixels):
  dE_I (eV)                 1.2     1.55    1.88    2.2
  flagged (onset_below)     0.33    0.72    0.81    0.66
  median dE_BG/d dE_I       0.00    0.62    0.99    n/a (dE_I + 0.2 leaves 4 channels)
  median E_BG (converged)   1.60    1.75    2.07    2.25
Below the gap E_BG sits +0.20 eV high, outside the issue's 0.1 eV. Measured (issue 17, helper
H10; seeds 5, 6, 7; dE_I 1.2 / 1.3; specimen pixels; kernel fits over [dE_I, 2.5] eV, b free,
c E background) the excess has three parts; the model alone is not one (noiseless: 1.40-1.44):
  1. The subtraction clips the noise: match_zlp caps the ZLP at the signal, so I - ZLP is
     max(counts - ZLP, 0) (7.8-8.6% of the channels in [1.2, 2.5] eV are exactly 0, none
     negative). Against the generator's exact ZLP that adds +41-43 counts at 1.2 eV (signal
     ~60) and +17-21 at 1.4 eV (~88); a fit of the pixels' mean spectrum gives 1.39-1.46 eV
     uncapped, 1.51-1.55 capped, 1.49-1.56 from the chain (noiseless: 1.40-1.44).
  2. Per-pixel noise: with b free a pixel's E_BG scatters +-0.25 eV (16-84%) and skews high;
     exact ZLP + Poisson, uncapped: median 1.43-1.52 over all converged pixels.
  3. The dE_I check drops the 11-22% of fits below dE_I: +0.02-0.09 eV on the median.
Tried and not kept (none reaches 0.1 eV with dE_BG/d dE_I <= 0.2): the onset and c E convolved
with the vacuum median ZLP (noiseless mean: 1.41-1.43 / 1.48-1.50 / 1.56-1.58 eV with the window
ending at 2.0 / 2.5 / 3.0 eV, where the bare power law gives 1.26 / 1.40-1.44 / 1.52-1.54; per
pixel 1.51-1.64); a window ending 0.5-1.0 eV above the fitted onset (per pixel 1.53-1.69);
Poisson weights from the raw counts (1.55-1.63); b fixed at 1.5 (op: 1.43-1.45 at dE_I 1.2 but
56-64% flagged, 89-93% at 1.3, dE_BG/d dE_I -0.2 to -0.3). Even the pixels' mean spectrum with
the exact ZLP removed unclipped, 1.39-1.46 eV, moves 0.25-0.46 per eV of dE_I (noiseless
0.26-0.34: the ZLP-broadened onset reaches below E_g); the convolved model removes that without
noise (<= 0.11 per eV) but with the mean's noise its near-threshold fit (to 2.0 eV) scatters over
1.01-1.51 eV: E_BG, b and c are not separable at this signal. The test is kept as an expected
failure (strict) until the method reaches it.
"""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.graph import compile_recipe
from engine.ingest.synthetic_eels import ingest_synthetic_eels
from engine.kernels.eels_synth import BANDGAP_SCENE
from engine.storage import Lake
from engine.testing import raise_if_computes

E_G = BANDGAP_SCENE["e_g"]
RECIPE = """version: 1
name: known-truth
sources:
  image: {{catalog: lake, entry: raw/img}}
steps:
  - id: aligned
    op: eels.align_zlp
    inputs: {{image: image}}
  - id: clusters
    op: eels.cluster
    inputs: {{image: aligned}}
    params: {{n_clusters: 2, seed: 1}}
  - id: windows
    op: eels.zlp_windows
    inputs: {{image: aligned, clusters: clusters}}
    params: {{n_sample: 300, seed: 2, min_pixels: 3, de_i: [null, {de_i}]}}
  - id: inelastic
    op: eels.subtract_zlp
    inputs: {{image: aligned, clusters: clusters, windows: windows}}
    params: {{zlp: vacuum}}
  - id: bandgap
    op: eels.fit_bandgap
    inputs: {{inelastic: inelastic, clusters: clusters, windows: windows}}
    params: {{window_ev: [1.0, 2.5]}}
outputs:
  bandgap: {{zone: derived}}
"""


@pytest.fixture(scope="module")
def truth_lake(tmp_path_factory):
    folder = tmp_path_factory.mktemp("truth")
    lake = Lake(str(folder / "lake"))
    ingest_synthetic_eels(
        lake, "img", (16, 16, 2048), seed=5, chunks=(16, 16), progress=False, scene="bandgap"
    )
    return folder, lake


def run_at(truth_lake, de_i: float):
    folder, lake = truth_lake
    path = folder / f"de_i_{de_i}.yaml"
    path.write_text(RECIPE.format(de_i=de_i))
    engine.run(path, lake, replace=True)
    image = lake.open("raw", "img")
    return image["vacuum"].values > 0, lake.open("derived", "known-truth/bandgap").load()


@pytest.fixture(scope="module")
def below_gap(truth_lake):
    return run_at(truth_lake, 1.2)


@pytest.fixture(scope="module")
def above_gap(truth_lake):
    return run_at(truth_lake, 1.88)


def test_above_the_gap_the_onset_is_flagged_as_not_resolved(above_gap):
    vacuum, bandgap = above_gap
    specimen = ~vacuum
    assert bandgap["onset_below_de_i"].values[specimen].mean() > 0.5  # measured 0.81
    # and what does converge follows the window: dE_BG / d dE_I measured 0.99
    assert np.nanmedian(bandgap["e_bg_slope"].values[specimen]) > 0.5


def test_below_the_gap_the_result_does_not_follow_de_i(below_gap):
    vacuum, bandgap = below_gap
    specimen = ~vacuum
    assert bandgap["onset_below_de_i"].values[specimen].mean() < 0.5  # measured 0.33
    assert abs(np.nanmedian(bandgap["e_bg_slope"].values[specimen])) <= 0.2  # measured 0.00
    assert "e_g" in bandgap  # the truth rides along for the summary and the plots


@pytest.mark.xfail(strict=True, reason="E_BG +0.20 eV high below the gap (module docstring)")
def test_below_the_gap_e_bg_is_within_0_1_ev_of_the_truth(below_gap):
    vacuum, bandgap = below_gap
    assert abs(np.nanmedian(bandgap["e_bg"].values[~vacuum]) - E_G) <= 0.1


def test_vacuum_pixels_never_converge(below_gap, above_gap):
    for vacuum, bandgap in (below_gap, above_gap):
        assert vacuum.sum() == 64 and not bandgap["converged"].values[vacuum].any()


@pytest.mark.slow
@pytest.mark.parametrize("de_i", [1.55, 2.2])
def test_every_de_i_above_the_gap_is_flagged(truth_lake, de_i):
    vacuum, bandgap = run_at(truth_lake, de_i)
    assert bandgap["onset_below_de_i"].values[~vacuum].mean() > 0.5  # measured 0.72, 0.66
    assert not bandgap["converged"].values[vacuum].any()


def test_compiling_the_vacuum_chain_computes_nothing(truth_lake):
    folder, lake = truth_lake
    path = folder / "lazy.yaml"
    path.write_text(RECIPE.format(de_i=1.3).replace("name: known-truth", "name: lazy-truth"))
    with raise_if_computes():
        plan = compile_recipe(path, lake)
    inelastic = plan.step("inelastic").dataset
    assert inelastic["inelastic_de_i"].dims == ("de_i_shift", "y", "x", "energy")
    assert "onset_below_de_i" in plan.step("bandgap").dataset
