"""Calibration of Monte Carlo replica bands in closure tests: pooled over level-1 seeds, two-sided.

A closure test knows the truth, so it can ask whether a 68% band is a 68% band: pooled over the
points of several independent level-1 data sets, the replica 16-84% band must cover the truth at
the rate a calibrated ensemble gives, and the pulls (mean - truth) / std must have RMS near 1.
Both bounds are two-sided: bands twice too wide fail as surely as bands too narrow.

Why pooled over seeds: the points of one level-1 data set share its one fluctuation (a smooth fit
error, and a normalisation shift if the data have one), so a single seed covers the truth almost
everywhere or almost nowhere whatever the method. For the same reason the standard error of a
pooled figure is taken from the scatter between the seeds' own figures, not from the binomial
sqrt(p (1 - p) / n_points), which would treat correlated points as independent; `assert_calibrated`
refuses a check whose pooled figure is too uncertain for its bound to mean anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from engine.recipe import load_recipe

# The quantiles of a 68% band (the one-sigma interval of a Gaussian, rounded as NNPDF does).
BAND = (0.16, 0.84)
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def shipped_params(recipe: str, step_id: str, **changes) -> dict:
    """A shipped recipe's params for one step, with `changes` on top: a calibration runs the
    recipe's ops with its settings, so what it measures is what the recipe ships."""
    steps = load_recipe(RECIPES / recipe).recipe.steps
    return {**next(step.params for step in steps if step.id == step_id), **changes}


@dataclass(frozen=True)
class SeedBands:
    """One level-1 seed's closure at the evaluation points: truth and the ensemble's summary."""

    truth: np.ndarray
    low: np.ndarray
    high: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    kept: int
    replicas: int

    @property
    def covered(self) -> np.ndarray:
        return (self.truth >= self.low) & (self.truth <= self.high)

    @property
    def pulls(self) -> np.ndarray:
        return (self.mean - self.truth) / self.std


@lru_cache
def expected_for_calibrated(replicas: int) -> tuple[float, float]:
    """(coverage, RMS pull) that a perfectly calibrated ensemble of `replicas` members gives.

    Why not (0.683, 1): a finite ensemble's 16-84% sample quantiles scatter, its mean carries
    std / sqrt(R) of its own, and dividing by a sample std inflates pulls. Model: the truth is a
    draw from the distribution the replicas sample. The RMS pull is then exactly
    sqrt((1 + 1/R) (R - 1) / (R - 3)); the coverage comes from a seeded simulation of the same
    model with numpy's linear quantiles (what xarray's quantile uses), good to +-0.002.
    R = 30: 0.642 and 1.054; R = 50: 0.658 and 1.031.
    """
    if replicas < 4:
        raise ValueError(f"a calibration needs at least 4 replicas per seed, got {replicas}")
    draws = np.random.default_rng(0).standard_normal((50_000, replicas))
    low, high = np.quantile(draws, BAND, axis=1)
    truth = np.random.default_rng(1).standard_normal(draws.shape[0])  # centre 0, truth ~ N(0, 1)
    coverage = float(((truth >= low) & (truth <= high)).mean())
    return coverage, float(np.sqrt((1 + 1 / replicas) * (replicas - 1) / (replicas - 3)))


@dataclass(frozen=True)
class Calibration:
    """Pooled closure figures over seeds, each with its standard error from the seed scatter."""

    seeds: int
    points: int
    coverage: float
    coverage_error: float
    rms_pull: float
    rms_pull_error: float
    kept_fraction: float
    expected_coverage: float
    expected_rms_pull: float

    def __str__(self) -> str:
        return (f"{self.seeds} seeds x {self.points} points: coverage {self.coverage:.3f} "
                f"+- {self.coverage_error:.3f} (calibrated: {self.expected_coverage:.3f}), RMS pull "
                f"{self.rms_pull:.3f} +- {self.rms_pull_error:.3f} (calibrated: "
                f"{self.expected_rms_pull:.3f}), kept {self.kept_fraction:.3f}")


