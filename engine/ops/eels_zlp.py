"""ZLP ops: train the EELSfitter-style replica ensemble, then subtract it from every pixel.

`eels.train_zlp` draws one spectrum per cluster per replica (from a seeded sample of each
cluster) and trains the [2-10-15-5-1] ensemble on (E, ln N) in one batched job.
`eels.subtract_zlp` evaluates the kept replicas once on a grid of ln N nodes, takes quantiles
over replicas there (the matching is monotone in the model, so quantiles commute with it), and
interpolates per pixel: the image streams through chunk by chunk with the whole energy axis in
one chunk, and memory never depends on the image size.
"""

from __future__ import annotations

import json
from dataclasses import astuple
from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ..bounds import Clusters, Epochs, GridNodes, Replicas, Spectra, Widths
from ..bounds import Params as _Params
from ..errors import OpError
from ..registry import StepContext, register_op
from . import needs
from .core import as_delayed, require_variables, second_pass
from .eels import ENERGY, energy_axis, passthrough, spectra_of
from .eels_cluster import CLUSTER_ID, cluster_labels, cluster_sample
from .ensembles import (
    checkpointed_training,
    ensemble_architecture,
    history_length,
    lazy_ensemble,
    result_arrays,
    result_layout,
    weight_names,
)
from .replicas import OptimiserParams, TrainingParams

KIND = "eels zlp ensemble"
DE_I_SHIFT = "de_i_shift"  # dim of the bands subtracted with dE_I moved (eV)
SCALING = ("e_low", "e_high", "ln_n_low", "ln_n_high")


class TrainZlpParams(TrainingParams):
    variable: str = Field("counts", description="aligned spectra variable")
    replicas: Replicas = Field(100, gt=0, description="Monte Carlo replicas R")
    epochs: Epochs = Field(10000, gt=0)
    hidden: Widths = Field([10, 15, 5], description="hidden widths (EELSfitter: 10, 15, 5)")
    activations: list[str] = Field(["sigmoid", "sigmoid", "relu", "linear"])
    penalty: float = Field(10.0, ge=0, description="weight of the ReLU(d lnI/dE) monotonicity penalty")
    n_spectra: Spectra = Field(500, ge=1, description="spectra sampled per cluster to draw replicas from")
    optimiser: OptimiserParams = OptimiserParams(lr=1e-2)


def windows_of(windows: xr.Dataset, k: int) -> tuple[xr.DataArray, xr.DataArray]:
    """dE_I and dE_II per cluster, checked against the cluster map's k (also replicas.hyperopt)."""
    require_variables(windows, ["de_i", "de_ii"])
    if windows.sizes.get(CLUSTER_ID) != k:
        raise OpError(f"the windows input has {windows.sizes.get(CLUSTER_ID)} clusters, the cluster "
                      f"map {k}: both must come from the same eels.cluster step")
    return windows["de_i"], windows["de_ii"]


def train_on(training_set, params: TrainZlpParams, **hooks):
    """Train the op's ensemble on a kernels.zlp training set (eels.train_zlp, replicas.hyperopt)."""
    from ..kernels.optim import OptimiserConfig
    from ..kernels.train import StoppingConfig
    from ..kernels.zlp import train_zlp as train_kernel

    return train_kernel(
        training_set, hidden=params.hidden, activations=params.activations, epochs=params.epochs,
        optimiser=OptimiserConfig(**params.optimiser.model_dump()),
        stopping=StoppingConfig(**params.stopping.model_dump()), penalty=params.penalty,
        validation_every=params.validation_every, seed=params.seed, device=params.device,
        checkpoint_every=params.checkpoint_every, **hooks)


def _fit_zlp(sample, energy, de_i, de_ii, params: TrainZlpParams, context: StepContext):
    from ..kernels.zlp import zlp_training_set

    k = len(de_i)
    empty = [c for c in range(k) if not np.any(sample.labels == c)]
    if empty:
        raise ValueError(f"clusters {empty} have no pixels to draw ZLP replicas from; "
                         "lower n_clusters")
    spectra = [sample.spectra[sample.labels == c] for c in range(k)]
    training_set = zlp_training_set(spectra, energy, de_i, de_ii, params.replicas, params.seed)
    result = checkpointed_training(
        context, params.epochs, params.validation_every,
        lambda **hooks: train_on(training_set, params, **hooks))
    checks = history_length(params.epochs, params.validation_every)
    return {**result_arrays(result, checks), "scaling": np.array(astuple(training_set.scaling))}


@register_op("eels.train_zlp", params=TrainZlpParams, inputs=("image", "clusters", "windows"),
             wants_context=True,
             memory=needs.TorchNeed(needs.train_zlp_need))
