"""EELSfitter v1 as a named preset: the 2021 method that published WS2's E_BG = 1.6 eV.

Why it is here (issue 17): the published gap is the anchor our own chain is compared with, and it
is a product of that method's choices (dE_I by hand, binned targets, pseudo-points, a 1-D
model, a Gaussian blend, a fit whose E_BG cannot pass its first point). Running the method
itself, beside our default, shows where the 1.6 comes from. It is not a target for the default.

`eels.eelsfitter_v1_train` trains the 1-D ensemble on one cluster's spectra (one batched job
through the replica core, checkpointed like every training op); `eels.eelsfitter_v1` subtracts
it from every pixel and fits the onset as v1 did. The method is in kernels/eelsfitter_v1.py.
"""

from __future__ import annotations

import json
from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field, model_validator

from ..bounds import Clusters, Epochs, Points, Replicas, Seed, Spectra
from ..bounds import Params as _Params
from ..errors import OpError
from ..kernels import eelsfitter_v1 as v1
from ..registry import StepContext, register_op
from . import needs
from .core import as_delayed, second_pass
from .eels import ENERGY, energy_axis, spectra_of
from .eels_cluster import CLUSTER_ID, cluster_labels, cluster_sample
from .ensembles import (
    DROP_REASONS,
    checkpointed_training,
    ensemble_architecture,
    history_length,
    lazy_ensemble,
    result_arrays,
    result_layout,
    weight_names,
)

KIND = "eelsfitter v1 ensemble"
TARGET = "target"
CURVES = ("mean", "p16", "p84")  # the replica curves the onset is fitted to (v1's dif, low, high)
AT_FIRST_POINT_EV = 1e-3  # E_BG this close to the first fitted point: v1's fit rule decided it


class V1TrainParams(_Params):
    variable: str = Field(
        "counts",
        description="spectra variable (raw counts: v1 shifts each spectrum by whole channels itself)",
    )
    cluster: Clusters = Field(
        -1,
        ge=-1,
        description="cluster whose spectra train the model; -1 the "
        "last, the thickest (eels.cluster numbers from the thinnest)",
    )
    de_i: float = Field(
        1.88,
        gt=v1.TRAIN_LOW_EV,
        description="dE_I in eV, set by hand (v1 on WS2: 1.88; its automatic rule gave 2.65)",
    )
    de_ii: float = Field(
        12.0, gt=0, lt=v1.PSEUDO_END_EV, description="dE_II in eV: start of the pseudo-points ln I = 0.5"
    )
    n_bins: Points = Field(v1.N_BINS, ge=1, description="equal-width bins of the targets below dE_I")
    replicas: Replicas = Field(100, gt=0, description="Monte Carlo replicas R (v1 on WS2: 100)")
    epochs: Epochs = Field(25000, gt=0, description="RMSprop steps per replica (v1: 25000)")
    validation_every: Epochs = Field(
        1000,
        gt=0,
        description="epochs between the checkpoints the best-validation epoch is chosen from (v1: 1000)",
    )
    lr: float = Field(6e-3, gt=0, description="RMSprop learning rate (v1: 6e-3)")
    chi2_keep: float = Field(
        v1.CHI2_KEEP, gt=0, description="replicas with training chi2/n below this are kept (v1: 3)"
    )
    n_spectra: Spectra = Field(500, ge=1, description="spectra sampled from the cluster to train on")
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    checkpoint_every: Epochs | None = Field(1000, gt=0, description="epochs between checkpoints")

    @model_validator(mode="after")
    def _windows(self) -> V1TrainParams:
        if not self.de_i < self.de_ii:
            raise ValueError(f"de_i must lie below de_ii, found de_i = {self.de_i}, de_ii = {self.de_ii}")
        return self


