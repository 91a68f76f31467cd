"""Known truth for the whole EELS chain: the band-gap map of a synthetic monochromated image.

The chain (align -> clusters -> windows -> ZLP replicas -> subtraction -> fit) is compared both
with the generator's E_g and with the ideal answer: the same fit applied to the exact inelastic
signal J - N e^{-tau} Z (noiseless, a perfect ZLP subtraction). The ideal fit is itself biased by
+0.04 eV on direct-gap pixels, because the generator's onset (E - E_g)^b e^{-(E - E_g)/2 eV}
bends away from the bare power law over the 0.5-3 eV window; the chain must add little to that.

Why monochromated and why dE_II by hand: with the real, unmonochromated ZLP (0.38 eV FWHM,
Pearson VII tail ~E^-3.8) the ZLP still carries ~150 counts at 2 eV, and the automatic dE_II
(an exponential through the tail, DOMAIN.md) falls to one count far too early; the unsubtracted
tail then pulls E_BG down by ~1.6 eV. A 50 meV ZLP on a -1 ... 9 eV window is the setting band-gap
work uses, and dE_II placed where the generator's exact ZLP falls to one count is the override a
microscopist makes from a vacuum spectrum (measured: automatic dE_II 0.59 eV left E_BG +0.07 eV
high on direct-gap pixels; dE_II = 1.0 eV, +0.046 eV).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import engine
from engine.graph import compile_recipe
from engine.ingest.synthetic_eels import ingest_synthetic_eels
from engine.kernels import eels_synth
from engine.kernels.bandgap import fit_bandgap
from engine.ops import eels_bandgap
from engine.storage import Lake
from tests.ops.test_eels_zlp import chain_recipe

ZLP_FWHM = 0.05
# The images whose pulls are pooled: CI's three; the README's table pools 5-10 (its command)
SEEDS = tuple(int(s) for s in os.environ.get("BANDGAP_CHAIN_SEEDS", "5,6,7").split(","))
WINDOW = (0.5, 3.0)
SHAPE = (32, 32, 1024)


def one_count_energy(image) -> float:
    """Loss (eV) beyond which the generator's exact ZLP is below one count in every pixel."""
    energy = image["energy"].values
    loss = energy[energy > 0]
    dispersion = float(energy[1] - energy[0])
    tau = float(image["tau"].min())  # the thinnest pixel keeps the most zero-loss counts
    counts = (
        float(image["n_counts"].max())
        * np.exp(-tau)
        * dispersion
        * eels_synth.zero_loss_peak(loss, tau, ZLP_FWHM / eels_synth.ZLP_FWHM)
    )
    return float(loss[np.argmax(counts < 1.0)])


def run_chain(folder, seed: int):
    """The chain on a fresh monochromated image of `seed`: (image, band-gap maps, dE_II)."""
    lake = Lake(str(folder / "lake"))
    ingest_synthetic_eels(
        lake,
        "img",
        SHAPE,
        seed=seed,
        chunks=(16, 16),
        progress=False,
        energy_range=(-1.0, 9.0),
        zlp_fwhm=ZLP_FWHM,
    )
    image = lake.open("raw", "img").load()
    de_ii = round(one_count_energy(image), 2)
    recipe = chain_recipe(
        folder,
        **{
            "params: {n_sample: 300, seed: 2}": f"params: {{n_sample: 300, seed: 2, de_ii: {[de_ii] * 4}}}",
            "params: {window_ev: [0.5, 3.0]}": "params: {window_ev: [0.5, 3.0], exponent: null}",
        },
    )
    engine.run(recipe, lake, progress=False)
    return image, lake.open("derived", "eels-bandgap/bandgap").load(), de_ii


@pytest.fixture(scope="module")
def monochromated(tmp_path_factory):
    return run_chain(tmp_path_factory.mktemp("mono"), seed=5)


def ideal_fit(image, sampling="point", resolution=None):
    """The band-gap fit of the exact inelastic signal of every (aligned) pixel: (E_BG, b) maps.
    resolution: None, or each pixel's FWHM (the op's `resolution_fwhm`), fitted per value."""
    maps = {k: image[k].values for k in ("tau", "e_g", "b", "n_counts")}
    maps["drift"] = np.zeros_like(maps["tau"])
    energy = image["energy"].values
    j, zlp = eels_synth.noiseless_spectra(energy, maps, ZLP_FWHM / eels_synth.ZLP_FWHM)
    if resolution is None:
        fit = fit_bandgap(j - zlp, energy, window=WINDOW, background="linear", sampling=sampling)
        return fit.e_bg, fit.exponent
    e_bg, exponent = np.full(resolution.shape, np.nan), np.full(resolution.shape, np.nan)
    for width in np.unique(resolution[np.isfinite(resolution)]):
        rows = resolution == width
        fit = fit_bandgap(
            (j - zlp)[rows], energy, window=WINDOW, background="linear", resolution=float(width)
        )
        e_bg[rows], exponent[rows] = fit.e_bg, fit.exponent
    return e_bg, exponent


