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


# -- decorrelation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class AdversaryConfig:
    """An adversary that predicts a nuisance (the jet mass) from the classifier's output.

    The pivot of Louppe, Kagan and Cranmer (NeurIPS 2017), as used for mass-decorrelated taggers:
    the adversary classifies the nuisance of background events into `bins` equal-population bins
    from the classifier's probability; the classifier minimises BCE - strength x the adversary's
    cross-entropy, so it is penalised wherever its output tells the background mass apart.
    `steps` adversary updates (Adam, `lr`) follow every classifier step, and `pretrain` updates
    on the untrained classifier come first. strength 0 trains the adversary but leaves the
    classifier's loss untouched.
    """

    strength: float
    bins: int = 10
    hidden: tuple[int, ...] = (32,)
    lr: float = 1e-3
    steps: int = 5
    pretrain: int = 200

    def __post_init__(self):
        if self.strength < 0 or self.bins < 2 or self.steps < 1 or self.pretrain < 0 or self.lr <= 0:
            raise ValueError(f"adversary needs strength >= 0, bins >= 2, steps >= 1, pretrain >= 0 and "
                             f"lr > 0; found {self}")


def nuisance_bins(values: np.ndarray, reference: np.ndarray, bins: int) -> np.ndarray:
    """Bin index in [0, bins) of each value on equal-population bins of `reference`."""
    edges = np.quantile(np.asarray(reference, float), np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, np.asarray(values, float), side="right")


