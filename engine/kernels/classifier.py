"""Replica ensembles of classifiers and autoencoders, and the metrics taggers are judged by.

Training goes through the replica core (EnsembleMLP + train_ensemble): `WeightedEventLoss` is a
loss object whose per-replica loss is a weighted mean of a per-event loss, so one class serves
binary cross-entropy (taggers, OmniFold's reweighting classifiers) and reconstruction error
(autoencoders). Per-replica weights are how replicas differ: bootstrap counts of the training
events, OmniFold's push/pull weights, or all ones (replicas then differ by their seeds only).

Metrics are written from their definitions, without sklearn: AUC as the Mann-Whitney U statistic
(exact, ties counted one half), the ROC as (signal efficiency, background efficiency) pairs at
score thresholds, background rejection 1/eps_B at a fixed signal efficiency.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .mlp import EnsembleMLP, resolve_device
from .regression import RegressionConfig as NetworkConfig  # the same network and training settings
from .train import Progress, TrainResult, train_with_config

Tensor = torch.Tensor


# -- losses -----------------------------------------------------------------------------------
def binary_cross_entropy(out: Tensor, target: Tensor) -> Tensor:
    """Per-event BCE (R, n) of logits out (R, n, 1) against labels target (n,) in {0, 1}."""
    logits = out[..., 0]
    return F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")


def reconstruction_error(out: Tensor, target: Tensor) -> Tensor:
    """Per-event mean squared error (R, n) of reconstructions (R, n, f) of inputs target (n, f)."""
    return (out - target).pow(2).mean(-1)


PER_EVENT_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "bce": binary_cross_entropy, "reconstruction": reconstruction_error}


class WeightedEventLoss:
    """A train_ensemble loss_fn: sum_i w_ri loss_ri / sum_i w_ri for each replica r.

    `train` and `validation` are (inputs (n, f), targets, weights (n,) or (R, n)); the validation
    set is evaluated only at check epochs, under no_grad, always whole.

    With `batch_size`, each training step sees `batch_size` events drawn with replacement (the
    same events for every replica, each replica with its own weights): on 10^5 jets a minibatch
    step costs ~1% of a full-batch one and moves the weights about as far. The draw of step e is
    keyed by (seed, e), and `step` is set from a checkpoint's epoch on resume, so a resumed
    training sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, per_event: str, train, validation, *, batch_size: int | None = None, seed: int = 0,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.per_event = PER_EVENT_LOSSES[per_event]
        device = resolve_device(device)
        self._sets = []
        for name, (x, target, weights) in (("train", train), ("validation", validation)):
            w = np.asarray(weights, float)
            if w.shape[-1] != len(x) or not np.all(w >= 0) or not np.all(w.sum(-1) > 0):
                raise ValueError(f"{name} weights must be non-negative (n,) or (R, n) with n = "
                                 f"{len(x)} and a positive sum per replica; found shape {w.shape}")
            self._sets.append(tuple(torch.as_tensor(np.asarray(a), dtype=dtype, device=device)
                                    for a in (x, target, w / w.sum(-1, keepdims=True))))
        n_train = len(train[0])
        self.batch_size = batch_size if batch_size is not None and batch_size < n_train else None
        self.seed, self.epoch = seed, 0  # set by train_ensemble (the minibatch key)

    def _loss(self, model: EnsembleMLP, subset) -> Tensor:
        x, target, weights = subset
        return (self.per_event(model(x), target) * weights).sum(-1) / weights.sum(-1).clamp_min(1e-30)

    def _batch(self):
        x, target, weights = self._sets[0]
        index = np.random.default_rng([self.seed, self.epoch]).integers(0, len(x), self.batch_size)
        index = torch.as_tensor(index, device=x.device)
        return x[index], target[index], weights[..., index]

    def __call__(self, model: EnsembleMLP, validate: bool) -> tuple[Tensor, Tensor | None]:
        train = self._loss(model, self._batch() if self.batch_size else self._sets[0])
        if not validate:
            return train, None
        with torch.no_grad():
            return train, self._loss(model, self._sets[1])


def bootstrap_weights(n: int, replicas: int, seed: int) -> np.ndarray:
    """(R, n) bootstrap counts: replica r resamples n events with replacement, keyed by (seed, r)."""
    return np.stack([np.bincount(np.random.default_rng([seed, r]).integers(0, n, n), minlength=n)
                     for r in range(replicas)]).astype(float)


