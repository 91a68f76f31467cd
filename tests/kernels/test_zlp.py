"""ZLP model and subtraction on generator spectra with a known ZLP (DOMAIN.md 2.4-2.5).

dE_I = 1.2 eV and dE_II = 6 eV are read off the generator's truth for these settings (2048
channels, -5 ... 46 eV, N ~ 1e6, E_g = 2 eV): the true ZLP falls to about one count near 6 eV for
every tau used, and the inelastic onset is negligible below 1.2 eV.
"""

import numpy as np
import pytest
import torch
from scipy.special import expit

from engine.kernels import eels_synth as g
from engine.kernels import zlp
from engine.kernels.train import StoppingConfig

torch.set_num_threads(1)

DE_I, DE_II, FWHM = 1.2, 6.0, 0.4
QUANTILES = (0.16, 0.5, 0.84)
# Fast vs brute force, |difference| / (P84 - P16 band width) over channels whose band is >= 1
# count, at the default grid (256 nodes). Quantiles are single order statistics, so the two paths
# differ only by the linear interpolation in ln N; measured max 0.06 with 70 replicas over a wider
# ln N range (zlp.DEFAULT_GRID_SIZE), 0.03 at 128 nodes for this fixture. Larger errors only
# where a replica's model crossed the signal between two nodes (the kink of the former cap
# min(ZLP, signal); the residual is signed now).
FAST_TOLERANCE = 0.1


def clusters(taus=(0.2, 0.8, 1.5), n_per=20, seed=0, e_g=2.0):
    """Noisy aligned spectra of clusters at given tau (+-3%), and their truth (J, ZLP part).

    N = 1.2e6 e^{-0.6 tau} (+-5%): the model describes the ZLP as a function of (E, ln N), which
    holds on real specimens because thicker regions scatter more electrons outside the
    spectrometer aperture. The generator keeps N fixed, so here N gets that thickness dependence
    explicitly; with N independent of tau, clusters 3.7x apart in ZLP height would overlap in ln N.
    """
    energy = g.energy_axis(2048)
    rng = np.random.default_rng(seed)
    spectra, truth = [], []
    for tau in taus:
        maps = {"tau": tau * rng.uniform(0.97, 1.03, n_per), "e_g": np.full(n_per, e_g),
                "b": np.full(n_per, 1.5), "drift": np.zeros(n_per),
                "n_counts": 1.2e6 * np.exp(-0.6 * tau) * rng.uniform(0.95, 1.05, n_per)}
        maps = {k: v.astype(np.float32) for k, v in maps.items()}
        j, z = g.noiseless_spectra(energy, maps)
        spectra.append(g.detector_counts(j, rng))
        truth.append((j, z))
    return energy, spectra, truth


def reference_subtract_loop(signal, arrays, architecture, scaling, energy, fwhm, de_i, de_ii,
                            quantiles):
    """One pixel, replica after replica, channel ranges by slicing (EELSfitter's structure).

    The timing baseline for the fast path and an independent check of subtract_brute.
    """
    acts = {"sigmoid": expit, "relu": lambda z: np.maximum(z, 0), "linear": lambda z: z}
    n_layers = len(architecture["sizes"]) - 1
    x = scaling.inputs(energy, np.log(signal.sum(dtype=np.float64))).astype(np.float64)
    de_0 = (fwhm + de_i) / 2
    results = []
    for r in range(len(arrays["replica_id"])):
        h = x
        for k in range(n_layers):
            h = acts[architecture["activations"][k]](h @ arrays[f"weight_{k}"][r]
                                                     + arrays[f"bias_{k}"][r])
        model = np.exp(h[:, 0])
        matched = np.zeros_like(signal, dtype=np.float64)
        for c, e in enumerate(energy):
            if e < de_0:
                matched[c] = signal[c]
            elif e < de_i:
                w = expit((e - (de_0 + de_i) / 2) * 10 / (de_i - de_0))
                matched[c] = (1 - w) * signal[c] + w * model[c]
            elif e < de_ii:
                matched[c] = model[c]  # not capped at the signal: a signed residual
        results.append(signal - matched)
    return np.sort(np.array(results), axis=0)[zlp.order_ranks(len(results), quantiles)]


@pytest.fixture(scope="module")
def data():
    return clusters()


@pytest.fixture(scope="module")
def fitted(data):
    """Training set, TrainResult and the kept replicas' arrays (what subtraction uses)."""
    energy, spectra, _ = data
    ts = zlp.zlp_training_set(spectra, energy, [DE_I] * 3, [DE_II] * 3, 12, seed=1)
    res = zlp.train_zlp(ts, epochs=5000, stopping=StoppingConfig(patience=1000), seed=0)
    return ts, res, {k: v[res.kept] for k, v in res.weights.items()}


