"""Generative calorimeter simulation: CaloFlow's two flows trained out of core, a sampler, metrics.

`calo.train_flow` trains the two conditional flows of kernels.calo_flow on showers (shower, layer,
cell) with their incident energies; `calo.sample` writes generated showers for any incident
energies to the lake, chunk by chunk; `calo.metrics` judges generated against held-out reference
showers the way the CaloChallenge does: a fresh classifier's AUC (0.5 = indistinguishable),
1-Wasserstein distances of per-layer energies and shower shapes (with the reference-vs-reference
floor beside them), and generation speed against the synthetic generator.

Why training reads its chunks inside the training tasks: training is a chain of tasks, one per
(epoch, chunk), each continuing from the previous one's state. Were each chunk an ordinary
dependency, every chunk of every epoch would be a root task with nothing to wait for, and dask's
schedulers read roots ahead of need: measured, all chunks of all epochs were read before the second
training step ran. So each step gets a `ChunkRef` (one block of the lazy inputs, opaque to dask)
and computes that block itself when it starts: at most one chunk per running step is in memory,
whatever the dataset's size. A chunk's graph is its own (a slice of the lazy inputs), so shared
upstream work runs once per read, which is what streaming wants.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field, model_validator

from ..bounds import Epochs, Replicas, Rows, Seed, Widths
from ..bounds import Params as _Params
from ..errors import OpError
from ..key_numbers import mark
from ..registry import StepContext, register_op
from . import needs
from .core import as_delayed, require_dims, require_variables

SHOWER, LAYER, CELL = "shower", "layer", "cell"
SPLIT_STREAM = 11  # the metrics classifier's train/validation/test split, apart from other draws
SPEED_BATCH = 1_000  # showers per sampler call in calo.metrics' speed test
log = logging.getLogger("engine.calo")


def shower_layout(data: xr.Dataset, name: str) -> tuple[int, int]:
    """Check a showers dataset's layout; returns (layers, cells) (also replicas.hyperopt)."""
    require_variables(data, ["energy", "incident_energy"])
    require_dims(data, [SHOWER, LAYER, CELL])
    if data["energy"].dims != (SHOWER, LAYER, CELL):
        raise OpError(
            f"input {name!r}: variable 'energy' must have dims ({SHOWER!r}, {LAYER!r}, {CELL!r}), "
            f"found {data['energy'].dims}"
        )
    if data["incident_energy"].dims != (SHOWER,):
        raise OpError(
            f"input {name!r}: variable 'incident_energy' must have dims ({SHOWER!r},), "
            f"found {data['incident_energy'].dims}"
        )
    if data.sizes[SHOWER] == 0:
        raise OpError(f"input {name!r} holds no showers")
    return data.sizes[LAYER], data.sizes[CELL]


def _aligned(data: xr.Dataset) -> tuple[da.Array, da.Array]:
    """energy (chunked along shower only) and incident_energy on the same shower chunks."""
    energy = da.asarray(data["energy"].data).rechunk({1: -1, 2: -1})
    incident = da.asarray(data["incident_energy"].data).rechunk({0: energy.chunks[0]})
    return energy, incident


class ChunkRef:
    """One block of showers, read by the task that uses it (see the module docstring).

    Deliberately not a dask collection: dask.delayed leaves it as a plain argument. Its token is
    its arrays' names, so a step's graph and token are the same on every build.
    """

    __slots__ = ("energy", "incident", "index")

    def __init__(self, energy: da.Array, incident: da.Array, index: int):
        self.energy, self.incident, self.index = energy, incident, index

    def __dask_tokenize__(self):
        return ("calo-chunk", self.energy.name, self.incident.name, self.index)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        return dask.compute(self.energy, self.incident, scheduler="sync")


def _chunk_refs(energy: da.Array, incident: da.Array) -> list[ChunkRef]:
    return [ChunkRef(energy.blocks[b], incident.blocks[b], b) for b in range(energy.numblocks[0])]


