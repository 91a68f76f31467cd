"""K-fold rewards for hyperparameter scans of replica fits (NNPDF's hyperopt), as plain arrays.

A trial trains its replicas k times, each time with one fold of the data held out entirely (not
in training, not in validation), and is judged by the chi2/n of the held-out points: a setting
that only fits the points it saw scores badly. The trial's reward is the mean (or the worst) of
the k held-out chi2/n, plus penalties for too few replicas passing the post-fit selection and for
too long a training. Lower is better.

Fold trainers (`regression_fold`, `pdf_fold`) run one fold through the existing replica core:
every replica of the trial in one batched job, held-out points cut from the data beforehand, so
the core needs no hook. They import torch when called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STATISTICS = ("central", "average")


def fold_assignment(n_points: int, k: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold index (n,) of every point: a seeded split of points, or of whole groups (datasets).

    Points (or groups, in a seeded order) are dealt to folds in turn, so fold sizes differ by at
    most one point (group). A fold that would be empty is an error naming the counts.
    """
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2 folds, got {k}")
    rng = np.random.default_rng([seed, 7])
    if groups is None:
        if n_points < k:
            raise ValueError(f"fold {n_points} of {k} is empty: {n_points} points for {k} folds")
        fold = np.empty(n_points, np.int64)
        fold[rng.permutation(n_points)] = np.arange(n_points) % k
        return fold
    groups = np.asarray(groups)
    if groups.shape != (n_points,):
        raise ValueError(f"groups must have shape ({n_points},), got {groups.shape}")
    names, index = np.unique(groups, return_inverse=True)
    if names.size < k:
        raise ValueError(
            f"fold {names.size} of {k} is empty: the data have {names.size} groups "
            f"(datasets) for {k} folds; lower k or split by points"
        )
    dealt = np.empty(names.size, np.int64)
    dealt[rng.permutation(names.size)] = np.arange(names.size) % k
    return dealt[index]


def check_folds(fold: np.ndarray, k: int) -> None:
    """Every fold 0..k-1 holds points and no point is outside them (ValueError otherwise)."""
    counts = np.bincount(np.asarray(fold)[np.asarray(fold) >= 0], minlength=k)
    empty = np.flatnonzero(counts[:k] == 0)
    if empty.size:
        raise ValueError(f"fold {int(empty[0])} of {k} is empty: no data point falls in it")


def held_out_chi2(
    prediction: np.ndarray,
    kept: np.ndarray,
    data: np.ndarray,
    covariance: np.ndarray,
    statistic: str = "central",
) -> float:
    """chi2/n of held-out points: of the kept replicas' mean ("central"), or the mean over kept
    replicas of each one's chi2/n ("average", which adds the replica spread). inf if none kept."""
    from .replicas import checked_cholesky

    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    kept = np.asarray(kept, bool)
    if not kept.any():
        return math.inf
    chosen = np.asarray(prediction, float)[kept]
    factor = checked_cholesky(np.asarray(covariance, float), "held-out covariance")
    residuals = (chosen.mean(0, keepdims=True) if statistic == "central" else chosen) - data
    z = np.linalg.solve(factor, residuals.T)
    value = float(np.mean(np.sum(z**2, axis=0)) / data.size)
    return value if np.isfinite(value) else math.inf


@dataclass(frozen=True)
class RewardConfig:
    """How k held-out chi2/n and the training record make one reward (lower is better).

    fold_statistic: "mean" or "max" over folds. A trial fails (reported, never crowned) when a
    fold kept no replica, when its reward is not finite, or when it exceeds `max_reward`.
    kept_penalty * (min_kept_fraction - kept fraction) is added for the worst fold below the
    minimum; epochs_penalty * (mean stopping epoch / epoch budget); time_penalty * (seconds /
    time_budget_s - 1) when a trial takes longer than its budget.
    """

    fold_statistic: str = "mean"
    min_kept_fraction: float = 0.5
    kept_penalty: float = 10.0
    epochs_penalty: float = 0.0
    time_budget_s: float | None = None
    time_penalty: float = 1.0
    max_reward: float = 3.0


def trial_reward(
    chi2: np.ndarray,
    kept_fraction: np.ndarray,
    epoch_fraction: np.ndarray,
    seconds: float,
    config: RewardConfig,
) -> tuple[float, bool, str]:
    """(reward, ok, why) of one trial from per-fold chi2/n, kept fractions and stopping epochs
    (as fractions of the epoch budget)."""
    chi2 = np.asarray(chi2, float)
    kept_fraction = np.asarray(kept_fraction, float)
    if config.fold_statistic not in ("mean", "max"):
        raise ValueError(f"fold_statistic must be 'mean' or 'max', got {config.fold_statistic!r}")
    if np.any(kept_fraction == 0) or not np.all(np.isfinite(chi2)):
        return math.inf, False, "a fold kept no replica (training diverged or never reached the threshold)"
    base = float(chi2.mean() if config.fold_statistic == "mean" else chi2.max())
    penalty = config.kept_penalty * max(0.0, config.min_kept_fraction - float(kept_fraction.min()))
    penalty += config.epochs_penalty * float(np.mean(epoch_fraction))
    if config.time_budget_s is not None and seconds > config.time_budget_s:
        penalty += config.time_penalty * (seconds / config.time_budget_s - 1.0)
    reward = base + penalty
    if not math.isfinite(reward):
        return math.inf, False, "reward is not finite"
    if reward > config.max_reward:
        return reward, False, f"reward {reward:.4g} above max_reward {config.max_reward:g}"
    return reward, True, "ok"


# -- fold trainers: one fold of one trial through the replica core ------------------------------
@dataclass
class FoldResult:
    """Held-out predictions (R, m) of every replica, its post-fit selection and stopping epochs."""

    prediction: np.ndarray
    kept: np.ndarray
    stopping_epoch: np.ndarray


def regression_fold(
    features: np.ndarray,
    pseudodata: np.ndarray,
    mask: np.ndarray,
    covariance: np.ndarray,
    held: np.ndarray,
    config,
) -> FoldResult:
    """replicas.train's fit (kernels.regression) on the points not `held`, predicted at `held`.

    `mask` (R, points not held) is the training/validation split of the points the fold fits."""
    from .regression import fit_regression, predict_regression

    features = np.asarray(features, float).reshape(len(features), -1)
    fit = ~held
    result, low, high = fit_regression(
        features[fit], pseudodata[:, fit], mask, covariance[np.ix_(fit, fit)], config
    )
    prediction = predict_regression(
        result.weights, result.architecture, features[held], low, high, device=config.device
    )
    return FoldResult(prediction, result.kept, result.stopping_epoch)


def pdf_fold(
    fk: np.ndarray,
    grid: np.ndarray,
    pseudodata: np.ndarray,
    mask: np.ndarray,
    covariance: np.ndarray,
    held: np.ndarray,
    config,
    tolerance: float,
) -> FoldResult:
    """pdf.fit's fit (kernels.pdf_fit) on the points not `held`, FK predictions at `held`.

    `mask` as for regression_fold. Kept = passed post-fit selection and positivity (what
    pdf.fitted_set keeps)."""
    from .pdf_fit import fit_pdf, fk_predictions

    fit = ~held
    result, penalty = fit_pdf(fk[fit], grid, pseudodata[:, fit], mask, covariance[np.ix_(fit, fit)], config)
    # the gluon as the fit imposed it: none on LO tables, sum-rule normalised where FK tables need it
    prediction = fk_predictions(fk[held], result.weights, result.architecture, config.basis, grid)
    return FoldResult(prediction, result.kept & (penalty < tolerance), result.stopping_epoch)