@pytest.fixture(scope="module")
def pixels():
    """Fresh generator pixels across the trained tau range: signal and true inelastic part."""
    energy, spectra, truth = clusters(taus=(0.25, 0.6, 1.0, 1.4), n_per=8, seed=7)
    inel = np.concatenate([j - z for j, z in truth])
    return energy, np.concatenate(spectra), inel, np.concatenate([j for j, _ in truth])


def test_training_set_layout_and_seeding(data):
    energy, spectra, _ = data
    ts = zlp.zlp_training_set(spectra, energy, [DE_I] * 3, [DE_II] * 3, 6, seed=4)
    r, n = ts.y.shape
    assert ts.x.shape == (r, n, 2) and ts.sigma.shape == (n,) and ts.groups.shape == (n,)
    assert np.all(ts.x[:, :, 0] == ts.x[:1, :, 0])  # one energy layout for every replica
    assert ts.x.min() >= 0.1 - 1e-6 and ts.x.max() <= 0.9 + 1e-6
    assert ts.penalty_x.shape == (r, 3 * 32, 2)
    # tail targets: one count (ln 1 = 0) with error 0.8; core errors positive
    tail = ts.groups % 2 == 1
    assert np.all(ts.y[:, tail] == 0) and np.all(ts.sigma[tail] == 0.8)
    assert np.all(ts.sigma[~tail] > 0)
    # replica r draws from SeedSequence([seed, r]): independent of how many replicas are drawn
    more = zlp.zlp_training_set(spectra, energy, [DE_I] * 3, [DE_II] * 3, 10, seed=4)
    np.testing.assert_array_equal(more.drawn[:6], ts.drawn)
    np.testing.assert_array_equal(more.y[:6], ts.y)
    other = zlp.zlp_training_set(spectra, energy, [DE_I] * 3, [DE_II] * 3, 6, seed=5)
    assert not np.array_equal(other.drawn, ts.drawn)
    # the drawn spectrum's ln N is the network input
    c0 = ts.drawn[:, 0]
    np.testing.assert_allclose(ts.ln_n[:, 0], np.log(spectra[0][c0].sum(1, dtype=np.float64)))


def test_model_reproduces_true_core_and_decreases(data, fitted):
    energy, spectra, truth = data
    ts, res, kept = fitted
    assert res.kept.sum() >= 9, res.summary()  # slow starters may miss chi2/n < 10 in 5000 epochs
    ln_n = [np.log(s.sum(1, dtype=np.float64)).mean() for s in spectra]
    grid = zlp.zlp_on_grid(kept, res.architecture, ts.scaling, energy, ln_n)
    core = (energy >= -1.0) & (energy < DE_I)
    for c, (_, z) in enumerate(truth):
        true_ln = np.log(z.mean(0))
        err = np.abs(np.median(grid[:, c], axis=0) - true_ln)[core]
        # measured: max 0.07-0.11 (at the peak top, curvature over ~2 channels), median 0.01-0.02;
        # the targets' own spread within a cluster (N +-5%) is ~0.03 in ln I
        assert err.max() < 0.2 and np.median(err) < 0.05, (c, err.max(), np.median(err))
    # decreasing between dE_I and dE_II on a grid 8x finer than the penalty grid
    fine = (energy > DE_I) & (energy < DE_II)
    slope = np.diff(grid[:, :, fine], axis=-1) / (energy[1] - energy[0])
    assert slope.max() < 0.05  # 1/eV; the model falls by ~1/eV here


def test_matching_rules():
    energy = g.energy_axis(2048)
    rng = np.random.default_rng(0)
    signal = rng.uniform(-3, 100, (5, energy.size)).astype(np.float32)
    model = rng.uniform(0, 150, (5, energy.size)).astype(np.float32)
    fwhm = np.array([0.3, 0.4, 0.5, 0.4, 0.4])
    de_i = np.array([1.0, 1.2, 1.5, 1.2, 0.9])
    de_ii = np.array([5.0, 6.0, 4.0, 8.0, 6.0])
    zl = zlp.match_zlp(signal, model, energy, fwhm, de_i, de_ii)
    de_0 = ((fwhm + de_i) / 2)[:, None]
    below = energy < de_0
    np.testing.assert_array_equal(zl[below], signal[below])  # the measurement near (and under) 0
    beyond = energy >= de_ii[:, None]
    assert np.all(zl[beyond] == 0)
    middle = (energy >= de_i[:, None]) & ~beyond
    np.testing.assert_array_equal(zl[middle], model[middle])
    # not capped at the signal: where the model exceeds it the residual is negative (signed)
    assert np.any(zl[middle] > signal[middle])
    blend = (energy >= de_0) & (energy < de_i[:, None])
    assert np.all((zl[blend] - np.minimum(signal, model)[blend] >= -1e-4)
                  & (np.maximum(signal, model)[blend] - zl[blend] >= -1e-4))
    # monotone in the model value (what lets quantiles commute with matching)
    higher = zlp.match_zlp(signal, model * 1.3, energy, fwhm, de_i, de_ii)
    assert np.all(higher >= zl)
    with pytest.raises(ValueError, match="FWHM < dE_I < dE_II"):
        zlp.match_zlp(signal, model, energy, 1.5, 1.2, 6.0)