# -- calo.train_flow ------------------------------------------------------------------------------
class TrainFlowParams(_Params):
    flow1_kind: Literal["nsf", "maf"] = Field(
        "nsf", description="flow 1 (layer energies): neural spline or affine masked autoregressive flow"
    )
    flow2_kind: Literal["nsf", "maf"] = Field(
        "nsf",
        description="flow 2 (normalised showers); an autoregressive nsf samples ~40x slower at 100 "
        "cells, as couplings it does not",
    )
    flow2_coupling: bool = Field(
        True,
        description="flow 2's transforms as couplings (half the features given the other half): "
        "sampled in 2 passes per transform instead of one per feature",
    )
    flow1_features: Literal["layers", "ratios"] = Field(
        "layers",
        description="flow 1's features: log(E_layer / E_inc) per layer, or CaloFlow's log(E_total / E_inc) "
        "and logit E_k / (E_k + ... + E_last) (the total's narrow resolution is then one feature)",
    )
    layer_sums: Literal["exact", "cells"] = Field(
        "exact",
        description="flow 1's layer energies: each layer's whole number of quanta plus one uniform "
        "quantum, which the sampler apportions to the cells by flow 2's fractions (so a generated "
        "layer holds exactly flow 1's quanta), or 'cells': the sums of the dequantised cells (one "
        "uniform quantum of noise per cell, each generated cell floored on its own)",
    )
    flow2_split: Literal["shuffled", "halves"] = Field(
        "shuffled",
        description="which cells flow 2's transforms condition on which: each pair of transforms its "
        "own fixed random permutation, or 'halves': zuko's fixed order (as couplings always the first "
        "half of the cells given the second and back)",
    )
    dequantisation: Literal["uniform", "triangular"] = Field(
        "uniform",
        description="each cell's noise u in [0, 1) added to its whole quanta for flow 2: uniform, or "
        "triangular (the mean of two uniforms: its density vanishes at every whole quantum, so a "
        "cell's density has no step there for the flow to smooth)",
    )
    transforms: int = Field(6, ge=1, le=32, description="autoregressive (or coupling) transforms per flow")
    hidden: Widths = Field([64, 64], description="hidden widths of each transform's masked MLP")
    bins: int = Field(8, ge=2, le=64, description="spline bins (nsf)")
    # one task per (epoch, chunk): 10^4 epochs of 100 chunks is a 10^6-task graph, the most a plan
    # builds in reasonable time
    epochs: Epochs = Field(20, gt=0, le=10_000, description="passes over the showers, chunk by chunk")
    batch_size: Rows = Field(256, gt=0, description="showers per Adam step")
    lr: float = Field(
        3e-3,
        gt=0,
        description="Adam learning rate at the start (cosine decay to 2%); 1e-3 left flow 2 short of "
        "converged at 8 epochs (bench_calo.py --quality: held-out NLL 134.2-134.4 vs 131.7-132.2)",
    )
    validation_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="showers of each chunk held out for the validation NLL"
    )
    max_showers: Rows | None = Field(None, gt=0, description="train on at most the first N showers")
    quantum: float | None = Field(
        None, gt=0, description="energy quantum (GeV) of the cells; none: the input's `quantum` attribute"
    )
    checkpoint_every: Epochs | None = Field(
        1, gt=0, description="epochs between training checkpoints in the lake (none: no checkpoints)"
    )
    seed: Seed = 0

    @model_validator(mode="after")
    def _widths(self):
        if any(w <= 0 for w in self.hidden) or not self.hidden:
            raise ValueError(f"hidden widths must be positive (at least one layer), found {self.hidden}")
        return self


def flow_spec(params: TrainFlowParams, n_layers: int, n_cells: int, quantum: float):
    from ..kernels.calo_flow import FlowSpec

    return FlowSpec(
        n_layers,
        n_cells,
        params.flow1_kind,
        params.flow2_kind,
        params.transforms,
        tuple(params.hidden),
        params.bins,
        quantum,
        params.flow2_coupling,
        params.flow1_features,
        params.layer_sums,
        params.flow2_split,
        params.dequantisation,
    )


