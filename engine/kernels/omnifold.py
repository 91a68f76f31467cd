"""OmniFold (Andreassen et al., PRL 2020): unbinned unfolding by iterated classifier reweighting.

Each iteration has two steps, each a binary classifier whose f/(1-f) is a likelihood ratio:

1. data-reco (label 1) vs MC-reco weighted by the push weights nu (label 0): the pull weights
   omega = nu f/(1-f) make the MC reco distribution look like the data;
2. MC-gen weighted by omega (label 1) vs MC-gen unweighted (label 0): the new push weights
   nu = f/(1-f) are omega expressed as a function of the generator-level event alone, so they
   can be carried to the next iteration (and to any generator-level observable).

Replicas are bootstrap resamples of the data events (independent Poisson-like counts per
replica, keyed by (seed, replica)): every classifier is an ensemble trained batched over the
replicas, each replica with its own data weights and its own nu, so the spread of the unfolded
moments over replicas is the statistical uncertainty from the data. Both classes are balanced to
equal total weight so f/(1-f) is the density ratio with no prior factor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the classifiers are torch: imported to train, not to describe the samples
    from .classifier import NetworkConfig

PROBABILITY_CLIP = 1e-6


@dataclass(frozen=True)
class GaussianTruth:
    """The known-truth test: z_gen ~ N(mean, std), z_reco = z_gen + N(0, smearing)."""

    mc_mean: float = 0.0
    mc_std: float = 1.0
    data_mean: float = 0.2
    data_std: float = 0.8
    smearing: float = 0.5


def gaussian_samples(n_mc: int, n_data: int, truth: GaussianTruth, seed: int) -> dict[str, np.ndarray]:
    """MC (gen, reco) pairs and data (gen, reco) pairs; data gen is the truth the unfolding seeks."""
    if n_mc < 1 or n_data < 1:
        raise ValueError(f"both samples need events, found n_mc={n_mc}, n_data={n_data}")
    rng = np.random.default_rng(seed)
    mc_gen = rng.normal(truth.mc_mean, truth.mc_std, n_mc)
    data_gen = rng.normal(truth.data_mean, truth.data_std, n_data)
    return {"mc_gen": mc_gen, "mc_reco": mc_gen + rng.normal(0, truth.smearing, n_mc),
            "data_gen": data_gen, "data_reco": data_gen + rng.normal(0, truth.smearing, n_data)}


def weighted_moments(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-replica weighted mean and standard deviation; values (n,), weights (R, n)."""
    norm = weights.sum(-1)
    mean = weights @ values / norm
    var = weights @ values**2 / norm - mean**2
    return mean, np.sqrt(np.maximum(var, 0))


def _likelihood_ratio(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return p / (1 - p)


@dataclass
class OmniFoldResult:
    push: np.ndarray  # (R, n_mc) final nu
    pull: np.ndarray  # (R, n_mc) final omega
    mean: np.ndarray  # (iterations + 1, R): generator-level mean under nu, iteration 0 = prior
    std: np.ndarray


def _as_features(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, float).reshape(len(values), -1)


def _classify(x1, w1, x0, w0, validation: np.ndarray, config: NetworkConfig, x_eval,
              batch_size: int | None) -> np.ndarray:
    """Train label-1 (x1, w1) vs label-0 (x0, w0) per replica; f on x_eval, (R, n_eval).

    `validation` marks held-out events of the concatenated sample (early stopping on them).
    """
    from .classifier import balance_classes, evaluate_network, fit_network

    x = np.concatenate([x1, x0])
    y = np.r_[np.ones(len(x1)), np.zeros(len(x0))]
    w = balance_classes(np.concatenate([w1, w0], axis=-1), y)
    fit, scale = fit_network("bce", x[~validation], y[~validation], w[:, ~validation],
                             x[validation], y[validation], w[:, validation], config, batch_size=batch_size)
    return evaluate_network("bce", fit.weights, fit.architecture, x_eval, scale)


def omnifold(mc_gen: np.ndarray, mc_reco: np.ndarray, data_reco: np.ndarray, iterations: int,
             replicas: int, config: NetworkConfig, seed: int = 0, validation_fraction: float = 0.2,
             batch_size: int | None = None,
             progress: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> OmniFoldResult:
    """Run `iterations` of OmniFold for `replicas` bootstrap replicas of the data, batched
    (`batch_size`: minibatch training steps instead of full-batch epochs)."""
    from .classifier import bootstrap_weights

    if iterations <= 0:
        raise ValueError(f"iterations must be positive, found {iterations}")
    if replicas <= 0:
        raise ValueError(f"replicas must be positive, found {replicas}")
    if len(mc_gen) != len(mc_reco):
        raise ValueError(f"MC gen and reco must pair up event by event, found {len(mc_gen)} and "
                         f"{len(mc_reco)}")
    if len(mc_gen) == 0 or len(data_reco) == 0:
        raise ValueError(f"OmniFold needs events in both samples, found {len(mc_gen)} MC and "
                         f"{len(data_reco)} data")
    gen, reco, data = _as_features(mc_gen), _as_features(mc_reco), _as_features(data_reco)
    n_mc, n_data = len(gen), len(data)
    rng = np.random.default_rng([seed, 1])
    data_weights = bootstrap_weights(n_data, replicas, seed)
    mc_held = rng.uniform(size=n_mc) < validation_fraction
    step1_held = np.r_[rng.uniform(size=n_data) < validation_fraction, mc_held]
    step2_held = np.r_[mc_held, mc_held]  # an event's two copies stay on the same side
    push = np.ones((replicas, n_mc))
    pull = push
    means, stds = [weighted_moments(gen[:, 0], push)[0]], [weighted_moments(gen[:, 0], push)[1]]
    for iteration in range(1, iterations + 1):
        step = replace(config, seed=config.seed + 2 * iteration)
        f = _classify(data, data_weights, reco, push, step1_held, step, reco, batch_size)
        pull = push * _likelihood_ratio(f)
        step = replace(config, seed=config.seed + 2 * iteration + 1)
        f = _classify(gen, pull, gen, np.ones_like(pull), step2_held, step, gen, batch_size)
        push = _likelihood_ratio(f)
        mean, std = weighted_moments(gen[:, 0], push)
        means.append(mean)
        stds.append(std)
        if progress:
            progress(iteration, mean, std)
    return OmniFoldResult(push, pull, np.array(means), np.array(stds))
