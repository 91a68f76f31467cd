"""Clustering and window kernels on data whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import eels_cluster as k
from engine.kernels import eels_synth


def test_features_on_a_hand_made_spectrum():
    # 1 eV per channel, 0 eV at channel 40; flat ends, so the ZLP search sees no noise
    energy = np.arange(-40.0, 40.0)
    spectra = np.zeros((2, 80), np.float32)
    spectra[0] = 1.0
    spectra[0, 39:42] = [2.0, 10.0, 3.0]
    peak3 = k.cluster_feature(spectra, energy, "log_peak3")
    total = k.cluster_feature(spectra, energy, "log_total")
    assert peak3.dtype == np.float32
    np.testing.assert_allclose(peak3[0], np.log(15.0), rtol=1e-6)
    np.testing.assert_allclose(total[0], np.log(92.0), rtol=1e-6)
    assert np.isnan(peak3[1]) and np.isnan(total[1])  # no counts: no feature, not -inf
    with pytest.raises(ValueError, match="unknown feature 'log_max'"):
        k.cluster_feature(spectra, energy, "log_max")


def test_thinner_pixels_have_larger_features():
    energy = eels_synth.energy_axis(1024)
    maps = {"tau": np.array([0.2, 1.0, 1.8], np.float32), "e_g": np.full(3, 2.0, np.float32),
            "b": np.full(3, 1.5, np.float32), "n_counts": np.full(3, 1e6, np.float32),
            "drift": np.zeros(3, np.float32)}
    j, _ = eels_synth.noiseless_spectra(energy, maps)
    for kind in ("log_peak3", "log_zlp"):
        assert np.all(np.diff(k.cluster_feature(j, energy, kind)) < -0.5)


def _thick_spectra(tau, zlp_scale):
    """Noiseless generator spectra at 0.5 eV per channel (0 eV at channel 10), drift 0."""
    energy = eels_synth.energy_axis(103)
    n = len(tau)
    maps = {"tau": np.asarray(tau, np.float32), "e_g": np.full(n, 2.0, np.float32),
            "b": np.full(n, 1.5, np.float32), "n_counts": np.full(n, 1e6, np.float32),
            "drift": np.zeros(n, np.float32)}
    return energy, eels_synth.noiseless_spectra(energy, maps, zlp_scale=zlp_scale)[0]


def test_log_peak3_measures_the_zlp_not_a_taller_plasmon():
    # Thermionic ZLP (2.5 eV FWHM before the (1 + 0.15 tau) broadening), t/lambda 2-3, coarse
    # dispersion: the plasmon (~22 eV) is the tallest peak of the thicker spectra. The ZLP's
    # maximum is at 0 eV exactly (drift 0), so the truth is the sum of channels 9-11.
    energy, j = _thick_spectra([2.0, 2.5, 3.0], zlp_scale=2.5 / eels_synth.ZLP_FWHM)
    assert energy[10] == 0.0
    assert (energy[np.argmax(j[1:], axis=-1)] > 15).all()  # the global maximum is a plasmon
    peak3 = k.cluster_feature(j, energy, "log_peak3")
    np.testing.assert_allclose(peak3, np.log(j[:, 9:12].astype(np.float64).sum(-1)), rtol=1e-6)
    assert np.all(np.diff(peak3) < -0.4)  # still ordered by thickness (ZLP ~ e^-tau)
    # With Poisson noise: within the counting error of the 3-channel sum (~1e4 counts, 1%).
    counts = eels_synth.detector_counts(np.repeat(j, 50, axis=0), np.random.default_rng(3))
    noisy = k.cluster_feature(counts, energy, "log_peak3").reshape(3, 50)
    np.testing.assert_allclose(noisy, np.broadcast_to(peak3[:, None], noisy.shape), atol=0.05)


def test_log_peak3_without_a_zlp_is_nan_and_unlabelled():
    # A simple synthetic: a broad Gaussian ZLP (FWHM 2.5 eV) under a 3x taller plasmon at
    # 20 eV, and the same plasmon with no ZLP at all (nothing near 0 eV is a peak).
    energy = np.arange(-5.0, 46.0, 0.5)
    zlp = 1e4 * np.exp(-0.5 * (energy / (2.5 / 2.3548)) ** 2)
    plasmon = 3e4 * np.exp(-0.5 * ((energy - 20.0) / 4.0) ** 2)
    spectra = np.stack([zlp + plasmon, 0.5 * zlp + plasmon, plasmon + 1.0])
    peak3 = k.cluster_feature(spectra, energy, "log_peak3")
    i0 = int(np.flatnonzero(energy == 0.0)[0])
    expected = np.log(spectra[:2, i0 - 1:i0 + 2].sum(-1))
    np.testing.assert_allclose(peak3[:2], expected, rtol=1e-6)
    assert np.isnan(peak3[2])  # no fallback to the plasmon's height
    labels = k.kmeans_assign(peak3, k.fit_kmeans(peak3, 2, seed=0))
    np.testing.assert_array_equal(labels, [0, 1, -1])  # left out of the fit, labelled -1


def _blobs(n=200_000, seed=0):
    """8 unit-spread Gaussian clusters 5 apart, in order (points of cluster j at j n/8 ...)."""
    centres = np.arange(8) * 5.0
    rng = np.random.default_rng(seed)
    return rng.normal(size=n) + np.repeat(centres, n // len(centres)), centres


def test_fit_recovers_separated_clusters_sorted_descending():
    features, centres = _blobs()
    features[::1000] = np.nan  # left out, not propagated
    fitted = k.fit_kmeans(features, 8, seed=3)
    # 25k points of unit spread per cluster: the mean is known to ~0.01; mini-batch K-means
    # lands within 0.03 of it (measured: 0.007).
    np.testing.assert_allclose(fitted, centres[::-1], atol=0.03)
    np.testing.assert_array_equal(fitted, k.fit_kmeans(features, 8, seed=3))
    labels = k.kmeans_assign(features.reshape(400, 500), fitted)
    assert labels.shape == (400, 500) and labels.dtype == np.int32
    assert (labels.reshape(-1)[::1000] == -1).all()
    assert np.mean(labels.reshape(-1)[:25_000] == 7) > 0.98  # the lowest centre is the last label


def test_update_is_a_running_mean_and_does_not_modify_its_input():
    state = k.KMeansState(np.array([[0.0], [10.0]]), np.zeros(2))
    first = k.kmeans_update(state, np.array([1.0, 2.0, 9.0]))
    np.testing.assert_allclose(first.centroids[:, 0], [1.5, 9.0])
    second = k.kmeans_update(first, np.array([3.0, 4.5]))
    np.testing.assert_allclose(second.centroids[:, 0], [(1 + 2 + 3 + 4.5) / 4, 9.0])
    np.testing.assert_array_equal(second.counts, [4, 1])
    np.testing.assert_array_equal(state.centroids[:, 0], [0.0, 10.0])  # untouched


def test_too_few_points_or_distinct_values():
    with pytest.raises(ValueError, match="cannot make 3 clusters from 2 pixels"):
        k.fit_kmeans(np.array([1.0, 2.0, np.nan]), 3, seed=0)
    with pytest.raises(ValueError, match="fewer than 3 distinct finite values"):
        k.fit_kmeans(np.array([1.0, 1.0, 2.0, 2.0]), 3, seed=0)


def test_sample_is_independent_of_how_the_image_is_split():
    rng = np.random.default_rng(1)
    spectra = rng.poisson(50.0, (12, 10, 7)).astype(np.float32)
    labels = rng.integers(-1, 3, (12, 10))
    flat = np.arange(120).reshape(12, 10)
    whole = k.block_sample(spectra, labels, flat, 3, n_sample=5, seed=4)
    parts = [k.block_sample(spectra[rows], labels[rows], flat[rows], 3, 5, 4)
             for rows in (slice(0, 5), slice(5, 9), slice(9, 12))]
    merged = k.merge_samples([k.merge_samples(parts[:2], 5), parts[2]], 5)
    order_a, order_b = np.argsort(whole.keys), np.argsort(merged.keys)
    np.testing.assert_array_equal(whole.keys[order_a], merged.keys[order_b])
    np.testing.assert_array_equal(whole.spectra[order_a], merged.spectra[order_b])
    np.testing.assert_array_equal(merged.n_pixels, np.bincount(labels[labels >= 0], minlength=3))
    assert np.bincount(merged.labels, minlength=3).tolist() == [5, 5, 5]
    assert not np.array_equal(np.sort(whole.keys),
                              np.sort(k.block_sample(spectra, labels, flat, 3, 5, 5).keys))


def test_log_quantiles_of_known_counts():
    spectra = np.array([[1.0, -2.0], [2.0, -1.0], [3.0, 0.0], [50.0, 1.0]])
    sample = k.Sample(np.arange(4.0), np.array([0, 0, 0, 1]), spectra, np.array([3, 1, 0]))
    q = k.log_quantiles(sample, 3)
    np.testing.assert_allclose(q[0, :, 0], np.log(np.quantile([1.0, 2.0, 3.0], k.QUANTILES)))
    assert np.isnan(q[0, :, 1]).all()  # counts <= 0: no log
    np.testing.assert_allclose(q[1, 1], [np.log(50.0), 0.0])
    assert np.isnan(q[2]).all()  # empty cluster


def test_window_landmarks_of_the_exact_zlp():
    """On the generator's noiseless ZLP (no inelastic part), the steepest descent of ln I is
    where the split Pearson VII has its inflection in ln: E = w_loss (1 + 0.15 tau) / sqrt(c),
    c = 2^(1/m) - 1 (0.374 eV at tau = 0). The boxcar smoothing moves it later by ~1/6 of
    the half width (measured: 0.03 eV), so the tolerance is 3 channels (0.075 eV)."""
    energy = eels_synth.energy_axis(2048)
    d = energy[1] - energy[0]
    for tau in (0.0, 1.0):
        counts = 5e4 * eels_synth.zero_loss_peak(energy, tau)
        w = k.zlp_windows(energy, np.log(counts))
        c = 2 ** (1 / eels_synth.ZLP_SHAPE_LOSS) - 1
        expected = eels_synth.ZLP_WIDTH_LOSS * (1 + eels_synth.ZLP_BROADENING * tau) / np.sqrt(c)
        assert abs(w.steepest - expected) < 3 * d
        # a pure ZLP only falls: the search ends where it reaches one count
        assert 2.0 < w.first_minimum < 10.0
        one_count = energy[np.flatnonzero((energy > 0) & (counts <= 1.0))[0]]
        assert abs(w.first_minimum - one_count) < 0.5
        assert w.steepest < w.de_i < w.de_ii


def test_knee_and_one_count_extrapolation_on_a_bent_line():
    """ln I: a peak, a fall of 4/eV to E = 1 eV, then a gentler 1/eV fall to a minimum at
    3 eV and a rise. The knee is the bend at 1 eV, rounded by the boxcar (+-8 channels,
    half the loss-side half width), so it is found within about that."""
    energy = np.linspace(-1.0, 6.0, 701)
    e = energy
    y = np.where(e < 0, 12.0 - 40 * e**2, np.where(e < 1, 12.0 - 4.0 * e, 8.0 - 1.0 * (e - 1)))
    y = np.where(e > 3, 6.0 + 0.5 * (e - 3), y)
    w = k.zlp_windows(energy, y)
    assert w.de_i == pytest.approx(1.0, abs=0.1)
    assert w.first_minimum == pytest.approx(3.0, abs=0.1)
    # the line through the curve at the steepest point and at the knee falls to 0 at dE_II
    def curve(x):
        return np.interp(x, energy, y)

    slope = (curve(w.de_i) - curve(w.steepest)) / (w.de_i - w.steepest)
    assert w.de_ii == pytest.approx(w.de_i - curve(w.de_i) / slope, rel=0.03)
    forced = k.zlp_windows(energy, y, de_i=2.0)
    assert forced.de_i == 2.0 and forced.de_ii > 2.0


def test_windows_refuse_curves_without_a_tail():
    energy = np.linspace(-1.0, 1.0, 21)
    with pytest.raises(ValueError, match="no positive counts"):
        k.zlp_windows(energy, np.full(21, np.nan))
    with pytest.raises(ValueError, match="does not fall to half its maximum"):
        k.zlp_windows(energy, np.linspace(0.0, 1.0, 21))
    tiny = np.where(energy < 0, -0.5, -0.5 - 20 * energy)  # below one count everywhere
    with pytest.raises(ValueError, match="cannot place dE_II"):
        k.zlp_windows(energy, tiny)


def test_one_count_energy_measured_floor_and_power_law():
    one_count_energy, zlp_windows = k.one_count_energy, k.zlp_windows
    energy = eels_synth.energy_axis(2048)
    dispersion = energy[1] - energy[0]
    exact = 6e7 * dispersion * eels_synth.zero_loss_peak(energy, 0.0)
    log_median = np.log(exact)
    windows = zlp_windows(energy, log_median)
    one = energy[(energy > 0) & (exact < 1.0)][0]
    measured, how = one_count_energy(energy, log_median, windows)
    assert how == "measured" and abs(measured - one) < 0.1  # smoothing: a few channels
    # a background-subtracted tail meets its noise floor: the first zero median counts
    floor = np.where((energy > 11.77) & (energy < 11.8), np.nan, np.maximum(log_median, 3.0))
    assert one_count_energy(energy, floor, windows) == (pytest.approx(11.775, abs=0.03), "measured")
    # NaN only at the window's edge (alignment) is no fall: the tail is extrapolated instead
    edge = np.where(energy > 45.5, np.nan, np.maximum(log_median, 3.0))
    value, how = one_count_energy(energy, edge, windows)
    assert how == "power law" and value > windows.de_i
