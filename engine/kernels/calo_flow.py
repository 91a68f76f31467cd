"""CaloFlow's two conditional normalizing flows (zuko), trained chunk by chunk, and their sampler.

The design of Krause and Shih (CaloFlow, arXiv:2106.05285): flow 1 learns the layer energies
given the incident energy, p(E_1..E_L | E_inc); flow 2 learns the normalised shower (each layer's
cell energies divided by that layer's energy) given the incident and layer energies. Sampling runs
flow 1, then flow 2 on its output, and multiplies back. Preprocessing, as theirs:

- dequantisation: cells hold whole numbers N of an energy quantum q (kernels.calo_synth); training
  sees (N + u) q with u ~ U(0, 1), so the flows learn a continuous density, and a generated cell is
  floor(E / q) q, which undoes the noise exactly (zeros included; dequantisation "triangular"
  draws u as the mean of two uniforms, whose density vanishes at whole quanta); with layer_sums "exact" flow 1
  sees each layer's whole count plus one u, (N + u) q, and a generated layer's floor(E / q) quanta
  are apportioned to its cells by flow 2's fractions (`apportion`), so the layer sums are flow 1's
  and not what the cells' remainders leave (which made the total energy the worst observable);
- flow 1 features: log(E_layer / E_inc), or (flow1_features "ratios") CaloFlow's log(E_total /
  E_inc) and logit E_k / (E_k + ... + E_last); flow 2 features: logit(alpha + (1 - 2 alpha)
  E_cell / E_layer) with alpha = 1e-6; context log E_inc (and, for flow 2, flow 1's features);
  every feature is standardised with moments gathered in a first pass over the chunks.

Flow 2 is where quality is won (tests/benchmarks/bench_calo.py --quality: the classifier
separates generated from reference showers as well on flow 2 alone as on the whole chain): an
affine MAF cannot follow the cells' multimodal marginals (dequantised empty cells are a long
log-uniform tail beside the occupied ones), rational-quadratic splines can, and as couplings
(zuko passes=2) they invert in two passes per transform instead of one per feature.

Why chunk by chunk: training is a chain of steps, one per (epoch, chunk), each taking the
previous step's state (both flows' weights and Adam moments, as flat numpy arrays) and one chunk of
showers, so no step holds more than one chunk and any dataset that streams from the lake trains
in a fixed memory. Weights are plain float32 vectors laid out by `parameter_layout`, which needs
no torch (a graph declares the model's shapes before anything is trained); loading one runs no
code. This module imports torch and zuko only inside functions, so the layout and the
preprocessing are usable without them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

ALPHA = 1e-6
FLOW_KINDS = ("nsf", "maf")
FLOW1_FEATURES = ("layers", "ratios")
LAYER_SUMS = ("cells", "exact")
FLOW2_SPLITS = ("halves", "shuffled")
DEQUANTISATIONS = ("uniform", "triangular")
ORDER_SEED = 20_210_610  # the shuffled feature orders of flow 2 (fixed: they are part of the architecture)
LOG_FRACTION_CLIP = (-30.0, math.log(2.0))  # a layer never gets more than twice the incident energy


@dataclass(frozen=True)
class FlowSpec:
    """Both flows' architecture and the data shape they model."""

    n_layers: int
    n_cells: int
    flow1_kind: str = "nsf"  # L features: a spline is cheap to invert
    flow2_kind: str = "maf"  # L x C features: an autoregressive NSF samples ~40x slower there
    # (zuko inverts it one feature at a time); as couplings (flow2_coupling) it does not
    transforms: int = 3
    hidden: tuple[int, ...] = (64, 64)
    bins: int = 8
    quantum: float = 0.01
    flow2_coupling: bool = False  # flow 2's transforms as couplings (zuko passes=2): two passes
    # to invert instead of one per feature
    flow1_features: str = "layers"  # "ratios": CaloFlow's log(E_tot/E_inc), logit E_k / sum_{j>=k} E_j
    layer_sums: str = "cells"  # "exact": flow 1 learns each layer's whole number of quanta (plus one
    # U(0, 1)) and the sampler apportions exactly that number to the cells (see `apportion`)
    flow2_split: str = "halves"  # "shuffled": each pair of coupling transforms splits the cells by
    # its own fixed random permutation (zuko's default: always the first vs the second half)
    dequantisation: str = "uniform"  # the cells' noise u in [0, 1): uniform, or "triangular" (the
    # mean of two uniforms: its density falls to zero at every whole quantum, see `cell_noise`)

    def __post_init__(self):
        for kind in (self.flow1_kind, self.flow2_kind):
            if kind not in FLOW_KINDS:
                raise ValueError(f"flow kind must be one of {FLOW_KINDS}, found {kind!r}")
        if self.n_layers < 1 or self.n_cells < 1 or self.transforms < 1 or not self.hidden:
            raise ValueError(f"need n_layers, n_cells, transforms >= 1 and hidden layers; found {self}")
        if self.quantum <= 0:
            raise ValueError(f"quantum must be positive, found {self.quantum}")
        if self.flow1_features not in FLOW1_FEATURES:
            raise ValueError(f"flow1_features must be one of {FLOW1_FEATURES}, found {self.flow1_features!r}")
        if self.layer_sums not in LAYER_SUMS:
            raise ValueError(f"layer_sums must be one of {LAYER_SUMS}, found {self.layer_sums!r}")
        if self.flow2_split not in FLOW2_SPLITS:
            raise ValueError(f"flow2_split must be one of {FLOW2_SPLITS}, found {self.flow2_split!r}")
        if self.dequantisation not in DEQUANTISATIONS:
            raise ValueError(
                f"dequantisation must be one of {DEQUANTISATIONS}, found {self.dequantisation!r}"
            )

    @property
    def n_features(self) -> int:
        """Standardised quantities: context (1), flow 1's features (L), flow 2's (L x C)."""
        return 1 + self.n_layers + self.n_layers * self.n_cells

    def flow_shapes(self) -> dict[str, tuple[int, int]]:
        """(features, context) of each flow."""
        return {"flow1": (self.n_layers, 1), "flow2": (self.n_layers * self.n_cells, 1 + self.n_layers)}

    def kind(self, flow: str) -> str:
        return self.flow1_kind if flow == "flow1" else self.flow2_kind

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: dict) -> FlowSpec:
        # models stored before layer_sums and flow2_split existed: summed dequantised cells, halves
        legacy = {"layer_sums": "cells", "flow2_split": "halves", "dequantisation": "uniform"}
        return cls(**{**legacy, **data, "hidden": tuple(data["hidden"])})