def train_zlp(params: TrainZlpParams, image: xr.Dataset, clusters: xr.Dataset, windows: xr.Dataset,
              context: StepContext) -> xr.Dataset:
    """Train R ZLP networks ln I(E, ln N), one per replica, on spectra drawn per cluster.

    Targets below dE_I are ln I with the cluster's spread as error; above dE_II one count with
    error 0.8; in between only a penalty keeps the model decreasing. Stopping, re-initialisation
    and selection are the replica core's; checkpoints go to the lake.
    """
    spectra = spectra_of(image, params.variable)
    energy = energy_axis(image)
    labels, k = cluster_labels(clusters, spectra)
    de_i, de_ii = windows_of(windows, k)
    architecture = ensemble_architecture(2, params.hidden, params.activations, params.seed)
    sample = cluster_sample(spectra, labels, k, params.n_spectra, params.seed)
    trained = dask.delayed(_fit_zlp, pure=True)(sample, energy, as_delayed(de_i.data),
                                                as_delayed(de_ii.data), params, context)
    layout = result_layout(architecture, params.replicas,
                           history_length(params.epochs, params.validation_every))
    layout["scaling"] = (("scaling_param",), (len(SCALING),), float)
    model = lazy_ensemble(trained, layout, architecture,
                          {"kind": KIND, "inputs": ["energy", "ln_n"], "epochs": params.epochs})
    model["scaling"].attrs = {"names": list(SCALING)}
    return model


class SubtractParams(_Params):
    variable: str = Field("counts", description="aligned spectra variable")
    quantiles: list[float] = Field([0.16, 0.5, 0.84], min_length=1)
    grid_size: GridNodes = Field(256, ge=8, description="ln N nodes (fast vs brute force: 0.06 band "
                           "widths at 256, measured)")
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    zlp: Literal["model", "vacuum"] = Field(
        "model", description="model: the replica ensemble (input model); vacuum: the measured "
        "median ZLP of vacuum_cluster, stretched to each cluster's width on the gain side and "
        "scaled to each pixel (no model input needed; bands from the median's standard error)")
    vacuum_cluster: Clusters = Field(0, ge=0, description="the vacuum cluster, for zlp: vacuum")
    de_i_shift_ev: float | None = Field(
        0.2, gt=0, le=1.0, description="also subtract the median with every dE_I moved by -/+ "
        "this (same ZLP, no retraining) into `inelastic_de_i`, for eels.fit_bandgap's dE_I "
        "systematic; null: not")


def _fwhm(ln_i: np.ndarray, energy: np.ndarray) -> float:
    """Full width at half maximum of exp(ln_i), with linear interpolation at both crossings."""
    intensity = np.exp(np.nan_to_num(ln_i, nan=-np.inf))
    peak = int(np.argmax(intensity))
    half = intensity[peak] / 2
    left = np.flatnonzero(intensity[:peak] < half)
    right = np.flatnonzero(intensity[peak:] < half)
    if not left.size or not right.size:
        raise ValueError("the cluster's median spectrum has no half-maximum crossing on both sides "
                         "of the peak")
    i, j = left[-1], peak + right[0]
    e_left = np.interp(half, intensity[i:i + 2], energy[i:i + 2])
    e_right = np.interp(half, intensity[j - 1:j + 1][::-1], energy[j - 1:j + 1][::-1])
    return float(e_right - e_left)


def _cluster_table(de_i, de_ii, ln_i_median, energy) -> np.ndarray:
    """(3, K): dE_I, dE_II and the ZLP FWHM of every cluster."""
    fwhm = [_fwhm(row, energy) for row in ln_i_median]
    return np.stack([np.asarray(de_i, float), np.asarray(de_ii, float), np.asarray(fwhm)])


def _quantile_grid(weights, kept, scaling, architecture, energy, ln_n_low, ln_n_high,
                   quantiles, grid_size, device, table, shifts):
    """(ln N nodes, quantile grid): one task per run that every chunk task reads. The grid
    covers only the channels the chunks read (grid_channels, from the cluster table and every
    dE_I shift), ~1/8 of the energy axis, so it costs ~1/8 of a full-axis grid."""
    from ..kernels.zlp import ZlpScaling, grid_channels, ln_n_nodes, zlp_quantile_grid

    if not np.any(kept):
        raise ValueError("no replica of the ZLP model was kept; see its drop_reason")
    arrays = {name: np.asarray(value)[kept] for name, value in weights.items()}
    margin = 1e-9 * max(1.0, abs(float(ln_n_high)))  # float32 vs float64 sums at the edges
    nodes = ln_n_nodes(float(ln_n_low) - margin, float(ln_n_high) + margin, grid_size)
    de_i, de_ii, fwhm = table
    dispersion = float(energy[1] - energy[0])
    every_de_i = [de_i] + [shifted_de_i(de_i, de_ii, fwhm, shift, dispersion) for shift in shifts]
    channels = grid_channels(energy, fwhm, np.stack(every_de_i), de_ii)
    grid = zlp_quantile_grid(arrays, architecture, ZlpScaling(*map(float, scaling)), energy, nodes,
                             quantiles, device=device, channels=channels)
    return nodes, grid


