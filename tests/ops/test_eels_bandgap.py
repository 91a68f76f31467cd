"""eels.fit_bandgap: lazy maps, known onsets recovered, quantile-band errors, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from engine.errors import OpError
from engine.kernels.bandgap import blurred_onset, power_onset
from engine.ops import eels_bandgap
from engine.ops.eels_bandgap import BandgapParams, fit_bandgap
from engine.registry import get_op
from engine.testing import raise_if_computes

ENERGY = np.linspace(-0.5, 5.0, 276)  # 0.02 eV channels


def inelastic_image(ny=8, nx=6, b=1.5, seed=0, bands=True) -> tuple[xr.Dataset, np.ndarray]:
    """A lazy (y, x, energy) inelastic signal with E_BG rising across x, and +-5% bands."""
    rng = np.random.default_rng(seed)
    e_bg = 1.2 + 0.2 * np.arange(nx)[None, :] + 0.01 * np.arange(ny)[:, None]
    exact = power_onset(ENERGY, e_bg[..., None], 2000.0, b)
    counts = exact + rng.normal(size=exact.shape) * np.sqrt(np.maximum(exact, 1.0))
    data = {"inelastic": (("y", "x", "energy"), counts.astype(np.float32)), "e_g": (("y", "x"), e_bg)}
    if bands:
        # Band curves whose onsets sit 0.05 eV either side: E_BG error must come out as 0.05.
        curves = [power_onset(ENERGY, e_bg[..., None] + shift, 2000.0, b) for shift in (0.05, 0.0, -0.05)]
        data["inelastic_quantile"] = (("quantile", "y", "x", "energy"), np.stack(curves).astype(np.float32))
    image = xr.Dataset(
        data, coords={"energy": ENERGY, "quantile": [0.16, 0.5, 0.84]} if bands else {"energy": ENERGY}
    )
    return image.chunk({"y": 4, "x": 3}), e_bg


def test_registered():
    assert get_op("eels.fit_bandgap").func is fit_bandgap


def test_lazy_and_shaped():
    image, _ = inelastic_image()
    with raise_if_computes():
        result = fit_bandgap(BandgapParams(window_ev=(0.5, 4.0), exponent=1.5), image)
    # the fits read blocks merged along x (up to FIT_BLOCK_PIXELS pixels): (4, 3) -> (4, 6)
    assert result["e_bg"].dims == ("y", "x") and result["e_bg"].chunks == ((4, 4), (6,))
    assert result["e_bg_quantile"].dims == ("quantile", "y", "x")
    assert result["converged"].dtype == bool and result["e_bg"].attrs["units"] == "eV"
    assert "e_g" in result  # maps without energy ride along


@pytest.mark.parametrize("exponent", [1.5, None])
def test_recovers_the_onset_map_with_band_errors(exponent):
    image, truth = inelastic_image()
    result = fit_bandgap(BandgapParams(window_ev=(0.5, 4.0), exponent=exponent), image).compute()
    assert result["converged"].all()
    # Measured over 10 seeds at these counts (unweighted): E_BG scatters by 3.9 meV with b
    # fixed and 9.7 meV with b free (the fit errors say 3.6 and 11 meV); allow 5 sigma.
    np.testing.assert_allclose(result["e_bg"], truth, atol=0.02 if exponent else 0.05)
    # exact band curves (spread 0.05 eV) and the fit's own error, in quadrature
    own = fit_bandgap(
        BandgapParams(window_ev=(0.5, 4.0), exponent=exponent), image.drop_vars("inelastic_quantile")
    )["e_bg_error"].compute()
    assert float(own.min()) > 1e-3
    np.testing.assert_allclose(result["e_bg_error"], np.hypot(own, 0.05), rtol=1e-5)
    np.testing.assert_allclose(result["e_bg_quantile"].sel(quantile=0.84), truth - 0.05, atol=1e-4)
    np.testing.assert_allclose(result["exponent"], 1.5, atol=0.1 if exponent is None else 0)
    assert "quantile" in result["e_bg_error"].attrs["source"]
    # Unweighted, chi2/dof is the residual variance: it must be the noise variance max(I, 1)
    # averaged over the window. Measured ratio (median pixel) 0.96, 0.92-1.00 over 6 noise
    # seeds (sd 0.025): the median of a right-skewed ratio and 3-4 fitted parameters sit it just
    # below 1. A missed onset or a chi2 not divided by its dof leaves the bound.
    inside = (ENERGY >= 0.5) & (ENERGY <= 4.0)
    noise = np.maximum(power_onset(ENERGY[inside], truth[..., None], 2000.0, 1.5), 1.0).mean(-1)
    assert 0.9 < float(np.median(result["chi2"] / noise)) < 1.05
    np.testing.assert_allclose(result["amplitude"], 2000.0, rtol=0.1)


def test_fused_fits_change_no_result_and_the_median_band_is_fitted_once(monkeypatch):
    """One task per block fits the main variable, every band and the free-b fit in as few
    kernel calls as there are windows: no result may differ from fitting each curve on its
    own, block by block, and the median band, which is the `inelastic` variable itself (as
    eels.subtract_zlp makes it), is not fitted twice."""
    image, _ = inelastic_image()
    noisy = image["inelastic"].values
    bands = np.stack([noisy * 1.05, noisy, noisy * 0.95])  # the middle band is `inelastic`
    image["inelastic_quantile"] = image["inelastic_quantile"].copy(data=bands)
    params = {"window_ev": (0.5, 4.0), "exponent": 1.5}
    rows = []
    kernel = eels_bandgap.fit_kernel

    def counting(spectra, *args, **kwargs):
        rows.append(len(spectra))
        return kernel(spectra, *args, **kwargs)

    monkeypatch.setattr(eels_bandgap, "fit_kernel", counting)
    fused = fit_bandgap(BandgapParams(**params), image.chunk({"y": 4, "x": 3})).compute()
    # 48 pixels: 3 bands (the median shared with the main fit) at b = 1.5, and the free-b fit
    assert sum(rows) == 48 * 4 and len(rows) == 2 * 2  # 2 windows (b fixed, free) x 2 blocks
    monkeypatch.setattr(eels_bandgap, "FIT_BLOCK_PIXELS", 1)  # blocks as the input's (4, 3)
    alone = {}
    for q in range(3):
        single = image.drop_vars("inelastic_quantile").assign(
            inelastic=image["inelastic_quantile"].isel(quantile=q, drop=True)
        )
        alone[q] = fit_bandgap(BandgapParams(**params), single.chunk({"y": 4, "x": 3})).compute()
    for q in range(3):
        np.testing.assert_array_equal(fused["e_bg_quantile"].isel(quantile=q), alone[q]["e_bg_fit"])
    for name in ("e_bg_fit", "amplitude", "chi2", "chi2_free_b", "exponent_free_b"):
        np.testing.assert_array_equal(fused[name], alone[1][name])
    assert float(fused["e_bg_quantile"].std("quantile").max()) > 0  # the bands did differ


def test_without_bands_the_error_is_the_fit_error():
    image, truth = inelastic_image(bands=False, b=0.5)
    result = fit_bandgap(
        BandgapParams(window_ev=(0.5, 4.0), exponent=0.5, weights="poisson"), image
    ).compute()
    assert result["e_bg_error"].attrs["source"] == "fit covariance"
    assert "e_bg_quantile" not in result
    pull = (result["e_bg"] - truth) / result["e_bg_error"]
    assert float(np.abs(pull).max()) < 4.5 and 0.5 < float(pull.std()) < 1.5
    np.testing.assert_allclose(result["chi2"].median(), 1.0, atol=0.3)  # Poisson: chi2/dof ~ 1


def test_empty_and_negative_pixels_are_flagged():
    image, _ = inelastic_image(bands=False)
    counts = image["inelastic"].values
    counts[0, 0] = 0.0
    counts[1, 2] = -3.0
    image["inelastic"] = image["inelastic"].copy(data=counts).chunk({"y": 4, "x": 3})
    result = fit_bandgap(BandgapParams(window_ev=(0.5, 4.0)), image).compute()
    converged = result["converged"].values
    assert not converged[0, 0] and not converged[1, 2] and converged.sum() == converged.size - 2
    assert np.isnan(result["e_bg"].values[0, 0]) and np.isnan(result["e_bg_error"].values[1, 2])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"window_ev": (0.5, 6.0)},
            r"window_ev \[0.5, 6.0\] eV is outside the data, which covers "
            r"-0.5 to 5 eV",
        ),
        ({"window_ev": (-1.0, 2.0)}, "outside the data"),
        (
            {"window_ev": (1.0, 1.05), "background": "none"},
            "holds 3 channels; the fit needs at least 5: widen it",
        ),
        ({"window_ev": (1.0, 1.05)}, "holds 3 channels; the fit needs at least 6: widen it"),
        ({"window_ev": (1.0, 2.0), "variable": "inelastc"}, "did you mean 'inelastic'"),
        ({"window_ev": (1.0, 2.0), "quantile_variable": "bands"}, "variable 'bands' is not in the"),
        ({"window_ev": (1.0, 2.0), "quantile_variable": "e_g"}, "needs 'quantile' and 'energy' dims"),
    ],
)
def test_bad_params_are_op_errors(params, message):
    image, _ = inelastic_image()
    with pytest.raises(OpError, match=message):
        fit_bandgap(BandgapParams(**params), image)


def test_params_model_checks():
    with pytest.raises(ValueError, match="low < high"):
        BandgapParams(window_ev=(2.0, 1.0))
    with pytest.raises(ValueError, match="greater than 0"):
        BandgapParams(window_ev=(1.0, 2.0), exponent=-1.0)
    with pytest.raises(ValueError, match="Extra inputs"):
        BandgapParams(window_ev=(1.0, 2.0), exponnt=1.5)


def test_bands_off_and_default_absent():
    image, _ = inelastic_image()
    off = fit_bandgap(BandgapParams(window_ev=(0.5, 4.0), quantile_variable=None), image)
    assert "e_bg_quantile" not in off
    plain = fit_bandgap(BandgapParams(window_ev=(0.5, 4.0)), image.drop_vars("inelastic_quantile"))
    assert "e_bg_quantile" not in plain


def test_default_background_takes_the_plasmon_tail():
    """An onset over a c E tail as large as itself: the default fits it, `none` starts early."""
    image, truth = inelastic_image(bands=False)
    tail = 400.0 * image["energy"].clip(min=0)  # 2000 counts at 5 eV, like the onset at 3 eV
    image["inelastic"] = (image["inelastic"] + tail).astype(np.float32).transpose("y", "x", "energy")
    params = {"window_ev": (0.5, 4.0), "exponent": 1.5}
    linear = fit_bandgap(BandgapParams(**params), image).compute()
    bare = fit_bandgap(BandgapParams(**params, background="none"), image).compute()
    assert linear["converged"].all() and linear["background"].attrs["units"] == "signal units per eV"
    np.testing.assert_allclose(linear["e_bg"], truth, atol=0.03)
    np.testing.assert_allclose(linear["background"], 400.0, rtol=0.1)
    assert float((bare["e_bg"] - truth).max()) < -0.1  # every pixel's onset far too early
    assert (bare["background"] == 0).all()


# -- self-consistency with the ZLP windows (issue 17) --------------------------------------------


def cluster_inputs(labels: np.ndarray, de_i: list[float]) -> tuple[xr.Dataset, xr.Dataset]:
    """eels.cluster / eels.zlp_windows stand-ins: a label map and each cluster's dE_I."""
    clusters = xr.Dataset(
        {"cluster": (("y", "x"), labels.astype(np.int32))}, coords={"cluster_id": np.arange(len(de_i))}
    )
    windows = xr.Dataset(
        {"de_i": ("cluster_id", np.asarray(de_i, float)), "de_ii": ("cluster_id", np.full(len(de_i), 4.5))},
        coords={"cluster_id": np.arange(len(de_i))},
    )
    return clusters.chunk({"y": 4, "x": 3}), windows