def test_signed_residual_is_unbiased_where_the_inelastic_signal_is_small():
    # Issue 17: the known truth's ZLP is ~2e4 counts at 1.2 eV and its onset ~60. With the exact
    # ZLP as model, I - ZLP must average to the true inelastic signal (a cap at the signal made
    # it max(counts - ZLP, 0): +41 counts there). 4000 pixels over 4 seeds; two-sided, 4 SE.
    energy = np.linspace(-1.0, 3.0, 161)
    zlp_true = 2e4 * (energy.clip(0.3) / 1.2) ** -3.8
    inelastic = 60.0 * np.clip(energy - 1.4, 0, None) ** 1.5
    means = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        signal = rng.poisson(zlp_true + inelastic, (1000, energy.size)).astype(np.float32)
        residual = signal - zlp.match_zlp(signal, zlp_true, energy, 0.4, 1.0, 2.8)
        means.append(residual.mean(0))
    mean = np.mean(means, axis=0)
    fitted = (energy >= 1.0) & (energy < 2.8)
    error = np.sqrt(zlp_true + inelastic)[fitted] / np.sqrt(4000)
    assert np.all(np.abs(mean[fitted] - inelastic[fitted]) < 4 * error + 0.5)
    near = fitted & (energy < 1.4)  # no inelastic signal: the mean is zero, not a noise floor
    assert abs(mean[near].mean()) < 4 * error[: near.sum()].mean() / np.sqrt(near.sum()) + 0.5


def test_fast_path_agrees_with_brute_force(fitted, pixels):
    ts, res, kept = fitted
    energy, signal, _, _ = pixels
    brute = zlp.subtract_brute(signal, kept, res.architecture, ts.scaling, energy,
                               FWHM, DE_I, DE_II, QUANTILES)
    ln_n = np.log(signal.sum(1, dtype=np.float64))
    nodes = zlp.ln_n_nodes(ln_n.min() - 1e-3, ln_n.max() + 1e-3)
    qg = zlp.zlp_quantile_grid(kept, res.architecture, ts.scaling, energy, nodes, QUANTILES)
    fast = zlp.subtract_fast(signal, energy, nodes, qg, FWHM, DE_I, DE_II)
    assert fast.shape == brute.shape == (3, *signal.shape)
    band = brute[2] - brute[0]
    sel = band >= 1.0
    assert sel.sum() > 100 * len(signal)  # the comparison covers the blend and model region
    rel = np.abs(fast - brute)[:, sel] / band[sel]
    assert rel.max() < FAST_TOLERANCE, rel.max()
    outside = energy >= DE_II
    np.testing.assert_array_equal(fast[:, :, outside], np.broadcast_to(signal[:, outside],
                                                                       fast[:, :, outside].shape))
    assert np.all(fast[:, :, energy < (FWHM + DE_I) / 2] == 0)
    with pytest.raises(ValueError, match="leave the grid"):
        zlp.subtract_fast(signal * 2, energy, nodes, qg, FWHM, DE_I, DE_II)


def test_loop_reference_equals_brute_force(fitted, pixels):
    ts, res, kept = fitted
    energy, signal, _, _ = pixels
    brute = zlp.subtract_brute(signal[:2], kept, res.architecture, ts.scaling, energy,
                               FWHM, DE_I, DE_II, QUANTILES)
    for p in range(2):
        ref = reference_subtract_loop(signal[p].astype(np.float64), kept, res.architecture,
                                      ts.scaling, energy, FWHM, DE_I, DE_II, QUANTILES)
        np.testing.assert_allclose(brute[:, p], ref, rtol=1e-4, atol=0.05)


