"""EELS ops on a known-truth synthetic image: lazy, correct, and clear about bad input."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import engine
from engine.errors import RecipeError
from engine.ingest.synthetic_eels import ingest_synthetic_eels
from engine.ops.eels import AlignParams, ThicknessParams, align_zlp, thickness
from engine.testing import raise_if_computes
from tests.conftest import REPO, lake_files


@pytest.fixture(scope="module")
def image_lake(tmp_path_factory):
    from engine.storage import Lake

    lake = Lake(str(tmp_path_factory.mktemp("eels") / "lake"))
    ingest_synthetic_eels(lake, "img", (48, 40, 2048), seed=11, chunks=(16, 16), progress=False)
    return lake


@pytest.fixture
def image(image_lake) -> xr.Dataset:
    return image_lake.open("raw", "img")


def test_ops_are_lazy(image):
    with raise_if_computes():
        aligned = align_zlp(AlignParams(), image)
        result = thickness(ThicknessParams(mean_free_path_nm=100.0), aligned)
    assert result["t_over_lambda"].dims == ("y", "x")
    assert result["t_over_lambda"].chunks == ((16, 16, 16), (16, 16, 8))


def test_alignment_recovers_the_drift(image):
    aligned = align_zlp(AlignParams(), image).compute()
    # The generator moved each spectrum by +drift; alignment must move it back by -drift.
    error = aligned["zlp_shift"].values + image["drift"].values
    dispersion = float(image["energy"][1] - image["energy"][0])
    # The top fit is corrected for the ZLP's asymmetry, so each pixel lands on its true maximum
    # (measured mean -0.008, spread 0.11, worst 0.56 channel; noise on thick pixels spreads it).
    assert abs(error.mean()) < 0.1 * dispersion
    assert error.std() < 0.15 * dispersion
    assert np.abs(error).max() < dispersion
    assert "tau" in aligned  # truth maps ride along


def test_thickness_matches_the_windowed_truth(image):
    result = thickness(ThicknessParams(mean_free_path_nm=120.0), align_zlp(AlignParams(), image))
    t = result["t_over_lambda"].values
    truth = image["windowed_log_ratio"].values
    # First-minimum ZLP limit on noisy counts, tau 0.1 ... 1.9: median error 8e-4, 99% of
    # pixels within 0.023. The worst (0.045) are thick flakes with a direct gap near 1 eV
    # (b = 0.5): the onset hides the first minimum, a limit of log-ratio itself.
    error = np.abs(t - truth)
    assert np.median(error) < 0.002 and np.percentile(error, 99) < 0.03 and error.max() < 0.06
    easy = image["e_g"].values > 1.5
    assert error[easy].max() < 0.02
    assert image["tau"].values.max() > 1.2  # the test covers thick regions too
    np.testing.assert_allclose(result["thickness_nm"].values, 120.0 * t, rtol=1e-6)
    assert result["thickness_nm"].attrs["units"] == "nm"


# One-pass thickness (align_zlp: true) against align then thickness. The ZLP is found once, on the
# unshifted spectra, so the shifts and the NaNs are the same. With a threshold the integration
# limits are the same channels: t/lambda differs only by the rounding of the sums (float32 over the
# aligned channels there, running sums of the unshifted ones here), measured at most 4.8e-7 over
# 0.01-0.5 eV/channel, t/lambda 0.1-3, 3 seeds (tests/ops/test_eels_thick.py), against float32's
# 6e-8 per operation on ~2000 channels.
ONE_PASS_TOLERANCE = 2e-6
# With the first minimum, that of the unshifted spectrum (the aligned one is interpolated, which
# smooths it): where they fall on different channels, t/lambda differs by those channels' counts.
# Measured worst 0.0090 at 0.5 eV/channel (the ZLP ~1 channel wide), 0.0028 at 0.05, 0.0088 at 0.01
# (4 seeds x 180 spectra, gap 2 eV); each path stays as close to the truth (test_eels_thick.py).
# Where a gap near 1 eV with b = 0.5 hides the first minimum the two may differ more (up to 0.036
# here, 0.091 at 0.5 eV/channel), the one pass nearer the truth on every such pixel measured.
FIRST_MINIMUM_DIFFERENCE = 0.015


def one_pass_tolerance(params: dict) -> float:
    return ONE_PASS_TOLERANCE if params.get("zlp_end") == "threshold" else FIRST_MINIMUM_DIFFERENCE


@pytest.mark.parametrize("params", [{}, {"zlp_end": "threshold", "threshold_ev": 1.5}])
def test_one_pass_matches_align_then_thickness(image, params):
    with raise_if_computes():
        one_pass = thickness(ThicknessParams(align_zlp=True, mean_free_path_nm=100.0, **params), image)
        aligned = align_zlp(AlignParams(), image)
        two_step = thickness(ThicknessParams(mean_free_path_nm=100.0, **params), aligned)
    assert "counts" not in one_pass and one_pass["t_over_lambda"].chunks == ((16, 16, 16), (16, 16, 8))
    t, expected = one_pass["t_over_lambda"].values, two_step["t_over_lambda"].values
    close = image["e_g"].values > 1.5 if not params else np.ones(t.shape, bool)
    np.testing.assert_allclose(t[close], expected[close], rtol=0, atol=one_pass_tolerance(params))
    np.testing.assert_array_equal(one_pass["zlp_shift"].values, aligned["zlp_shift"].values)
    assert one_pass["zlp_shift"].attrs["units"] == "eV"
    assert bool(one_pass["zlp_found"].all())
    if not params:  # as close to the truth as the two-step chain (test_thickness_matches_...)
        error = np.abs(t - image["windowed_log_ratio"].values)
        assert np.median(error) < 0.002 and np.percentile(error, 99) < 0.03 and error.max() < 0.06
        assert error[close].max() < 0.02


def test_threshold_method(image):
    result = thickness(ThicknessParams(zlp_end="threshold", threshold_ev=1.0), image).compute()
    assert np.isfinite(result["t_over_lambda"]).all()


def test_spectra_read_by_decoding_into_the_output(image_lake):
    """The ingest stores the spectra byte-shuffled (SPECTRA_CODEC) and the engine reads whole
    chunks straight from their files, decoding them into the output (zarr_io.DirectChunks), the
    image's edge chunks included: the same counts, and the same thickness, as xarray reading
    through zarr's own pipeline."""
    import xarray as xr
    import zarr

    from engine.ingest.synthetic_eels import SPECTRA_CODEC
    from engine.zarr_io import DIRECT_PREFIX

    url = image_lake.url(image_lake.entry_path("raw", "img"))
    (stored,) = zarr.open_array(url + "/counts", mode="r").compressors
    assert (stored.cname, stored.shuffle) == (SPECTRA_CODEC.cname, SPECTRA_CODEC.shuffle)
    params = ThicknessParams(align_zlp=True)
    image = image_lake.open("raw", "img")
    assert image["counts"].data.name.startswith(DIRECT_PREFIX)
    ours = thickness(params, image)["t_over_lambda"].values
    with zarr.config.set({"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}):
        plain = xr.open_zarr(url, consolidated=False, chunks={})
        assert image["counts"].chunks == plain["counts"].chunks
        assert any(len(set(sizes)) > 1 for sizes in plain["counts"].chunks)  # edge chunks
        np.testing.assert_array_equal(plain["counts"].values, image["counts"].values)
        np.testing.assert_array_equal(thickness(params, plain)["t_over_lambda"].values, ours)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"zlp_end": "threshold"}, "needs threshold_ev"),
        ({"zlp_end": "threshold", "threshold_ev": 80.0}, "outside the loss side"),
        ({"threshold_ev": 1.0}, "only used with zlp_end: threshold"),
        ({"variable": "cnts"}, "did you mean 'counts'"),
    ],
)
def test_bad_params_are_op_errors(image, params, message):
    from engine.errors import OpError

    with pytest.raises(OpError, match=message):
        thickness(ThicknessParams(**params), image)


