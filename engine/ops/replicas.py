"""Replica ops: pseudo-data, batched ensemble training, lazy inference and band summaries.

The Monte Carlo replica method (DOMAIN.md section 1) as four lazy steps:
`replicas.pseudodata` draws R fluctuations of the data from its covariance, `replicas.train`
fits one network per replica in one batched job (a single dask task, checkpointed to the lake),
`replicas.predict` maps the stored ensemble over any dataset's chunks, and `replicas.summary`
reduces the replica dim to mean, std and quantile bands. `replicas.toy_regression` makes a
known-truth 1-D dataset for closure tests.
"""

from __future__ import annotations

import json
from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field, model_validator

from ..bounds import Epochs, Points, Repeats, Replicas, Seed, Widths
from ..bounds import Params as _Params
from ..errors import OpError, did_you_mean
from ..key_numbers import mark
from ..registry import StepContext, register_op
from . import needs
from .core import as_delayed, require_dims, require_variables
from .ensembles import (
    REPLICA,
    checkpointed_training,
    ensemble_architecture,
    history_length,
    lazy_ensemble,
    require_layer_activations,
    result_arrays,
    result_layout,
    weight_names,
)

# -- known-truth data ------------------------------------------------------------------------
TOY_FUNCTIONS = {
    "sin": lambda x: 1.0 + 0.5 * np.sin(2 * np.pi * x),
    "gauss": lambda x: 0.2 + np.exp(-((x - 0.5) ** 2) / (2 * 0.1**2)),
    "poly": lambda x: 1.0 + x - 2.0 * x**2 + 1.5 * x**3,
}
TOY_TRUTH = "truth"  # the known-truth variable of toy_regression, carried through predict


class ToyParams(_Params):
    function: Literal["sin", "gauss", "poly"] = "sin"
    n_points: Points = Field(60, ge=4)
    x_range: tuple[float, float] = (0.0, 1.0)
    noise: float = Field(0.05, gt=0, description="relative statistical uncertainty per point")
    normalisation: float = Field(0.0, ge=0, description="relative fully correlated uncertainty")
    seed: Seed = 0


def _toy(params: ToyParams) -> dict[str, np.ndarray]:
    x = np.linspace(*params.x_range, params.n_points)
    truth = TOY_FUNCTIONS[params.function](x)
    rng = np.random.default_rng(params.seed)
    stat = params.noise * truth
    shift = 1.0 + params.normalisation * rng.standard_normal()
    return {"x": x, "truth": truth, "stat": stat, "y": truth * shift + stat * rng.standard_normal(x.size)}


@register_op("replicas.toy_regression", params=ToyParams, inputs=(),
             memory=2.0)  # a small in-memory table
def toy_regression(params: ToyParams) -> xr.Dataset:
    """Level-1 closure data: one fluctuation of a known function, with its uncertainties.

    Variables: y (data), stat (absolute 1-sigma), truth, and sys_mult (relative normalisation)
    when `normalisation` > 0.
    """
    arrays = dask.delayed(_toy, pure=True)(params)
    n = params.n_points
    variables = {name: ("point", da.from_delayed(arrays[name], (n,), float))
                 for name in ("truth", "stat", "y")}
    if params.normalisation > 0:
        variables["sys_mult"] = (("point", "sys"), da.full((n, 1), params.normalisation))
    x = np.linspace(*params.x_range, n)
    return xr.Dataset(variables, coords={"x": ("point", x)},
                      attrs={"function": params.function})


# -- pseudo-data ------------------------------------------------------------------------------
class PseudodataParams(_Params):
    central: str = Field("y", description="central values, 1-D over the data points")
    stat: str | None = Field("stat", description="uncorrelated absolute 1-sigma uncertainty")
    covariance: str | None = Field(None, description="full additive covariance (point, point_b)")
    sys_additive: str | None = Field(None, description="absolute correlated systematics (point, sys)")
    sys_multiplicative: str | None = Field(None, description="relative systematics (point, sys)")
    group: str | None = Field(None, description="dataset label per point: splits are per group")
    replicas: Replicas = Field(gt=0, description="number of Monte Carlo replicas R")
    seed: Seed = 0
    training_fraction: float = Field(0.75, gt=0, le=1)
    split: Literal["per_replica", "shared"] = Field(
        "per_replica", description="per_replica: each replica its own training/validation split "
        "(NNPDF); shared: one split for all, whose bands are calibrated (see training_masks)")
    t0: str | None = Field(
        None, description="1-D reference values at which multiplicative systematics enter the fit "
        "covariance (NNPDF's t0: a previous fit, or a closure test's truth); none: the central "
        "values, which pulls fits below the data (d'Agostini bias)")


