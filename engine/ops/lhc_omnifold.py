"""OmniFold unfolding as lake steps: known-truth Gaussian samples, then `lhc.omnifold`.

`lhc.gaussian_unfolding_samples` writes the DOMAIN.md test (MC z ~ N(0, 1), data z ~ N(0.2,
0.8), Gaussian smearing 0.5), seeded from the recipe. `lhc.omnifold` takes any dataset with MC
gen/reco pairs along one dim and data reco along another, runs the iterations as one batched job
(every classifier trained over all replicas at once, each resampling the data by bootstrap and
the MC by Poisson counts) and returns each replica's unfolded MC event weights, the unfolded
generator-level moments per iteration, and the unfolded histogram as quantiles over replicas
(plot kind `band`), with the prior (MC gen) and, where the samples carry it, the true data gen
histogram beside it.
"""

from __future__ import annotations

from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field, model_validator

from ..bounds import Bins, Epochs, Events, Repeats, Replicas, Rows, Seed, Widths
from ..bounds import Params as _Params
from ..errors import OpError
from ..key_numbers import mark
from ..registry import register_op
from . import needs
from .core import as_delayed, require_variables
from .ensembles import REPLICA, require_layer_activations

MC, DATA = "mc_event", "data_event"


class SamplesParams(_Params):
    n_mc: Events = Field(100_000, gt=0)
    n_data: Events = Field(100_000, gt=0)
    mc_mean: float = 0.0
    mc_std: float = Field(1.0, gt=0)
    data_mean: float = 0.2
    data_std: float = Field(0.8, gt=0)
    smearing: float = Field(0.5, ge=0)
    seed: Seed = 0


@register_op(
    "lhc.gaussian_unfolding_samples", params=SamplesParams, inputs=(), memory=3.0
)  # every sample drawn at once, in one chunk
def gaussian_unfolding_samples(params: SamplesParams) -> xr.Dataset:
    """Known-truth unfolding samples: mc_gen, mc_reco along mc_event; data_gen, data_reco along data_event."""
    from ..kernels.omnifold import GaussianTruth, gaussian_samples

    truth = GaussianTruth(params.mc_mean, params.mc_std, params.data_mean, params.data_std, params.smearing)
    drawn = dask.delayed(gaussian_samples, pure=True)(params.n_mc, params.n_data, truth, params.seed)
    sizes = {
        "mc_gen": (MC, params.n_mc),
        "mc_reco": (MC, params.n_mc),
        "data_gen": (DATA, params.n_data),
        "data_reco": (DATA, params.n_data),
    }
    return xr.Dataset(
        {name: ((dim,), da.from_delayed(drawn[name], (n,), float)) for name, (dim, n) in sizes.items()},
        attrs={"description": "Gaussian OmniFold known-truth samples", **params.model_dump()},
    )


class OmniFoldParams(_Params):
    mc_gen: str = Field("mc_gen", description="MC generator-level observable (1-D)")
    mc_reco: str = Field("mc_reco", description="MC detector-level observable, same dim as mc_gen")
    data_reco: str = Field("data_reco", description="data detector-level observable (1-D)")
    truth: str | None = Field("data_gen", description="true data gen, for comparison only (optional)")
    iterations: Repeats = Field(5, description="OmniFold iterations (> 0)")
    replicas: Replicas = Field(10, gt=0, description="replicas resampling the data and the MC")
    hidden: Widths = Field([32, 32])
    activations: list[str] = Field(["tanh", "tanh", "linear"])
    epochs: Epochs = Field(300, gt=0, description="most training steps per classifier")
    batch_size: Rows | None = Field(None, gt=0, description="events per minibatch step; none: full batch")
    lr: float = Field(1e-2, gt=0)
    patience: Epochs = Field(50, gt=0)
    validation_every: Epochs = Field(10, gt=0)
    validation_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description=(
            "events held out for early stopping; 0: train on all events to the end (no stall, see "
            "engine/kernels/omnifold.py)"
        ),
    )
    warm_start: bool = Field(
        True,
        description=(
            "each iteration's classifiers continue from the previous iteration's; false: a fresh "
            "network per classifier (see engine/kernels/omnifold.py)"
        ),
    )
    bins: Bins = Field(40, ge=2)
    range: tuple[float, float] = (-3.0, 3.0)
    quantiles: list[float] = Field([0.16, 0.5, 0.84], min_length=1)
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _checks(self):
        if self.iterations <= 0:
            raise ValueError(
                f"iterations must be a positive number of OmniFold iterations, found {self.iterations}"
            )
        require_layer_activations(self.hidden, self.activations)
        if not self.range[0] < self.range[1]:
            raise ValueError(f"range must be (low, high) with low < high, found {self.range}")
        return self