def parameter_layout(spec: FlowSpec, flow: str) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every trainable parameter of one zuko flow, in `named_parameters` order.

    zuko's MAF/NSF: each transform is a masked MLP from features + context to features x (values
    per feature: 2 for an affine MAF, 3 bins - 1 for a rational-quadratic spline), its Linear layers
    at even indices of `hyper`. tests/kernels/test_calo_flow.py checks this against zuko itself.
    """
    features, context = spec.flow_shapes()[flow]
    per_feature = 2 if spec.kind(flow) == "maf" else 3 * spec.bins - 1
    sizes = [features + context, *spec.hidden, features * per_feature]
    layout = []
    for t in range(spec.transforms):
        for j, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            prefix = f"transform.transforms.{t}.hyper.{2 * j}"
            layout += [(f"{prefix}.weight", (n_out, n_in)), (f"{prefix}.bias", (n_out,))]
    return layout


def parameter_count(spec: FlowSpec, flow: str) -> int:
    return sum(math.prod(shape) for _, shape in parameter_layout(spec, flow))


# -- preprocessing (numpy) ------------------------------------------------------------------------
def _check_showers(energy: np.ndarray, incident: np.ndarray, spec: FlowSpec) -> tuple[np.ndarray, np.ndarray]:
    energy, incident = np.asarray(energy, np.float64), np.asarray(incident, np.float64).reshape(-1)
    expected = (incident.size, spec.n_layers, spec.n_cells)
    if energy.shape != expected:
        raise ValueError(f"showers must have shape (shower, layer, cell) = {expected}, found {energy.shape}")
    if not np.all(incident > 0) or not np.all(energy >= 0):
        raise ValueError("incident energies must be positive and cell energies non-negative")
    return energy, incident


def _logit(p: np.ndarray) -> np.ndarray:
    p = ALPHA + (1 - 2 * ALPHA) * p
    return np.log(p) - np.log1p(-p)


def _expit(x: np.ndarray) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))
    return np.clip((p - ALPHA) / (1 - 2 * ALPHA), 0, 1)


def _layer_features(layers: np.ndarray, incident: np.ndarray, spec: FlowSpec) -> np.ndarray:
    """(n, L) flow 1 features of positive layer energies (n, L)."""
    if spec.flow1_features == "layers":
        return np.log(layers / incident[:, None])
    remaining = np.cumsum(layers[:, ::-1], axis=1)[:, ::-1]  # sum_{j >= k} E_j
    total = np.log(remaining[:, :1] / incident[:, None])
    return np.concatenate([total, _logit(layers[:, :-1] / remaining[:, :-1])], axis=1)


def _layers_from_features(x1: np.ndarray, incident: np.ndarray, spec: FlowSpec) -> np.ndarray:
    """(n, L) layer energies from flow 1 features (the inverse of _layer_features)."""
    if spec.flow1_features == "layers":
        return np.exp(np.clip(x1, *LOG_FRACTION_CLIP)) * incident[:, None]
    remaining = np.exp(np.clip(x1[:, 0], *LOG_FRACTION_CLIP)) * incident
    layers = np.empty_like(x1, dtype=np.float64)
    for k in range(spec.n_layers - 1):
        layers[:, k] = _expit(x1[:, k + 1]) * remaining
        remaining = remaining - layers[:, k]
    layers[:, -1] = remaining
    return layers


def cell_noise(rng: np.random.Generator, shape: tuple[int, ...], spec: FlowSpec) -> np.ndarray:
    """The cells' dequantisation noise u in [0, 1) (floor(N + u) = N either way): uniform, or
    triangular (the mean of two uniforms), whose density is zero at 0 and 1: a cell's dequantised
    density then falls to zero at every whole quantum instead of jumping there (from p(N = 0) to
    p(N = 1) at one quantum, a step the flow smooths into spurious one-quantum cells)."""
    if spec.dequantisation == "triangular":
        return (rng.uniform(size=shape) + rng.uniform(size=shape)) / 2
    return rng.uniform(size=shape)


def to_features(
    energy: np.ndarray, incident: np.ndarray, spec: FlowSpec, rng: np.random.Generator | None
) -> np.ndarray:
    """(n, n_features) unstandardised [log E_inc, log(E_layer/E_inc), logit fractions].

    Flow 2's fractions are those of the dequantised cells. Flow 1's layer energies are their sums
    (layer_sums "cells": C uniform quanta of noise per layer), or (layer_sums "exact") each layer's
    whole number of quanta N plus one uniform u: (N + u) q, whose floor is N again.
    rng None dequantises with u = 1/2 (the moments pass); otherwise with uniform noise."""
    energy, incident = _check_showers(energy, incident, spec)
    counts = np.round(energy / spec.quantum)
    noise = 0.5 if rng is None else cell_noise(rng, counts.shape, spec)
    cells = (counts + noise) * spec.quantum
    x2 = _logit(cells / cells.sum(-1, keepdims=True))
    if spec.layer_sums == "exact":
        noise = 0.5 if rng is None else rng.uniform(size=counts.shape[:2])
        layers = (counts.sum(-1) + noise) * spec.quantum
    else:
        layers = cells.sum(-1)
    x1 = _layer_features(layers, incident, spec)
    return np.concatenate([np.log(incident)[:, None], x1, x2.reshape(len(incident), -1)], axis=1)


def apportion(fractions: np.ndarray, counts: np.ndarray, iterations: int = 32) -> np.ndarray:
    """(..., C) whole numbers summing to `counts` (...,) in proportion to `fractions` (..., C):
    floor(s f) with one scale s per row found by bisection (the divisor method of apportionment),
    then the cells that the next larger s would raise, one quantum each, for what ties leave.

    The exact inverse of the dequantisation: cells (N_i + u_i) with fractions f = (N_i + u_i) / S
    give back N_i for any s whose floors sum to N = sum N_i (s = S is one). A row whose fractions
    are all zero shares its count equally."""
    f = np.asarray(fractions, np.float64)
    n = np.asarray(counts, np.float64)
    if f.shape[:-1] != n.shape or np.any(f < 0) or np.any(n < 0):
        raise ValueError(f"need fractions (..., C) >= 0 and counts (...) >= 0, found {f.shape} and {n.shape}")
    total = f.sum(-1, keepdims=True)
    f = np.where(total > 0, f / np.where(total > 0, total, 1.0), 1.0 / f.shape[-1])
    low = n.copy()  # sum floor(s f) lies in (s - C, s] since sum f = 1: low gives <= N,
    high = n + f.shape[-1]  # high >= N
    for _ in range(iterations):
        middle = (low + high) / 2
        above = np.floor(middle[..., None] * f).sum(-1) > n
        high = np.where(above, middle, high)
        low = np.where(above, low, middle)
    cells = np.floor(low[..., None] * f)
    short = n - cells.sum(-1)  # >= 0, nonzero only where cells tie
    with np.errstate(divide="ignore"):
        crossing = np.where(f > 0, (cells + 1) / f, np.inf)  # the scale at which each cell rises
    rank = np.argsort(np.argsort(crossing, axis=-1, kind="stable"), axis=-1)
    return cells + (rank < short[..., None])


def from_features(x1: np.ndarray, x2: np.ndarray, incident: np.ndarray, spec: FlowSpec) -> np.ndarray:
    """(n, L, C) float32 cell energies from unstandardised flow outputs, requantised: each cell
    floored to whole quanta (layer_sums "cells"), or each layer's floor(E_layer / q) quanta
    apportioned to its cells by flow 2's fractions (layer_sums "exact")."""
    incident = np.asarray(incident, np.float64).reshape(-1)
    layers = _layers_from_features(x1, incident, spec)
    fractions = _expit(x2).reshape(len(incident), spec.n_layers, -1)
    if spec.layer_sums == "exact":
        counts = apportion(fractions, np.floor(layers / spec.quantum))
        return (counts * spec.quantum).astype(np.float32)
    total = fractions.sum(-1, keepdims=True)
    fractions = np.divide(fractions, total, out=np.zeros_like(fractions), where=total > 0)
    cells = fractions * layers[..., None]
    return (np.floor(cells / spec.quantum) * spec.quantum).astype(np.float32)


