"""Synthetic EELS generator: the model's normalisations, exactness against a slow float64
implementation, no wrap-around, detector statistics, and block reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import eels_synth as g


def pixels(tau, e_g=1.8, b=1.5, n=1e6, drift=0.0) -> dict[str, np.ndarray]:
    """Truth maps for a row of pixels, any field a scalar or one value per pixel."""
    tau = np.atleast_1d(np.asarray(tau, np.float32))
    return {k: np.broadcast_to(np.asarray(v, np.float32), tau.shape).copy()
            for k, v in dict(tau=tau, e_g=e_g, b=b, n_counts=n, drift=drift).items()}


def reference_spectrum(energy, tau, e_g, b, n, drift):
    """The model written plainly: float64, direct sampling, 8x zero padding, no damping."""
    grid = g.model_grid(energy)
    z = g.zero_loss_peak(grid.energy - drift, tau)
    z /= z.sum()
    loss = grid.dispersion * np.arange(grid.n_signal)
    drude, onset = g._drude(loss), g._onset(loss - e_g, b)
    s = (1 - g.ONSET_FRACTION) * drude / drude.sum() + g.ONSET_FRACTION * onset / onset.sum()
    size = 8 * grid.n_signal
    j = np.fft.irfft(np.fft.rfft(z, size) * np.exp(tau * np.fft.rfft(s, size)), size)
    return n * np.exp(-tau) * j[grid.window]


def test_energy_axis_and_internal_grid():
    energy = g.energy_axis(2048)
    assert energy.dtype == np.float64 and energy[0] == -5.0 and energy[-1] == 46.0
    grid = g.model_grid(energy)
    np.testing.assert_allclose(grid.energy[grid.window], energy, atol=1e-9)
    top = max(46.0, 3 * g.PLASMON_ENERGY, g.PLASMON_ENERGY + 15 * g.PLASMON_WIDTH)
    assert grid.energy[-1] >= top and grid.n_fft >= 2 * grid.n_signal
    with pytest.raises(ValueError, match="linear"):
        g.model_grid(energy**3)


def test_zlp_and_single_scattering_have_unit_area():
    e = np.linspace(-60.0, 3000.0, 3_060_001)  # 1 meV: tails beyond carry < 1e-5
    d = e[1] - e[0]
    for tau in (0.0, 1.9):
        assert abs(g.zero_loss_peak(e, tau).sum() * d - 1) < 1e-4
    for b in (0.5, 1.5):
        s = g.single_scattering(e, 1.7, b)
        assert abs(s.sum() * d - 1) < 1e-4
        onset = s - (1 - g.ONSET_FRACTION) * g._drude(e)
        assert abs(onset.sum() * d - g.ONSET_FRACTION) < 1e-5
        assert np.all(onset[e < 1.7] == 0)


def test_zlp_half_widths_are_the_fitted_ones():
    # w_gain and w_loss are the half widths at half maximum of each side, broadened with tau.
    for tau in (0.0, 1.0):
        s = 1 + g.ZLP_BROADENING * tau
        half = g.zero_loss_peak(np.array([-g.ZLP_WIDTH_GAIN * s, g.ZLP_WIDTH_LOSS * s]), tau)
        np.testing.assert_allclose(half, g.zero_loss_peak(0.0, tau) / 2, rtol=1e-6)


def test_counts_are_conserved_in_a_wide_window():
    # Unit-area Z and S: a window holding (nearly) all scattering orders holds N counts.
    energy = g.energy_axis(4096, -5.0, 200.0)
    j, zlp = g.noiseless_spectra(energy, pixels([0.1, 0.5, 1.0], n=1e6))
    np.testing.assert_allclose(j.sum(-1), 1e6, rtol=6e-4)
    np.testing.assert_allclose(zlp.sum(-1), 1e6 * np.exp(-np.array([0.1, 0.5, 1.0])), rtol=3e-4)


@pytest.mark.parametrize("window", [(2048, -5.0, 46.0), (4096, -5.0, 200.0)])
def test_fast_generator_matches_float64_reference(window):
    # Differences are float32 round-off and the band-limited shift of the onset to e_g
    # (vs direct sampling here): measured at most 4% (46 eV) and 15% (200 eV, 0.05 eV
    # channels, sqrt onset) of the Poisson sigma, so 0.25 sigma is a safe bound.
    energy = g.energy_axis(*window)
    maps = pixels([0.1, 0.5, 1.0, 1.9], e_g=[1.0, 1.6, 2.013, 2.5], b=[1.5, 0.5, 1.5, 0.5],
                  drift=[0.0, 0.1, -0.17, 0.0123])
    j, _ = g.noiseless_spectra(energy, maps)
    for i in range(4):
        ref = reference_spectrum(energy, *(float(maps[k][i]) for k in
                                           ("tau", "e_g", "b", "n_counts", "drift")))
        assert np.all(np.abs(j[i] - ref) < 0.25 * np.sqrt(np.maximum(ref, 1.0)))


def test_no_wrap_around_onto_the_gain_side():
    # At tau = 1.9 the 5th-10th plasmon orders pass 200 eV; plain 2x padding wrapped them onto
    # the gain side (+50% at -5 eV). Below -2 eV J must be the ZLP tail alone, up to the ZLP's
    # own gain tail convolved with S at small losses (+0.2% at most, measured).
    energy = g.energy_axis(2048)
    j, zlp = g.noiseless_spectra(energy, pixels([0.5, 1.0, 1.9]))
    gain = energy < -2.0
    ratio = j[:, gain] / zlp[:, gain]
    assert np.all(ratio > 1 - 1e-3) and np.all(ratio < 1 + 5e-3)


def test_windowed_truth():
    energy = g.energy_axis(2048)
    maps = pixels([0.1, 1.0, 1.9], drift=0.05)
    j, zlp = g.noiseless_spectra(energy, maps)
    _, windowed = g.simulate_chunk(energy, maps, np.random.default_rng(0))
    np.testing.assert_allclose(windowed, np.log(j.sum(-1) / zlp.sum(-1)), rtol=1e-6)
    # DOMAIN.md: the 46 eV window loses the multiple plasmons, ~0.48 at tau = 1.9.
    assert 0.4 < 1.9 - windowed[2] < 0.55
    wide = g.energy_axis(4096, -5.0, 200.0)
    _, windowed = g.simulate_chunk(wide, maps, np.random.default_rng(0))
    np.testing.assert_allclose(windowed, maps["tau"], atol=2e-3)


def test_drift_shifts_the_whole_spectrum():
    energy = g.energy_axis(2048)
    step = energy[1] - energy[0]
    j, _ = g.noiseless_spectra(energy, pixels([0.7, 0.7], drift=[0.0, 10 * step]))
    np.testing.assert_allclose(j[1, 10:], j[0, :-10], rtol=2e-4, atol=1e-2)


def test_detector_noise_statistics():
    # gain * Poisson(J / gain) + read noise: mean J, variance gain * J + read_noise^2.
    energy = g.energy_axis(128)
    j, _ = g.noiseless_spectra(energy, pixels(np.full(20000, 0.5), n=2e4))
    counts = g.detector_counts(j, np.random.default_rng(1), gain=2.0, read_noise=3.0)
    assert counts.dtype == np.float32
    expected = j[0]
    channels = np.flatnonzero((expected > 5) & (expected < 5000))
    for c in channels[:: max(1, channels.size // 8)]:
        mean, var = counts[:, c].mean(), counts[:, c].var()
        sigma = np.sqrt(2.0 * expected[c] + 9.0)
        assert abs(mean - expected[c]) < 5 * sigma / np.sqrt(counts.shape[0])
        assert abs(var / sigma**2 - 1) < 0.06


def test_truth_maps_ranges_and_global_coordinates():
    shape, seed = (128, 128), 7
    whole = g.truth_maps(slice(None), slice(None), shape, seed)
    tau = whole["tau"]
    assert tau.dtype == np.float32 and tau.shape == shape
    assert 0.08 <= tau.min() < 0.3 and 1.6 < tau.max() <= 1.9
    assert 0.9 < whole["e_g"].min() and whole["e_g"].max() < 2.6
    assert set(np.unique(whole["b"])) <= {0.5, 1.5}
    assert 0.85e6 < whole["n_counts"].min() and whole["n_counts"].max() < 1.15e6
    assert np.abs(whole["drift"]).max() < 0.17
    # Any rows and columns, as slices or index arrays, give the same values.
    rows, cols = np.array([5, 64, 127]), slice(30, 90, 7)
    part = g.truth_maps(rows, cols, shape, seed)
    for name, value in part.items():
        np.testing.assert_array_equal(value, whole[name][rows][:, cols])
    assert not np.array_equal(g.truth_maps(rows, cols, shape, seed + 1)["tau"], part["tau"])


def test_blocks_reproduce_and_join_seamlessly():
    shape, energy, seed = (24, 20), g.energy_axis(256), 5
    one = g.simulate_block(shape, (8, 10), (8, 10), energy, seed)
    again = g.simulate_block(shape, (8, 10), (8, 10), energy, seed)
    for name, value in one.items():
        assert value.tobytes() == again[name].tobytes(), name
    assert one["counts"].shape == (8, 10, 256) and one["counts"].dtype == np.float32
    assert set(one) == {"counts", "windowed_log_ratio", "tau", "e_g", "b", "n_counts", "drift"}
    # Generated block by block, the image holds that block unchanged, and its maps equal
    # the maps of the whole image (global-coordinate functions).
    image = {name: np.zeros(shape + value.shape[2:], value.dtype) for name, value in one.items()}
    for y0 in (0, 8, 16):
        for x0 in (0, 10):
            block = g.simulate_block(shape, (y0, x0), (8, 10), energy, seed)
            for name, value in block.items():
                image[name][y0:y0 + 8, x0:x0 + 10] = value
    for name, value in one.items():
        np.testing.assert_array_equal(image[name][8:16, 10:20], value)
    for name, value in g.truth_maps(slice(None), slice(None), shape, seed).items():
        np.testing.assert_array_equal(image[name], value)
    other = g.simulate_block(shape, (0, 0), (8, 10), energy, seed)
    assert not np.array_equal(other["counts"], one["counts"])
    with pytest.raises(ValueError, match="not inside"):
        g.simulate_block(shape, (20, 0), (8, 10), energy, seed)


def test_bandgap_scene_is_a_thin_specimen_beside_vacuum():
    energy = g.energy_axis(2048)
    block = g.simulate_block((8, 8), (0, 0), (8, 8), energy, seed=4, scene="bandgap")
    vacuum = block["vacuum"] > 0
    assert vacuum[:, 6:].all() and not vacuum[:, :6].any()  # the right quarter of the columns
    assert (block["tau"][vacuum] == 0).all() and np.isnan(block["e_g"][vacuum]).all()
    np.testing.assert_allclose(block["tau"][~vacuum], 0.1, rtol=0.031)
    np.testing.assert_allclose(block["e_g"][~vacuum], 1.4)
    np.testing.assert_allclose(block["b"], 1.5)
    # ~6e7 counts (+-2%), of which a fraction e^-tau in the ZLP; vacuum is ZLP only
    np.testing.assert_allclose(block["counts"].sum(axis=-1), block["n_counts"], rtol=0.02)
    np.testing.assert_allclose(block["windowed_log_ratio"][vacuum], 0.0, atol=1e-5)
    # the 46 eV window misses 3.4% of the single-scattering area (the plasmon's far tail)
    np.testing.assert_allclose(block["windowed_log_ratio"][~vacuum], block["tau"][~vacuum],
                               rtol=0.05)
    assert (block["windowed_log_ratio"][~vacuum] < block["tau"][~vacuum]).all()
    with pytest.raises(ValueError, match="unknown scene 'moon'; use one of flakes, bandgap"):
        g.truth_maps(slice(0, 2), slice(0, 2), (2, 2), 0, "moon")