def training_step(params: TrainFlowParams, epoch: int):
    """Epoch `epoch`'s settings: the learning rate on its cosine decay to 2% (calo.train_flow,
    replicas.hyperopt)."""
    from ..kernels.calo_flow import TrainStep

    lr = params.lr * max(0.5 * (1 + np.cos(np.pi * epoch / params.epochs)), 0.02)
    return TrainStep(epoch, float(lr), params.batch_size, params.validation_fraction, params.seed)


def _moments_block(energy: np.ndarray, incident: np.ndarray, spec) -> np.ndarray:
    from ..kernels.calo_flow import feature_moments

    return feature_moments(energy, incident[:, 0, 0], spec)[None]


def _scaling(moments: np.ndarray) -> dict[str, np.ndarray]:
    from ..kernels.calo_flow import scaling_from_moments

    mean, std = scaling_from_moments(moments)
    return {"mean": mean, "std": std}


@dataclass(frozen=True)
class Checkpoints:
    """Where a training keeps its state in the lake (the step's checkpoint folder), and how often.

    The state (both flows' weights, Adam moments and step, the NLL record, and how many training
    steps are done) is saved as plain arrays (engine.checkpoints: zarr, no pickles) at the end of
    every `every`-th epoch, read back by the first task of a rerun, and removed when training ends.
    A rerun's steps up to the saved one pass the state on without reading their chunks, so an
    interrupted run resumes where it was saved, and ends with the weights an uninterrupted run
    has (every draw is keyed by (seed, epoch, chunk)). The moments pass reruns (one read of the
    data, deterministic).
    """

    lake_url: str
    storage_options: dict | None
    path: str
    every: int

    def _lake(self):
        from ..storage import Lake

        return Lake(self.lake_url, self.storage_options)

    def load(self) -> dict | None:
        from ..checkpoints import load_checkpoint

        arrays = load_checkpoint(self._lake(), self.path)
        if arrays is None:
            return None
        record = dict(zip(arrays.pop("record_epoch").tolist(), arrays.pop("record"), strict=True))
        return {**arrays, "record": record}

    def save(self, state: dict) -> None:
        from ..checkpoints import save_checkpoint

        record = state.get("record", {})
        epochs = sorted(record)
        arrays = {k: v for k, v in state.items() if k != "record"}
        arrays["record_epoch"] = np.array(epochs, np.int64)
        arrays["record"] = np.array([record[e] for e in epochs], float).reshape(-1, 6)
        save_checkpoint(self._lake(), self.path, arrays)

    def clear(self) -> None:
        from ..checkpoints import clear_checkpoint

        clear_checkpoint(self._lake(), self.path)


def _initial(spec, seed: int, checkpoints: Checkpoints | None) -> dict:
    from ..kernels.calo_flow import initial_state

    state = {**initial_state(spec, seed), "done": np.array(0, np.int64)}
    saved = checkpoints.load() if checkpoints is not None else None
    if saved is not None:
        if any(np.shape(saved.get(k)) != np.shape(v) for k, v in state.items()):
            raise OpError(f"the checkpoint at {checkpoints.path!r} does not fit this training: remove it")
        log.info("calo.train_flow: resuming after training step %d", int(saved["done"]))
        state = saved
    return state


def _train_step(
    state: dict, chunk: ChunkRef, spec, scaling: dict, step, index: int, checkpoints: Checkpoints | None
) -> dict:
    """Training step `index` (epoch x chunks + chunk); a step a checkpoint already holds passes
    the state on. `checkpoints` is given to the steps that end a checkpointed epoch."""
    from ..kernels.calo_flow import history, train_chunk

    if index < int(state["done"]):
        return state
    energy, incident = chunk.load()
    state = {
        **train_chunk(state, energy, incident, chunk.index, spec, scaling["mean"], scaling["std"], step),
        "done": np.array(index + 1, np.int64),
    }
    if checkpoints is not None:
        nll = {k: v[-1] for k, v in history(state, step.epoch + 1).items()}
        log.info(
            "calo.train_flow: epoch %d done, held-out NLL flow 1 %.3f, flow 2 %.3f; checkpoint saved",
            step.epoch + 1,
            nll["val_nll_flow1"],
            nll["val_nll_flow2"],
        )
        checkpoints.save(state)
    return state


