"""Replica compression (NNPDF's compressor): M of N replicas that keep the full set's statistics.

The error function compares a subset with the full set point by point (a point is one flavour at
one x), every quantity in units of the full set's standard deviation at that point:

    mean, std         (subset - full)^2, averaged over points
    skewness, kurtosis (subset - full)^2 of the standardised moments
    correlation       (rho_subset - rho_full)^2 over pairs of `corr_points` (flavours x a few x)
    ks                Kolmogorov-Smirnov distance per point (at `ks_levels` quantiles of the full
                      set in the search; exactly, over every replica, in `estimator_table`)

and, as in the compressor, each estimator is divided by its mean over random subsets of the same
size, so all six weigh alike: a random subset scores about 6, a perfect one 0.

The search is a genetic (1 + lambda) scheme, seeded: each generation makes `mutants` children of
the best subset, each replacing 1-3 members by non-members, and keeps the best child if it
improves. Why it is fast: every estimator of a subset is a function of sums over its members
(powers Z^1..4, products Z_a Z_b, indicators Z <= t), so a child's sums are its parent's plus the
swapped replicas' rows: O(swaps x points) per child instead of O(M x points) from scratch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ESTIMATORS = ("mean", "std", "skewness", "kurtosis", "correlation", "ks")
SWAP_SIZES = np.array([1, 2, 3])
SWAP_PROBABILITIES = np.array([0.5, 0.3, 0.2])


@dataclass(frozen=True)
class Prepared:
    """The full set, standardised per point, and each replica's rows of the sums estimators use."""

    z: np.ndarray  # (N, P) (x - mean) / std per point
    powers: np.ndarray  # (N, 4, P) z^1..z^4
    corr_index: np.ndarray  # (K,) points whose correlations are compared
    below: np.ndarray  # (N, P, L) float32: 1 where z <= the full set's level-l quantile at the point
    order: np.ndarray  # (N, P) replicas sorted per point (the exact KS distance)
    full_cdf: np.ndarray  # (P, L) fraction of the full set at or below each level
    skewness: np.ndarray  # (P,) of the full set
    kurtosis: np.ndarray  # (P,) excess kurtosis of the full set
    correlation: np.ndarray  # (K, K) of the full set


def prepare(values: np.ndarray, corr_index: np.ndarray, ks_levels: int) -> Prepared:
    """Standardise replicas (N, P) per point; points with no spread are refused (ValueError)."""
    x = np.asarray(values, float)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"expected replicas as (N >= 3, points), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("the replicas contain NaN or infinite values")
    std = x.std(0)
    flat = std <= 1e-12 * max(1.0, float(np.abs(x).max()))
    if flat.any():
        raise ValueError(
            f"{int(flat.sum())} of {x.shape[1]} points have no spread over replicas "
            "(drop those flavours or x values)"
        )
    z = (x - x.mean(0)) / std
    powers = np.stack([z, z**2, z**3, z**4], axis=1)
    levels = np.quantile(z, (np.arange(ks_levels) + 0.5) / ks_levels, axis=0)  # (L, P)
    below = (z[:, :, None] <= levels.T[None]).astype(np.float32)  # float: BLAS-friendly sums, exact to 2^24
    corr_index = np.asarray(corr_index, np.int64)
    return Prepared(
        z,
        powers,
        corr_index,
        below,
        np.argsort(z, axis=0, kind="stable"),
        below.mean(0),
        np.mean(z**3, 0),
        np.mean(z**4, 0) - 3,
        np.corrcoef(z[:, corr_index], rowvar=False),
    )


@dataclass
class Sums:
    """What the estimators of one or many subsets (leading dims) need: sums over members."""

    powers: np.ndarray  # (..., 4, P)
    cross: np.ndarray  # (..., K, K)
    below: np.ndarray  # (..., P, L)


def sums_of(prep: Prepared, members: np.ndarray) -> Sums:
    """Sums over one subset's members, from scratch."""
    zc = prep.z[members][:, prep.corr_index]
    return Sums(prep.powers[members].sum(0), zc.T @ zc, prep.below[members].sum(0))


