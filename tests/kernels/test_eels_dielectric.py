"""Known truth for Fourier-log deconvolution and Kramers-Kronig analysis.

Kramers-Kronig is checked on a Drude metal, whose dielectric function is analytic:
eps = 1 - E_p^2 / (E^2 + i Gamma E), loss function Im[-1/eps] = the generator's plasmon shape.
Fourier-log is checked on the generator's exact spectra, whose single-scattering distribution is
known: J = N e^{-tau} Z (x) exp-series of tau S, so the SSD must be I0 tau S.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import eels_synth as g
from engine.kernels.eels_dielectric import (
    aperture_factor,
    dielectric_from_loss,
    extend_power_law,
    fourier_log_ssd,
    kramers_kronig,
    loss_grid,
)

E_P, GAMMA = g.PLASMON_ENERGY, g.PLASMON_WIDTH


def drude(loss):
    return 1.0 - E_P**2 / (loss**2 + 1j * GAMMA * loss)


def relative_error(eps1, eps2, truth):
    return np.abs(eps1 + 1j * eps2 - truth) / np.abs(truth)


def test_drude_metal_on_a_wide_window_is_exact_above_a_few_ev():
    loss = 0.05 * np.arange(1, 6001)  # 300 eV
    eps1, eps2 = dielectric_from_loss((-1.0 / drude(loss)).imag)
    error = relative_error(eps1, eps2, drude(loss))
    assert error[(loss > 10) & (loss < 40)].max() < 0.005


def test_power_law_tail_rescues_a_46_ev_window():
    loss = 0.025 * np.arange(1, 1841)  # 46 eV: the loss function is cut at twice E_p
    f = (-1.0 / drude(loss)).imag
    cut = relative_error(*dielectric_from_loss(f), drude(loss))
    extended, grid = extend_power_law(f, loss, 0.8 * loss[-1], 0.9 * loss[-1])
    eps1, eps2 = dielectric_from_loss(extended)
    tail = relative_error(eps1[: loss.size], eps2[: loss.size], drude(loss))
    mid = (loss > 10) & (loss < 40)
    # Measured: cut 0.68 -> tail 0.0034 (max, 10-40 eV); 2-10 eV (|eps| up to 44): 0.04.
    assert cut[mid].max() > 0.1
    assert tail[mid].max() < 0.01
    assert tail[(loss > 2) & (loss < 10)].max() < 0.06
    assert grid[-1] == pytest.approx(8 * loss[-1])


@pytest.mark.parametrize("tau", [0.3, 1.0, 1.8])
def test_fourier_log_recovers_the_single_scattering_distribution(tau):
    energy = g.energy_axis(4096, -5.0, 200.0)  # wide enough for the multiple plasmons
    maps = {"tau": np.full((1, 1), tau, np.float32), "e_g": np.full((1, 1), 2.0, np.float32),
            "b": np.full((1, 1), 1.5, np.float32), "n_counts": np.full((1, 1), 1e6, np.float32),
            "drift": np.zeros((1, 1), np.float32)}
    j, zlp = g.noiseless_spectra(energy, maps)
    ssd, i0 = fourier_log_ssd(j, zlp, energy, reconvolve_fwhm=g.ZLP_FWHM, taper_ev=10.0)
    np.testing.assert_allclose(i0, 1e6 * np.exp(-tau), rtol=1e-3)
    d = energy[1] - energy[0]
    truth = i0[0, 0] * tau * g.single_scattering(energy, 2.0, 1.5) * d
    band = (energy > 5) & (energy < 150)  # away from the ZLP (reconvolved) and the taper
    ratio = ssd[0, 0, band] / truth[band]
    # Measured: median 1.001, 95% of channels within 1.5% (tau 0.3), 0.6% (tau 1.8).
    assert abs(np.median(ratio) - 1) < 0.005
    assert np.percentile(np.abs(ratio - 1), 95) < 0.03


def test_metal_normalisation_and_thickness_follow_the_sum_rule():
    energy = g.energy_axis(4096, -5.0, 200.0)
    loss, d = loss_grid(energy)
    beta, beam = 10.0, 200.0
    true_loss_function = (-1.0 / drude(loss)).imag
    # An SSD built from Egerton's eq. 4.26 for t = 50 nm and I0 = 1e6: the thickness must return.
    gamma = 1 + beam * 1e3 / 510_998.95
    m0v2 = 510_998.95 * (1 - 1 / gamma**2)
    i0, t = 1e6, 50.0
    ssd_per_ev = i0 * t / (np.pi * 0.0529177 * m0v2) * true_loss_function * aperture_factor(loss, beam, beta)
    ssd = np.interp(energy, loss, ssd_per_ev * d, left=0.0)
    out = kramers_kronig(ssd[None], np.array([i0]), energy, beam, beta, None)
    assert out["thickness_nm"][0] == pytest.approx(t, rel=0.01)
    np.testing.assert_allclose(out["loss_function"][0], true_loss_function, rtol=0.02, atol=1e-4)


def test_an_insulator_keeps_re_inverse_eps_at_one_over_n_squared():
    loss = 0.05 * np.arange(1, 4001)
    n = 2.0
    # Lorentz oscillator at 8 eV with eps(0) = n^2 = 4: Re[1/eps(0)] = 1/4.
    eps = 1.0 + 3.0 * 8.0**2 / (8.0**2 - loss**2 - 1j * 1.0 * loss)
    f = (-1.0 / eps).imag
    k_norm = (f / loss).sum() * 0.05 / (0.5 * np.pi * (1 - 1 / n**2))
    assert k_norm == pytest.approx(1.0, rel=0.01)  # the sum rule the normalisation relies on
    eps1, eps2 = dielectric_from_loss(f)
    re_inverse = eps1 / (eps1**2 + eps2**2)
    assert re_inverse[0] == pytest.approx(1 / n**2, abs=0.01)
    # Measured: at most 2.4% (at the 8 eV resonance, sampled every 0.05 eV), 0.4% below 6 eV.
    assert relative_error(eps1, eps2, eps)[(loss > 1) & (loss < 30)].max() < 0.04