def train_flows(chunks, spec, scaling, params: TrainFlowParams, checkpoints=None, task=lambda f: f):
    """calo.train_flow's training loop: the initial state (or the checkpoint's), then every epoch
    (its learning rate from `training_step`) over every chunk (objects with `index` and `load()
    -> (energy, incident)`), saving at the checkpointed epochs' ends. `task` wraps each call:
    dask.delayed in the op (one task per training step), the identity in replicas.hyperopt (a
    fold's training showers as one chunk, trained at once). Returns the final state."""
    state = task(_initial)(spec, params.seed, checkpoints)
    for epoch in range(params.epochs):
        step = training_step(params, epoch)
        save = checkpoints is not None and (epoch + 1) % checkpoints.every == 0 and epoch + 1 < params.epochs
        for chunk in chunks:
            index = epoch * len(chunks) + chunk.index
            last = save and chunk.index == len(chunks) - 1
            state = task(_train_step)(state, chunk, spec, scaling, step, index, checkpoints if last else None)
    return state


def _finish(
    state: dict, scaling: dict, epochs: int, checkpoints: Checkpoints | None
) -> dict[str, np.ndarray]:
    from ..kernels.calo_flow import history

    if checkpoints is not None:
        checkpoints.clear()
    return {
        "flow1_weights": state["flow1_weights"],
        "flow2_weights": state["flow2_weights"],
        "feature_mean": scaling["mean"],
        "feature_std": scaling["std"],
        **history(state, epochs),
    }


def shower_quantum(params_quantum: float | None, data: xr.Dataset) -> float:
    if params_quantum is not None:
        return float(params_quantum)
    if "quantum" not in data.attrs:
        raise OpError(
            "the showers carry no 'quantum' attribute (the cells' energy quantum in GeV, "
            "set by `ingest synthetic-calo`); give params.quantum"
        )
    quantum = float(data.attrs["quantum"])
    if not quantum > 0:
        raise OpError(f"the showers' 'quantum' attribute must be a positive energy, found {quantum}")
    return quantum


def train_flow_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """One training step: a chunk of showers as float64 features (dequantised, standardised, and
    as tensors with their minibatch activations), and both flows' weights with gradients and Adam
    moments, plus the state it continues from."""
    weights = sum(output[f"flow{k}_weights"].size for k in (1, 2))
    return needs.chunk_task(8.0, inputs, output) + 8 * weights * needs.FLOAT32


@register_op(
    "calo.train_flow",
    params=TrainFlowParams,
    inputs=("showers",),
    wants_context=True,
    memory=needs.TorchNeed(train_flow_need),
)
def train_flow(
    params: TrainFlowParams, showers: xr.Dataset, context: StepContext | None = None
) -> xr.Dataset:
    """CaloFlow's two conditional flows (zuko) trained chunk by chunk: flow 1 the layer energies
    given the incident energy, flow 2 the normalised showers given both.

    Output: flow1_weights, flow2_weights (flat float32 vectors), feature_mean/feature_std (the
    standardisation), and per epoch the mean NLL per shower of each flow on the training and
    held-out showers (train_nll_flow1, val_nll_flow1, ...). The architecture is in attrs.
    Every `checkpoint_every` epochs the training state goes to the step's lake checkpoint folder
    (arrays, see `Checkpoints`), so an interrupted run resumes there.
    """
    from ..kernels.calo_flow import parameter_count

    n_layers, n_cells = shower_layout(showers, "showers")
    if params.max_showers is not None:
        showers = showers.isel({SHOWER: slice(0, params.max_showers)})
    spec = flow_spec(params, n_layers, n_cells, shower_quantum(params.quantum, showers))
    energy, incident = _aligned(showers)
    n_blocks = energy.numblocks[0]
    moments = da.map_blocks(
        _moments_block,
        energy,
        incident[:, None, None],
        spec,
        dtype=float,
        chunks=((1,) * n_blocks, (3,), (spec.n_features,)),
    )
    scaling = dask.delayed(_scaling, pure=True)(as_delayed(moments.sum(0)))
    checkpoints = (
        Checkpoints(
            context.lake_url, context.storage_options, context.checkpoint_path, params.checkpoint_every
        )
        if context is not None and params.checkpoint_every is not None
        else None
    )
    chunks, task = _chunk_refs(energy, incident), lambda f: dask.delayed(f, pure=True)
    state = train_flows(chunks, spec, scaling, params, checkpoints, task)  # one task per training step
    result = dask.delayed(_finish, pure=True)(state, scaling, params.epochs, checkpoints)
    layout = {
        "flow1_weights": (("flow1_weight",), (parameter_count(spec, "flow1"),), np.float32),
        "flow2_weights": (("flow2_weight",), (parameter_count(spec, "flow2"),), np.float32),
        "feature_mean": (("feature",), (spec.n_features,), float),
        "feature_std": (("feature",), (spec.n_features,), float),
    }
    for name in ("train_nll_flow1", "train_nll_flow2", "val_nll_flow1", "val_nll_flow2"):
        layout[name] = (("epoch",), (params.epochs,), float)
    model = xr.Dataset(
        {
            name: (dims, da.from_delayed(result[name], shape, dtype))
            for name, (dims, shape, dtype) in layout.items()
        },
        coords={"epoch": np.arange(params.epochs)},
    )
    for coord in ("cell_x", "cell_y"):
        if coord in showers.coords and showers[coord].dims == (CELL,):
            model[coord] = (CELL, showers[coord].data)  # lazy: the lake's coordinates are dask arrays
    model.attrs = {
        "kind": "calo flow",
        "flow_spec": json.dumps(spec.to_dict()),
        "seed": params.seed,
        "quantum": spec.quantum,
    }
    return model