def feature_moments(energy: np.ndarray, incident: np.ndarray, spec: FlowSpec) -> np.ndarray:
    """(3, n_features) count, sum and sum of squares of the features of one chunk (first pass)."""
    x = to_features(energy, incident, spec, None)
    return np.stack([np.full(x.shape[1], float(len(x))), x.sum(0), (x**2).sum(0)])


def scaling_from_moments(moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per feature from summed feature_moments (a constant feature gets std 1)."""
    count, total, squares = moments
    if not np.all(count > 0):
        raise ValueError("no showers to standardise the features with")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0))
    return mean, np.where(std > 1e-6, std, 1.0)


# -- torch ----------------------------------------------------------------------------------------
def feature_orders(features: int, transforms: int) -> list[np.ndarray]:
    """Flow 2's feature order per transform for flow2_split "shuffled": transforms 2k and 2k + 1
    take a fixed random permutation and its reverse (as zuko's default alternates the identity and
    its reverse), so as couplings each pair transforms every feature once, and every pair splits
    the cells differently. Drawn from numpy with a fixed seed: the same on every build."""
    orders = []
    for t in range(transforms):
        order = np.random.default_rng([ORDER_SEED, t // 2]).permutation(features)
        orders.append(order if t % 2 == 0 else features - 1 - order)
    return orders


def _shuffled_flow(spec: FlowSpec, features: int, context: int, options: dict):
    """zuko's MAF / NSF built transform by transform with `feature_orders` (the same modules, so
    the same parameter names and initialisation, only the masks differ)."""
    from functools import partial

    import torch
    from zuko.distributions import DiagNormal
    from zuko.flows import Flow, UnconditionalDistribution
    from zuko.flows.autoregressive import MaskedAutoregressiveTransform
    from zuko.transforms import MonotonicRQSTransform

    if spec.flow2_kind == "nsf":
        options = {
            **options,
            "univariate": partial(MonotonicRQSTransform, slope=1e-3),
            "shapes": [(spec.bins,), (spec.bins,), (spec.bins - 1,)],
        }
    transforms = [
        MaskedAutoregressiveTransform(features, context, order=torch.as_tensor(order), **options)
        for order in feature_orders(features, spec.transforms)
    ]
    base = UnconditionalDistribution(
        DiagNormal, loc=torch.zeros(features), scale=torch.ones(features), buffer=True
    )
    return Flow(transforms, base)


def build_flows(spec: FlowSpec) -> dict:
    """Both zuko flows, freshly initialised from torch's current random state."""
    import zuko

    flows = {}
    for name, (features, context) in spec.flow_shapes().items():
        options = {"transforms": spec.transforms, "hidden_features": list(spec.hidden)}
        if name == "flow2" and spec.flow2_coupling:
            options["passes"] = 2
        if name == "flow2" and spec.flow2_split == "shuffled":
            del options["transforms"]
            flows[name] = _shuffled_flow(spec, features, context, options)
        elif spec.kind(name) == "nsf":
            flows[name] = zuko.flows.NSF(features, context, bins=spec.bins, **options)
        else:
            flows[name] = zuko.flows.MAF(features, context, **options)
    return flows