def shifted_de_i(de_i, de_ii, fwhm, shift: float, dispersion: float) -> np.ndarray:
    """dE_I moved by `shift`, kept inside (FWHM, dE_II) by a channel (match_zlp's order)."""
    return np.clip(np.asarray(de_i) + shift, np.asarray(fwhm) + dispersion,
                   np.asarray(de_ii) - dispersion)


def _subtract_block(spectra, labels, zlp, table, energy, quantiles, shifts, mode):
    """Bands (Q + S, pixels..., E): the Q quantiles, then the median at each shifted dE_I.

    With every pixel clustered (the usual chunk) the model path writes straight into the
    output: no copy of the pixels, none of the bands."""
    from ..kernels.zlp import subtract_fast, subtract_vacuum

    n_q, mid = len(quantiles), len(quantiles) // 2
    flat = spectra.reshape(-1, spectra.shape[-1])
    label = labels.reshape(-1)
    good = label >= 0
    every = bool(good.all())
    shape = (n_q + len(shifts), *flat.shape)
    out = np.empty(shape, np.float32) if every else np.full(shape, np.nan, np.float32)
    if good.any():
        pixels = flat if every else flat[good]
        de_i, de_ii, fwhm = table[:, label if every else label[good]]
        dispersion = float(energy[1] - energy[0])
        moved = [shifted_de_i(de_i, de_ii, fwhm, shift, dispersion) for shift in shifts]
        if mode == "vacuum":
            template, relative = zlp[0][label[good]], zlp[1][label[good]]
            bands = np.concatenate(
                [subtract_vacuum(pixels, energy, template, relative, levels, fwhm, d, de_ii)
                 for levels, d in [(quantiles, de_i)] + [([quantiles[mid]], m) for m in moved]])
        else:
            nodes, quantile_grid = zlp
            bands = subtract_fast(pixels, energy, nodes, quantile_grid, fwhm, de_i, de_ii,
                                  moved_de_i=moved, moved_row=mid, out=out if every else None)
        if bands is not out:
            out[:, good] = bands
    return out.reshape(out.shape[0], *spectra.shape)


def _vacuum_templates(ln_i, n_sampled, energy, vacuum: int):
    """Per cluster: the vacuum median ZLP stretched to the cluster (K, E) counts, and its
    relative standard error (K, E): 1.2533 (P84 - P16) / 2 / sqrt(n) over the median (the
    standard error of a median), which also holds the vacuum's pixel-to-pixel intensity
    spread and so errs on the large side. ln_i (K, 3, E): P16, median, P84 of ln counts."""
    from ..kernels.zlp import stretched, vacuum_stretch

    ln_i = np.asarray(ln_i, float)
    n = max(int(np.asarray(n_sampled)[vacuum]), 1)
    with np.errstate(invalid="ignore", over="ignore"):
        low, mid, high = np.exp(ln_i[vacuum])
        relative = np.nan_to_num(1.2533 * (high - low) / 2 / np.sqrt(n) / mid, nan=0.0)
    templates, errors, stretches = [], [], []
    for c in range(ln_i.shape[0]):
        try:
            s = 1.0 if c == vacuum else vacuum_stretch(energy, ln_i[c, 1], ln_i[vacuum, 1])
        except ValueError as exc:
            raise ValueError(f"cluster {c}: {exc}") from None
        stretches.append(s)
        templates.append(stretched(energy, ln_i[vacuum, 1], s))
        errors.append(np.interp(np.asarray(energy) / s, energy, relative))
    return np.stack(templates), np.stack(errors), np.array(stretches)


def _subtract_need(params, inputs: dict, output: xr.Dataset) -> int:
    """The replica grid's need with a model; chunk by chunk with the vacuum ZLP."""
    if inputs.get("model") is not None:
        return needs.subtract_zlp_need(params, inputs, output)
    return needs.chunk_task(needs.SUBTRACT_CHUNK_MULTIPLIER, inputs, output)


@register_op("eels.subtract_zlp", params=SubtractParams,
             inputs=("image", "clusters", "windows"), optional_inputs=("model",),
             memory=needs.TorchNeed(_subtract_need))