def parts_from_sums(prep: Prepared, sums: Sums, m: int) -> np.ndarray:
    """The six estimator distances (..., 6) of subsets of size m from their sums (search version)."""
    s1, s2, s3, s4 = (sums.powers[..., k, :] / m for k in range(4))
    var = np.maximum(s2 - s1**2, 1e-300)
    m3 = s3 - 3 * s1 * s2 + 2 * s1**3
    m4 = s4 - 4 * s1 * s3 + 6 * s1**2 * s2 - 3 * s1**4
    c1 = s1[..., prep.corr_index]
    cov = sums.cross / m - c1[..., :, None] * c1[..., None, :]
    sd = np.sqrt(np.maximum(cov.diagonal(axis1=-2, axis2=-1), 1e-300))
    corr = cov / (sd[..., :, None] * sd[..., None, :])
    upper = np.triu_indices(prep.corr_index.size, 1)
    ks = np.abs(sums.below / m - prep.full_cdf).max(-1)
    return np.stack(
        [
            np.mean(s1**2, -1),
            np.mean((np.sqrt(var) - 1) ** 2, -1),
            np.mean((m3 / var**1.5 - prep.skewness) ** 2, -1),
            np.mean((m4 / var**2 - 3 - prep.kurtosis) ** 2, -1),
            np.mean((corr[..., upper[0], upper[1]] - prep.correlation[upper]) ** 2, -1)
            if upper[0].size
            else np.zeros(var.shape[:-1]),
            np.mean(ks, -1),
        ],
        axis=-1,
    )