def test_window_starts_at_each_clusters_de_i_and_onsets_below_it_are_flagged():
    # Onsets 1.2-2.2 eV across x. Cluster 0 (x < 3, onsets 1.2-1.6) has dE_I 1.0: its fits
    # start at max(0.5, 1.0) and see their onsets. Cluster 1 (x >= 3, onsets 1.8-2.2) has dE_I
    # 2.5, above every onset: a fit there cannot be self-consistent and must be flagged.
    image, truth = inelastic_image(bands=False)
    labels = np.broadcast_to((np.arange(6) >= 3)[None, :], truth.shape).astype(int)
    clusters, windows = cluster_inputs(labels, [1.0, 2.5])
    with raise_if_computes():
        result = fit_bandgap(
            BandgapParams(window_ev=(0.5, 4.0), exponent=1.5), image, clusters=clusters, windows=windows
        )
    result = result.compute()
    left, right = labels == 0, labels == 1
    np.testing.assert_allclose(result["de_i"].values[right], 2.5)
    assert result["converged"].values[left].all()
    np.testing.assert_allclose(result["e_bg"].values[left], truth[left], atol=0.02)
    assert result["onset_below_de_i"].values[right].all()
    assert not result["converged"].values[right].any()
    assert np.isnan(result["e_bg"].values[right]).all()
    assert (result["e_bg_fit"].values[right] < 2.5).all()  # the raw onset is kept for reading
    # b fixed: the free-b fit's chi2 is reported beside it (exact b = 1.5 data: they agree)
    assert np.isfinite(result["chi2_free_b"].values[left]).all()
    np.testing.assert_allclose(result["exponent_free_b"].values[left], 1.5, atol=0.15)