def balance_classes(weights: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rescale (R, n) weights so both classes carry equal total weight in every replica.

    With equal class weights a calibrated classifier's f/(1-f) is the density ratio p1/p0 of the
    two (normalised) weighted samples, with no prior factor to undo.
    """
    weights = np.array(weights, float)
    for value in (0, 1):
        mask = labels == value
        weights[..., mask] /= weights[..., mask].sum(-1, keepdims=True)
    return weights


# -- training ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Standardiser:
    """Per-feature mean and std of the training inputs (stored with the model)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardiser:
        std = x.std(0)
        return cls(x.mean(0), np.where(std > 0, std, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


def fit_network(kind: str, x_train: np.ndarray, y_train: np.ndarray | None, train_weights: np.ndarray,
                x_val: np.ndarray, y_val: np.ndarray | None, val_weights: np.ndarray,
                config: NetworkConfig, *, batch_size: int | None = None,
                progress: Callable[[Progress], None] | None = None,
                on_checkpoint: Callable | None = None,
                resume_from: Mapping[str, np.ndarray] | None = None) -> tuple[TrainResult, Standardiser]:
    """Train an ensemble (R = len(train_weights)) as a classifier (kind 'bce', logits out, labels
    y) or an autoencoder (kind 'reconstruction', inputs reconstructed, y ignored); `batch_size`
    switches from full-batch steps to minibatch steps (see WeightedEventLoss)."""
    torch.set_num_threads(1)  # small nets on few cores: one thread per worker is fastest
    scale = Standardiser.fit(x_train)
    xt, xv = scale(x_train), scale(x_val)
    n_out = 1 if kind == "bce" else xt.shape[1]
    targets = (y_train, y_val) if kind == "bce" else (xt, xv)
    device = resolve_device(config.device)
    model = EnsembleMLP(len(train_weights), [xt.shape[1], *config.hidden, n_out],
                        list(config.activations), seed=config.seed, device=device)
    loss = WeightedEventLoss(kind, (xt, targets[0], train_weights), (xv, targets[1], val_weights),
                             batch_size=batch_size, seed=config.seed, device=device)
    result = train_with_config(model, loss, config, progress=progress, on_checkpoint=on_checkpoint,
                               resume_from=resume_from)
    return result, scale


def evaluate_network(kind: str, arrays: Mapping[str, np.ndarray], architecture: Mapping,
                     x: np.ndarray, scale: Standardiser, device: str = "cpu") -> np.ndarray:
    """(R, n) scores of a stored ensemble: classifier probabilities, or reconstruction errors."""
    torch.set_num_threads(1)
    model = EnsembleMLP.from_arrays(arrays, architecture, device=resolve_device(device))
    xs = torch.as_tensor(scale(x), dtype=model.dtype, device=model.device)
    with torch.no_grad():
        out = model(xs)
        score = torch.sigmoid(out[..., 0]) if kind == "bce" else reconstruction_error(out, xs)
    return score.cpu().numpy().astype(np.float64)


# -- metrics ----------------------------------------------------------------------------------
def _check_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be equal 1-D arrays, found {scores.shape}, {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (background) or 1 (signal)")
    if labels.all() or not labels.any():
        raise ValueError(f"metrics need both classes; all {labels.size} labels are {int(labels[0])}")
    return scores, labels.astype(bool)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a random signal > score of a random background), ties counting 1/2: U / (n1 n0).

    Mann-Whitney: with average ranks over all events, U = sum of signal ranks - n1 (n1 + 1) / 2.
    """
    scores, labels = _check_labels(scores, labels)
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(scores.size)
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # average 1-based rank
    n1 = labels.sum()
    n0 = labels.size - n1
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eps_S, eps_B) for 'select score >= t' at every distinct threshold t, from (0, 0) to (1, 1)."""
    scores, labels = _check_labels(scores, labels)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[s[1:] != s[:-1], True]  # end of each group of tied scores
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.r_[0.0, tp / y.sum()], np.r_[0.0, fp / (~y).sum()]


def background_efficiency(scores: np.ndarray, labels: np.ndarray,
                          signal_efficiency: np.ndarray | float) -> np.ndarray:
    """eps_B at the threshold that keeps a fraction `signal_efficiency` of the signal.

    The threshold is the ceil(eps_S n1)-th highest signal score; eps_B counts background scores
    at or above it. No background passing gives eps_B = 0.
    """
    scores, labels = _check_labels(scores, labels)
    eff = np.atleast_1d(np.asarray(signal_efficiency, float))
    if np.any((eff <= 0) | (eff > 1)):
        raise ValueError(f"signal efficiencies must lie in (0, 1], found {eff}")
    signal = np.sort(scores[labels])[::-1]
    background = np.sort(scores[~labels])
    k = np.ceil(eff * signal.size).astype(int) - 1
    threshold = signal[k]
    passing = background.size - np.searchsorted(background, threshold, side="left")
    return passing / background.size


def rejection(eps_b: np.ndarray, n_background: int) -> np.ndarray:
    """1/eps_B; where no background passed, the bound n_background (rejection is at least that)."""
    return 1.0 / np.maximum(eps_b, 1.0 / n_background)


def accuracy(probabilities: np.ndarray, labels: np.ndarray, cut: float = 0.5) -> float:
    """Fraction of events on the right side of `cut` (signal: probability > cut)."""
    probabilities, labels = _check_labels(probabilities, labels)
    return float(((probabilities > cut) == labels).mean())