def subtract_zlp(params: SubtractParams, image: xr.Dataset, clusters: xr.Dataset,
                 windows: xr.Dataset, model: xr.Dataset | None = None) -> xr.Dataset:
    """Inelastic signal I - ZLP per pixel: quantile bands over the kept replicas (lazy).

    Output `inelastic_quantile` (quantile, y, x, energy), `inelastic` (the median band) and,
    with de_i_shift_ev, `inelastic_de_i` (de_i_shift, y, x, energy): the median subtracted
    with every cluster's dE_I moved by -/+ the shift. With zlp: vacuum the ZLP is the measured
    vacuum median instead of the network (`zlp_stretch` per cluster). Unclustered pixels
    (label -1) are NaN.
    """
    if params.zlp == "model" and model is None:
        raise OpError("zlp: model needs the input 'model' (an eels.train_zlp step); or set "
                      "zlp: vacuum to subtract the measured vacuum ZLP")
    if model is not None and model.attrs.get("kind") != KIND:
        raise OpError(f"input 'model' is not an eels.train_zlp ensemble (kind: {model.attrs.get('kind')!r})")
    if any(not 0 < q < 1 for q in params.quantiles):
        raise OpError(f"quantiles must lie strictly between 0 and 1, found {params.quantiles}")
    spectra = spectra_of(image, params.variable)
    energy = energy_axis(image)
    labels, k = cluster_labels(clusters, spectra)
    de_i, de_ii = windows_of(windows, k)
    require_variables(windows, ["ln_i_median"])
    if spectra.chunks is None:
        spectra = spectra.chunk()
    pixel_dims = spectra.dims[:-1]
    labels = labels.chunk(dict(zip(pixel_dims, spectra.chunks[:-1], strict=True)))
    table = dask.delayed(_cluster_table, pure=True)(
        as_delayed(de_i.data), as_delayed(de_ii.data), as_delayed(windows["ln_i_median"].data), energy)
    extra = {}
    shifts = [] if params.de_i_shift_ev is None else [-params.de_i_shift_ev, params.de_i_shift_ev]
    if params.zlp == "vacuum":
        if params.vacuum_cluster >= k:
            raise OpError(f"vacuum_cluster={params.vacuum_cluster} but the clusters input has {k} "
                          f"clusters (0 to {k - 1})")
        require_variables(windows, ["ln_i_p16", "ln_i_p84", "n_sampled"])
        ln_i = xr.concat([windows[v] for v in ("ln_i_p16", "ln_i_median", "ln_i_p84")], "band")
        zlp = first_pass = dask.delayed(_vacuum_templates, pure=True)(
            as_delayed(ln_i.transpose(CLUSTER_ID, "band", ENERGY).data),
            as_delayed(windows["n_sampled"].data), energy, params.vacuum_cluster)
        extra["zlp_stretch"] = xr.DataArray(
            da.from_delayed(zlp[2], (k,), dtype=np.float64), dims=(CLUSTER_ID,),
            attrs={"units": "1", "long_name": "stretch of the vacuum ZLP's energy axis fitted to "
                   "each cluster's gain side"})
        kind = "quantiles of the vacuum ZLP's standard error"
    else:
        ln_n = np.log(spectra.sum(ENERGY, dtype=np.float64))
        weights = {name: as_delayed(model[name].data) for name in weight_names(model)}
        zlp = first_pass = dask.delayed(_quantile_grid, pure=True)(
            weights, as_delayed(model["kept"].data), as_delayed(model["scaling"].data),
            json.loads(model.attrs["architecture"]), energy, as_delayed(ln_n.min().data),
            as_delayed(ln_n.max().data), params.quantiles, params.grid_size, params.device,
            table, shifts)
        kind = "quantiles over replicas"
    n_q = len(params.quantiles)
    # labels get a length-1 energy axis: map_blocks aligns arrays by their trailing dims; meta
    # given, dask does not call the (torch) block function on empty arrays to find the output type
    bands = da.map_blocks(_subtract_block, second_pass(spectra.data, first_pass),
                          labels.data[..., None], zlp, table, energy=energy,
                          quantiles=list(params.quantiles), shifts=shifts, mode=params.zlp,
                          new_axis=0, chunks=((n_q + len(shifts),), *spectra.chunks),
                          dtype=np.float32, meta=np.empty((0,) * (spectra.ndim + 1), np.float32))
    inelastic = xr.DataArray(bands[:n_q], dims=("quantile", *spectra.dims),
                             coords={"quantile": params.quantiles, **spectra.coords},
                             attrs={"long_name": f"inelastic signal I - ZLP, {kind}"})
    if shifts:
        extra["inelastic_de_i"] = xr.DataArray(
            bands[n_q:], dims=(DE_I_SHIFT, *spectra.dims),
            coords={DE_I_SHIFT: shifts, **spectra.coords},
            attrs={"long_name": "inelastic signal (median) with dE_I moved by de_i_shift",
                   "units": "counts"})
    return xr.Dataset({**passthrough(image), "inelastic_quantile": inelastic,
                       "inelastic": inelastic.isel(quantile=n_q // 2, drop=True), **extra},
                      attrs=dict(image.attrs))