def test_de_i_systematic_from_the_shifted_subtractions():
    # The median band subtracted at dE_I -/+ 0.2 eV: here the same signal with its onset moved
    # by -/+ 0.03 eV, as a subtraction leaving a little more or less ZLP would. The systematic
    # is the larger change (0.03) and dE_BG / d dE_I = 0.06 / 0.4 = 0.15.
    image, truth = inelastic_image(bands=False)
    shifted = [power_onset(ENERGY, truth[..., None] + move, 2000.0, 1.5) for move in (-0.03, 0.03)]
    image["inelastic"] = image["inelastic"].copy(data=power_onset(ENERGY, truth[..., None], 2000.0, 1.5))
    image["inelastic_de_i"] = (("de_i_shift", "y", "x", "energy"), np.stack(shifted))
    image = image.assign_coords(de_i_shift=[-0.2, 0.2]).chunk({"y": 4, "x": 3})
    clusters, windows = cluster_inputs(np.zeros(truth.shape, int), [0.8])
    result = fit_bandgap(
        BandgapParams(window_ev=(0.5, 4.0), exponent=1.5), image, clusters=clusters, windows=windows
    ).compute()
    assert result["converged"].all()
    np.testing.assert_allclose(result["e_bg_systematic"], 0.03, atol=1e-3)
    np.testing.assert_allclose(result["e_bg_slope"], 0.15, atol=5e-3)
    # noiseless: the fit covariance is ~0, so the error is the systematic alone
    np.testing.assert_allclose(result["e_bg_error"], 0.03, atol=1e-3)
    assert (result["e_bg_error"] >= result["e_bg_systematic"]).all()