def pooled(seeds: Sequence[SeedBands]) -> Calibration:
    """Coverage and RMS pull over all points of all seeds, with errors from the seed scatter."""
    if len(seeds) < 3:
        raise ValueError(f"pooling needs at least 3 level-1 seeds to estimate its error, got {len(seeds)}")
    covered = [s.covered for s in seeds]
    squares = [s.pulls**2 for s in seeds]
    sizes = np.array([c.size for c in covered])
    coverage, coverage_error = _pooled_mean([c.mean() for c in covered], sizes)
    mean_square, square_error = _pooled_mean([q.mean() for q in squares], sizes)
    rms = float(np.sqrt(mean_square))
    kept = sum(s.kept for s in seeds)
    replicas = sum(s.replicas for s in seeds)
    expected = expected_for_calibrated(round(kept / len(seeds)))
    return Calibration(len(seeds), int(sizes.sum()), coverage, coverage_error, rms,
                       square_error / (2 * rms), kept / replicas, *expected)


def _pooled_mean(per_seed: Sequence[float], sizes: np.ndarray) -> tuple[float, float]:
    """Point-weighted mean of per-seed figures and its standard error (a ratio estimator's)."""
    values = np.asarray(per_seed, float)
    weights = sizes / sizes.sum()
    mean = float(weights @ values)
    error = np.sqrt(np.sum(weights**2 * (values - mean) ** 2) * len(values) / (len(values) - 1))
    return mean, float(error)


def assert_calibrated(result: Calibration, coverage_tolerance: float = 0.07,
                      pull_tolerance: float = 0.2, min_kept: float = 0.9) -> None:
    """The pooled figures lie within the tolerances of a calibrated ensemble's, on both sides.

    A check is informative only if a calibrated method passes it most of the time: each tolerance
    must be at least two standard errors of its pooled figure, otherwise the fault is too few
    seeds, and this says so instead of passing or failing by luck.
    """
    for check in (("coverage", result.coverage, result.coverage_error, result.expected_coverage,
                   coverage_tolerance),
                  ("RMS pull", result.rms_pull, result.rms_pull_error, result.expected_rms_pull,
                   pull_tolerance)):
        _assert_resolved_and_close(*check, result)
    assert result.kept_fraction >= min_kept, f"fewer than {min_kept:.0%} of replicas kept: {result}"


def _assert_resolved_and_close(name: str, value: float, error: float, expected: float,
                               tolerance: float, result: object) -> None:
    """value within +-tolerance of expected, and known well enough (2 errors <= tolerance) to say."""
    assert 2 * error <= tolerance, (
        f"pooled {name} is known only to +-{error:.3f}, too loose for a +-{tolerance} bound: "
        f"pool more seeds ({result})")
    assert abs(value - expected) <= tolerance, (
        f"{name} is not within +-{tolerance} of a calibrated ensemble's: {result}")


@dataclass(frozen=True)
class BiasVariance:
    """NNPDF's closure estimator over level-1 seeds: sqrt(mean bias / mean variance)."""

    seeds: int
    ratio: float
    error: float
    expected: float

    def __str__(self) -> str:
        return (f"{self.seeds} seeds: sqrt(bias / variance) {self.ratio:.3f} +- {self.error:.3f} "
                f"(calibrated: {self.expected:.3f})")


def seed_bias_variance(replicas: np.ndarray, truth: np.ndarray,
                       covariance: np.ndarray) -> tuple[float, float]:
    """One seed's (bias, variance) in data space, as NNPDF's closure tests define them.

    bias: the chi2 of the replica mean against the truth's predictions; variance: the mean over the
    (R, n) replicas of each one's chi2 against the replica mean (1/R, as validphys); both with the
    experimental covariance and not divided by n (only their ratio is read). Why data space: the
    covariance weighs each direction by how well the data measure it, so a fit is judged where the
    data speak, whatever the correlations of its points.
    """
    factor = np.linalg.cholesky(covariance)
    mean = replicas.mean(0)
    bias = np.linalg.solve(factor, mean - truth)
    spread = np.linalg.solve(factor, (replicas - mean).T)
    return float(bias @ bias), float((spread**2).sum(0).mean())