def flat_parameters(flow) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.cat([p.reshape(-1) for p in flow.parameters()]).cpu().numpy().astype(np.float32)


def load_flat(flow, vector: np.ndarray, spec: FlowSpec, name: str) -> None:
    """Copy a flat float32 vector into the flow's parameters (layout checked by name and size)."""
    import torch

    layout = parameter_layout(spec, name)
    names = [n for n, _ in flow.named_parameters()]
    if names != [n for n, _ in layout] or np.size(vector) != parameter_count(spec, name):
        raise ValueError(
            f"{name}: stored weights ({np.size(vector)} values) do not fit the flow "
            f"({parameter_count(spec, name)} values): another architecture?"
        )
    offset = 0
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.as_tensor(np.asarray(vector[offset : offset + p.numel()])).reshape(p.shape))
            offset += p.numel()


def _contexts(x: np.ndarray, spec: FlowSpec):
    """Standardised features split into (context 1, features 1, context 2, features 2) tensors."""
    import torch

    t = torch.as_tensor(x, dtype=torch.float32)
    c, x1, x2 = t[:, :1], t[:, 1 : 1 + spec.n_layers], t[:, 1 + spec.n_layers :]
    return c, x1, torch.cat([c, x1], dim=1), x2


def initial_state(spec: FlowSpec, seed: int) -> dict[str, np.ndarray]:
    """Freshly initialised weights (keyed by seed), zero Adam moments and an empty record."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        flows = build_flows(spec)
    state = {}
    for name, flow in flows.items():
        state[f"{name}_weights"] = flat_parameters(flow)
        state[f"{name}_adam_m"] = np.zeros_like(state[f"{name}_weights"])
        state[f"{name}_adam_v"] = np.zeros_like(state[f"{name}_weights"])
    state["adam_step"] = np.array(0, np.int64)
    return state


@dataclass(frozen=True)
class TrainStep:
    """One training step's settings: the epoch it belongs to and its learning rate."""

    epoch: int
    lr: float
    batch_size: int
    validation_fraction: float
    seed: int
    clip_norm: float = 5.0