def test_clusters_without_windows_is_an_error():
    image, truth = inelastic_image(bands=False)
    clusters, _ = cluster_inputs(np.zeros(truth.shape, int), [0.8])
    with pytest.raises(OpError, match="give both inputs clusters and windows"):
        fit_bandgap(BandgapParams(window_ev=(0.5, 4.0)), image, clusters=clusters)


def test_explicit_shift_variable_needs_the_windows():
    image, _ = inelastic_image(bands=False)
    image["inelastic_de_i"] = image["inelastic"].expand_dims(de_i_shift=[-0.2, 0.2])
    with pytest.raises(
        OpError, match="shift_variable 'inelastic_de_i' needs the clusters and windows inputs"
    ):
        fit_bandgap(BandgapParams(window_ev=(0.5, 4.0), shift_variable="inelastic_de_i"), image)


# -- the instrument's resolution ------------------------------------------------------------------


def blurred_image(fwhm, labels):
    """Exact b = 1.5 onsets (E_BG 1.2-2.2 eV across x) convolved with a Gaussian of each pixel's
    cluster's FWHM `fwhm[label]`, and windows whose median ln I has a Gaussian ZLP of that FWHM."""
    image, truth = inelastic_image(bands=False)
    widths = np.asarray(fwhm)[labels]
    exact = np.stack(
        [
            blurred_onset(ENERGY, e, 2000.0, 1.5, w)[0]
            for e, w in zip(truth.ravel(), widths.ravel(), strict=True)
        ]
    ).reshape(*truth.shape, -1)
    image["inelastic"] = image["inelastic"].copy(data=exact.astype(np.float32))
    clusters, windows = cluster_inputs(labels, [0.4] * len(fwhm))
    sigma = np.asarray(fwhm)[:, None] / (2 * np.sqrt(2 * np.log(2)))
    zlp = 1e6 * np.exp(-0.5 * (ENERGY[None, :] / sigma) ** 2) + 1.0
    windows["ln_i_median"] = (("cluster_id", "energy"), np.log(zlp))
    return image.chunk({"y": 4, "x": 3}), truth, clusters, windows.assign_coords(energy=ENERGY)


