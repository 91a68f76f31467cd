"""eels.align_zlp and eels.thickness as a new user runs them on a coarse, wide window (0.5 eV per
channel, -100 ... 400 eV, from `replicalake ingest synthetic-eels --energy-range -100 400`), and
on pixels without a zero-loss peak: NaN there, and `zlp_found` says how many."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from pydantic import ValidationError

from engine.ingest.synthetic_eels import ingest_synthetic_eels
from engine.kernels import eels as kernels
from engine.ops.eels import AlignParams, ThicknessParams, align_zlp, thickness
from tests.kernels.test_eels_thick import TAUS, WINDOWS, spectra, tolerance
from tests.ops.test_eels import one_pass_tolerance

DISPERSION = 0.5


@pytest.fixture(scope="module")
def coarse(tmp_path_factory) -> xr.Dataset:
    from engine.storage import Lake

    lake = Lake(str(tmp_path_factory.mktemp("thick") / "lake"))
    ingest_synthetic_eels(
        lake, "coarse", (24, 24, 1001), seed=4, chunks=(12, 12), progress=False, energy_range=(-100.0, 400.0)
    )
    return lake.open("raw", "coarse")


def test_coarse_wide_window(coarse):
    aligned = align_zlp(AlignParams(), coarse)
    result = thickness(ThicknessParams(), aligned).compute()
    assert bool(result["zlp_found"].all()) and bool(aligned["zlp_found"].all())
    shift_error = (aligned["zlp_shift"].values + coarse["drift"].values) / DISPERSION
    assert np.abs(shift_error).max() < 1.0  # measured 0.28 channel
    # Against the truth, where the 2 eV-class gap stays clear of the ZLP integral (a gap near
    # 1 eV with b = 0.5 hides the first minimum: up to -0.09 here, a limit of log-ratio itself;
    # the 1.5 eV threshold, which stops before it, stays within 0.008 on every pixel).
    truth, tau = coarse["windowed_log_ratio"].values, coarse["tau"].values
    easy = coarse["e_g"].values > 1.5
    error = np.abs(result["t_over_lambda"].values - truth)
    assert np.all(error[easy] < np.vectorize(tolerance)(tau[easy]))  # measured worst 0.012
    assert tau.max() > 1.8  # thick pixels are in
    threshold = thickness(ThicknessParams(zlp_end="threshold", threshold_ev=1.5), aligned).compute()
    assert np.all(np.abs(threshold["t_over_lambda"].values - truth) < np.vectorize(tolerance)(tau))


@pytest.mark.parametrize("window", WINDOWS, ids=[f"{w[0]}eV" for w in WINDOWS])
def test_one_pass_kernel_matches_aligned_spectra(window):
    """aligned_log_ratio_thickness against log_ratio_thickness of align_zlp's spectra, both ZLP
    ends, t/lambda 0.1-3 (taller plasmon than ZLP at 3), drift +-0.15 eV, 2 seeds, with a dead
    spectrum and one whose ZLP sits 30 eV up (both NaN on either path): the same shifts and NaNs,
    t/lambda within one_pass_tolerance of the two-step chain and of the windowed truth as close
    as it (kernels/test_eels_thick.py's tolerance, ~4 Poisson sigmas of the ZLP counts)."""
    for seed in (1, 2):
        energy, counts, j, zlp, maps = spectra(*window, per_tau=6, seed=seed)
        truth = np.log(j.sum(-1) / zlp.sum(-1))[2:]
        allowed = np.repeat([tolerance(t) for t in TAUS], 6)[2:]
        counts = counts.astype(np.float32)
        counts[0] = 0.0
        counts[1] = np.concatenate(
            [np.zeros(int(30.0 / window[0]), np.float32), counts[1, : -int(30.0 / window[0])]]
        )
        aligned, shift = kernels.align_zlp(counts, energy)
        for method, threshold in (("first_minimum", None), ("threshold", 1.5)):
            expected = kernels.log_ratio_thickness(aligned, energy, method, threshold)
            t, one_pass_shift = kernels.aligned_log_ratio_thickness(counts, energy, method, threshold)
            assert t.dtype == np.float32 and t.shape == expected.shape
            np.testing.assert_array_equal(np.isnan(t), np.isnan(expected))
            assert np.isnan(t[:2]).all() and np.isfinite(t[2:]).all()
            np.testing.assert_allclose(t, expected, rtol=0, atol=one_pass_tolerance({"zlp_end": method}))
            np.testing.assert_array_equal(one_pass_shift, shift)
            assert np.all(np.abs(t[2:] - truth) < allowed), (method, np.abs(t[2:] - truth).max())
        assert maps["tau"].max() == 3.0


def test_one_pass_kernel_edge_cases():
    energy, counts, *_ = spectra(*WINDOWS[1], per_tau=1, seed=1)
    # integer counts (a quarter, so that thin ZLPs fit uint16), a 2-D image
    counts = np.clip(np.round(counts / 4), 0, None).astype(np.uint16).reshape(2, 3, -1)
    t, shift = kernels.aligned_log_ratio_thickness(counts, energy)
    expected = kernels.log_ratio_thickness(kernels.align_zlp(counts, energy)[0], energy)
    assert t.shape == shift.shape == (2, 3) and t.dtype == np.float32
    np.testing.assert_allclose(t, expected, rtol=0, atol=one_pass_tolerance({}))
    # a ZLP alone (vacuum): no first minimum, the ZLP integral is the whole window, t/lambda 0
    vacuum = np.exp(-0.5 * ((energy - 0.07) / 0.17) ** 2).astype(np.float32)[None] * 1e6
    for method, threshold in (("first_minimum", None), ("threshold", 1.5)):
        aligned = kernels.align_zlp(vacuum, energy)[0]
        two_step = kernels.log_ratio_thickness(aligned, energy, method, threshold)
        one_pass = kernels.aligned_log_ratio_thickness(vacuum, energy, method, threshold)[0]
        np.testing.assert_allclose(one_pass, two_step, rtol=0, atol=2e-6)
        assert abs(float(one_pass[0])) < (2e-6 if method == "first_minimum" else 1e-3)
    empty, no_shift = kernels.aligned_log_ratio_thickness(counts[:0], energy)
    assert empty.shape == no_shift.shape == (0, 3)
    with pytest.raises(ValueError, match="method='threshold' needs threshold_ev"):
        kernels.aligned_log_ratio_thickness(counts, energy, "threshold")
    with pytest.raises(ValueError, match=r"one value per channel: got shape \(2047,\)"):
        kernels.aligned_log_ratio_thickness(counts, energy[:-1])


def test_one_pass_op_on_coarse_window_and_missing_zlp(coarse):
    counts = coarse["counts"].values.copy()
    counts[0, :2] = 0.0  # dead pixels: NaN on both paths
    broken = coarse.assign(counts=(coarse["counts"].dims, counts)).chunk({"y": 12, "x": 12})
    # A gap near 1.25 eV with b = 0.5 hides the first minimum (test_coarse_wide_window): there the
    # interpolated spectrum of the two-step chain and the unshifted one may end the ZLP a channel
    # apart (measured 0.091 on 2 of 576 pixels, where the one pass is 0.001 from the truth and the
    # chain 0.09); elsewhere the one_pass_tolerance holds, and everywhere the truth's 0.1.
    easy = coarse["e_g"].values > 1.5
    truth = coarse["windowed_log_ratio"].values
    for params in ({}, {"zlp_end": "threshold", "threshold_ev": 1.5}):
        one_pass = thickness(ThicknessParams(align_zlp=True, **params), broken).compute()
        two_step = thickness(ThicknessParams(**params), align_zlp(AlignParams(), broken)).compute()
        t, expected = one_pass["t_over_lambda"].values, two_step["t_over_lambda"].values
        np.testing.assert_array_equal(np.isnan(t), np.isnan(expected))
        close = easy if not params else np.ones_like(easy)
        np.testing.assert_allclose(t[close], expected[close], rtol=0, atol=one_pass_tolerance(params))
        assert np.nanmax(np.abs(t - truth)) < 0.1
        assert int((~one_pass["zlp_found"]).sum()) == 2
    assert np.isnan(one_pass["zlp_shift"].values[0, :2]).all()


def test_pixels_without_a_zlp_are_nan_and_counted(coarse):
    counts = coarse["counts"].values.copy()
    shift = int(30.0 / DISPERSION)  # three spectra moved up by 30 eV: their ZLP is out of reach
    counts[0, :3] = np.concatenate([np.zeros((3, shift), np.float32), counts[0, :3, :-shift]], -1)
    counts[1, :2] = 0.0  # dead pixels
    broken = coarse.assign(counts=(coarse["counts"].dims, counts)).chunk({"y": 12, "x": 12})
    missing = np.zeros(counts.shape[:2], bool)
    missing[0, :3] = missing[1, :2] = True
    aligned = align_zlp(AlignParams(), broken).compute()
    assert int((~aligned["zlp_found"]).sum()) == 5
    np.testing.assert_array_equal(np.isnan(aligned["zlp_shift"].values), missing)
    np.testing.assert_array_equal(aligned["counts"].values[missing], counts[missing])  # unmoved
    for params in (ThicknessParams(), ThicknessParams(zlp_end="threshold", threshold_ev=1.5)):
        result = thickness(params, broken).compute()
        np.testing.assert_array_equal(~result["zlp_found"].values, missing)
        np.testing.assert_array_equal(np.isnan(result["t_over_lambda"].values), missing)
        assert "zlp_search_ev" in result["zlp_found"].attrs["description"]


def test_zlp_search_ev(coarse):
    # The ZLP 2 eV below where the axis says 0 eV: outside the default window, found when the
    # window is widened to cover the miscalibration.
    shifted = coarse.assign_coords(energy=coarse["energy"] + 2.0)
    assert not bool(thickness(ThicknessParams(), shifted)["zlp_found"].any())
    wide = thickness(ThicknessParams(zlp_search_ev=3.0), shifted)
    assert bool(wide["zlp_found"].all())
    with pytest.raises(ValidationError, match="greater than 0"):
        AlignParams(zlp_search_ev=0.0)