# -- calo.sample ----------------------------------------------------------------------------------
class SampleParams(_Params):
    seed: Seed = Field(0, description="sampling seed (each chunk draws from (seed, chunk index))")
    batch_size: Rows = Field(
        1_000,
        gt=0,
        description="showers sampled per flow call: one call holds ~2 kB per (shower, cell) "
        "(0.23 GB measured at 1000 showers of 108 cells, 6 NSF couplings; kernels.calo_flow.sampling_bytes)",
    )


def _spec_of(model: xr.Dataset):
    from ..kernels.calo_flow import FlowSpec

    if model.attrs.get("kind") != "calo flow" or "flow_spec" not in model.attrs:
        raise OpError("input 'model' is not a calo.train_flow output (no 'flow_spec' attribute)")
    return FlowSpec.from_dict(json.loads(model.attrs["flow_spec"]))


def _model_arrays(**arrays: np.ndarray) -> dict[str, np.ndarray]:
    return arrays


MODEL_ARRAYS = ("flow1_weights", "flow2_weights", "feature_mean", "feature_std")


def _delayed_model(model: xr.Dataset):
    return dask.delayed(_model_arrays, pure=True)(**{k: as_delayed(model[k].data) for k in MODEL_ARRAYS})


def _sample_block(
    incident: np.ndarray, arrays: dict, spec, seed: int, batch_size: int, block_id=None
) -> np.ndarray:
    from ..kernels.calo_flow import load_flows, sample_showers

    flows = load_flows(arrays, spec)
    return sample_showers(
        flows, incident, spec, arrays["feature_mean"], arrays["feature_std"], seed, block_id[0], batch_size
    )


def sample_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """A chunk of generated showers as float64 features and float32 cells, plus what sampling
    a chunk in calls of batch_size holds (kernels.calo_flow.sampling_task_bytes)."""
    from ..kernels.calo_flow import sampling_task_bytes

    spec = _spec_of(inputs["model"])
    incident = inputs["conditions"]["incident_energy"]
    rows = max(incident.chunks[0]) if incident.chunks else incident.size
    return needs.chunk_task(3.0, {"conditions": inputs["conditions"]}, output) + sampling_task_bytes(
        spec, rows, params.batch_size
    )