def test_resolution_from_each_clusters_zlp_recovers_blurred_onsets():
    """Two clusters with ZLP FWHM 0.1 and 0.3 eV: resolution_ev "cluster" measures each from the
    windows' median spectrum and recovers E_BG and b of the blurred onsets (measured: to 7e-5 eV
    and 8e-5, the maps being float32); the bare model fits the 0.3 eV blur as an earlier onset
    (0.027-0.038 eV early, b 1.53)."""
    labels = np.broadcast_to((np.arange(6) >= 3)[None, :], (8, 6)).astype(int)
    image, truth, clusters, windows = blurred_image([0.1, 0.3], labels)
    with raise_if_computes():
        lazy = fit_bandgap(
            BandgapParams(window_ev=(0.5, 4.0), resolution_ev="cluster"),
            image,
            clusters=clusters,
            windows=windows,
        )
    result = lazy.compute()
    assert result["converged"].all()
    # measured on the 0.02 eV channels by linear interpolation at half maximum
    np.testing.assert_allclose(result["resolution_fwhm"].values, np.where(labels == 0, 0.1, 0.3), atol=2e-3)
    np.testing.assert_allclose(result["e_bg"], truth, atol=1e-3)
    np.testing.assert_allclose(result["exponent"], 1.5, atol=1e-3)
    bare = fit_bandgap(
        BandgapParams(window_ev=(0.5, 4.0)), image, clusters=clusters, windows=windows
    ).compute()
    assert float((bare["e_bg"] - truth).values[labels == 1].max()) < -0.015
    # one FWHM for all: the same as "cluster" where it is that cluster's
    fixed = fit_bandgap(BandgapParams(window_ev=(0.5, 4.0), resolution_ev=0.1), image).compute()
    left = labels == 0
    np.testing.assert_allclose(fixed["e_bg"].values[left], truth[left], atol=1e-3)


def test_resolution_params_are_checked():
    with pytest.raises(ValueError, match="use sampling: channel"):
        BandgapParams(window_ev=(1.0, 2.0), resolution_ev=0.05, sampling="point")
    with pytest.raises(ValueError, match="resolution_ev must be a FWHM > 0 eV"):
        BandgapParams(window_ev=(1.0, 2.0), resolution_ev=0.0)
    with pytest.raises(ValueError, match="Input should be"):
        BandgapParams(window_ev=(1.0, 2.0), resolution_ev="zlp")
    assert BandgapParams(window_ev=(1.0, 2.0), resolution_ev=0.05).kernel_sampling == "channel"
    assert BandgapParams(window_ev=(1.0, 2.0)).kernel_sampling == "point"
    assert BandgapParams(window_ev=(1.0, 2.0), sampling="channel").kernel_sampling == "channel"
    explicit = BandgapParams(window_ev=(1.0, 2.0), resolution_ev="cluster", sampling="channel")
    assert BandgapParams.model_validate(explicit.model_dump(mode="json")) == explicit
    image, _ = inelastic_image(bands=False)
    with pytest.raises(OpError, match="resolution_ev: cluster needs the clusters and windows inputs"):
        fit_bandgap(BandgapParams(window_ev=(0.5, 4.0), resolution_ev="cluster"), image)
