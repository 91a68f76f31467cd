"""Issue 17's known truth for self-consistent band gaps: a thin specimen beside vacuum.

The "bandgap" scene of the generator (engine/kernels/eels_synth.py): t/lambda 0.1, ~6e7 counts,
the real unmonochromated ZLP (split Pearson VII, FWHM ~0.39 eV), an indirect gap E_g = 1.4 eV
(b = 1.5) and a vacuum strip. The chain subtracts the measured vacuum ZLP (zlp: vacuum, stretched
to the specimen) with dE_II from the vacuum, and fits b free over [1.0, 2.5] eV from each pixel's
dE_I, which the recipe sets by hand to 1.2, 1.55, 1.88 or 2.2 eV. The method must say so when
dE_I lies above the gap (the onset is then not resolved above dE_I) and must not follow dE_I
below it.

Measured (16 x 16 pixels, seed 5; specimen = 192 pixels; signed subtraction, pooled check,
gain-ratio damped fit):
  dE_I (eV)                    1.2     1.55    1.88    2.2
  flagged (onset_below)        0.17    0.97    0.92    0.78
  median dE_BG/d dE_I          0.248   0.65    1.00    n/a (dE_I + 0.2 leaves 4 channels)
  median E_BG (converged)      1.476   -       -       -   (no pixel converges above the gap)
  cluster's pooled onset       1.353   1.627   1.977   2.250
  its error (SE (+) dE_I syst.) 0.114   0.125   0.198   0.199
Seeds 5-11 at dE_I 1.2 (run_at on each seed's lake, as the slow test below does):
median E_BG of the converged pixels 1.476 / 1.478 / 1.478 / 1.478 / 1.428 / 1.502 / 1.508 eV
(seed 11 is 0.008 eV outside 0.1), the cluster's pooled onset 1.353 / 1.450 / 1.447 / 1.470 /
1.378 / 1.478 / 1.447 eV (all within 0.08), median dE_BG/d dE_I 0.248 / 0.038 / 0 / 0 / 0.216 /
0 / 0.062 (pooled 0.005), flagged 4-19%; above the gap (1.55, 2.2) 78-97% flagged on seed 5
(79-96% on every seed before the damping change) and nothing converges.

What changed (issue 17, helper BG), each measured on seeds 5-7 at dE_I 1.2:
  1. The subtraction no longer caps the ZLP at the signal (engine/kernels/zlp.py match_zlp): I -
     ZLP was max(counts - ZLP, 0), +41-43 counts at 1.2 eV against an onset of ~60. Signed,
     the median of all per-pixel fits went from 1.50-1.55 to 1.35-1.45 eV.
  2. Whether the onset is resolved above dE_I is decided per cluster (eels_bandgap
     _pooled_onsets): a free-b fit of one pixel scatters +-0.2 eV (16-84%) at this signal, so the
     old per-pixel test E_BG - e_bg_error < dE_I (e_bg_error holding the per-pixel dE_I
     systematic, median 0.16-0.22 eV, mostly that scatter) flagged 46-57% of the pixels and
     kept those that scattered high: 1.50-1.55 eV kept. Now a pixel's fit below dE_I is
     flagged, and a whole cluster (with >= 10 fits) when its median onset minus (standard
     error (+) dE_I systematic of that median) falls below dE_I.
What is left: the kept median is +0.03-0.11 eV high because the fits below dE_I are flagged (a
truncation the issue's rule implies); the cluster's median of all fits is not truncated. The
per-pixel median slope is 0.00-0.25 over seeds 5-11, but the slope of the cluster medians
between dE_I 1.0 and 1.4 is 0.11-0.60: dE_I + 0.2 puts the window's start on E_g itself, where
a free-b fit no longer sees the onset. Not kept (measured, earlier sessions, capped
subtraction): the onset convolved with the vacuum ZLP, a window ending 0.5-1.0 eV above the
onset, Poisson weights (here also from the raw counts: 1.46-1.50 per-pixel median, higher than
unweighted), b fixed at 1.5 (signed, per-pixel check: fits 1.23-1.30 eV, 71-78% flagged at dE_I 1.2: the
generator's onset, (E - E_g)^1.5 e^{-(E - E_g)/2 eV} broadened by the ZLP, has a local exponent
~1 over the window).
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
    assert bandgap["onset_below_de_i"].values[specimen].mean() > 0.5  # measured 0.92
    assert not bandgap["converged"].values[specimen].any()  # measured: none
    # the onsets follow the window: dE_BG / d dE_I measured 1.00
    assert np.nanmedian(bandgap["e_bg_slope"].values[specimen]) > 0.5


def test_below_the_gap_the_result_does_not_follow_de_i(below_gap):
    vacuum, bandgap = below_gap
    specimen = ~vacuum
    assert bandgap["onset_below_de_i"].values[specimen].mean() < 0.5  # measured 0.17
    # One seed: measured 0.248; per seed over seeds 5-11 0.00-0.25 (0.248, 0.038, 0, 0, 0.216,
    # 0, 0.062), so one image is held to 0.3. The bound 0.2 is on the pooled median,
    # checked over seeds 5-11 by test_e_bg_within_0_1_ev_pooled_over_seeds (measured 0.005).
    assert abs(np.nanmedian(bandgap["e_bg_slope"].values[specimen])) <= 0.3
    assert "e_g" in bandgap  # the truth rides along for the summary and the plots


def test_below_the_gap_e_bg_is_within_0_1_ev_of_the_truth(below_gap):
    vacuum, bandgap = below_gap
    assert abs(np.nanmedian(bandgap["e_bg"].values[~vacuum]) - E_G) <= 0.1  # measured 1.476
    assert abs(np.nanmedian(bandgap["e_bg_cluster"].values[~vacuum]) - E_G) <= 0.1  # 1.353


@pytest.mark.slow
def test_e_bg_within_0_1_ev_pooled_over_seeds(tmp_path_factory):
    """Seven independent images (seeds 5-11, the fixture's among them), every specimen pixel
    pooled: the median onset within 0.1 eV of E_g, the median dE_BG / d dE_I within 0.2, and each
    cluster's pooled onset within 0.1 eV (measured per seed: pixels 1.428-1.508 eV, slopes
    0.00-0.25, clusters 1.353-1.478 eV; pooled 1.478 eV and 0.005; one seed alone may miss, the
    pool must not)."""
    pixels, slopes, onsets = [], [], []
    for seed in range(5, 12):
        folder = tmp_path_factory.mktemp(f"seed{seed}")
        lake = Lake(str(folder / "lake"))
        ingest_synthetic_eels(
            lake, "img", (16, 16, 2048), seed=seed, chunks=(16, 16), progress=False, scene="bandgap"
        )
        vacuum, bandgap = run_at((folder, lake), 1.2)
        pixels.append(bandgap["e_bg"].values[~vacuum])
        slopes.append(bandgap["e_bg_slope"].values[~vacuum])
        onsets.append(np.nanmedian(bandgap["e_bg_cluster"].values[~vacuum]))
    print(
        "pooled E_BG",
        np.nanmedian(np.concatenate(pixels)),
        "slope",
        np.nanmedian(np.concatenate(slopes)),
        "cluster onsets",
        onsets,
    )
    assert abs(np.nanmedian(np.concatenate(pixels)) - E_G) <= 0.1
    assert abs(np.nanmedian(np.concatenate(slopes))) <= 0.2
    assert np.all(np.abs(np.array(onsets) - E_G) <= 0.1)


def test_vacuum_pixels_never_converge(below_gap, above_gap):
    for vacuum, bandgap in (below_gap, above_gap):
        assert vacuum.sum() == 64 and not bandgap["converged"].values[vacuum].any()


@pytest.mark.slow
@pytest.mark.parametrize("de_i", [1.55, 2.2])
def test_every_de_i_above_the_gap_is_flagged(truth_lake, de_i):
    vacuum, bandgap = run_at(truth_lake, de_i)
    assert bandgap["onset_below_de_i"].values[~vacuum].mean() > 0.5  # measured 0.97, 0.78
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


def test_pooled_onsets_median_error_and_de_i_systematic():
    from engine.ops.eels_bandgap import _pooled_onsets

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [400, 2, 50]).reshape(1, -1)  # cluster 1: 2 fits, too few
    fit = rng.normal(1.45, 0.2, labels.size)
    fit[-10:] = np.nan  # failed fits do not count
    # shifted fits: dE_I - 0.2 leaves the onset alone, + 0.2 moves it by 0.1 (slope 0.25)
    shifted = np.stack([fit, fit + 0.1])
    table = _pooled_onsets(labels, fit, shifted, k=3, shifts=[-0.2, 0.2])
    assert abs(table[0, 0] - 1.45) < 3 * table[1, 0]
    # the standard error of a median: 1.2533 sigma / sqrt(n)
    np.testing.assert_allclose(table[1, 0], 1.2533 * 0.2 / np.sqrt(400), rtol=0.15)
    np.testing.assert_allclose(table[2, [0, 2]], 0.05, atol=1e-9)  # |slope| x 0.2 eV
    assert np.isnan(table[:3, 1]).all()
    np.testing.assert_array_equal(table[3], [400, 2, 40])  # the fits counted
    # one shift only (the upper fit needs channels): the change itself
    one = _pooled_onsets(labels, fit, np.stack([fit - 0.07]), k=3, shifts=[-0.2])
    np.testing.assert_allclose(one[2, 0], 0.07, atol=1e-9)
    none = _pooled_onsets(labels, fit, k=3)
    assert none[2, 0] == 0.0
