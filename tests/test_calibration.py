"""The calibration helper itself: a calibrated toy ensemble passes, too-wide and too-narrow fail."""

from __future__ import annotations

import numpy as np
import pytest

from tests.calibration import (
    BAND,
    SeedBands,
    assert_bias_variance,
    assert_calibrated,
    assert_offsets,
    pooled,
    pooled_bias_variance,
    pooled_offsets,
    seed_bias_variance,
)


def toy_seeds(width: float, n_seeds: int = 20, points: int = 60, replicas: int = 30) -> list[SeedBands]:
    """Seeds whose ensembles scatter about a centre that is one truth-sized draw off the truth,
    with the spread scaled by `width` (1 = calibrated)."""
    rng = np.random.default_rng(5)
    seeds = []
    for _ in range(n_seeds):
        truth = np.zeros(points)
        draws = rng.standard_normal(points) + width * rng.standard_normal((replicas, points))
        low, high = np.quantile(draws, BAND, axis=0)
        seeds.append(SeedBands(truth, low, high, draws.mean(0), draws.std(0, ddof=1), replicas, replicas))
    return seeds


def test_a_calibrated_ensemble_passes_at_its_finite_r_expectation():
    result = pooled(toy_seeds(1.0))
    assert abs(result.coverage - 0.642) < 0.02 and abs(result.rms_pull - 1.054) < 0.05
    assert_calibrated(result)


@pytest.mark.parametrize("width", [1.3, 0.7])
def test_too_wide_and_too_narrow_bands_fail(width):
    with pytest.raises(AssertionError, match="coverage is not within"):
        assert_calibrated(pooled(toy_seeds(width)))


def test_too_few_seeds_for_the_bound_is_said():
    seeds = toy_seeds(1.0, n_seeds=3, points=2)
    with pytest.raises(AssertionError, match="pool more seeds"):
        assert_calibrated(pooled(seeds))


@pytest.mark.parametrize("width", [1.0, 1.3, 0.7])
def test_bias_variance_is_calibrated_only_for_the_right_width(width):
    """Toy seeds as above, 60 independent points of unit covariance: sqrt(bias / variance) sits at
    its finite-R value sqrt(31 / 29) = 1.034 for a calibrated ensemble, and fails when too wide or
    too narrow."""
    rng = np.random.default_rng(6)
    seeds = [seed_bias_variance(rng.standard_normal(60) + width * rng.standard_normal((30, 60)),
                                np.zeros(60), np.eye(60)) for _ in range(20)]
    result = pooled_bias_variance(*zip(*seeds), replicas=30)
    if width == 1.0:
        assert abs(result.ratio - 1.034) < 0.03
        assert_bias_variance(result)
    else:
        with pytest.raises(AssertionError, match="bias / variance.* is not within"):
            assert_bias_variance(result)


def test_pooled_offsets_pass_when_centred_and_fail_when_shifted_either_way():
    """Offsets of 5 seeds x 200 values, each seed with a shared shift of 0.05 (like one set of
    networks applied to many pseudo-data sets) and a spread of 0.3 per value."""
    rng = np.random.default_rng(8)

    def seeds(shift):
        return [shift + 0.05 * rng.standard_normal() + 0.3 * rng.standard_normal(200) for _ in range(5)]

    centred = pooled_offsets("offset", seeds(0.0))
    assert abs(centred.rms - 0.3) < 0.05
    assert_offsets(centred, mean_tolerance=0.15, max_rms=0.4)
    for shift in (0.3, -0.3):
        with pytest.raises(AssertionError, match="mean of offset is not within"):
            assert_offsets(pooled_offsets("offset", seeds(shift)), mean_tolerance=0.15, max_rms=0.5)
    with pytest.raises(AssertionError, match="RMS of offset above"):
        assert_offsets(pooled_offsets("offset", seeds(0.0)), mean_tolerance=0.15, max_rms=0.2)
    scattered = [s + 0.5 * rng.standard_normal() for s in seeds(0.0)]
    with pytest.raises(AssertionError, match="pool more seeds"):
        assert_offsets(pooled_offsets("offset", scattered), mean_tolerance=0.15, max_rms=1.0)
