"""Amplitude regression with honest uncertainties as lake steps (kernels/amplitudes.py).

`amp.sample` writes points of e+e- -> mu+mu- phase space with the analytic |M|^2 (photon + Z,
tree level), chunk by chunk; `amp.train` fits a heteroscedastic deep ensemble to ln |M|^2 (one
batched job); `amp.predict` maps it over any sample's chunks (mean, total sigma and its aleatoric
and ensemble parts); `amp.calibration` reduces pulls against the truth to the calibration and
precision figures: RMS pull in the bulk and in the tails of |M|^2, and relative-error percentiles.
"""

from __future__ import annotations

import json
from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field, model_validator

from ..bounds import Epochs, Events, Replicas, Rows, Seed, Widths
from ..bounds import Params as _Params
from ..errors import OpError, did_you_mean
from ..key_numbers import mark
from ..registry import StepContext, register_op
from . import needs
from .core import as_delayed, require_variables
from .ensembles import (
    checkpointed_training,
    ensemble_architecture,
    history_length,
    lazy_ensemble,
    require_layer_activations,
    result_arrays,
    result_layout,
    weight_names,
)
from .replicas import OptimiserParams

POINT = "point"


# -- phase-space samples -------------------------------------------------------------------------
class SampleParams(_Params):
    n_points: Events = Field(20_000, gt=0, description="phase-space points")
    chunk_points: Rows = Field(10_000, gt=0, description="points per chunk (each drawn on its own)")
    sqrt_s_range: tuple[float, float] = Field((60.0, 120.0), description="sqrt(s) range in GeV")
    sampling: Literal["breit_wigner", "uniform"] = Field(
        "breit_wigner",
        description="sqrt(s) uniform in the Breit-Wigner angle rho (the Z peak as "
        "populated as its share of |M|^2) or uniform in sqrt(s)",
    )
    seed: Seed = 0

    @model_validator(mode="after")
    def _range(self):
        low, high = self.sqrt_s_range
        if not 0 < low < high:
            raise ValueError(
                f"sqrt_s_range must be (low, high) GeV with 0 < low < high, found {self.sqrt_s_range}"
            )
        return self


COLUMNS = ("sqrt_s", "cos_theta", "rho", "msq")


def _sample_block(n: int, sqrt_s_range, sampling: str, seed: int, block: int) -> np.ndarray:
    from ..kernels.amplitudes import sample_phase_space

    drawn = sample_phase_space(n, tuple(sqrt_s_range), seed, block, sampling)
    return np.stack([drawn[name] for name in COLUMNS])


@register_op("amp.sample", params=SampleParams, inputs=(), memory=3.0)  # a chunk's three columns
def sample(params: SampleParams) -> xr.Dataset:
    """Points of e+e- -> mu+mu- phase space with the exact |M|^2 (kernels/amplitudes.py's formula).

    Variables along `point`: sqrt_s (GeV), cos_theta, rho (Breit-Wigner angle
    arctan((s - mZ^2)/(mZ GammaZ))), msq (spin-averaged |M|^2, dimensionless). Chunk k is drawn
    from (seed, k): the same whichever worker draws it.
    """
    sizes = [
        min(params.chunk_points, params.n_points - start)
        for start in range(0, params.n_points, params.chunk_points)
    ]
    blocks = [
        da.from_delayed(
            dask.delayed(_sample_block, pure=True)(n, params.sqrt_s_range, params.sampling, params.seed, k),
            (len(COLUMNS), n),
            float,
        )
        for k, n in enumerate(sizes)
    ]
    table = da.concatenate(blocks, axis=1)
    attrs = {
        "sqrt_s": {"units": "GeV", "long_name": "sqrt(s)"},
        "cos_theta": {"long_name": "cos(theta)"},
        "rho": {"long_name": "Breit-Wigner angle"},
        "msq": {"long_name": "|M|^2 (spin-averaged, e+e- -> mu+mu-, photon + Z)"},
    }
    return xr.Dataset(
        {name: xr.Variable((POINT,), table[k], attrs[name]) for k, name in enumerate(COLUMNS)},
        attrs={"process": "e+e- -> mu+mu- (tree level, photon + Z)"},
    )


