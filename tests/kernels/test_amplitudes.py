"""The analytic e+e- -> mu+mu- amplitude against independent forms and known cross sections, and the
heteroscedastic ensemble's pieces (NLL, sigma refit, prediction combination)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.kernels.amplitudes import (
    ElectroweakConstants,
    GaussianNLLLoss,
    breit_wigner_angle,
    ee_mumu_msq,
    precision_summary,
    refit_log_variance,
    sample_phase_space,
)
from engine.kernels.mlp import EnsembleMLP

K = ElectroweakConstants()
GEV2_TO_NB = 0.3893794e6  # (hbar c)^2 in GeV^2 nb


def vector_axial_msq(sqrt_s, c):
    """The textbook form (e.g. Halzen & Martin 13.6): with v = -1/2 + 2 sin^2 w, a = -1/2 and
    chi = s / (s - mZ^2 + i mZ GammaZ) / (4 sin^2 w cos^2 w),
    |M|^2 = e^4 [(1 + c^2) A0 + 2 c A1], A0 = 1 + 2 v^2 Re chi + (v^2 + a^2)^2 |chi|^2,
    A1 = 2 a^2 Re chi + 4 v^2 a^2 |chi|^2 (Q_e Q_mu = 1, same couplings for e and mu)."""
    s = sqrt_s**2
    chi = s / (s - K.mz**2 + 1j * K.mz * K.gamma_z) / (4 * K.sin2w * (1 - K.sin2w))
    v, a = -0.5 + 2 * K.sin2w, -0.5
    a0 = 1 + 2 * v**2 * chi.real + (v**2 + a**2) ** 2 * abs(chi) ** 2
    a1 = 2 * a**2 * chi.real + 4 * v**2 * a**2 * abs(chi) ** 2
    return (4 * math.pi * K.alpha) ** 2 * ((1 + c**2) * a0 + 2 * c * a1)


def cross_section_nb(sqrt_s: float) -> float:
    """sigma = int |M|^2 / (64 pi^2 s) dOmega, by Gauss-Legendre in cos(theta)."""
    c, w = np.polynomial.legendre.leggauss(16)
    return float(
        2
        * math.pi
        * np.sum(w * ee_mumu_msq(np.full(16, sqrt_s), c))
        / (64 * math.pi**2 * sqrt_s**2)
        * GEV2_TO_NB
    )


def test_matches_the_vector_axial_form():
    rng = np.random.default_rng(0)
    sqrt_s, c = rng.uniform(10, 200, 200), rng.uniform(-1, 1, 200)
    np.testing.assert_allclose(ee_mumu_msq(sqrt_s, c), vector_axial_msq(sqrt_s, c), rtol=1e-12)


def test_qed_limit_and_point_cross_section():
    """Far below the Z: |M|^2 -> e^4 (1 + c^2) and sigma -> 4 pi alpha^2 / (3 s) (86.8 nb / s)."""
    c = np.linspace(-1, 1, 5)
    np.testing.assert_allclose(
        ee_mumu_msq(np.full(5, 1.0), c), (4 * math.pi * K.alpha) ** 2 * (1 + c**2), rtol=1e-3
    )  # Z admixture ~ s / mZ^2 = 1e-4
    point = 4 * math.pi * K.alpha**2 / 3 / 1.0**2 * GEV2_TO_NB
    assert cross_section_nb(1.0) == pytest.approx(point, rel=1e-3)


def test_z_peak_cross_section():
    """At sqrt(s) = mZ the photon is ~1% of the rate: sigma ~ 12 pi Gamma_ee Gamma_mumu /
    (mZ^2 GammaZ^2) with the tree-level Gamma_ll = alpha mZ (v^2 + a^2) / (12 sin^2 w cos^2 w)."""
    v, a = -0.5 + 2 * K.sin2w, -0.5
    gamma_ll = K.alpha * K.mz * (v**2 + a**2) / (12 * K.sin2w * (1 - K.sin2w))
    peak = 12 * math.pi * gamma_ll**2 / (K.mz**2 * K.gamma_z**2) * GEV2_TO_NB
    assert cross_section_nb(K.mz) == pytest.approx(peak, rel=0.02)
    assert 1.9 < cross_section_nb(K.mz) < 2.2  # LEP's measured mu+mu- peak is 1.99 nb


def test_forward_backward_asymmetry_sign():
    """Negative below the Z (interference), positive above it: the textbook A_FB curve."""

    def afb(sqrt_s):
        c, w = np.polynomial.legendre.leggauss(32)
        m = ee_mumu_msq(np.full(32, sqrt_s), c)
        return float(np.sum(w * m * np.sign(c)) / np.sum(w * m))

    assert afb(60.0) < -0.2 and afb(120.0) > 0.2 and abs(afb(K.mz)) < 0.05


def test_sampling_is_seeded_per_block_and_checks_ranges():
    one = sample_phase_space(50, (60, 120), seed=3, block=1)
    again = sample_phase_space(50, (60, 120), seed=3, block=1)
    other = sample_phase_space(50, (60, 120), seed=3, block=2)
    np.testing.assert_array_equal(one["msq"], again["msq"])
    assert not np.allclose(one["msq"], other["msq"])
    assert one["sqrt_s"].min() >= 60 and one["sqrt_s"].max() <= 120
    np.testing.assert_allclose(one["rho"], breit_wigner_angle(one["sqrt_s"]))
    # Breit-Wigner sampling: uniform in rho, so the peak region |sqrt s - mZ| < GammaZ (4% of the
    # range) holds its share of the rho range, ~73% (binomial error 0.3% at 20000 points)
    big = sample_phase_space(20000, (60, 120), seed=0)
    share = np.mean(np.abs(big["sqrt_s"] - K.mz) < K.gamma_z)
    edges = breit_wigner_angle(np.array([60, K.mz - K.gamma_z, K.mz + K.gamma_z, 120]))
    assert share == pytest.approx((edges[2] - edges[1]) / (edges[3] - edges[0]), abs=0.01)
    with pytest.raises(ValueError, match="sqrt_s_range must be"):
        sample_phase_space(5, (120, 60), seed=0)
    with pytest.raises(ValueError, match="sampling must be 'uniform' or 'breit_wigner', got 'flat'"):
        sample_phase_space(5, (60, 120), seed=0, sampling="flat")


def test_nll_and_sigma_refit_find_the_residual_scale():
    """Targets = a known smooth mean + Gaussian noise of known, varying width: the refit sigma
    (mean held fixed, exact) gives pulls of RMS 1 on the training points."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (600, 1))
    width = 0.05 + 0.1 * (x[:, 0] + 1)
    target = np.sin(2 * x[:, 0]) + width * rng.standard_normal(600)
    mask = np.zeros((2, 600), bool)
    mask[:, :450] = True
    model = EnsembleMLP(2, [1, 8, 2], ["tanh", "linear"], seed=0)
    loss = GaussianNLLLoss(x, target, mask)
    refit_log_variance(model, loss)
    with torch.no_grad():
        out = model(loss.x[loss.train_idx])
        pulls = (loss.target[loss.train_idx] - out[..., 0]) / torch.exp(0.5 * out[..., 1])
    assert np.sqrt((pulls.numpy() ** 2).mean(1)) == pytest.approx([1.0, 1.0], abs=0.02)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="sqrt_s must be > 0 GeV and cos_theta within"):
        ee_mumu_msq(np.array([90.0]), np.array([1.5]))
    with pytest.raises(ValueError, match="same number of training points"):
        GaussianNLLLoss(np.zeros((4, 1)), np.zeros(4), np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool))


def test_precision_summary_splits_bulk_and_tails():
    truth = np.exp(np.linspace(0, 5, 1000))
    pred = np.log(truth) + 0.01
    out = precision_summary(pred, np.full(1000, 0.01), truth, tail_fraction=0.05)
    assert out["bulk"].sum() == 900
    assert out["rms_pull_bulk"] == pytest.approx(1.0) and out["rms_pull_tails"] == pytest.approx(1.0)
    np.testing.assert_allclose(out["relative_error_percentiles"], math.expm1(0.01))
