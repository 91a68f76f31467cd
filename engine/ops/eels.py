"""EELS ops: ZLP alignment and log-ratio thickness over (y, x, energy) spectral images.

Each op checks names and energy ranges against the coordinates (cheap, in memory), then maps a
numpy kernel from engine.kernels.eels over the pixel chunks with the whole energy axis in one
chunk. Nothing here computes: the result is a lazy dataset.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr
from pydantic import Field

from ..bounds import Params as _Params
from ..errors import OpError
from ..kernels import eels as kernels
from ..key_numbers import mark
from ..registry import register_op
from .core import require_dims, require_variables
from .needs import NumbaNeed

ENERGY = "energy"


def spectra_of(image: xr.Dataset, variable: str) -> xr.DataArray:
    """The spectra variable with the energy axis last and in one chunk (kernels need it whole)."""
    require_dims(image, [ENERGY])
    require_variables(image, [variable])
    spectra = image[variable]
    if ENERGY not in spectra.dims:
        raise OpError(f"variable {variable!r} has no {ENERGY!r} dim (dims: {spectra.dims})")
    if ENERGY not in image.coords:
        raise OpError(f"the image has no {ENERGY!r} coordinate; expected energy loss in eV")
    spectra = spectra.transpose(..., ENERGY)
    if spectra.chunks and len(spectra.chunks[-1]) > 1:
        spectra = spectra.chunk({ENERGY: -1})
    return spectra


def energy_axis(image: xr.Dataset) -> np.ndarray:
    energy = np.asarray(image[ENERGY].values, dtype=np.float64)
    if energy.size < 3 or not np.all(np.diff(energy) > 0):
        raise OpError(f"the {ENERGY!r} coordinate must increase with at least 3 channels")
    if not energy[0] < 0 < energy[-1]:
        raise OpError(
            f"the energy axis ({energy[0]:.3g} to {energy[-1]:.3g} eV) must contain 0 eV, "
            "where the zero-loss peak is; is this a low-loss image?"
        )
    return energy


def passthrough(image: xr.Dataset) -> dict[str, xr.DataArray]:
    """Variables without an energy dim (truth maps, masks), carried along unchanged."""
    return {name: var for name, var in image.data_vars.items() if ENERGY not in var.dims}


def zlp_search_field():
    """The one `zlp_search_ev` param both ops share, so they always look for the ZLP alike."""
    return Field(
        kernels.ZLP_SEARCH_EV,
        gt=0,
        description=(
            "half width (eV) of the window around 0 eV that must hold each spectrum's zero-loss peak "
            "maximum (at least 3 channels); widen it for an energy axis miscalibrated by more"
        ),
    )


def zlp_found(result: xr.DataArray, meaning: str) -> xr.DataArray:
    """`zlp_found`, False where `result` is NaN because a spectrum had no zero-loss peak near
    0 eV: a run can count such pixels (lazily, like everything else) instead of hiding them;
    the run summary prints the count (engine/key_numbers.py)."""
    found = np.isfinite(result)
    found.attrs = {
        "long_name": "zero-loss peak found near 0 eV",
        "description": f"False where {meaning}: no clear peak within zlp_search_ev "
        "of 0 eV (or no positive counts)",
    }
    return mark(found, "count_false", label="spectra without ZLP (NaN)")


# The known truth of log-ratio thickness in a synthetic image (engine/ingest/synthetic_eels.py):
# ln(I_total / I_ZLP) inside the recorded window, which is what the method can recover.
THICKNESS_TRUTH = "windowed_log_ratio"


class AlignParams(_Params):
    variable: str = Field("counts", description="spectra variable to align")
    zlp_search_ev: float = zlp_search_field()


# memory: measured 2.43 at 32 x 32 pixels, 2.59 at 64 x 64 (calibrate_op_memory.py, the heap's free
# pages handed back before the task: reused heap memory had hidden part of it, 1.74 and 1.56)
@register_op("eels.align_zlp", params=AlignParams, inputs=("image",), memory=2.6)
def align_zlp(params: AlignParams, image: xr.Dataset) -> xr.Dataset:
    """Shift every spectrum so its zero-loss peak maximum sits at 0 eV (subpixel, parabola fit).

    The peak is looked for within `zlp_search_ev` of 0 eV only: on thick specimens the plasmon
    can be taller. Output: the aligned spectra (same name, same energy grid; channels shifted in
    from outside the window are 0), `zlp_shift`, the energy each spectrum was moved by (eV), and
    `zlp_found`; a spectrum without a ZLP is left unmoved with a NaN shift.
    """
    spectra = spectra_of(image, params.variable)
    energy = energy_axis(image)
    aligned, shift = xr.apply_ufunc(
        kernels.align_zlp,
        spectra,
        kwargs={"energy": energy, "search_ev": params.zlp_search_ev},
        input_core_dims=[[ENERGY]],
        output_core_dims=[[ENERGY], []],
        dask="parallelized",
        output_dtypes=[spectra.dtype, np.float32],
    )
    aligned.attrs = dict(spectra.attrs)
    shift.attrs = {"units": "eV", "long_name": "ZLP shift applied"}
    return xr.Dataset(
        {
            **passthrough(image),
            params.variable: aligned,
            "zlp_shift": shift,
            "zlp_found": zlp_found(shift, "zlp_shift is NaN (the spectrum was not moved)"),
        },
        attrs=dict(image.attrs),
    )


class ThicknessParams(_Params):
    variable: str = Field("counts", description="spectra variable")
    zlp_end: Literal["first_minimum", "threshold"] = Field(
        "first_minimum",
        description="where the ZLP integral stops: the first minimum after the peak, or a fixed energy",
    )
    threshold_ev: float | None = Field(None, description="ZLP upper limit when zlp_end=threshold")
    mean_free_path_nm: float | None = Field(
        None, gt=0, description="inelastic mean free path; adds absolute thickness in nm"
    )
    zlp_search_ev: float = zlp_search_field()
    align_zlp: bool = Field(
        False,
        description="integrate each spectrum as eels.align_zlp would shift it (ZLP maximum at "
        "0 eV), in one pass that finds each ZLP once and never forms the shifted spectra, and add "
        "`zlp_shift`: the same shifts and NaNs as eels.align_zlp then eels.thickness, t/lambda "
        "within float32 rounding with zlp_end threshold, and with first_minimum within 0.015 "
        "(the first minimum of the unshifted spectrum, not of the interpolated one; as close to "
        "the truth); on numpy chunks one compiled loop per spectrum, 1.23x the CPU of reading "
        "the image (the two steps: 3x, measured at 1.6e5 spectra). For an image that is already "
        "aligned, leave it off",
    )


# memory: measured 3.49 at 32 x 32 pixels, 3.04 at 64 x 64 on aligned spectra; with align_zlp 3.54
# and 3.36 (calibrate_op_memory.py, cases eels.thickness and thickness_one_pass; before the one pass
# found the ZLP once and stopped forming aligned channels: an upper bound now)
@register_op("eels.thickness", params=ThicknessParams, inputs=("image",), memory=NumbaNeed(3.6))
def thickness(params: ThicknessParams, image: xr.Dataset) -> xr.Dataset:
    """Log-ratio relative thickness t/lambda = ln(I_total / I_ZLP) per pixel.

    With `mean_free_path_nm`, also the absolute thickness t = (t/lambda) * lambda in nm. The ZLP
    is the peak within `zlp_search_ev` of 0 eV, never the tallest (a thick specimen's plasmon
    can be taller); where there is none, t/lambda is NaN and `zlp_found` False. With
    `align_zlp`, t/lambda of the spectra as eels.align_zlp shifts them, and that shift
    `zlp_shift` (eV), from one pass over the unshifted spectra that finds each ZLP once
    (kernels.eels.aligned_log_ratio_thickness). A
    synthetic image's truth `windowed_log_ratio` (no energy dim), when present, is carried into
    the output.
    """
    spectra = spectra_of(image, params.variable)
    energy = energy_axis(image)
    if params.zlp_end == "threshold":
        if params.threshold_ev is None:
            raise OpError("zlp_end: threshold needs threshold_ev (the ZLP's upper limit in eV)")
        if not 0 < params.threshold_ev < energy[-1]:
            raise OpError(
                f"threshold_ev={params.threshold_ev} eV is outside the loss side of the "
                f"data (0 to {energy[-1]:.3g} eV)"
            )
    elif params.threshold_ev is not None:
        raise OpError("threshold_ev is only used with zlp_end: threshold")
    kernel = kernels.aligned_log_ratio_thickness if params.align_zlp else kernels.log_ratio_thickness
    computed = xr.apply_ufunc(
        kernel,
        spectra,
        kwargs={
            "energy": energy,
            "method": params.zlp_end,
            "threshold_ev": params.threshold_ev,
            "search_ev": params.zlp_search_ev,
        },
        input_core_dims=[[ENERGY]],
        output_core_dims=[[], []] if params.align_zlp else [[]],
        dask="parallelized",
        output_dtypes=[np.float32] * (2 if params.align_zlp else 1),
    )
    t_over_lambda, shift = computed if params.align_zlp else (computed, None)
    t_over_lambda.attrs = {"units": "1", "long_name": "relative thickness t/lambda (log-ratio)"}
    truth = image.get(THICKNESS_TRUTH)
    has_truth = truth is not None and truth.dims == t_over_lambda.dims
    mark(t_over_lambda, "median", truth=THICKNESS_TRUTH if has_truth else None)
    result = {"t_over_lambda": t_over_lambda, "zlp_found": zlp_found(t_over_lambda, "t_over_lambda is NaN")}
    if has_truth:  # carried along so the run summary can print the comparison
        result[THICKNESS_TRUTH] = truth
    if shift is not None:
        shift.attrs = {"units": "eV", "long_name": "ZLP shift applied before integrating"}
        result["zlp_shift"] = shift
    if params.mean_free_path_nm is not None:
        absolute = (t_over_lambda * np.float32(params.mean_free_path_nm)).astype(np.float32)
        absolute.attrs = {
            "units": "nm",
            "long_name": "absolute thickness",
            "mean_free_path_nm": params.mean_free_path_nm,
        }
        result["thickness_nm"] = absolute
    return xr.Dataset(result, attrs=dict(image.attrs))