@register_op(
    "calo.sample", params=SampleParams, inputs=("model", "conditions"), memory=needs.TorchNeed(sample_need)
)  # float64 features, flow activations, the output chunk
def sample(params: SampleParams, model: xr.Dataset, conditions: xr.Dataset) -> xr.Dataset:
    """Generated showers for the incident energies of `conditions`, chunk by chunk along shower.

    Output: energy (shower, layer, cell) in GeV (multiples of the model's quantum) and
    incident_energy, in the layout of `ingest synthetic-calo` (so it is an input of calo.metrics).
    """
    spec = _spec_of(model)
    require_variables(conditions, ["incident_energy"])
    if conditions["incident_energy"].dims != (SHOWER,):
        raise OpError(
            f"input 'conditions': 'incident_energy' must have dims ({SHOWER!r},), "
            f"found {conditions['incident_energy'].dims}"
        )
    incident = da.asarray(conditions["incident_energy"].data)
    energy = da.map_blocks(
        _sample_block,
        incident,
        _delayed_model(model),
        spec,
        params.seed,
        params.batch_size,
        new_axis=[1, 2],
        chunks=(incident.chunks[0], (spec.n_layers,), (spec.n_cells,)),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )
    out = xr.Dataset(
        {
            "energy": ((SHOWER, LAYER, CELL), energy, {"units": "GeV"}),
            "incident_energy": conditions["incident_energy"],
        },
        coords={LAYER: np.arange(spec.n_layers), CELL: np.arange(spec.n_cells)},
    )
    for coord in ("cell_x", "cell_y"):
        if coord in model:
            out = out.assign_coords({coord: (CELL, model[coord].data)})
    out.attrs = {"quantum": spec.quantum, "description": "showers generated by calo.train_flow's flows"}
    return out


# -- calo.metrics ---------------------------------------------------------------------------------
class MetricsParams(_Params):
    max_showers: Rows = Field(20_000, gt=0, description="showers of each sample used (the first N)")
    replicas: Replicas = Field(3, gt=0, le=100, description="fresh classifiers, differing by seed")
    hidden: Widths = Field([64, 64], description="classifier hidden widths")
    epochs: Epochs = Field(1500, gt=0, description="classifier minibatch steps")
    batch_size: Rows = Field(512, gt=0)
    lr: float = Field(1e-3, gt=0)
    patience: Epochs = Field(300, gt=0, description="steps without validation improvement before stopping")
    test_fraction: float = Field(0.3, gt=0, lt=0.6)
    validation_fraction: float = Field(0.2, gt=0, lt=0.4)
    bins: int = Field(30, ge=2, le=1000, description="histogram bins per observable (pictures)")
    speed_showers: Rows = Field(
        2_000,
        ge=0,
        description="showers generated to time the flow and the synthetic generator (0: no timing)",
    )
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "cpu"

    @model_validator(mode="after")
    def _fractions(self):
        if self.test_fraction + self.validation_fraction >= 0.8:
            raise ValueError("test_fraction + validation_fraction must leave >= 20% of showers to train on")
        return self


