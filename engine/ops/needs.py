"""The sizes ops' memory declarations are written in (`register_op(memory=...)`).

A chunk-proportional op declares a multiplier of the chunk bytes of its inputs and output; any
other declares a function of its params and datasets, built from these sizes. Ops that run torch
or numba wrap their need in `TorchNeed` or `NumbaNeed`, so the projection adds that runtime's own
resident size once per process rather than once per task. Nothing here imports either: `plan`
projects memory without them.

Where the numbers come from: chunk-proportional multipliers and the EELS needs are measured per
op by tests/benchmarks/calibrate_op_memory.py; the needs of trainings and fits count the arrays
they hold, checked on every shipped recipe by tests/benchmarks/bench_memory_projection.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import xarray as xr

FLOAT32 = 4
FLOAT64 = 8
# Measured on the CPU build of torch 2.13 with one thread (resident size after, minus before):
# `import torch` 178 MiB, then the first backward passes and Adam steps of a small ensemble another
# 79 MiB (autograd engine, allocator caches). Paid once by a process, whatever it trains.
TORCH_RUNTIME_BYTES = 257 * 2**20
# numba 0.68 (import, then the first call of a kernel from its cache), in a process with every op
# imported: 144 MiB resident, 108 MiB of it llvmlite's shared library mapped in, the rest numba's
# typing and target registries. Paid once by a process, whatever it compiles.
NUMBA_RUNTIME_BYTES = 144 * 2**20
RUNTIME_BYTES = {"torch": TORCH_RUNTIME_BYTES, "numba": NUMBA_RUNTIME_BYTES}
# Adam keeps, per weight: the weight, its gradient, two moments; training also keeps the best
# weights per replica and a checkpoint copy on the host.
ADAM_COPIES = 6


@dataclass(frozen=True)
class RuntimeNeed:
    """The need of an op whose tasks load a runtime of their own: `task` is a multiplier or a
    function as for any op; the projection adds RUNTIME_BYTES[runtime] once if any such step runs."""

    task: float | Callable[..., int]
    runtime: ClassVar[str]

    def __call__(self, params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
        return task_need(self.task, params, inputs, output)


class TorchNeed(RuntimeNeed):
    """An op whose tasks run torch (trainings, network inference)."""

    runtime = "torch"


class NumbaNeed(RuntimeNeed):
    """An op whose numpy chunks go through compiled loops (engine/kernels/*: numba)."""

    runtime = "numba"


def task_need(declared: float | Callable[..., int], params, inputs: dict[str, xr.Dataset],
              output: xr.Dataset) -> int:
    """Bytes one task holds by an op's declaration: a multiplier of chunk bytes, or a function."""
    if callable(declared):
        return int(declared(params, inputs, output))
    return chunk_task(declared, inputs, output)


def follows_chunks(declared: float | Callable[..., int]) -> bool:
    """Whether a declaration is a multiplier of chunk bytes, so that smaller chunks shrink it."""
    return not callable(declared.task if isinstance(declared, RuntimeNeed) else declared)


def _values(dataset: xr.Dataset) -> list[xr.Variable]:
    """Data variables and non-index coordinates (an op may return its values as coordinates);
    indexes are small and already in memory."""
    return [var for name, var in dataset.variables.items() if name not in dataset.indexes]


def chunk_bytes(dataset: xr.Dataset) -> int:
    """Bytes of one chunk of every variable (the largest chunk of each; a variable that is not
    chunked counts whole): what a task that reads one block of the dataset holds."""
    total = 0
    for var in _values(dataset):
        if var.chunks:
            total += math.prod(max(c) if c else 1 for c in var.chunks) * var.dtype.itemsize
        else:
            total += var.nbytes
    return total


def whole_bytes(dataset: xr.Dataset) -> int:
    """Bytes of every variable: what a task that gathers the dataset into one block holds."""
    return int(sum(var.nbytes for var in _values(dataset)))


def task_count(dataset: xr.Dataset) -> int:
    """Tasks that make the dataset: the block count of its most divided variable (1 unchunked)."""
    return max((math.prod(len(c) for c in var.chunks) for var in _values(dataset) if var.chunks),
               default=1)


def chunk_task(multiplier: float, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """The need of a chunk-proportional op: multiplier x (a chunk of every input + of the output)."""
    return int(multiplier * (sum(chunk_bytes(ds) for ds in inputs.values()) + chunk_bytes(output)))


def gathered(multiplier: float) -> Callable[..., int]:
    """The need of an op whose one task gathers its inputs whole (a fit, a draw, a closure test):
    multiplier x (every input + the output), whatever their chunks."""

    def need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
        return int(multiplier * (sum(whole_bytes(ds) for ds in inputs.values()) + whole_bytes(output)))

    return need


def ensemble_weights(sizes: list[int]) -> int:
    """Weights and biases of one [n_in, *hidden, n_out] network."""
    return sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))


def ensemble_training_bytes(replicas: int, sizes: list[int], rows: int) -> int:
    """What a batched ensemble's training holds besides its data: every replica's weights in
    ADAM_COPIES copies, and the activations of `rows` inputs per replica through every layer
    (kept for the backward pass, with their gradients), in float32."""
    state = replicas * ensemble_weights(sizes) * ADAM_COPIES
    activations = 2 * replicas * rows * sum(sizes)
    return (state + activations) * FLOAT32


# -- EELS ---------------------------------------------------------------------------------------
# Calibrated with tests/benchmarks/calibrate_op_memory.py (growth of peak RSS while computing one
# block, 128 x 128 x 2048 synthetic image): see each constant.
# A pass over the spectra chunk by chunk (eels.cluster's feature, the sample's gather): measured
# 2.93 and 2.94 at 32 and 64 px chunks.
CLUSTER_CHUNK_MULTIPLIER = 3.0
KMEANS_COPIES = 4  # fit_kmeans: the feature as float64, its finite copy, the batch order, labels
# A chunk adds to the sample in proportion to its pixels, so the merge tree's inputs hold about
# one sample and its result another (measured: 1.0-1.2 samples above the chunk pass).
SAMPLE_COPIES = 2
# Points the ZLP kernel fits per drawn spectrum: the core below dE_I (~100-200 channels at the
# usual dispersions), 40 above dE_II and 32 penalty points (kernels.zlp.zlp_training_set).
ZLP_POINTS_PER_SPECTRUM = 256


def _spectra_sample_bytes(clusters: int, per_cluster: int, channels: int) -> int:
    """A per-cluster sample of spectra (float32) as the merge tree holds it."""
    return SAMPLE_COPIES * clusters * per_cluster * channels * FLOAT32


def cluster_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """Feature pass per chunk, then K-means over every pixel's scalar feature at once."""
    pixels = output["cluster"].size
    return chunk_task(CLUSTER_CHUNK_MULTIPLIER, inputs, output) + KMEANS_COPIES * pixels * FLOAT64


def zlp_windows_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """A chunk of spectra read for the sample, and the sample of n_sample spectra per cluster.
    Measured (3 clusters of 300): 32.5 and 103.4 MiB at 32 and 64 px chunks; this: 38, 111 MiB."""
    image, clusters = inputs["image"], output.sizes["cluster_id"]
    sample = _spectra_sample_bytes(clusters, params.n_sample, image.sizes["energy"])
    return chunk_task(CLUSTER_CHUNK_MULTIPLIER, {"image": image}, output) + sample


def train_zlp_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """The chunk pass that draws the spectra sample, the sample (merged in float32, then copied
    to float64 by the training set) and the ensemble's training state on (E, ln N) points: one
    spectrum per cluster per replica. Measured (20 replicas, 3 clusters of 300 spectra): 37.9 and
    105.8 MiB at 32 and 64 px chunks, where this sums to 53 and 125 MiB."""
    image = inputs["image"]
    clusters, channels = inputs["windows"].sizes["cluster_id"], image.sizes["energy"]
    sample = _spectra_sample_bytes(clusters, params.n_spectra, channels)
    training_set = clusters * params.n_spectra * channels * FLOAT64
    sizes = [2, *params.hidden, 1]
    rows = clusters * ZLP_POINTS_PER_SPECTRUM
    return (chunk_task(CLUSTER_CHUNK_MULTIPLIER, {"image": image}, output) + sample + training_set
            + ensemble_training_bytes(params.replicas, sizes, rows))


# kernels.zlp.zlp_quantile_grid evaluates every replica on this many ln N nodes at a time
QUANTILE_GRID_NODES_PER_PASS = 16
# eels.subtract_zlp per chunk (spectra, labels, bands): measured 2.06 and 1.75 at 32 and 64 px
SUBTRACT_CHUNK_MULTIPLIER = 2.0


def subtract_zlp_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """The heavier of eels.subtract_zlp's two kinds of task: a chunk of spectra with its bands,
    or (once) the quantile grid, every replica evaluated on a pass of ln N nodes at every
    channel (two adjacent layers' activations and the sorted copy, float32). Measured with 100
    replicas on 64 x 64 x 2048 (eels_bandgap.yaml): the grid ~315 MiB."""
    model = inputs["model"]
    sizes = json.loads(model.attrs["architecture"])["sizes"]
    widest = max(a + b for a, b in zip(sizes[:-1], sizes[1:]))
    points = QUANTILE_GRID_NODES_PER_PASS * inputs["image"].sizes["energy"]
    grid = model.sizes["replica"] * points * (widest + 1) * FLOAT32
    return max(chunk_task(SUBTRACT_CHUNK_MULTIPLIER, inputs, output), grid)


# -- replica fits ---------------------------------------------------------------------------------
# kernels.train.Chi2Loss factors the covariance per replica and point subset (training, then
# validation): a float64 gather of the block and its float64 Cholesky factor, of which training
# keeps a float32 copy. Memory grows as R m^2.
TRAINING_FRACTION = 0.75  # replicas.pseudodata's default share of training points


def chi2_loss_bytes(replicas: int, points: int) -> int:
    """Peak while the per-replica Cholesky factors of a full covariance are built: the training
    block's float64 gather and factor, or its kept float32 factor beside the validation block's."""
    train = round(points * TRAINING_FRACTION)
    validation = points - train
    while_training = replicas * train**2 * 2 * FLOAT64
    while_validating = replicas * (train**2 * FLOAT32 + validation**2 * 2 * FLOAT64)
    return max(while_training, while_validating)


def replica_fit_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """replicas.train: the data whole, the chi2's factors, the ensemble on every point."""
    data = inputs["data"]
    replicas, points = data[params.target].shape
    sizes = [len(params.features), *params.hidden, 1]
    return (whole_bytes(data) + chi2_loss_bytes(replicas, points)
            + ensemble_training_bytes(replicas, sizes, points))


def pdf_fit_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """pdf.fit: pseudo-data and FK tables whole, the chi2's factors, the ensemble on the x grid
    (two inputs, x and ln x; one output per fitted basis function)."""
    replicas, points = inputs["data"][params.target].shape
    sizes = [2, *params.hidden, len(params.basis)]
    return (whole_bytes(inputs["data"]) + inputs["theory"]["fk"].nbytes
            + chi2_loss_bytes(replicas, points) + ensemble_training_bytes(replicas, sizes, params.n_x))


def predict_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """replicas.predict: a chunk of features in, every replica's activations on it, a chunk out."""
    prediction = output[params.name]  # (replica, points...): one chunk holds every replica
    values = math.prod(max(c) for c in prediction.chunks) if prediction.chunks else prediction.size
    sizes = json.loads(inputs["model"].attrs["architecture"])["sizes"]
    return chunk_task(2.0, inputs, output) + 2 * values * sum(sizes) * FLOAT32


# -- LHC ------------------------------------------------------------------------------------------
FEATURE_COPIES = 5  # a tagger's features: assembled, split, standardised, and as torch tensors


def tagger_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """lhc.train_classifier / anomaly_score: every jet's features at once in a few copies, the
    bootstrap weights, the ensemble on a minibatch, and every replica's scores on the test jets
    (an autoencoder's reconstruction is as wide as its input)."""
    jets = inputs["jets"]
    n = min(jets.sizes["jet"], params.max_jets or jets.sizes["jet"])
    width = 3 * params.n_constituents
    n_out = output["weight_" + str(len(params.hidden))].shape[-1]
    sizes = [width, *params.hidden, n_out]
    features = FEATURE_COPIES * n * width * FLOAT32
    weights = params.replicas * n * FLOAT64
    scores = params.replicas * round(n * params.test_fraction) * n_out * FLOAT32
    rows = params.batch_size or n
    return (chunk_task(2.0, {"jets": jets}, output) + features + weights + scores
            + ensemble_training_bytes(params.replicas, sizes, rows))


def eft_train_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """lhc.eft_train: the events' features whole as float64, grouped per sample and replica, a
    shuffled copy, and the term x replica ensemble on minibatches of SM + term events."""
    events = inputs["events"]
    n = events.sizes["event"]
    rows = output.sizes["replica"]  # terms x MC replicas, one network each
    features = 4 * n * len(params.features) * FLOAT64 + whole_bytes(events)
    sizes = [len(params.features), *params.hidden, 1]
    batch = 2 * (params.batch_size or n)
    return features + ensemble_training_bytes(rows, sizes, batch)


def eft_bounds_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """lhc.eft_bounds, per chunk of pseudo-data events: every term network's values, and the
    ratio r(x, c) with its logarithm at every grid point (float64)."""
    data = inputs["data"]
    events = max((max(v.chunks[0]) if v.chunks else v.shape[0] for v in data.data_vars.values()
                  if v.dims[:1] == ("event",)), default=0)
    points = math.prod(n for _, _, n in params.grid.values())
    rows = inputs["model"].sizes["replica"]
    per_event = (3 * points + 2 * rows) * FLOAT64
    return chunk_task(2.0, inputs, output) + events * per_event


def omnifold_need(params, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """lhc.omnifold: per-replica event weights (push, pull, bootstrap, held-out masks) and the
    replica ensemble on MC and data events together (full batch unless batch_size)."""
    samples = inputs["samples"]
    n_mc, n_data = samples[params.mc_gen].size, samples[params.data_reco].size
    weights = 6 * params.replicas * (n_mc + n_data) * FLOAT64
    rows = params.batch_size or (n_mc + n_data)
    return whole_bytes(samples) + weights + ensemble_training_bytes(
        params.replicas, [1, *params.hidden, 1], rows)