def _loss_covariance(central, stat, cov, sys_add, sys_mult) -> np.ndarray:
    """The covariance the fit uses: all sources added, multiplicative ones at `central` (the data's
    central values, or t0 reference values)."""
    n = central.size
    total = np.zeros((n, n)) if cov is None else np.array(cov, float)
    if stat is not None:
        total += np.diag(np.asarray(stat, float) ** 2)
    if sys_add is not None:
        total += sys_add @ sys_add.T
    if sys_mult is not None:
        absolute = sys_mult * central[:, None]
        total += absolute @ absolute.T
    return total


def _draw(central, stat, cov, sys_add, sys_mult, group, t0, params: PseudodataParams):
    from ..kernels.replicas import draw_replicas, training_masks

    additive = _loss_covariance(central, stat, cov, sys_add, None)
    data = draw_replicas(central, additive, sys_mult, params.replicas, params.seed)
    groups = np.zeros(central.size, int) if group is None else np.unique(group, return_inverse=True)[1]
    mask = training_masks(central.size, groups, params.replicas, params.training_fraction, params.seed,
                          shared=params.split == "shared")
    return {"pseudodata": data, "training_mask": mask,
            "covariance": _loss_covariance(central if t0 is None else np.asarray(t0, float),
                                           stat, cov, sys_add, sys_mult)}


def _optional(data: xr.Dataset, name: str | None, dims: tuple[str, ...], what: str):
    """The named variable's array (lazy) checked against the expected leading dims, or None."""
    if name is None:
        return None
    require_variables(data, [name])
    var = data[name]
    if var.dims[: len(dims)] != dims or var.ndim not in (len(dims), len(dims) + 1):
        raise OpError(f"{what} {name!r} must have dims {dims} (+ one systematics dim where "
                      f"relevant); found {var.dims} with shape {var.shape}")
    if "covariance" in what and var.shape[0] != var.shape[1]:
        raise OpError(f"{what} {name!r} must be square, found shape {var.shape}")
    return var.data


@register_op("replicas.pseudodata", params=PseudodataParams,
             memory=needs.gathered(3.0))  # every replica drawn at once from the whole covariance
def pseudodata(params: PseudodataParams, data: xr.Dataset) -> xr.Dataset:
    """R pseudo-data replicas d_k = (d + L eps_k) prod(1 + delta r_k), seeded, with per-replica
    training masks (a `training_fraction` of each group's points) and the fit covariance.
    """
    require_variables(data, [params.central])
    central = data[params.central]
    if central.ndim != 1:
        raise OpError(f"central values {params.central!r} must be 1-D, found dims {central.dims}")
    (point,) = central.dims
    if params.stat is None and params.covariance is None and params.sys_additive is None:
        raise OpError("give at least one additive uncertainty: stat, covariance or sys_additive")
    arrays = [central.data,
              _optional(data, params.stat, (point,), "stat"),
              _optional(data, params.covariance, (point,), "covariance"),
              _optional(data, params.sys_additive, (point,), "sys_additive"),
              _optional(data, params.sys_multiplicative, (point,), "sys_multiplicative"),
              _optional(data, params.group, (point,), "group"),
              _optional(data, params.t0, (point,), "t0")]
    if params.covariance is not None and data[params.covariance].shape != (central.size,) * 2:
        raise OpError(f"covariance {params.covariance!r} has shape {data[params.covariance].shape}; "
                      f"expected ({central.size}, {central.size}) for {central.size} points")
    drawn = dask.delayed(_draw, pure=True)(*map(as_delayed, arrays), params)
    n, r = central.size, params.replicas
    other = f"{point}_b"
    result = xr.Dataset(
        {"pseudodata": ((REPLICA, point), da.from_delayed(drawn["pseudodata"], (r, n), float)),
         "training_mask": ((REPLICA, point), da.from_delayed(drawn["training_mask"], (r, n), bool)),
         "covariance": ((point, other), da.from_delayed(drawn["covariance"], (n, n), float))},
        coords={REPLICA: np.arange(r), **{k: v for k, v in data.coords.items() if point in v.dims}},
    )
    passthrough = {k: v for k, v in data.data_vars.items() if v.dims == (point,)}
    return result.assign(passthrough)


# -- training ---------------------------------------------------------------------------------
class OptimiserParams(_Params):
    name: Literal["adam", "nadam", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0)
    lr_final: float | None = Field(None, gt=0, description="learning rate at the last epoch: lr falls "
                                   "geometrically to it (none: constant lr)")
    clip_norm: float | None = Field(None, gt=0, description="per-replica gradient norm cap")

    @model_validator(mode="after")
    def _decays(self) -> OptimiserParams:
        if self.lr_final is not None and self.lr_final > self.lr:
            raise ValueError(f"lr_final must not exceed lr = {self.lr}, found {self.lr_final}")
        return self