def _train_need(params: V1TrainParams, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """A chunk pass to draw the sample, the sample (merged, then gathered as float64) and the
    ensemble's training state on its n_bins + 20 points."""
    image = inputs["image"]
    k = inputs["clusters"].sizes[CLUSTER_ID]
    sample = 2 * k * params.n_spectra * image.sizes[ENERGY] * needs.FLOAT64
    points = params.n_bins + v1.N_PSEUDO
    return (
        needs.chunk_task(needs.CLUSTER_CHUNK_MULTIPLIER, {"image": image}, output)
        + sample
        + needs.ensemble_training_bytes(params.replicas, list(v1.SIZES), points)
    )


def _fit(sample, energy, cluster: int, params: V1TrainParams, context: StepContext):
    spectra = sample.spectra[sample.labels == cluster]
    if spectra.shape[0] == 0:
        raise ValueError(f"cluster {cluster} has no pixels to train the EELSfitter v1 model on")
    ts = v1.training_set(spectra, energy, params.de_i, params.de_ii, params.n_bins)
    result = checkpointed_training(
        context,
        params.epochs,
        params.validation_every,
        lambda **hooks: v1.train(
            ts,
            params.replicas,
            epochs=params.epochs,
            lr=params.lr,
            validation_every=params.validation_every,
            seed=params.seed,
            device=params.device,
            checkpoint_every=params.checkpoint_every,
            **hooks,
        ),
    )
    arrays = result_arrays(result, history_length(params.epochs, params.validation_every))
    kept = v1.kept_by_chi2(result.best_train, params.chi2_keep)
    outlier = DROP_REASONS.index("chi2 outlier")
    return {
        **arrays,
        "kept": kept,
        "drop_reason": np.where(kept, 0, outlier).astype(np.int8),
        "target_energy": ts.x,
        "target_ln_i": ts.y,
        "target_sigma": ts.sigma,
    }


@register_op(
    "eels.eelsfitter_v1_train",
    params=V1TrainParams,
    inputs=("image", "clusters"),
    wants_context=True,
    memory=needs.TorchNeed(_train_need),
)
def eelsfitter_v1_train(
    params: V1TrainParams, image: xr.Dataset, clusters: xr.Dataset, context: StepContext
) -> xr.Dataset:
    """EELSfitter v1's ZLP ensemble: R networks ln I(E) (energy only) on one cluster's spectra.

    Targets: ln I of the cluster's peak-shifted spectra in -0.5 < E < dE_I, binned (mean and
    spread per bin), plus 20 pseudo-points ln I = 0.5 +- 0.08 from dE_II to 16 eV (variables
    target_energy, target_ln_i, target_sigma). Kept: replicas with training chi2/n below
    chi2_keep (v1: 3).
    """
    spectra = spectra_of(image, params.variable)
    energy = energy_axis(image)
    labels, k = cluster_labels(clusters, spectra)
    if params.cluster >= k:
        raise OpError(
            f"cluster {params.cluster} does not exist: the cluster map has {k} "
            f"(0 to {k - 1}; -1 for the last)"
        )
    cluster = k - 1 if params.cluster == -1 else params.cluster
    architecture = ensemble_architecture(1, list(v1.SIZES[1:-1]), list(v1.ACTIVATIONS), params.seed)
    sample = cluster_sample(spectra, labels, k, params.n_spectra, params.seed)
    trained = dask.delayed(_fit, pure=True)(sample, energy, cluster, params, context)
    checks = history_length(params.epochs, params.validation_every)
    layout = result_layout(architecture, params.replicas, checks)
    points = params.n_bins + v1.N_PSEUDO
    for name in ("target_energy", "target_ln_i", "target_sigma"):
        layout[name] = ((TARGET,), (points,), float)
    model = lazy_ensemble(
        trained,
        layout,
        architecture,
        {
            "kind": KIND,
            "inputs": ["energy"],
            "epochs": params.epochs,
            "de_i": params.de_i,
            "de_ii": params.de_ii,
            "cluster": cluster,
            "selection": f"kept: training chi2/n < {params.chi2_keep:g} (v1: {v1.CHI2_KEEP:g}); "
            "the others are marked chi2_outlier",
        },
    )
    model["target_energy"].attrs = {"units": "eV", "long_name": "bin label / pseudo-point energy"}
    return model


class V1SubtractParams(_Params):
    variable: str = Field("counts", description="spectra variable (raw counts)")
    device: Literal["auto", "cpu", "cuda"] = "cpu"


# Per pass of kernels.eelsfitter_v1.subtract_and_fit: the model, matched ZLP, difference and its
# sorted copy over (R, pixels per pass, E) in float64.
PASS_COPIES = 4


def _subtract_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """A chunk of spectra with its packed results, and one pass of every replica's curves."""
    model, image = inputs["model"], inputs["image"]
    one_pass = PASS_COPIES * model.sizes["replica"] * v1.PIXELS_PER_PASS * image.sizes[ENERGY] * needs.FLOAT64
    return needs.chunk_task(3.0, inputs, output) + one_pass


def _block(spectra, arrays, architecture, energy, de_i, de_ii, device):
    """Packed per-pixel results: (..., 4 E + 11): the four curves on the image's energy axis,
    then e_bg, b, amplitude of the three fitted curves, the first fitted energy, the point count."""
    flat = spectra.reshape(-1, spectra.shape[-1]).astype(float)
    out = np.full((flat.shape[0], 4 * energy.size + 11), np.nan)
    good = np.isfinite(flat).all(axis=1) & (flat.max(axis=1, initial=0) > 0)
    if good.any():
        res = v1.subtract_and_fit(
            flat[good], energy, lambda e: v1.evaluate(arrays, architecture, e, device), de_i, de_ii
        )
        curves = [v1.on_common_axis(res[k], flat[good], energy) for k in ("mean", "low", "median", "high")]
        out[good] = np.concatenate(
            [
                *curves,
                res["e_bg"],
                res["b"],
                res["amplitude"],
                res["first_point"][:, None],
                res["n_points"][:, None],
            ],
            axis=1,
        )
    return out.reshape(*spectra.shape[:-1], out.shape[-1])


@register_op(
    "eels.eelsfitter_v1",
    params=V1SubtractParams,
    inputs=("image", "model"),
    memory=needs.TorchNeed(_subtract_need),
)
def eelsfitter_v1(params: V1SubtractParams, image: xr.Dataset, model: xr.Dataset) -> xr.Dataset:
    """EELSfitter v1's ZLP subtraction and band-gap fit of every pixel (lazy).

    Output: `inelastic` (counts), v1's curve, the replica mean of I - ZLP clipped at 0 and
    smoothed; `inelastic_quantile` (0.16, 0.5, 0.84 over replicas); `e_bg` (eV), `exponent`,
    `amplitude` of A (E - E_BG)^b fitted to the mean on 0 < E < 2.5 eV where it has >= 20
    counts; `e_bg_curves`, `exponent_curves` the same fits of the mean, 16% and 84% curves;
    `first_fit_energy` (eV) and `n_fit_points`; `at_first_point`, True where E_BG ended on the
    first fitted point (v1's fit rule, not the data, set it). Energies: each spectrum's maximum
    channel is put on the channel nearest 0 eV. Every pixel costs three scipy fits, as in v1:
    right for spectra and line scans, slow for a 10^6-pixel image.
    """
    if model.attrs.get("kind") != KIND:
        raise OpError(
            f"input 'model' is not an eels.eelsfitter_v1_train ensemble (kind: {model.attrs.get('kind')!r})"
        )
    spectra = spectra_of(image, params.variable)
    energy = energy_axis(image)
    if spectra.chunks is None:
        spectra = spectra.chunk()
    weights = {name: as_delayed(model[name].data) for name in weight_names(model)}
    arrays = dask.delayed(v1.kept_arrays, pure=True)(weights, as_delayed(model["kept"].data))
    architecture = json.loads(model.attrs["architecture"])
    n_e = energy.size
    width = 4 * n_e + 11
    packed = da.map_blocks(
        _block,
        second_pass(spectra.data, arrays),
        arrays,
        architecture,
        energy,
        float(model.attrs["de_i"]),
        float(model.attrs["de_ii"]),
        params.device,
        chunks=(*spectra.chunks[:-1], (width,)),
        dtype=float,
        meta=np.empty((0,) * spectra.ndim, float),
    )
    dims, pixel_dims = spectra.dims, spectra.dims[:-1]
    coords = {d: spectra.coords[d] for d in spectra.coords if ENERGY not in spectra.coords[d].dims}

    def curve(i):
        return packed[..., i * n_e : (i + 1) * n_e].astype(np.float32)

    def fitted(offset, dim):
        data = packed[..., 4 * n_e + offset : 4 * n_e + offset + 3].astype(np.float32)
        return xr.DataArray(data, dims=(*pixel_dims, dim), coords={dim: list(CURVES)})

    quantile = xr.DataArray(
        da.stack([curve(1), curve(2), curve(3)]),
        dims=("quantile", *dims),
        coords={"quantile": [0.16, 0.5, 0.84], **spectra.coords},
        attrs={
            "long_name": "I - ZLP clipped at 0, quantiles over replicas (v1's order statistics), smoothed"
        },
    )
    inelastic = xr.DataArray(
        curve(0),
        dims=dims,
        coords=spectra.coords,
        attrs={"long_name": "I - ZLP clipped at 0, replica mean, smoothed (v1)"},
    )
    e_bg_curves = fitted(0, "fit_curve")
    e_bg_curves.attrs = {"units": "eV", "long_name": "E_BG fitted to each replica curve"}
    first = xr.DataArray(
        packed[..., 4 * n_e + 9].astype(np.float32),
        dims=pixel_dims,
        attrs={"units": "eV", "long_name": "energy of the first fitted point"},
    )
    e_bg = e_bg_curves.sel(fit_curve="mean", drop=True)
    e_bg.attrs = {"units": "eV", "long_name": "E_BG, v1's fit of the replica mean"}
    maps = {
        "e_bg": e_bg,
        "exponent": fitted(3, "fit_curve").sel(fit_curve="mean", drop=True),
        "amplitude": fitted(6, "fit_curve").sel(fit_curve="mean", drop=True),
        "e_bg_curves": e_bg_curves,
        "exponent_curves": fitted(3, "fit_curve"),
        "first_fit_energy": first,
        "n_fit_points": xr.DataArray(
            da.nan_to_num(packed[..., 4 * n_e + 10]).astype(np.int64), dims=pixel_dims
        ),
        "at_first_point": abs(e_bg - first) < AT_FIRST_POINT_EV,
    }
    maps["at_first_point"].attrs = {"long_name": "E_BG ended on the first fitted point (v1's rule)"}
    return xr.Dataset(
        {"inelastic": inelastic, "inelastic_quantile": quantile, **maps},
        coords=coords,
        attrs={**image.attrs, "de_i": model.attrs["de_i"], "de_ii": model.attrs["de_ii"]},
    )
