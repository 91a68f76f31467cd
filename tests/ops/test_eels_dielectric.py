"""eels.kramers_kronig over a synthetic image: lazy, per pixel, against the exact dielectric function."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import xarray as xr

from engine.errors import OpError
from engine.ingest.synthetic_eels import ingest_synthetic_eels
from engine.kernels import eels_dielectric, eels_synth
from engine.ops.eels import AlignParams, align_zlp
from engine.ops.eels_dielectric import KramersKronigParams, kramers_kronig
from engine.storage import Lake
from engine.testing import raise_if_computes

METAL = KramersKronigParams(refractive_index=None)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    lake = Lake(str(tmp_path_factory.mktemp("kk") / "lake"))
    # A 200 eV window holds the multiple plasmons, which Fourier-log deconvolution needs.
    ingest_synthetic_eels(lake, "img", (16, 16, 2048), seed=3, chunks=(8, 8), progress=False,
                          energy_range=(-5.0, 200.0))
    return align_zlp(AlignParams(), lake.open("raw", "img"))


def exact_dielectric(image, y, x):
    """KK of the generator's own tau S for one pixel: what a perfect deconvolution would give."""
    energy = image["energy"].values
    ssd = eels_synth.single_scattering(energy, float(image["e_g"][y, x]), float(image["b"][y, x]))
    out = eels_dielectric.kramers_kronig(ssd[None] * float(image["tau"][y, x]), np.ones(1), energy,
                                         200.0, None, None)
    return out["eps1"][0] + 1j * out["eps2"][0]


def test_lazy_and_shaped(image):
    with raise_if_computes():
        result = kramers_kronig(METAL, image)
    assert result["eps1"].dims == ("y", "x", "loss") and result["thickness_nm"].dims == ("y", "x")
    assert result["loss"].values[0] > 0 and result["loss"].values[-1] <= 200.0
    assert result["eps1"].chunks[:2] == image["counts"].chunks[:2]


def test_every_pixel_matches_the_exact_dielectric_function(image):
    result = kramers_kronig(METAL, image).compute()
    loss = result["loss"].values
    band = (loss > 5) & (loss < 100)
    errors = []
    for y in range(16):
        for x in range(16):
            truth = exact_dielectric(image, y, x)[band]
            got = (result["eps1"].values[y, x] + 1j * result["eps2"].values[y, x])[band]
            errors.append(np.median(np.abs(got - truth) / np.abs(truth)))
    # Measured with the first-minimum ZLP split and Poisson noise: 0.63% (median pixel),
    # 0.84% (90th percentile), 6.5% worst.
    assert np.median(errors) < 0.015 and np.percentile(errors, 90) < 0.03
    assert np.isnan(result["thickness_nm"].values).all()  # no collection angle, no thickness


def test_a_collection_angle_gives_a_thickness(image):
    result = kramers_kronig(KramersKronigParams(refractive_index=None, collection_angle_mrad=10.0),
                            image.isel(y=slice(0, 8), x=slice(0, 8))).compute()
    thickness = result["thickness_nm"].values
    assert np.all(np.isfinite(thickness)) and np.all(thickness > 0)
    # Thicker pixels (tau) come out thicker: the absolute scale follows the sum rule.
    tau = image["tau"].values[:8, :8]
    assert np.corrcoef(tau.ravel(), thickness.ravel())[0, 1] > 0.95


def test_refractive_index_must_be_stated():
    with pytest.raises(pydantic.ValidationError, match="refractive_index"):
        KramersKronigParams()
    with pytest.raises(pydantic.ValidationError, match="greater than 1"):
        KramersKronigParams(refractive_index=0.5)


def test_missing_beam_energy_is_an_op_error(image):
    bare = image.copy()
    bare.attrs = {}
    with pytest.raises(OpError, match="beam_energy_kev is not set"):
        kramers_kronig(METAL, bare)


def test_inelastic_on_another_energy_axis_is_refused(image):
    other = xr.Dataset({"inelastic": image["counts"].isel(energy=slice(0, 100))})
    with pytest.raises(OpError, match="inelastic input must be eels.subtract_zlp's output"):
        kramers_kronig(METAL, image, inelastic=other)


def test_results_do_not_depend_on_the_chunking(image):
    part = image.isel(y=slice(0, 8), x=slice(0, 8))
    one = kramers_kronig(METAL, part.chunk({"y": 8, "x": 8})).compute()
    many = kramers_kronig(METAL, part.chunk({"y": 3, "x": 5})).compute()
    xr.testing.assert_identical(one, many)