def test_one_count_point_is_past_the_automatic_window(monochromated):
    _, _, de_ii = monochromated
    assert 0.8 < de_ii < 1.3  # a 50 meV Pearson VII ZLP at 1e6 counts still has 1 count at ~1 eV


def test_direct_gaps_match_the_ideal_fit_and_the_truth(monochromated):
    image, bandgap, _ = monochromated
    direct = (image["b"].values == 0.5) & bandgap["converged"].values
    assert direct.sum() >= 0.95 * (image["b"].values == 0.5).sum() > 50
    ideal, _ = ideal_fit(image)
    e_bg = bandgap["e_bg"].values[direct]
    # Measured (12 replicas, seed 5): chain - ideal median +0.001 eV (MAD 0.014); chain - truth
    # median +0.042 eV, 90% of pixels within 0.088 eV. Limits: about twice those.
    assert abs(np.median(e_bg - ideal[direct])) < 0.02
    error = e_bg - image["e_g"].values[direct]
    assert 0.0 < np.median(error) < 0.08
    assert np.percentile(np.abs(error), 90) < 0.18


def test_indirect_gaps_on_flakes_are_recovered_less_sharply(monochromated):
    image, bandgap, _ = monochromated
    # (E - E_g)^1.5 rises slowly: ~10 counts per channel 0.5 eV above the onset, so the fit is
    # noise limited (measured: median +0.11 eV, 90% within 0.22 eV on flakes with E_g < 2.2 eV).
    flakes = (image["b"].values == 1.5) & (image["e_g"].values < 2.2) & bandgap["converged"].values
    assert flakes.sum() > 50
    error = bandgap["e_bg"].values[flakes] - image["e_g"].values[flakes]
    assert abs(np.median(error)) < 0.2
    assert np.percentile(np.abs(error), 90) < 0.4


def direct_gap_pulls(image, bandgap, model="point") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(chain E_BG - ideal fit) / e_bg_error on the converged direct-gap pixels, chain E_BG -
    ideal fit, and the chain's exponents there: the ideal fit (of the same `model`) is what the
    chain would give without noise or subtraction error, which e_bg_error must cover."""
    if model == "resolution":
        ideal, _ = ideal_fit(image, resolution=bandgap["resolution_fwhm"].values)
    else:
        ideal, _ = ideal_fit(image, model)
    direct = (image["b"].values == 0.5) & bandgap["converged"].values & np.isfinite(ideal)
    offset = bandgap["e_bg"].values[direct] - ideal[direct]
    pulls = offset / bandgap["e_bg_error"].values[direct]
    good = np.isfinite(pulls)
    return pulls[good], offset[good], bandgap["exponent"].values[direct][good]


MODELS = {  # eels.fit_bandgap params of each onset model refitted on the chain
    "channel": {"sampling": "channel"},
    "resolution": {"resolution_ev": "cluster"},
}


def refitted_bandgap(folder, model: str):
    """The chain's band-gap step again on the same subtracted signal with another onset model
    (MODELS): "channel", the onset averaged over each channel; "resolution", that onset
    convolved with a Gaussian of each cluster's measured ZLP FWHM (engine/kernels/bandgap.py)."""
    lake = Lake(str(folder / "lake"))
    plan = compile_recipe(folder / "chain.yaml", lake)
    inputs = [plan.step(name).dataset for name in ("inelastic", "clusters", "windows")]
    params = eels_bandgap.BandgapParams(window_ev=WINDOW, exponent=None, **MODELS[model])
    return eels_bandgap.fit_bandgap(params, *inputs).load()


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """Per onset model ("point": the chain as run; "channel", "resolution": its band-gap step
    refitted), the pulls, offsets and exponents of three images pooled."""
    out = {"point": [], **{model: [] for model in MODELS}}
    for seed in SEEDS:
        folder = tmp_path_factory.mktemp(f"seed{seed}")
        image, bandgap, _ = run_chain(folder, seed)
        out["point"].append(direct_gap_pulls(image, bandgap))
        for model in MODELS:
            out[model].append(direct_gap_pulls(image, refitted_bandgap(folder, model), model))
    pooled = {k: tuple(np.concatenate(part) for part in zip(*v)) for k, v in out.items()}
    print(f"\nseeds {list(SEEDS)}, direct gaps: model, pixels, coverage, RMS pull, median pull,")
    print("std of chain - ideal (eV), median b")
    for model, (pulls, offset, exponent) in pooled.items():
        print(
            f"{model:10s} {pulls.size:4d} {np.mean(np.abs(pulls) < 1):.3f} {np.sqrt(np.mean(pulls**2)):.3f} "
            f"{np.median(pulls):+.3f} {np.std(offset):.4f} {np.median(exponent):.3f}"
        )
    return pooled


@pytest.fixture(scope="module")
def pooled_pulls(pooled):
    return pooled["point"][0]