def _histogram(values: np.ndarray, weights: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Density histograms (R, bins) of values (n,) for each weight row (R, n)."""
    index = np.digitize(values, edges) - 1
    inside = (index >= 0) & (index < edges.size - 1)
    counts = np.stack([np.bincount(index[inside], w[inside], minlength=edges.size - 1) for w in weights])
    return counts / (weights.sum(-1, keepdims=True) * np.diff(edges))


def network_config(params: OmniFoldParams):
    """The classifiers' settings from the op's params (also what the calibration tests train)."""
    from ..kernels.classifier import NetworkConfig
    from ..kernels.optim import OptimiserConfig
    from ..kernels.train import StoppingConfig

    return NetworkConfig(
        tuple(params.hidden),
        tuple(params.activations),
        params.epochs,
        OptimiserConfig(lr=params.lr),
        StoppingConfig(threshold=np.inf, patience=params.patience),
        params.validation_every,
        params.seed,
        params.device,
    )


def _unfold(mc_gen, mc_reco, data_reco, truth, params: OmniFoldParams) -> dict[str, np.ndarray]:
    import logging

    from ..kernels.omnifold import omnifold

    log = logging.getLogger("engine.lhc")
    try:
        result = omnifold(
            mc_gen,
            mc_reco,
            data_reco,
            params.iterations,
            params.replicas,
            network_config(params),
            params.seed,
            params.validation_fraction,
            params.batch_size,
            params.warm_start,
            progress=lambda i, m, s: log.info(
                "omnifold iteration %d: mean %.4f std %.4f (median over replicas)",
                i,
                np.median(m),
                np.median(s),
            ),
        )
    except ValueError as exc:
        raise OpError(str(exc)) from None
    edges = np.linspace(*params.range, params.bins + 1)
    unfolded = _histogram(mc_gen, result.event_weights, edges)
    out = {
        "push_weights": result.event_weights,
        "unfolded_mean": result.mean,
        "unfolded_std": result.std,
        "unfolded_quantile": np.quantile(unfolded, params.quantiles, axis=0),
        "mc_gen_density": _histogram(mc_gen, np.ones((1, mc_gen.size)), edges)[0],
    }
    if truth is not None:
        out["truth_density"] = _histogram(truth, np.ones((1, truth.size)), edges)[0]
    return out


def event_column(data: xr.Dataset, name: str) -> xr.DataArray:
    """A 1-D per-event variable, checked (lhc.omnifold, replicas.hyperopt)."""
    require_variables(data, [name])
    if data[name].ndim != 1:
        raise OpError(f"{name!r} must be 1-D (one value per event), found dims {data[name].dims}")
    if data[name].size == 0:
        raise OpError(f"{name!r} is empty: OmniFold needs events in every sample")
    return data[name]


@register_op(
    "lhc.omnifold", params=OmniFoldParams, inputs=("samples",), memory=needs.TorchNeed(needs.omnifold_need)
)
def omnifold_op(params: OmniFoldParams, samples: xr.Dataset) -> xr.Dataset:
    """Unbinned OmniFold unfolding of one observable; replicas resampling data and MC give bands.

    Outputs push_weights (replica, mc_event: push nu times the replica's Poisson count of the
    event, the weights of its unfolded MC sample), unfolded_mean/std (iteration, replica) with
    iteration 0 the MC prior, unfolded_quantile (quantile, bin) of the unfolded density,
    mc_gen_density and truth_density (bin).
    """
    gen, reco, data = (event_column(samples, n) for n in (params.mc_gen, params.mc_reco, params.data_reco))
    if gen.dims != reco.dims:
        raise OpError(
            f"{params.mc_gen!r} and {params.mc_reco!r} must share their event dim, found "
            f"{gen.dims} and {reco.dims}"
        )
    truth = event_column(samples, params.truth) if params.truth and params.truth in samples else None
    event = gen.dims[0]
    r, n, b, it = params.replicas, gen.size, params.bins, params.iterations + 1
    done = dask.delayed(_unfold, pure=True)(
        as_delayed(gen.data),
        as_delayed(reco.data),
        as_delayed(data.data),
        None if truth is None else as_delayed(truth.data),
        params,
    )
    layout = {
        "push_weights": ((REPLICA, event), (r, n)),
        "unfolded_mean": (("iteration", REPLICA), (it, r)),
        "unfolded_std": (("iteration", REPLICA), (it, r)),
        "unfolded_quantile": (("quantile", "bin"), (len(params.quantiles), b)),
        "mc_gen_density": (("bin",), (b,)),
    }
    if truth is not None:
        layout["truth_density"] = (("bin",), (b,))
    edges = np.linspace(*params.range, b + 1)
    unfolded = xr.Dataset(
        {name: (dims, da.from_delayed(done[name], shape, float)) for name, (dims, shape) in layout.items()},
        coords={
            REPLICA: np.arange(r),
            "iteration": np.arange(it),
            "quantile": params.quantiles,
            "bin_centre": ("bin", 0.5 * (edges[1:] + edges[:-1])),
        },
        attrs={"observable": params.mc_gen, "iterations": params.iterations},
    )
    # The run summary quotes the last iteration's moments over the data replicas (iteration 0 is the prior).
    for moment in ("mean", "std"):
        final = unfolded[f"unfolded_{moment}"].isel(iteration=-1, drop=True)
        final.attrs["long_name"] = f"unfolded {moment} after {params.iterations} iterations"
        unfolded[f"final_{moment}"] = mark(final, "median")
    return unfolded