# -- training -----------------------------------------------------------------------------------
class AmpTrainParams(_Params):
    features: list[str] = Field(["sqrt_s", "cos_theta"], min_length=1, description="network inputs")
    target: str = Field("msq", description="positive amplitude; the networks learn its logarithm")
    replicas: Replicas = Field(8, gt=1, description="ensemble members (own initialisation and split)")
    hidden: Widths = Field([64, 64])
    activations: list[str] = Field(["tanh", "tanh", "linear"])
    epochs: Epochs = Field(4000, gt=0)
    batch_size: Rows | None = Field(512, gt=0, description="points per step (none: full batch)")
    beta: float = Field(0.5, ge=0, le=1, description="beta-NLL weight sigma^(2 beta) (0: plain NLL)")
    optimiser: OptimiserParams = OptimiserParams(lr=3e-3, lr_final=1e-4)
    training_fraction: float = Field(0.8, gt=0, lt=1, description="per-replica training share")
    holdout_fraction: float = Field(
        0.1, gt=0, lt=1, description="points no replica sees, on which the ensemble's sigma scale is fitted"
    )
    patience: Epochs | None = Field(None, gt=0, description="checks without improvement (none: never stop)")
    validation_every: Epochs = Field(100, gt=0)
    checkpoint_every: Epochs | None = Field(1000, gt=0)
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _layers(self):
        require_layer_activations(self.hidden, self.activations)
        return self


def point_variables(data: xr.Dataset, names: list[str]) -> list[xr.DataArray]:
    """The named 1-D variables along one shared point dim (amp ops, replicas.hyperopt)."""
    found = []
    for name in names:
        if name not in data.variables:
            raise OpError(f"variable {name!r} is not in the data{did_you_mean(name, data.variables)}")
        if data[name].ndim != 1:
            raise OpError(f"{name!r} must be 1-D (one value per point), found dims {data[name].dims}")
        found.append(data[name])
    if len({v.dims for v in found}) != 1:
        raise OpError(f"{names} must share one point dim, found {[v.dims for v in found]}")
    return found


def train_on(x: np.ndarray, target: np.ndarray, params: AmpTrainParams, **hooks):
    """Fit the op's ensemble on points x (n, features) with |M|^2 `target` (n,): the sigma-scale
    holdout, each replica's training mask, the kernel's settings from params (amp.train,
    replicas.hyperopt). Returns kernels.amplitudes.fit_amplitude's (result, low, high, scale, k)."""
    from ..kernels.amplitudes import fit_amplitude, holdout_mask
    from ..kernels.optim import OptimiserConfig
    from ..kernels.regression import RegressionConfig
    from ..kernels.replicas import training_masks
    from ..kernels.train import StoppingConfig

    holdout = holdout_mask(len(x), params.holdout_fraction, params.seed)
    n_fit = int((~holdout).sum())
    mask = training_masks(n_fit, np.zeros(n_fit, int), params.replicas, params.training_fraction, params.seed)
    config = RegressionConfig(
        tuple(params.hidden),
        tuple(params.activations),
        params.epochs,
        OptimiserConfig(**params.optimiser.model_dump()),
        StoppingConfig(threshold=np.inf, patience=params.patience or params.epochs, stagnation_epochs=None),
        params.validation_every,
        params.seed,
        params.device,
        params.checkpoint_every,
    )
    return fit_amplitude(
        x, target, mask, config, holdout=holdout, beta=params.beta, batch_size=params.batch_size, **hooks
    )


def _train(features, target, params: AmpTrainParams, context: StepContext) -> dict[str, np.ndarray]:
    x = np.stack(features, axis=-1)
    if len(x) < 8:
        raise ValueError(f"amp.train needs at least 8 points, found {len(x)}")
    fitted = {}

    def fit(**hooks):
        result, fitted["low"], fitted["high"], fitted["scale"], fitted["k"] = train_on(
            x, target, params, **hooks
        )
        return result

    result = checkpointed_training(context, params.epochs, params.validation_every, fit)
    scale = fitted["scale"]
    return {
        **result_arrays(result, history_length(params.epochs, params.validation_every)),
        "input_low": fitted["low"],
        "input_high": fitted["high"],
        "target_scale": np.array([scale.mean, scale.std]),
        "sigma_scale": np.array(fitted["k"]),
    }