class StoppingParams(_Params):
    threshold: float = Field(10.0, gt=0, description="validation chi2/n a replica must reach")
    patience: Epochs | None = Field(None, gt=0, description="epochs without improvement (10% default)")
    stagnation_epochs: Epochs | None = Field(200, gt=0)
    max_reinits: Repeats = Field(3, ge=0)
    outlier_sigma: float = Field(4.0, gt=0)


class TrainingParams(_Params):
    """What every replica training step shares: the network, the optimiser, stopping, device."""

    hidden: Widths = Field([20, 20], description="hidden layer widths")
    activations: list[str] = Field(["tanh", "tanh", "linear"], description="one per layer")
    epochs: Epochs = Field(5000, gt=0)
    validation_every: Epochs = Field(10, gt=0)
    optimiser: OptimiserParams = OptimiserParams()
    stopping: StoppingParams = StoppingParams()
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: Epochs | None = Field(1000, gt=0, description="epochs between checkpoints")

    @model_validator(mode="after")
    def _layers(self) -> TrainingParams:
        require_layer_activations(self.hidden, self.activations)
        if any(w <= 0 for w in self.hidden):
            raise ValueError(f"hidden widths must be positive, found {self.hidden}")
        return self


class TrainParams(TrainingParams):
    features: list[str] = Field(min_length=1, description="network inputs: coords or variables")
    target: str = "pseudodata"
    mask: str = "training_mask"
    covariance: str = "covariance"


def feature_columns(data: xr.Dataset, names: list[str], point: str) -> list[xr.DataArray]:
    """The named network inputs, each one value per point (replicas.train, replicas.hyperopt)."""
    found = []
    for name in names:
        if name not in data.variables:
            raise OpError(f"feature {name!r} is not in the data{did_you_mean(name, data.variables)}")
        if data[name].dims != (point,):
            raise OpError(f"feature {name!r} must have dims ({point!r},), found {data[name].dims}")
        found.append(data[name])
    return found


def training_config(params: TrainParams):
    """The regression kernel's settings from the op's params (replicas.train, replicas.hyperopt)."""
    from ..kernels.optim import OptimiserConfig
    from ..kernels.regression import RegressionConfig
    from ..kernels.train import StoppingConfig

    return RegressionConfig(
        tuple(params.hidden), tuple(params.activations), params.epochs,
        OptimiserConfig(**params.optimiser.model_dump()),
        StoppingConfig(**params.stopping.model_dump()), params.validation_every, params.seed,
        params.device, params.checkpoint_every)


def _train(features, target, mask, covariance, params: TrainParams, context: StepContext):
    from ..kernels.regression import fit_regression

    config = training_config(params)
    fitted = {}

    def fit(**hooks):
        result, fitted["low"], fitted["high"] = fit_regression(
            np.stack(features, axis=-1), target, mask, covariance, config, **hooks)
        return result

    result = checkpointed_training(context, params.epochs, params.validation_every, fit)
    return _model_arrays(result, fitted["low"], fitted["high"], params)


def _model_arrays(result, low, high, params: TrainParams) -> dict[str, np.ndarray]:
    checks = history_length(params.epochs, params.validation_every)
    return {**result_arrays(result, checks), "input_low": low, "input_high": high}


@register_op("replicas.train", params=TrainParams, wants_context=True, version="1",
             memory=needs.TorchNeed(needs.replica_fit_need))
def train(params: TrainParams, data: xr.Dataset, context: StepContext) -> xr.Dataset:
    """Train one network per pseudo-data replica, all replicas batched in one job.

    Loss chi2/n with the data covariance (Cholesky solves); NNPDF-style stopping per replica;
    dead replicas re-initialised; post-fit selection recorded in `kept` and `drop_reason`
    (flag_meanings). Checkpoints go to the lake, so an interrupted run resumes.
    """
    require_variables(data, [params.target, params.mask, params.covariance])
    target = data[params.target]
    if target.dims[0] != REPLICA or target.ndim != 2:
        raise OpError(f"target {params.target!r} must have dims ({REPLICA!r}, point), found {target.dims}")
    point = target.dims[1]
    features = feature_columns(data, params.features, point)
    architecture = ensemble_architecture(len(features), params.hidden, params.activations, params.seed)
    r = target.sizes[REPLICA]
    trained = dask.delayed(_train, pure=True)(
        [as_delayed(f.data) for f in features], as_delayed(target.data), as_delayed(data[params.mask].data),
        as_delayed(data[params.covariance].data), params, context)
    layout = result_layout(architecture, r, history_length(params.epochs, params.validation_every))
    layout["input_low"] = (("feature",), (len(features),), float)
    layout["input_high"] = (("feature",), (len(features),), float)
    return lazy_ensemble(trained, layout, architecture,
                         {"features": list(params.features), "kind": "replica regression ensemble",
                          "epochs": params.epochs})