def exact_ks(order: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Kolmogorov-Smirnov distance (P,) between a subset's and the full set's empirical CDFs.

    Both are step functions constant between consecutive full-set values (the subset's values
    are among them), so the sup is the largest difference at those values."""
    n, m = order.shape[0], members.size
    inside = np.zeros(n, bool)
    inside[members] = True
    count = np.cumsum(inside[order], axis=0) / m  # subset CDF at each full-set value
    return np.abs(count - np.arange(1, n + 1)[:, None] / n).max(0)


def exact_parts(prep: Prepared, members: np.ndarray) -> np.ndarray:
    """The six distances of one subset, with the KS distance taken exactly (reporting version)."""
    parts = parts_from_sums(prep, sums_of(prep, members), members.size)
    parts[-1] = float(np.mean(exact_ks(prep.order, members)))
    return parts


ChildEvaluator = Callable[[Prepared, np.ndarray, Sums, np.ndarray, np.ndarray, np.ndarray], tuple]


def incremental_children(
    prep: Prepared,
    members: np.ndarray,
    sums: Sums,
    removed: np.ndarray,
    added: np.ndarray,
    weight: np.ndarray,
) -> tuple[np.ndarray, Sums]:
    """Estimator distances (children, 6) and sums of children that swap members[removed] (children,
    s) for replicas `added` (children, s) where weight (children, s) is 1 (0: that swap unused)."""
    out, inn = members[removed], added
    w = weight.astype(float)
    powers = sums.powers + np.einsum("cs,csqp->cqp", w, prep.powers[inn] - prep.powers[out])
    za, zr = prep.z[inn][..., prep.corr_index], prep.z[out][..., prep.corr_index]
    za, zr = za * w[..., None], zr * w[..., None]  # weights are 0 or 1: w^2 = w
    cross = sums.cross + np.einsum("csa,csb->cab", za, za) - np.einsum("csa,csb->cab", zr, zr)
    change = (prep.below[inn] - prep.below[out]) * w.astype(np.float32)[..., None, None]
    below = sums.below + change.sum(1)
    children = Sums(powers, cross, below)
    return parts_from_sums(prep, children, members.size), children


@dataclass
class CompressResult:
    chosen: np.ndarray  # (M,) sorted replica indices
    history: np.ndarray  # (generations + 1,) total normalised error of the best subset
    normalisation: np.ndarray  # (6,) mean search distances of random subsets
    random_parts: np.ndarray  # (trials, 6) exact distances of random subsets
    parts: np.ndarray  # (6,) exact distances of the chosen subset


def genetic_search(
    prep: Prepared,
    m: int,
    generations: int,
    mutants: int,
    rng: np.random.Generator,
    start: np.ndarray,
    normalisation: np.ndarray,
    evaluate: ChildEvaluator = incremental_children,
) -> tuple[np.ndarray, np.ndarray]:
    """(members, history): the (1 + mutants) search from `start`. `evaluate` scores the children
    and returns (distances, their Sums or None); a benchmark passes a from-scratch evaluator and
    gets the same search."""
    n = prep.z.shape[0]
    members = np.array(start, np.int64)
    sums = sums_of(prep, members)
    best = float(np.sum(parts_from_sums(prep, sums, m) / normalisation))
    history = [best]
    width = int(SWAP_SIZES.max())
    for _ in range(generations):
        swaps = rng.choice(SWAP_SIZES, size=mutants, p=SWAP_PROBABILITIES)
        removed = np.argsort(rng.random((mutants, m)), axis=1)[:, :width]
        outside = np.setdiff1d(np.arange(n), members, assume_unique=True)
        added = outside[np.argsort(rng.random((mutants, outside.size)), axis=1)[:, :width]]
        weight = np.arange(width)[None] < swaps[:, None]
        parts, children = evaluate(prep, members, sums, removed, added, weight)
        totals = np.sum(parts / normalisation, axis=-1)
        c = int(np.argmin(totals))
        if totals[c] < best:
            best = float(totals[c])
            used = weight[c]
            members = members.copy()
            members[removed[c][used]] = added[c][used]
            sums = (
                sums_of(prep, members)
                if children is None
                else Sums(children.powers[c], children.cross[c], children.below[c])
            )
        history.append(best)
    return np.sort(members), np.asarray(history)


def compress(
    values: np.ndarray,
    m: int,
    *,
    generations: int = 2000,
    mutants: int = 16,
    seed: int = 0,
    corr_index: np.ndarray | None = None,
    ks_levels: int = 50,
    random_trials: int = 100,
    evaluate: ChildEvaluator = incremental_children,
) -> CompressResult:
    """Choose m of the N replicas (rows of `values` (N, P)) minimising the normalised error."""
    n = np.asarray(values).shape[0]
    if not 2 <= m < n:
        raise ValueError(f"compressing {n} replicas needs 2 <= M < N = {n}, got M = {m}")
    if random_trials < 1:
        raise ValueError(f"random_trials must be >= 1, got {random_trials}")
    points = np.asarray(values).shape[1]
    corr_index = np.arange(min(points, 40)) if corr_index is None else np.asarray(corr_index)
    prep = prepare(values, corr_index, ks_levels)
    rng = np.random.default_rng([seed, 11])
    subsets = [np.sort(rng.choice(n, m, replace=False)) for _ in range(random_trials)]
    search_parts = np.array([parts_from_sums(prep, sums_of(prep, s), m) for s in subsets])
    normalisation = np.maximum(search_parts.mean(0), 1e-300)
    start = subsets[int(np.argmin(np.sum(search_parts / normalisation, axis=1)))]
    chosen, history = genetic_search(prep, m, generations, mutants, rng, start, normalisation, evaluate)
    random_parts = np.array([exact_parts(prep, s) for s in subsets])
    return CompressResult(chosen, history, normalisation, random_parts, exact_parts(prep, chosen))


def estimator_table(result: CompressResult) -> dict[str, np.ndarray]:
    """Per estimator (6,): the compressed subset's distance to the full set and the random subsets'
    median, 16% and 84% (the full set's own distance is 0)."""
    low, median, high = np.quantile(result.random_parts, [0.16, 0.5, 0.84], axis=0)
    return {
        "erf_compressed": result.parts,
        "erf_random_median": median,
        "erf_random_low": low,
        "erf_random_high": high,
    }