class AdversarialLoss(WeightedEventLoss):
    """WeightedEventLoss ('bce') minus strength x an adversary's nuisance cross-entropy.

    One adversary network per replica (an EnsembleMLP fed each replica's own probabilities), on
    the background events of the batch only: decorrelation is asked of the background, whose mass
    a cut must not sculpt. The adversary is trained here, inside the loss call, on the
    classifier's detached outputs, so the replica training loop (kernels.train) needs no change;
    its state is not part of a checkpoint, so a resumed training pretrains a fresh adversary.
    """

    def __init__(self, train, validation, nuisance: tuple[np.ndarray, np.ndarray], config: AdversaryConfig,
                 n_replicas: int, *, batch_size: int | None = None, seed: int = 0,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__("bce", train, validation, batch_size=batch_size, seed=seed, device=device,
                         dtype=dtype)
        self.config = config
        labels = [np.asarray(train[1]), np.asarray(validation[1])]
        background = np.asarray(nuisance[0])[labels[0] == 0]
        if background.size < config.bins:
            raise ValueError(f"the adversary needs at least {config.bins} background training events "
                             f"(one per nuisance bin); found {background.size}")
        device = resolve_device(device)
        self._bins = [torch.as_tensor(nuisance_bins(values, background, config.bins), device=device)
                      for values in nuisance]
        self.adversary = EnsembleMLP(n_replicas, [1, *config.hidden, config.bins],
                                     ["relu"] * len(config.hidden) + ["linear"], seed=seed + 10_007,
                                     device=device)
        self._optimiser = torch.optim.Adam(self.adversary.parameters(), lr=config.lr)
        self._pretrained = False

    def _adversary_loss(self, probability: Tensor, bins: Tensor, weights: Tensor) -> Tensor:
        """(R,) weighted cross-entropy of the adversary's nuisance-bin prediction."""
        logits = self.adversary(probability.unsqueeze(-1))  # (R, n, bins)
        target = bins.expand(logits.shape[0], -1)
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        w = weights.expand_as(ce)
        return (ce * w).sum(-1) / w.sum(-1).clamp_min(1e-30)

    def _train_adversary(self, probability: Tensor, bins: Tensor, weights: Tensor, steps: int) -> None:
        with torch.enable_grad():
            for _ in range(steps):
                self._optimiser.zero_grad()
                self._adversary_loss(probability, bins, weights).sum().backward()
                self._optimiser.step()

    def _combined(self, model: EnsembleMLP, subset, bins: Tensor, train: bool) -> Tensor:
        x, target, weights = subset
        logits = model(x)
        bce = self.per_event(logits, target)
        w = weights.expand_as(bce)
        loss = (bce * w).sum(-1) / w.sum(-1).clamp_min(1e-30)
        background = target == 0
        probability = torch.sigmoid(logits[..., 0])[:, background]
        bins, w_bg = bins[background], w[:, background]
        if train and torch.is_grad_enabled():
            steps = self.config.steps if self._pretrained else self.config.pretrain + self.config.steps
            self._pretrained = True
            self._train_adversary(probability.detach(), bins, w_bg, steps)
        if self.config.strength == 0:
            return loss
        return loss - self.config.strength * self._adversary_loss(probability, bins, w_bg)

    def __call__(self, model: EnsembleMLP, validate: bool) -> tuple[Tensor, Tensor | None]:
        if self.batch_size:
            index = np.random.default_rng([self.seed, self.epoch]).integers(0, len(self._sets[0][0]),
                                                                            self.batch_size)
            index = torch.as_tensor(index, device=self._sets[0][0].device)
            x, target, weights = self._sets[0]
            subset, bins = (x[index], target[index], weights[..., index]), self._bins[0][index]
        else:
            subset, bins = self._sets[0], self._bins[0]
        train = self._combined(model, subset, bins, True)
        if not validate:
            return train, None
        with torch.no_grad():
            return train, self._combined(model, self._sets[1], self._bins[1], False)


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
                resume_from: Mapping[str, np.ndarray] | None = None,
                adversary: AdversaryConfig | None = None,
                nuisance: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[TrainResult, Standardiser]:
    """Train an ensemble (R = len(train_weights)) as a classifier (kind 'bce', logits out, labels
    y) or an autoencoder (kind 'reconstruction', inputs reconstructed, y ignored); `batch_size`
    switches from full-batch steps to minibatch steps (see WeightedEventLoss). A classifier with
    an `adversary` is decorrelated from `nuisance` (training and validation values; AdversarialLoss)."""
    torch.set_num_threads(1)  # small nets on few cores: one thread per worker is fastest
    scale = Standardiser.fit(x_train)
    xt, xv = scale(x_train), scale(x_val)
    n_out = 1 if kind == "bce" else xt.shape[1]
    targets = (y_train, y_val) if kind == "bce" else (xt, xv)
    device = resolve_device(config.device)
    model = EnsembleMLP(len(train_weights), [xt.shape[1], *config.hidden, n_out],
                        list(config.activations), seed=config.seed, device=device)
    if adversary is not None:
        if kind != "bce" or nuisance is None:
            raise ValueError("an adversary decorrelates a classifier ('bce') from a nuisance: give both")
        loss = AdversarialLoss((xt, targets[0], train_weights), (xv, targets[1], val_weights), nuisance,
                               adversary, len(train_weights), batch_size=batch_size, seed=config.seed,
                               device=device)
    else:
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


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two histograms (normalised here)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0 or (p < 0).any() or (q < 0).any():
        raise ValueError(f"histograms must be equal-shaped, non-negative and non-empty; "
                         f"found {p.shape}, {q.shape}")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a):
        inside = a > 0
        return float((a[inside] * np.log2(a[inside] / m[inside])).sum())

    return 0.5 * kl(p) + 0.5 * kl(q)


def mass_sculpting(scores: np.ndarray, labels: np.ndarray, nuisance: np.ndarray,
                   signal_efficiency: float, bins: int = 20) -> float:
    """JSD between the background's nuisance distribution before and after the cut that keeps a
    fraction `signal_efficiency` of the signal, on `bins` equal-population bins of the background
    before the cut. 0: the cut leaves the background mass shape alone; 1: disjoint."""
    scores, labels = _check_labels(scores, labels)
    nuisance = np.asarray(nuisance, float)
    signal = np.sort(scores[labels])[::-1]
    threshold = signal[int(np.ceil(signal_efficiency * signal.size)) - 1]
    background = nuisance[~labels]
    passing = background[scores[~labels] >= threshold]
    if passing.size == 0:
        return float("nan")  # no background survives: no shape to compare
    index = nuisance_bins(background, background, bins), nuisance_bins(passing, background, bins)
    before, after = (np.bincount(i, minlength=bins) for i in index)
    return jensen_shannon(before, after)