@register_op(
    "amp.train",
    params=AmpTrainParams,
    wants_context=True,
    inputs=("data",),
    memory=needs.TorchNeed(
        lambda p, i, o: (
            4 * needs.whole_bytes(i["data"])
            + needs.ensemble_training_bytes(
                p.replicas, [len(p.features), *p.hidden, 2], p.batch_size or i["data"][p.target].size
            )
        )
    ),
)
def train(params: AmpTrainParams, data: xr.Dataset, context: StepContext) -> xr.Dataset:
    """Heteroscedastic deep ensemble of ln(target): each replica outputs a mean and ln sigma^2.

    Gaussian NLL loss (beta-NLL weighted), one training/validation split and initialisation per
    replica, best validation weights kept, each sigma output then refitted exactly; a held-out
    share of the points sets the ensemble's sigma scale. Stores the networks, input ranges, the
    target's log-scale (`target_scale`: mean, std of ln target) and `sigma_scale` with the
    training record.
    """
    features = point_variables(data, params.features)
    (target,) = point_variables(data, [params.target])
    if target.dims != features[0].dims:
        raise OpError(f"target {params.target!r} must lie along {features[0].dims}, found {target.dims}")
    architecture = ensemble_architecture(
        len(features), params.hidden, params.activations, params.seed, n_out=2
    )
    trained = dask.delayed(_train, pure=True)(
        [as_delayed(f.data) for f in features], as_delayed(target.data), params, context
    )
    layout = result_layout(
        architecture, params.replicas, history_length(params.epochs, params.validation_every)
    )
    layout["input_low"] = (("feature",), (len(features),), float)
    layout["input_high"] = (("feature",), (len(features),), float)
    layout["target_scale"] = (("moment",), (2,), float)
    layout["sigma_scale"] = ((), (), float)
    return lazy_ensemble(
        trained,
        layout,
        architecture,
        {
            "features": list(params.features),
            "target": params.target,
            "kind": "heteroscedastic amplitude ensemble",
            "epochs": params.epochs,
        },
    )


# -- inference ----------------------------------------------------------------------------------
class AmpPredictParams(_Params):
    truth: str | None = Field("msq", description="true amplitude in the data, for pulls (none: skip)")
    device: Literal["auto", "cpu", "cuda"] = "cpu"


OUTPUTS = ("log_mean", "sigma", "sigma_aleatoric", "sigma_ensemble")


def _predict_block(block: np.ndarray, weights: dict, architecture: dict, device: str) -> np.ndarray:
    from ..kernels.amplitudes import TargetScale, predict_amplitude

    low, high, (mean, std) = weights["input_low"], weights["input_high"], weights["target_scale"]
    out = predict_amplitude(
        weights,
        architecture,
        block.T,
        low,
        high,
        TargetScale(mean, std),
        kept=weights["kept"],
        sigma_scale=float(weights["sigma_scale"]),
        device=device,
    )
    return np.stack([out[name] for name in OUTPUTS])


def _weights(**arrays):
    return {name: np.asarray(value) for name, value in arrays.items()}


@register_op(
    "amp.predict", params=AmpPredictParams, inputs=("model", "data"), memory=needs.TorchNeed(2.0 + 2 * 64)
)  # a chunk, and every replica's activations on it
def predict(params: AmpPredictParams, model: xr.Dataset, data: xr.Dataset) -> xr.Dataset:
    """Ensemble prediction of ln |M|^2 per point, chunk by chunk (lazy).

    Outputs log_mean, sigma (total: k sqrt(mean sigma_r^2 + var mu_r)), sigma_aleatoric,
    sigma_ensemble (natural-log units, i.e. relative uncertainties of |M|^2), msq_pred =
    exp(log_mean); with `truth`: pull = (log_mean - ln truth) / sigma and relative_error =
    msq_pred / truth - 1. The data's own variables pass through.
    """
    if model.attrs.get("kind") != "heteroscedastic amplitude ensemble":
        raise OpError(
            f"input 'model' is not an amp.train ensemble (attribute kind is {model.attrs.get('kind')!r})"
        )
    architecture = json.loads(model.attrs["architecture"])
    features = point_variables(data, list(model.attrs["features"]))
    stacked = da.stack([da.asarray(f.data) for f in features]).rechunk({0: -1})
    names = [*weight_names(model), "input_low", "input_high", "target_scale", "sigma_scale", "kept"]
    weights = dask.delayed(_weights, pure=True)(**{n: as_delayed(model[n].data) for n in names})
    out = da.map_blocks(
        _predict_block,
        stacked,
        weights,
        architecture,
        params.device,
        chunks=((len(OUTPUTS),), stacked.chunks[1]),
        dtype=float,
        meta=np.empty((0, 0), float),
    )
    dim = features[0].dims[0]
    result = xr.Dataset(
        {name: ((dim,), out[k]) for k, name in enumerate(OUTPUTS)},
        coords={k: v for k, v in data.coords.items() if v.dims == (dim,)},
    )
    result["msq_pred"] = np.exp(result["log_mean"])
    if params.truth is not None:
        (truth,) = point_variables(data, [params.truth])
        result["pull"] = (result["log_mean"] - np.log(truth)) / result["sigma"]
        result["relative_error"] = result["msq_pred"] / truth - 1
    return result.assign({k: v for k, v in data.data_vars.items() if v.dims == (dim,)})


