"""Band-gap maps: fit I_inel(E) = A (E - E_BG)^b [+ c E] in an energy window, per pixel.

The fit runs on every spectrum of a chunk at once (engine.kernels.bandgap), mapped lazily over
the pixel chunks. When the input carries quantile bands of the inelastic signal (the spread over
ZLP replicas), each band curve is fitted too and the spread of their onsets is the error of
E_BG: that error includes the ZLP model's uncertainty, which the fit covariance alone does not.

The default background term c E (c >= 0) is the low-energy limit of the plasmon's loss function,
which lies under every band-gap onset; without it E_BG comes out 0.2-0.5 eV low for b = 1.5 on
the generator's spectra (engine.kernels.bandgap). `background: none` fits the bare power law.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr
from pydantic import Field, model_validator

from ..bounds import Params
from ..errors import OpError
from ..kernels.bandgap import fit_bandgap as fit_kernel
from ..key_numbers import mark
from ..registry import register_op
from .core import require_dims, require_variables
from .eels import ENERGY, passthrough

QUANTILE = "quantile"
BANDGAP_TRUTH = "e_g"  # the true E_BG map of a synthetic image (engine/kernels/eels_synth.py)
_MAPS = ("e_bg", "e_bg_error", "amplitude", "exponent", "background", "converged", "chi2")


class BandgapParams(Params):
    window_ev: tuple[float, float] = Field(
        description="[low, high] energy loss window of the fit (eV), just above the onset")
    exponent: float | None = Field(
        None, gt=0, description="fixed b: 0.5 direct gap, 1.5 indirect; null fits b too")
    background: Literal["none", "linear"] = Field(
        "linear", description="linear: fit c E (c >= 0) under the onset, the plasmon tail's "
        "low-energy limit; none: the bare power law")
    variable: str = Field("inelastic", description="spectra variable (the ZLP-subtracted signal)")
    quantile_variable: str | None = Field(
        "inelastic_quantile", description=f"quantile bands over a {QUANTILE!r} dim, fitted for "
        "the E_BG error; the default is used when present, null ignores bands")
    weights: Literal["uniform", "poisson"] = Field(
        "uniform", description="uniform: errors from the scatter about the fit; poisson: "
        "sigma^2 = max(I, 1) counts")

    @model_validator(mode="after")
    def _ordered_window(self):
        if not self.window_ev[0] < self.window_ev[1]:
            raise ValueError(f"window_ev must be [low, high] with low < high, got "
                             f"{list(self.window_ev)}")
        return self


def _fit_maps(spectra: np.ndarray, energy, window, exponent, background, sigma):
    fit = fit_kernel(spectra, energy, window=window, exponent=exponent, background=background,
                     sigma=sigma)
    return (fit.e_bg.astype(np.float32), fit.e_bg_error.astype(np.float32),
            fit.amplitude.astype(np.float32), fit.exponent.astype(np.float32),
            fit.background.astype(np.float32), fit.converged, fit.chi2.astype(np.float32))


def _fit(spectra: xr.DataArray, energy: np.ndarray, params: BandgapParams) -> dict:
    """Lazy fit maps of every spectrum in `spectra` (energy last, in one chunk)."""
    if spectra.chunks and len(spectra.chunks[-1]) > 1:
        spectra = spectra.chunk({ENERGY: -1})
    maps = xr.apply_ufunc(
        _fit_maps, spectra,
        kwargs={"energy": energy, "window": params.window_ev, "exponent": params.exponent,
                "background": params.background,
                "sigma": None if params.weights == "uniform" else "poisson"},
        input_core_dims=[[ENERGY]], output_core_dims=[[]] * len(_MAPS),
        dask="parallelized", output_dtypes=[np.float32] * 5 + [bool, np.float32],
    )
    return dict(zip(_MAPS, maps, strict=True))


def _check_window(energy: np.ndarray, params: BandgapParams) -> None:
    low, high = params.window_ev
    if energy.size < 2 or not np.all(np.diff(energy) > 0):
        raise OpError(f"the {ENERGY!r} coordinate must increase")
    if low < energy[0] or high > energy[-1]:
        raise OpError(f"window_ev {list(params.window_ev)} eV is outside the data, which covers "
                      f"{energy[0]:.4g} to {energy[-1]:.4g} eV")
    free = 2 + (params.exponent is None) + (params.background == "linear")
    needed = free + 2  # two more channels than free parameters
    found = int(((energy >= low) & (energy <= high)).sum())
    if found < needed:
        raise OpError(f"window_ev {list(params.window_ev)} eV holds {found} channels; the fit "
                      f"needs at least {needed}: widen it")


@register_op("eels.fit_bandgap", params=BandgapParams, inputs=("inelastic",),
             memory=2.25)  # per-pixel fits: measured 2.17, 2.18 at 32, 64 px (calibrate_op_memory.py)
def fit_bandgap(params: BandgapParams, inelastic: xr.Dataset) -> xr.Dataset:
    """Band-gap maps from fits of A (E - E_BG)^b [+ c E] over window_ev, per pixel.

    Output: `e_bg` (eV), `e_bg_error` (half the spread of E_BG over the quantile band curves
    when the input has them, else the fit's standard error), `amplitude`, `exponent`,
    `background` (the slope c; 0 with background none), `converged` (False: the maps are NaN
    there) and `chi2` (per degree of freedom); with bands also `e_bg_quantile`, the onset of
    each band curve.
    """
    require_dims(inelastic, [ENERGY])
    require_variables(inelastic, [params.variable])
    if ENERGY not in inelastic.coords:
        raise OpError(f"the data has no {ENERGY!r} coordinate; expected energy loss in eV")
    energy = np.asarray(inelastic[ENERGY].values, dtype=np.float64)
    _check_window(energy, params)
    spectra = inelastic[params.variable]
    if ENERGY not in spectra.dims:
        raise OpError(f"variable {params.variable!r} has no {ENERGY!r} dim "
                      f"(dims: {spectra.dims})")
    maps = _fit(spectra.transpose(..., ENERGY), energy, params)
    maps["e_bg_error"].attrs["source"] = "fit covariance"

    bands = params.quantile_variable
    explicit = "quantile_variable" in params.model_fields_set
    if bands is not None and (bands in inelastic.data_vars or explicit):
        require_variables(inelastic, [bands])
        if QUANTILE not in inelastic[bands].dims or ENERGY not in inelastic[bands].dims:
            raise OpError(f"variable {bands!r} needs {QUANTILE!r} and {ENERGY!r} dims "
                          f"(dims: {inelastic[bands].dims})")
        band_e_bg = _fit(inelastic[bands].transpose(..., ENERGY), energy, params)["e_bg"]
        maps["e_bg_quantile"] = band_e_bg
        maps["e_bg_error"] = ((band_e_bg.max(QUANTILE, skipna=False)
                               - band_e_bg.min(QUANTILE, skipna=False)) / 2).astype(np.float32)
        maps["e_bg_error"].attrs["source"] = f"half the spread over the {bands!r} curves"

    units = {"e_bg": "eV", "e_bg_error": "eV", "e_bg_quantile": "eV", "exponent": "1",
             "background": "signal units per eV"}
    names = {"e_bg": "band gap E_BG", "e_bg_error": "band gap error (1 sigma)",
             "e_bg_quantile": "band gap of each quantile curve", "amplitude": "onset amplitude A",
             "exponent": "onset exponent b", "background": "background slope c of c E",
             "converged": "fit converged",
             "chi2": "chi2 per degree of freedom"}
    for name, var in maps.items():
        var.attrs.update({"long_name": names[name], "window_ev": list(params.window_ev)})
        if name in units:
            var.attrs["units"] = units[name]
    truth = inelastic.get(BANDGAP_TRUTH)  # a synthetic image's true E_BG map, carried through
    has_truth = truth is not None and truth.dims == maps["e_bg"].dims
    mark(maps["e_bg"], "median", truth=BANDGAP_TRUTH if has_truth else None)
    mark(maps["converged"], "fraction_true")
    return xr.Dataset({**passthrough(inelastic), **maps}, attrs=dict(inelastic.attrs))