@pytest.mark.slow
def test_e_bg_error_covers_68_percent_pooled_over_seeds(pooled_pulls):
    """e_bg_error (the fit's own error, the ZLP band spread and the dE_I systematic in
    quadrature) covers the chain's scatter about the ideal fit: over three images (~330
    direct-gap pixels) |pull| < 1 for 0.68 +- 0.07 of them, centred (median pull within +-0.15).
    Measured (the fit's own error from the HC3 sandwich, gain-ratio damping,
    engine/kernels/bandgap.py): coverage 0.692, median pull +0.017 (seeds 8-10: 0.700, -0.020);
    with lam / 10 after each accepted step 0.700, median |pull| 0.60 (a normal: 0.674), median
    pull 0.02; with the chi2/dof-scaled covariance before it: 0.633 and 0.70. Before the fit's
    own error was counted (band spread alone): coverage 0.53, median |pull| 1.1."""
    assert abs(np.mean(np.abs(pooled_pulls) < 1) - 0.68) <= 0.07
    assert abs(np.median(pooled_pulls)) <= 0.15


@pytest.mark.slow
def test_e_bg_error_rms_pull_is_calibrated(pooled_pulls):
    """The RMS pull over the same three images within 0.8-1.2. Measured with the gain-ratio
    damped fit (engine/kernels/bandgap.py): RMS 1.189, |pull| quantiles 90% 1.80, 95% 2.53 (a
    normal: 1.64, 1.96), max 6.5; seeds 8-10 RMS 1.094 (coverage 0.700, max |pull| 3.8), seeds
    5-10 pooled 1.140 (0.696, 823 pixels). With lam divided by 10 after every accepted step it
    was 1.256 (seeds 8-10 1.08): the tail is a few pixels whose chain and ideal onsets lock at
    different channels (1-5 channels apart against errors under one channel), and the damping
    decides where a fit started between two kinks stops. Errors: the HC3 sandwich
    (chi2/dof-scaled covariance: RMS 1.41; HC1: 1.67)."""
    assert 0.8 <= np.sqrt(np.mean(pooled_pulls**2)) <= 1.2


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
def test_smooth_onset_models_halve_the_scatter_about_the_ideal_fit(pooled, model):
    """The channel-averaged model (smooth in E_BG), and that model convolved with each cluster's
    resolution, against the point-sampled one, each chain compared with the ideal fit of its own
    model: the onsets no longer stick at channel centres, so they scatter about half as much
    (measured, seeds 5-7: channel std 0.0125 vs 0.0224 eV, ratio 0.56, median |offset| 0.0093 vs
    0.0111 eV; seeds 5-10: point 0.0220, channel 0.0122, resolution 0.0118 eV)."""
    point, smooth = pooled["point"][1], pooled[model][1]
    assert np.std(smooth) < 0.75 * np.std(point)
    assert np.median(np.abs(smooth)) < np.median(np.abs(point))


@pytest.mark.slow
def test_the_resolution_does_not_make_direct_gap_fits_physical(pooled):
    """With the onset convolved with each cluster's measured ZLP width (resolution_ev: cluster,
    FWHM 0.053-0.067 eV on these images) the direct gaps' free b stays near a step (measured,
    seeds 5-10: median 0.21; point 0.23, channel 0.24): the generator's onset x^0.5 e^(-x / 2 eV)
    decays across the 0.5-3 eV window (tests/kernels/test_bandgap_resolution.py), which no
    resolution undoes."""
    exponents = pooled["resolution"][2]
    assert 0.1 < np.median(exponents) < 0.35


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason=(
        "channel sampling: e_bg_error too wide for most pixels, |pull| < 1 for 0.893 (RMS pull 0.906, "
        "|pull| 90% / 95% quantiles 1.06 / 1.56, max 6.5). Its onsets no longer jump between the ZLP band "
        "curves and the shifted-dE_I fits (median band half-spread 0.0004 eV, dE_I systematic 0, against "
        "0.0050 and 0.0064 with point sampling), so e_bg_error is the fit's own HC3 error alone, and the "
        "fits are near steps (b free: median b 0.25 on these direct gaps), whose chi2 has a minimum per "
        "channel along E_BG: the HC3 error there is ~3x the scatter (engine/kernels/bandgap.py)"
    ),
)
def test_channel_sampling_e_bg_error_is_calibrated(pooled):
    pulls = pooled["channel"][0]
    assert abs(np.mean(np.abs(pulls) < 1) - 0.68) <= 0.07
    assert 0.8 <= np.sqrt(np.mean(pulls**2)) <= 1.2


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason=(
        "resolution (channel-averaged onset convolved with each cluster's measured ZLP FWHM): e_bg_error "
        "too narrow, |pull| < 1 for 0.457, RMS pull 1.71, |pull| 90% quantile 2.75, max 6.9 (seeds 5-10 "
        "pooled, 842 pixels). Smooth like channel sampling, so the band spread and dE_I systematic vanish "
        "and e_bg_error is the fit's own HC3 error, which on these near-step fits (median b 0.21) is "
        "0.8x the scatter even with the generator's exact ZLP as kernel (engine/kernels/bandgap.py)"
    ),
)
def test_resolution_e_bg_error_is_calibrated(pooled):
    pulls = pooled["resolution"][0]
    assert abs(np.mean(np.abs(pulls) < 1) - 0.68) <= 0.07
    assert 0.8 <= np.sqrt(np.mean(pulls**2)) <= 1.2