# -- calibration and precision --------------------------------------------------------------------
class CalibrationParams(_Params):
    truth: str = "msq"
    tail_fraction: float = Field(
        0.05, gt=0, lt=0.5, description="lowest and highest fraction of the true |M|^2 that count as tails"
    )
    percentiles: list[float] = Field([50.0, 90.0, 99.0], min_length=1)
    pull_bins: int = Field(40, ge=2, le=10_000, description="bins of the pull histograms on [-5, 5]")

    @model_validator(mode="after")
    def _percentiles(self):
        if any(not 0 <= p <= 100 for p in self.percentiles):
            raise ValueError(f"percentiles must lie in [0, 100], found {self.percentiles}")
        return self


def _calibrate(log_mean, sigma, truth, params: CalibrationParams) -> dict[str, np.ndarray]:
    from ..kernels.amplitudes import precision_summary

    out = precision_summary(log_mean, sigma, truth, params.tail_fraction, tuple(params.percentiles))
    pulls, bulk = out["pulls"], out["bulk"]
    edges = np.linspace(-5.0, 5.0, params.pull_bins + 1)
    clipped = np.clip(pulls, -5.0, 5.0)  # overflow into the edge bins
    return {
        "pulls_bulk": np.histogram(clipped[bulk], edges)[0].astype(float),
        "pulls_tails": np.histogram(clipped[~bulk], edges)[0].astype(float),
        "rms_pull_bulk": np.array(out["rms_pull_bulk"]),
        "rms_pull_tails": np.array(out["rms_pull_tails"]),
        "mean_pull": np.array(pulls.mean()),
        "points_bulk": np.array(bulk.sum()),
        "points_tails": np.array((~bulk).sum()),
        "relative_error_percentile": out["relative_error_percentiles"],
    }


@register_op("amp.calibration", params=CalibrationParams, memory=needs.gathered(4.0))
def calibration(params: CalibrationParams, data: xr.Dataset) -> xr.Dataset:
    """Calibration and precision of an amp.predict output against the truth (one small task).

    Outputs rms_pull_bulk and rms_pull_tails (1 for calibrated sigmas), mean_pull, the point
    counts, relative_error_percentile (percentile) of |msq_pred / truth - 1|, and the pull
    histograms pulls_bulk, pulls_tails on [-5, 5] (overflow in the edge bins; plot kind hist).
    """
    require_variables(data, ["log_mean", "sigma", params.truth])
    done = dask.delayed(_calibrate, pure=True)(
        as_delayed(data["log_mean"].data),
        as_delayed(data["sigma"].data),
        as_delayed(data[params.truth].data),
        params,
    )
    dims = {
        "rms_pull_bulk": (),
        "rms_pull_tails": (),
        "mean_pull": (),
        "points_bulk": (),
        "points_tails": (),
        "relative_error_percentile": ("percentile",),
        "pulls_bulk": ("pull",),
        "pulls_tails": ("pull",),
    }
    sizes = {"percentile": len(params.percentiles), "pull": params.pull_bins}
    edges = np.linspace(-5.0, 5.0, params.pull_bins + 1)
    result = xr.Dataset(
        {
            name: (d, da.from_delayed(done[name], tuple(sizes[k] for k in d), float))
            for name, d in dims.items()
        },
        coords={
            "percentile": params.percentiles,
            "pull": 0.5 * (edges[1:] + edges[:-1]),
            "pull_edges": edges,
        },
    )
    for name in ("rms_pull_bulk", "rms_pull_tails", "relative_error_percentile"):
        mark(result[name], "value")
    return result
