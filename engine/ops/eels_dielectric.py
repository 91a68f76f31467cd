"""`eels.kramers_kronig`: the dielectric function and absolute thickness of every pixel, streaming.

Fourier-log deconvolution then Kramers-Kronig analysis (engine.kernels.eels_dielectric) mapped
over pixel chunks; the energy axis is one chunk, so every FFT is chunk-local and memory stays
bounded by the chunk, whatever the image size.

The zero-loss part each pixel is deconvolved with comes from `eels.subtract_zlp` when its output
is given as `inelastic` (ZLP = spectrum - median inelastic signal: the replica-model ZLP), else
from the spectrum itself up to its first minimum after the peak (Egerton's simplest split, which
leaves the ZLP tail beyond the minimum in the SSD).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from pydantic import Field

from ..errors import OpError
from ..kernels import eels as eels_kernels
from ..kernels import eels_dielectric as kernels
from ..registry import register_op
from .eels import ENERGY, _Params, energy_axis, spectra_of


class KramersKronigParams(_Params):
    variable: str = Field("counts", description="spectra variable (aligned: ZLP at 0 eV)")
    refractive_index: float | None = Field(
        ..., gt=1.0, description="refractive index n for the sum-rule normalisation "
        "(Re[1/eps(0)] = 1/n^2); null for a metal (1/n^2 = 0)")
    beam_energy_kev: float | None = Field(
        None, gt=0, description="beam energy; default the image's beam_energy_kev attribute")
    collection_angle_mrad: float | None = Field(
        None, gt=0, description="spectrometer collection semi-angle beta; default the image's "
        "collection_angle_mrad attribute, if any (without it there is no angular correction "
        "and no absolute thickness)")
    reconvolve_fwhm_ev: float | None = Field(
        None, gt=0, description="FWHM of the Gaussian the SSD is reconvolved with; default each "
        "pixel's own ZLP FWHM")
    taper_ev: float | None = Field(
        None, ge=0, description="cosine taper at the window's end; default 5% of the window")


def _setting(value, image: xr.Dataset, attr: str, name: str, required: bool):
    if value is not None:
        return float(value)
    if attr in image.attrs:
        return float(image.attrs[attr])
    if required:
        raise OpError(f"{name} is not set and the image has no {attr!r} attribute; set {name} in "
                      "the step's params")
    return None


def _fwhm(zlp: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """FWHM (eV) of each ZLP, from its channels above half maximum: a property of the spectrum
    alone, so results never depend on how the image is chunked."""
    above = (zlp >= 0.5 * zlp.max(axis=-1, keepdims=True)).sum(axis=-1)
    return np.maximum(above, 1) * float(energy[1] - energy[0])


def _zlp_by_first_minimum(spectra: np.ndarray, energy: np.ndarray) -> np.ndarray:
    flat = spectra.reshape(-1, spectra.shape[-1])
    stop = eels_kernels.first_minimum_channel(flat, energy)  # -1 (no ZLP): nothing is kept
    keep = np.arange(flat.shape[-1])[None, :] <= stop[:, None]
    return np.where(keep, flat, 0.0).reshape(spectra.shape)


def _block(spectra, inelastic, *, energy, params: KramersKronigParams, beam, beta):
    spectra = np.asarray(spectra, dtype=np.float64)
    if inelastic is None:
        zlp = _zlp_by_first_minimum(spectra, energy)
    else:
        zlp = spectra - np.nan_to_num(np.asarray(inelastic, dtype=np.float64))
    fwhm = params.reconvolve_fwhm_ev or _fwhm(zlp, energy)
    taper = params.taper_ev if params.taper_ev is not None else 0.05 * (energy[-1] - energy[0])
    ssd, i0 = kernels.fourier_log_ssd(spectra, zlp, energy, fwhm, taper)
    out = kernels.kramers_kronig(ssd, i0, energy, beam, beta, params.refractive_index)
    return (out["loss_function"].astype(np.float32), out["eps1"].astype(np.float32),
            out["eps2"].astype(np.float32), out["thickness_nm"].astype(np.float32))


@register_op("eels.kramers_kronig", params=KramersKronigParams, inputs=("image",),
             optional_inputs=("inelastic",),
             memory=60.0)  # float64, complex128 padded to 2n for FFTs: measured 58.8, 58.3 (16, 32 px)
def kramers_kronig(params: KramersKronigParams, image: xr.Dataset,
                   inelastic: xr.Dataset | None = None) -> xr.Dataset:
    """Dielectric function eps1 + i eps2 and absolute thickness per pixel (Kramers-Kronig).

    Output on a positive-loss axis `loss` (k x dispersion, up to the window's end): the
    normalised loss function Im[-1/eps], eps1, eps2; and the map thickness_nm (NaN without a
    collection angle). The window must reach past the multiple-scattering region for the
    Fourier-log step to be exact (measured: SSD within 0.1% at t/lambda <= 1.8 on a 200 eV
    window; a 46 eV window loses the multiple plasmons of thick pixels).
    """
    spectra = spectra_of(image, params.variable)
    energy = energy_axis(image)
    beam = _setting(params.beam_energy_kev, image, "beam_energy_kev", "beam_energy_kev", True)
    beta = _setting(params.collection_angle_mrad, image, "collection_angle_mrad",
                    "collection_angle_mrad", False)
    args = [spectra]
    core = [[ENERGY]]
    if inelastic is not None:
        signal = spectra_of(inelastic, "inelastic")
        if signal.sizes[ENERGY] != energy.size or not np.allclose(signal[ENERGY].values, energy):
            raise OpError("the inelastic input must be eels.subtract_zlp's output on the image's own "
                          f"energy axis; its energy axis has {signal.sizes[ENERGY]} channels, the "
                          f"image's {energy.size}")
        args.append(signal)
        core.append([ENERGY])
    loss, _ = kernels.loss_grid(energy)
    if loss.size < 8:
        raise OpError(f"the loss side of the window (0 to {energy[-1]:.3g} eV) has {loss.size} "
                      "channels; Kramers-Kronig needs the plasmon region")

    def block(spectra_block, inelastic_block=None):
        return _block(spectra_block, inelastic_block, energy=energy, params=params, beam=beam, beta=beta)

    results = xr.apply_ufunc(
        block, *args, input_core_dims=core,
        output_core_dims=[["loss"], ["loss"], ["loss"], []],
        dask="parallelized", output_dtypes=[np.float32] * 4,
        dask_gufunc_kwargs={"output_sizes": {"loss": loss.size}},
    )
    names = ("loss_function", "eps1", "eps2", "thickness_nm")
    long_names = ("loss function Im[-1/eps]", "real part of the dielectric function",
                  "imaginary part of the dielectric function", "absolute thickness (Kramers-Kronig)")
    variables = {}
    for name, value, long_name in zip(names, results, long_names):
        value.attrs = {"long_name": long_name, "units": "nm" if name == "thickness_nm" else "1"}
        variables[name] = value
    coords = {"loss": ("loss", loss, {"units": "eV", "long_name": "energy loss"})}
    attrs = {**image.attrs, "refractive_index": params.refractive_index or "metal",
             "collection_angle_mrad": beta or "none"}
    return xr.Dataset(variables, coords=coords, attrs=attrs)