def _classifier_auc(generated: np.ndarray, reference: np.ndarray, params: MetricsParams) -> np.ndarray:
    """(R,) test AUC of fresh classifiers separating reference (1) from generated (0) features."""
    from ..kernels.classifier import NetworkConfig, auc, evaluate_network, fit_network
    from ..kernels.optim import OptimiserConfig
    from ..kernels.train import StoppingConfig

    x = np.concatenate([reference, generated])
    y = np.r_[np.ones(len(reference)), np.zeros(len(generated))]
    u = np.random.default_rng([params.seed, SPLIT_STREAM]).uniform(size=len(y))
    test = u < params.test_fraction
    val = (u >= params.test_fraction) & (u < params.test_fraction + params.validation_fraction)
    train = ~(test | val)
    config = NetworkConfig(
        tuple(params.hidden),
        ("relu",) * len(params.hidden) + ("linear",),
        params.epochs,
        OptimiserConfig(lr=params.lr),
        StoppingConfig(threshold=np.inf, patience=params.patience),
        max(1, params.epochs // 50),
        params.seed,
        params.device,
    )
    result, scale = fit_network(
        "bce",
        x[train],
        y[train],
        np.ones((params.replicas, int(train.sum()))),
        x[val],
        y[val],
        np.ones(int(val.sum())),
        config,
        batch_size=params.batch_size,
    )
    scores = evaluate_network("bce", result.weights, result.architecture, x[test], scale, params.device)
    return np.array([auc(s, y[test]) for s in scores])


def _metrics(
    gen_energy,
    gen_incident,
    ref_energy,
    ref_incident,
    cell_x,
    model_arrays,
    spec,
    generator_settings,
    params: MetricsParams,
) -> dict[str, np.ndarray]:
    from ..kernels import calo_observables as obs

    n = min(len(gen_incident), len(ref_incident))
    if n < 20:
        raise ValueError(f"calo.metrics needs at least 20 showers in each sample, found {n}")
    generated = obs.shower_observables(gen_energy, gen_incident, cell_x)
    reference = obs.shower_observables(ref_energy, ref_incident, cell_x)
    distance, floor = obs.wasserstein_table(generated, reference)
    gen_hist, ref_hist, edges = obs.histograms(generated, reference, params.bins)
    auc = _classifier_auc(
        obs.classifier_features(gen_energy, gen_incident),
        obs.classifier_features(ref_energy, ref_incident),
        params,
    )
    out = {
        "auc": auc,
        "wasserstein": distance,
        "wasserstein_floor": floor,
        "generated_density": gen_hist,
        "reference_density": ref_hist,
        "edges": edges,
        **_speeds(model_arrays, spec, generator_settings, ref_incident, params),
    }
    return out


def _speeds(model_arrays, spec, generator_settings, incident: np.ndarray, params: MetricsParams) -> dict:
    """Showers per second of the flows and of the synthetic generator, on the same incident
    energies, in this task (the same machine and load); NaN where one of them is not given."""
    from ..kernels.calo_flow import load_flows, sample_showers, time_per_shower
    from ..kernels.calo_synth import simulate_showers

    n = min(params.speed_showers, len(incident))
    flow_rate = generator_rate = np.nan
    if n and model_arrays is not None:
        flows = load_flows(model_arrays, spec)
        seconds = time_per_shower(
            lambda: sample_showers(
                flows,
                incident[:n],
                spec,
                model_arrays["feature_mean"],
                model_arrays["feature_std"],
                0,
                batch_size=SPEED_BATCH,
            ),
            n,
        )
        flow_rate = 1.0 / seconds
    if n and generator_settings is not None:
        seconds = time_per_shower(
            lambda: simulate_showers(n, 0, incident=incident[:n], **generator_settings), n
        )
        generator_rate = 1.0 / seconds
    return {
        "flow_showers_per_second": np.array(flow_rate),
        "generator_showers_per_second": np.array(generator_rate),
    }


GENERATOR_SETTINGS = ("n_layers", "n_side", "quantum", "profile_jitter")


def metrics_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """Both samples' first max_showers showers as float64 observables and classifier features
    (a few copies) and the classifier ensemble on minibatches, or with a model the speed test's
    sampling (kernels.calo_flow.sampling_task_bytes), whichever is more."""
    from ..kernels.calo_flow import sampling_task_bytes

    showers = inputs["reference"]
    width = showers.sizes[LAYER] * showers.sizes[CELL] + 1
    rows = 2 * min(params.max_showers, showers.sizes[SHOWER])
    sizes = [width, *params.hidden, 1]
    timing = min(params.speed_showers, showers.sizes[SHOWER])
    speed = (
        sampling_task_bytes(_spec_of(inputs["model"]), timing, SPEED_BATCH)
        if inputs.get("model") is not None and timing
        else 0
    )
    classifier = 6 * rows * width * needs.FLOAT64 + needs.ensemble_training_bytes(
        params.replicas, sizes, params.batch_size
    )
    # the speed test runs after the classifiers, in memory they freed: measured 465 MiB for the
    # recipe's task (20k + 20k showers, 3 classifiers, 2000 timed showers), declared 641
    return max(speed, classifier)


@register_op(
    "calo.metrics",
    params=MetricsParams,
    inputs=("generated", "reference"),
    optional_inputs=("model",),
    memory=needs.TorchNeed(metrics_need),
)
def metrics(
    params: MetricsParams, generated: xr.Dataset, reference: xr.Dataset, model: xr.Dataset | None = None
) -> xr.Dataset:
    """Generated vs held-out reference showers: classifier AUC, Wasserstein distances, speed.

    Output: auc (replica; a fresh classifier per replica: 0.5 = indistinguishable), wasserstein and
    wasserstein_floor (observable; W1 in units of the reference's std, and between the reference's
    two halves), densities of both samples per observable (bin) with their edges (and the energy
    fractions' again as 1-D `<name>_generated` / `<name>_reference` over `<name>_centre`), and, with a
    `model`, flow_showers_per_second against the synthetic generator's generator_showers_per_second
    (needs a reference from `ingest synthetic-calo`; NaN otherwise).
    """
    from ..kernels.calo_observables import observable_names

    shapes = {
        name: shower_layout(data, name) for name, data in (("generated", generated), ("reference", reference))
    }
    if shapes["generated"] != shapes["reference"]:
        raise OpError(
            f"generated showers have (layers, cells) = {shapes['generated']} but the reference "
            f"has {shapes['reference']}"
        )
    n_layers, n_cells = shapes["reference"]
    spec = _spec_of(model) if model is not None else None
    if spec is not None and (spec.n_layers, spec.n_cells) != (n_layers, n_cells):
        raise OpError(
            f"the model generates (layers, cells) = {(spec.n_layers, spec.n_cells)}, "
            f"the reference has {(n_layers, n_cells)}"
        )
    cell_x = (
        as_delayed(da.asarray(reference["cell_x"].data))
        if "cell_x" in reference.coords
        else np.arange(n_cells, dtype=float)
    )
    settings = (
        {k: reference.attrs[k] for k in GENERATOR_SETTINGS}
        if all(k in reference.attrs for k in GENERATOR_SETTINGS)
        else None
    )
    if settings is not None:
        settings = {**settings, "n_layers": int(settings["n_layers"]), "n_side": int(settings["n_side"])}
    first = {SHOWER: slice(0, params.max_showers)}
    gen, ref = generated.isel(first), reference.isel(first)
    arrays = _delayed_model(model) if model is not None else None
    result = dask.delayed(_metrics, pure=True)(
        as_delayed(gen["energy"].data),
        as_delayed(gen["incident_energy"].data),
        as_delayed(ref["energy"].data),
        as_delayed(ref["incident_energy"].data),
        cell_x,
        arrays,
        spec,
        settings,
        params,
    )
    names = observable_names(n_layers)
    k, r, b = len(names), params.replicas, params.bins
    layout = {
        "auc": (("replica",), (r,)),
        "wasserstein": (("observable",), (k,)),
        "wasserstein_floor": (("observable",), (k,)),
        "generated_density": (("observable", "bin"), (k, b)),
        "reference_density": (("observable", "bin"), (k, b)),
        "edges": (("observable", "edge"), (k, b + 1)),
        "flow_showers_per_second": ((), ()),
        "generator_showers_per_second": ((), ()),
    }
    out = xr.Dataset(
        {name: (dims, da.from_delayed(result[name], shape, float)) for name, (dims, shape) in layout.items()},
        coords={
            "replica": np.arange(r),  # object: zarr 3 stores it as a specified
            "observable": np.array(names, dtype=object),
        },
    )  # string type
    for j, name in enumerate(names[: 1 + n_layers]):  # energy fractions as 1-D curves, for pictures
        dim = f"{name}_bin"
        centres = (out["edges"].data[j, 1:] + out["edges"].data[j, :-1]) / 2
        out[f"{name}_generated"] = (dim, out["generated_density"].data[j], {"long_name": "density"})
        out[f"{name}_reference"] = (dim, out["reference_density"].data[j], {"long_name": "density"})
        out = out.assign_coords({f"{name}_centre": (dim, centres, {"long_name": name.replace("_", " ")})})
    out["auc"].attrs["long_name"] = "classifier AUC, reference vs generated (0.5 = indistinguishable)"
    out["wasserstein"].attrs["units"] = "reference std"
    mark(out["auc"], "median")
    mark(out["wasserstein"], "value")
    mark(out["flow_showers_per_second"], "value")
    mark(out["generator_showers_per_second"], "value")
    out.attrs = {"description": "CaloChallenge-style metrics: generated vs reference showers"}
    return out