def _adam(flows: dict, state: dict, lr: float):
    import torch

    params = [p for flow in flows.values() for p in flow.parameters()]
    optimiser = torch.optim.Adam(params, lr=lr)
    step = int(state["adam_step"])
    if step:
        moments = {k: np.concatenate([state[f"{name}_adam_{k}"] for name in flows]) for k in "mv"}
        offset = 0
        for p in params:
            n = p.numel()
            optimiser.state[p] = {
                "step": torch.tensor(float(step)),
                "exp_avg": torch.as_tensor(moments["m"][offset : offset + n]).reshape(p.shape).clone(),
                "exp_avg_sq": torch.as_tensor(moments["v"][offset : offset + n]).reshape(p.shape).clone(),
            }
            offset += n
    return optimiser, params


def _adam_moments(flows: dict, optimiser) -> dict[str, np.ndarray]:
    out = {}
    for name, flow in flows.items():
        for key, moment in (("m", "exp_avg"), ("v", "exp_avg_sq")):
            parts = [
                optimiser.state[p][moment].reshape(-1)
                if p in optimiser.state
                else np.zeros(p.numel(), np.float32)
                for p in flow.parameters()
            ]
            out[f"{name}_adam_{key}"] = np.concatenate([np.asarray(q, np.float32) for q in parts])
    return out