def test_subtraction_recovers_true_inelastic(fitted, pixels):
    ts, res, kept = fitted
    energy, signal, inel_true, j = pixels
    ln_n = np.log(signal.sum(1, dtype=np.float64))
    nodes = zlp.ln_n_nodes(ln_n.min() - 1e-3, ln_n.max() + 1e-3)
    qg = zlp.zlp_quantile_grid(kept, res.architecture, ts.scaling, energy, nodes, QUANTILES)
    median = zlp.subtract_fast(signal, energy, nodes, qg, FWHM, DE_I, DE_II)[1]
    # above dE_II the ZLP is set to zero: what is left is the pixel's noise, sigma = sqrt(J + 4)
    # (Poisson + read noise 2), plus the true ZLP's own tail there (< 1.2 counts at 6 eV, falling).
    # Per channel: 5 sigma + 1.2; the mean over the 80 channels of 6-8 eV: 4 sigma / sqrt(80) + 1.2.
    band = (energy >= DE_II) & (energy < 8.0)
    diff = (median - inel_true)[:, band]
    noise = np.sqrt(j[:, band] + 4)
    assert np.all(np.abs(diff) < 5 * noise + 1.2)
    assert np.all(np.abs(diff.mean(1)) < 4 * noise.mean(1) / np.sqrt(band.sum()) + 1.2)
    # between dE_I and dE_II the model carries the ZLP tail (at tau 0.25 it is ~40% of the signal
    # at 2-3 eV): integrated inelastic counts within 15% of the truth (measured: 10% at worst; the
    # "one count at dE_II" rule and the tail's extrapolation are the method's own systematic)
    mid = (energy >= DE_I) & (energy < DE_II)
    ratio = median[:, mid].sum(1) / inel_true[:, mid].sum(1)
    assert np.all(np.abs(ratio - 1) < 0.15), ratio


def test_training_is_reproducible(data):
    energy, spectra, _ = data

    def run(seed):
        ts = zlp.zlp_training_set(spectra, energy, [DE_I] * 3, [DE_II] * 3, 3, seed=seed)
        return zlp.train_zlp(ts, epochs=100, seed=seed).weights

    a, b, c = run(2), run(2), run(3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["weight_0"], c["weight_0"])


# -- a ZLP from the vacuum spectra ---------------------------------------------------------------

def test_vacuum_stretch_recovers_the_broadening():
    # The generator broadens the ZLP by (1 + 0.15 tau): at tau = 0.6 a stretch of 1.09 of the
    # vacuum's. Exact (noiseless) spectra: the fit must find it to the grid's parabola, 1e-4.
    energy = g.energy_axis(2048)
    vacuum = np.log(6e7 * g.zero_loss_peak(energy, 0.0))
    thick = np.log(5e7 * g.zero_loss_peak(energy, 0.6))
    assert abs(zlp.vacuum_stretch(energy, thick, vacuum) - 1.09) < 1e-4
    np.testing.assert_allclose(zlp.vacuum_stretch(energy, vacuum, vacuum), 1.0, atol=1e-4)
    template = zlp.stretched(energy, vacuum, 1.09)
    tail = (energy > 0.5) & (energy < 5.0)
    np.testing.assert_allclose(template[tail] / template[tail].max(),
                               np.exp(thick)[tail] / np.exp(thick)[tail].max(), rtol=2e-3)
    with pytest.raises(ValueError, match="at least 4 gain-side channels"):
        zlp.vacuum_stretch(energy[energy > 0], thick[energy > 0], vacuum[energy > 0])


def test_subtract_vacuum_leaves_the_inelastic_signal():
    # Noiseless generator spectra (tau 0.1, 6e7 counts) and their exact vacuum ZLP stretched
    # by the true 1.015: above dE_I the subtracted signal is J - ZLP up to interpolation
    # (measured max |error| 1.3 counts on 1.2-4 eV against a ZLP of 2e4 counts there).
    energy = g.energy_axis(2048)
    maps = {"tau": np.array([0.1]), "e_g": np.array([1.4]), "b": np.array([1.5]),
            "n_counts": np.array([6e7]), "drift": np.array([0.0])}
    j, exact_zlp = g.noiseless_spectra(energy, maps)
    template = zlp.stretched(energy, np.log(6e7 * g.zero_loss_peak(energy, 0.0)), 1.015)[None]
    bands = zlp.subtract_vacuum(j, energy, template, np.full_like(template, 1e-3),
                                [0.16, 0.5, 0.84], 0.4, 1.2, 17.0)
    window = (energy > 1.2) & (energy < 4.0)
    ideal = (j - exact_zlp)[0, window]
    assert np.abs(bands[1, 0, window] - ideal).max() < 0.001 * exact_zlp[0, window].max()
    assert (bands[0, 0, window] <= bands[1, 0, window]).all()  # lower band: more ZLP
    assert (bands[2, 0, window] >= bands[1, 0, window]).all()
    np.testing.assert_array_equal(bands[:, 0, energy < 0], 0.0)  # no loss signal on the gain side