def pooled_bias_variance(bias: Sequence[float], variance: Sequence[float], replicas: int) -> BiasVariance:
    """sqrt(E[bias] / E[variance]) over seeds (arXiv:2111.05787's R_bv), error from the seed scatter.

    Calibrated value at finite R (the model of `expected_for_calibrated`): the replica mean carries
    1/R of the spread of its own and the 1/R variance misses 1/R of it, so sqrt((R + 1) / (R - 1)),
    1.05 at R = 20, not 1. Error: the delta method for a ratio of means, over seeds.
    """
    b, v = np.asarray(bias, float), np.asarray(variance, float)
    if b.size < 3 or b.shape != v.shape:
        raise ValueError(f"pooling needs bias and variance of at least 3 seeds, got {b.size} and {v.size}")
    ratio = b.sum() / v.sum()
    ratio_error = np.sqrt(np.sum((b - ratio * v) ** 2) * b.size / (b.size - 1)) / v.sum()
    return BiasVariance(b.size, float(np.sqrt(ratio)), float(ratio_error / (2 * np.sqrt(ratio))),
                        float(np.sqrt((replicas + 1) / (replicas - 1))))


def assert_bias_variance(result: BiasVariance, tolerance: float = 0.2) -> None:
    """The pooled sqrt(bias / variance) within +-tolerance of a calibrated ensemble's, resolved."""
    _assert_resolved_and_close("sqrt(bias / variance)", result.ratio, result.error, result.expected,
                               tolerance, result)


@dataclass(frozen=True)
class Offsets:
    """Signed offsets of an estimate from a reference, pooled over seeds: mean and RMS with errors."""

    name: str
    seeds: int
    count: int
    mean: float
    mean_error: float
    rms: float
    rms_error: float

    def __str__(self) -> str:
        return (f"{self.name}, {self.seeds} seeds x {self.count // self.seeds} per seed: mean "
                f"{self.mean:+.3f} +- {self.mean_error:.3f}, RMS {self.rms:.3f} +- {self.rms_error:.3f}")


def pooled_offsets(name: str, per_seed: Sequence[np.ndarray]) -> Offsets:
    """Mean and RMS of offsets over all values of all seeds, errors from the scatter between seeds.

    Why the seed scatter: values of one seed share what that seed drew (one set of trained networks
    for every pseudo-data set it is applied to), so they are not independent of each other.
    """
    if len(per_seed) < 3:
        raise ValueError(f"pooling needs at least 3 seeds to estimate its error, got {len(per_seed)}")
    values = [np.asarray(v, float).ravel() for v in per_seed]
    sizes = np.array([v.size for v in values])
    mean, mean_error = _pooled_mean([v.mean() for v in values], sizes)
    square, square_error = _pooled_mean([np.mean(v**2) for v in values], sizes)
    rms = float(np.sqrt(square))
    return Offsets(name, len(values), int(sizes.sum()), mean, mean_error, rms, square_error / (2 * rms))


def assert_offsets(result: Offsets, mean_tolerance: float, max_rms: float) -> None:
    """|pooled mean| <= mean_tolerance (two-sided: a shift either way fails), RMS <= max_rms, and
    both known well enough to say (2 errors within the bound)."""
    _assert_resolved_and_close(f"mean of {result.name}", result.mean, result.mean_error, 0.0,
                               mean_tolerance, result)
    assert 2 * result.rms_error <= max_rms, (
        f"RMS of {result.name} is known only to +-{result.rms_error:.3f}: pool more seeds ({result})")
    assert result.rms <= max_rms, f"RMS of {result.name} above {max_rms}: {result}"