# -- inference --------------------------------------------------------------------------------
class PredictParams(_Params):
    features: list[str] | None = Field(None, description="inputs in the data (default: the model's)")
    name: str = Field("prediction", description="name of the output variable")
    device: Literal["auto", "cpu", "cuda"] = "cpu"


def _predict_block(block: np.ndarray, weights: dict, architecture: dict, device: str) -> np.ndarray:
    from ..kernels.regression import predict_regression

    flat = block.reshape(-1, block.shape[-1])
    out = predict_regression(weights, architecture, flat, weights["input_low"], weights["input_high"],
                             device)
    return out.reshape(out.shape[0], *block.shape[:-1]).astype(np.float32)


def _weight_arrays(**arrays):
    """The stored ensemble as one dict of numpy arrays: one object every chunk's task shares."""
    return {name: np.asarray(value) for name, value in arrays.items()}


@register_op("replicas.predict", params=PredictParams, inputs=("model", "data"),
             memory=needs.TorchNeed(needs.predict_need))
def predict(params: PredictParams, model: xr.Dataset, data: xr.Dataset) -> xr.Dataset:
    """Evaluate every replica of a stored ensemble on any dataset, chunk by chunk (lazy).

    Output `prediction` (replica, *feature dims) plus the model's `kept` flags and the data's
    own variables, so a summary can mask dropped replicas and plots can show the data.
    """
    if "architecture" not in model.attrs:
        raise OpError("input 'model' is not a replica ensemble (no 'architecture' attribute)")
    architecture = json.loads(model.attrs["architecture"])
    names = params.features or list(model.attrs["features"])
    if len(names) != architecture["sizes"][0]:
        raise OpError(f"the model takes {architecture['sizes'][0]} features, found {len(names)}: {names}")
    for name in names:
        if name not in data.variables:
            raise OpError(f"feature {name!r} is not in the data{did_you_mean(name, data.variables)}")
    features = xr.broadcast(*[data[n] for n in names])
    dims = features[0].dims
    stacked = da.stack([da.asarray(f.data) for f in features], axis=-1)
    weights = dask.delayed(_weight_arrays, pure=True)(
        **{n: as_delayed(model[n].data) for n in [*weight_names(model), "input_low", "input_high"]})
    r = model.sizes[REPLICA]
    out = da.map_blocks(_predict_block, stacked, weights, architecture, params.device,
                        drop_axis=stacked.ndim - 1, new_axis=0,
                        chunks=((r,), *stacked.chunks[:-1]), dtype=np.float32,
                        meta=np.empty((0,) * stacked.ndim, np.float32))  # meta: no torch call to plan
    coords = {k: v for k, v in data.coords.items() if set(v.dims) <= set(dims)}
    result = xr.Dataset({params.name: ((REPLICA, *dims), out), "kept": model["kept"]},
                        coords={**coords, REPLICA: model[REPLICA].values})
    return result.assign({k: v for k, v in data.data_vars.items() if REPLICA not in v.dims})


# -- summary ----------------------------------------------------------------------------------
class SummaryParams(_Params):
    variable: str = "prediction"
    quantiles: list[float] = Field([0.16, 0.5, 0.84], min_length=1)
    mask: str | None = Field("kept", description="boolean (replica) variable: replicas to use")


@register_op("replicas.summary", params=SummaryParams,
             memory=4.0)  # quantiles sort a copy of every replica per chunk
def summary(params: SummaryParams, data: xr.Dataset) -> xr.Dataset:
    """Mean, standard deviation and quantiles over replicas (dropped replicas masked out)."""
    require_variables(data, [params.variable])
    require_dims(data, [REPLICA])
    if any(not 0 <= q <= 1 for q in params.quantiles):
        raise OpError(f"quantiles must lie in [0, 1], found {params.quantiles}")
    values = data[params.variable].chunk({REPLICA: -1})
    if params.mask is not None and params.mask in data:
        values = values.where(data[params.mask])
    name = params.variable
    result = xr.Dataset({
        f"{name}_mean": values.mean(REPLICA),
        f"{name}_std": values.std(REPLICA, ddof=1),
        f"{name}_quantile": values.quantile(params.quantiles, dim=REPLICA),
    })
    if params.mask is not None and params.mask in data:
        result["replicas_used"] = mark(data[params.mask].sum().astype(np.int64), "value")
    result = result.assign({k: v for k, v in data.data_vars.items() if REPLICA not in v.dims})
    # the run summary's line: the band and, where a closure's known truth is carried, the
    # central curve against it (engine/key_numbers.py)
    has_truth = TOY_TRUTH in result.data_vars and result[TOY_TRUTH].dims == result[f"{name}_mean"].dims
    mark(result[f"{name}_mean"], "median", truth=TOY_TRUTH if has_truth else None)
    mark(result[f"{name}_std"], "median")
    return result