def test_image_without_zero_loss_or_energy(image):
    from engine.errors import OpError

    core_loss = image.assign_coords(energy=image["energy"] + 300.0)
    with pytest.raises(OpError, match="must contain 0 eV"):
        align_zlp(AlignParams(), core_loss)
    with pytest.raises(OpError, match="dim 'energy' is not in the data"):
        thickness(ThicknessParams(), image.rename(energy="channel"))


def test_thickness_recipe_end_to_end(image_lake, write_recipe, monkeypatch):
    monkeypatch.setenv("REPLICALAKE_CATALOGS", str(REPO / "catalogs"))
    text = (
        (REPO / "recipes" / "eels_thickness.yaml")
        .read_text()
        .replace("{catalog: eels, entry: synthetic_demo}", "{catalog: lake, entry: raw/img}")
    )
    recipe = write_recipe(text)
    summary = engine.run(recipe, image_lake)
    (output,) = summary.outputs
    assert output.status == "computed" and output.reports[0].endswith("t_over_lambda.png")
    assert engine.run(recipe, image_lake).outputs[0].status == "up to date"
    bad = write_recipe(text.replace("mean_free_path_nm: 110.0", "mean_free_path_nm: -1"), "bad.yaml")
    before = lake_files(image_lake)
    with pytest.raises(
        RecipeError,
        match=r"bad.yaml:16: steps\[0\].params.mean_free_path_nm: "
        r"Input should be greater than 0",
    ):
        engine.run(bad, image_lake)
    assert lake_files(image_lake) == before