def negative_log_likelihood(flows: dict, x: np.ndarray, spec: FlowSpec):
    """Per-shower NLL of both flows (tensors (n,), (n,)) at standardised features x."""
    c, x1, context2, x2 = _contexts(x, spec)
    return -flows["flow1"](c).log_prob(x1), -flows["flow2"](context2).log_prob(x2)


def train_chunk(
    state: dict[str, np.ndarray],
    energy: np.ndarray,
    incident: np.ndarray,
    block: int,
    spec: FlowSpec,
    mean: np.ndarray,
    std: np.ndarray,
    step: TrainStep,
) -> dict[str, np.ndarray]:
    """Train both flows on one chunk of showers (minibatches of its training showers), and return
    the new state with this chunk's NLL sums added to the epoch's record.

    Every random draw (the train/validation split, the dequantisation noise, the batch order) is
    keyed by (seed, block) or (seed, epoch, block): a chunk's validation showers are the same in
    every epoch, and a training reruns identically.
    """
    import torch

    torch.set_num_threads(1)  # one thread per dask worker thread is fastest on few cores
    held_out = (
        np.random.default_rng([step.seed, block, 1]).uniform(size=len(incident)) < step.validation_fraction
    )
    rng = np.random.default_rng([step.seed, step.epoch, block])
    x = ((to_features(energy, incident, spec, rng) - mean) / std).astype(np.float32)
    with torch.random.fork_rng():
        torch.manual_seed(int(rng.integers(2**31)))
        flows = build_flows(spec)
    for name, flow in flows.items():
        load_flat(flow, state[f"{name}_weights"], spec, name)
    optimiser, _ = _adam(flows, state, step.lr)
    train = np.flatnonzero(~held_out)
    order = train[rng.permutation(train.size)]
    sums = np.zeros(4)  # train NLL 1, 2; validation NLL 1, 2
    for start in range(0, order.size, step.batch_size):
        batch = order[start : start + step.batch_size]
        nll1, nll2 = negative_log_likelihood(flows, x[batch], spec)
        loss = nll1.mean() + nll2.mean()
        optimiser.zero_grad()
        loss.backward()
        for flow in flows.values():  # each flow on its own: flow 2's larger gradients (~100 features)
            # would otherwise shrink flow 1's steps whenever their joint norm is clipped
            torch.nn.utils.clip_grad_norm_(flow.parameters(), step.clip_norm)
        optimiser.step()
        sums[:2] += [float(nll1.detach().sum()), float(nll2.detach().sum())]
    with torch.no_grad():
        if held_out.any():
            nll1, nll2 = negative_log_likelihood(flows, x[held_out], spec)
            sums[2:] = [float(nll1.sum()), float(nll2.sum())]
    out = {
        **{f"{name}_weights": flat_parameters(flow) for name, flow in flows.items()},
        **_adam_moments(flows, optimiser),
        "adam_step": np.array(int(state["adam_step"]) + -(-order.size // step.batch_size), np.int64),
    }
    record = dict(state.get("record", {}))
    key = step.epoch
    previous = record.get(key, np.zeros(6))
    record[key] = previous + np.r_[sums, train.size, held_out.sum()]
    out["record"] = record
    return out


def history(state: dict, epochs: int) -> dict[str, np.ndarray]:
    """(epochs,) mean NLL per shower of each flow on the training and validation showers."""
    record = state.get("record", {})
    table = np.stack([record.get(e, np.full(6, np.nan)) for e in range(epochs)])
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "train_nll_flow1": table[:, 0] / table[:, 4],
            "train_nll_flow2": table[:, 1] / table[:, 4],
            "val_nll_flow1": table[:, 2] / table[:, 5],
            "val_nll_flow2": table[:, 3] / table[:, 5],
        }


def load_flows(weights: dict[str, np.ndarray], spec: FlowSpec) -> dict:
    """Both flows with stored flat weights (`flow1_weights`, `flow2_weights`), in eval mode."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)  # the weights are overwritten; only buffers (orders, masks) remain
        flows = build_flows(spec)
    for name, flow in flows.items():
        load_flat(flow, np.asarray(weights[f"{name}_weights"]), spec, name)
        flow.eval()
    return flows


def sample_showers(
    flows: dict,
    incident: np.ndarray,
    spec: FlowSpec,
    mean: np.ndarray,
    std: np.ndarray,
    seed: int,
    block: int = 0,
    batch_size: int = 1_000,
) -> np.ndarray:
    """(n, L, C) float32 generated showers for the given incident energies, keyed by (seed, block)."""
    incident = np.asarray(incident, np.float64).reshape(-1)
    out = np.empty((incident.size, spec.n_layers, spec.n_cells), np.float32)
    for start, x1, x2 in sample_features(flows, incident, spec, mean, std, seed, block, batch_size):
        e = incident[start : start + len(x1)]
        out[start : start + e.size] = from_features(x1, x2, e, spec)
    return out


def sample_features(
    flows, incident, spec: FlowSpec, mean, std, seed: int, block: int = 0, batch_size: int = 1_000
):
    """Yields (first shower, flow 1 features, flow 2 features), unstandardised, per batch: the
    flows' draws behind `sample_showers` (the same for the same seed and block)."""
    import torch

    torch.set_num_threads(1)
    incident = np.asarray(incident, np.float64).reshape(-1)
    if not np.all(incident > 0):
        raise ValueError("incident energies must be positive to condition the flows on")
    L = spec.n_layers
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(int(np.random.default_rng([seed, block]).integers(2**31)))
        for start in range(0, incident.size, batch_size):
            e = incident[start : start + batch_size]
            c = torch.as_tensor(((np.log(e) - mean[0]) / std[0])[:, None], dtype=torch.float32)
            x1 = flows["flow1"](c).sample()
            x2 = flows["flow2"](torch.cat([c, x1], dim=1)).sample()
            yield (
                start,
                x1.numpy() * std[1 : 1 + L] + mean[1 : 1 + L],
                x2.numpy() * std[1 + L :] + mean[1 + L :],
            )


# bytes per (shower, flow-2 feature) one sampling call holds at its peak, by flow 2's kind and
# whether its transforms are couplings; measured as peak RSS growth of sample_showers in a fresh
# process (python tests/benchmarks/bench_calo.py --memory) for batches of 1000-4000 showers,
# 48-300 features and 3-6 transforms, and rounded up: a fully autoregressive flow inverts feature
# by feature (its allocations grow with the features, not the transforms), a coupling flow in two
# passes per transform (they grow with the transforms).
def _bytes_per_value(kind: str, coupling: bool, features: int, transforms: int) -> int:
    if coupling:
        return 4 * ((100 if kind == "nsf" else 20) + (80 if kind == "nsf" else 15) * transforms)
    return 4 * (300 + features) * (7 if kind == "nsf" else 1)  # nsf: 0.84-1.06 GB measured at 1000 x 108


SAMPLING_BYTES_PER_SHOWER = 8_000  # flow 1, the float64 features and the output, per shower


def sampling_bytes(spec: FlowSpec, batch_size: int) -> int:
    """Memory one sampling call of `batch_size` showers holds beyond what is resident before it:
    measured 0.24 GB for 1000 showers of 108 features with a 6-transform NSF coupling flow 2 (0.16
    GB with the 3-transform MAF, 0.84-1.06 GB with a 3-transform autoregressive NSF)."""
    features = spec.n_layers * spec.n_cells
    per_value = _bytes_per_value(spec.flow2_kind, spec.flow2_coupling, features, spec.transforms)
    return batch_size * (features * per_value + SAMPLING_BYTES_PER_SHOWER)


# One task calls the sampler once per batch: measured (calo.sample on the recipe's flows, 1000
# showers per call, a fresh process), its growth was 274 MiB over 1 call, 487 over 3 and 552 over
# 10: the allocator keeps what one call freed, and the growth levels off at ~2.2x one call's.
REPEATED_CALLS = 2.4
FIRST_USE_BYTES = 48 * 2**20  # torch's and zuko's first use in a worker thread


def sampling_task_bytes(spec: FlowSpec, rows: int, batch_size: int) -> int:
    """Memory a task sampling `rows` showers in calls of `batch_size` holds (see REPEATED_CALLS)."""
    one = sampling_bytes(spec, min(rows, batch_size))
    return FIRST_USE_BYTES + int(one * (1.0 if rows <= batch_size else REPEATED_CALLS))


def time_per_shower(generate, n: int) -> float:
    """Seconds per shower of `generate()` (which makes n showers), best of two runs."""
    best = math.inf
    for _ in range(2):
        start = time.perf_counter()
        generate()
        best = min(best, time.perf_counter() - start)
    return best / max(n, 1)
