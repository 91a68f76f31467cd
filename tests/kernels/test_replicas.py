"""Pseudo-data replicas and training masks: statistics, per-replica seeding, clear errors."""

import numpy as np
import pytest

from engine.kernels.replicas import draw_replicas, training_masks

CENTRAL = np.array([10.0, 20.0, 30.0])
COV = np.array([[1.0, 0.6, 0.2], [0.6, 4.0, 1.0], [0.2, 1.0, 9.0]])


def test_additive_replicas_have_the_data_mean_and_covariance():
    reps = draw_replicas(CENTRAL, COV, None, 40_000, seed=1)
    assert reps.shape == (40_000, 3)
    sem = np.sqrt(np.diag(COV) / reps.shape[0])
    assert np.all(np.abs(reps.mean(0) - CENTRAL) < 4 * sem)
    np.testing.assert_allclose(np.cov(reps.T), COV, rtol=0.05, atol=0.05)


def test_multiplicative_systematics_move_all_points_together():
    tiny = 1e-14 * np.eye(3)
    mult = np.array([[0.1, 0.02], [0.1, 0.02], [0.1, 0.02]])
    reps = draw_replicas(CENTRAL, tiny, mult, 20_000, seed=2)
    ratio = reps / CENTRAL
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones((1, 3)), rtol=1e-6)
    assert abs(ratio[:, 0].mean() - 1) < 4 * 0.102 / np.sqrt(20_000)
    expected_std = np.sqrt((1 + 0.1**2) * (1 + 0.02**2) - 1)
    assert abs(ratio[:, 0].std() / expected_std - 1) < 0.03


def test_replica_k_does_not_depend_on_how_many_are_drawn():
    few = draw_replicas(CENTRAL, COV, 0.05 * np.ones((3, 1)), 3, seed=7)
    many = draw_replicas(CENTRAL, COV, 0.05 * np.ones((3, 1)), 10, seed=7)
    np.testing.assert_array_equal(few, many[:3])
    assert not np.array_equal(many, draw_replicas(CENTRAL, COV, None, 10, seed=8))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((CENTRAL, np.eye(2), None, 5, 0), r"cov_additive must have shape \(3, 3\)"),
        ((CENTRAL, np.diag([1.0, -0.5, 2.0]), None, 5, 0), "smallest eigenvalue -0.5"),
        ((CENTRAL, COV + np.triu(np.ones((3, 3)), 1), None, 5, 0), "not symmetric"),
        ((np.array([1.0, np.nan, 2.0]), COV, None, 5, 0), "central contains NaN"),
        ((CENTRAL, np.where(np.eye(3) > 0, np.nan, 0.0), None, 5, 0), "cov_additive contains NaN"),
        ((CENTRAL, COV, np.ones((2, 1)), 5, 0), r"mult_sys must have shape \(3, k\)"),
        ((CENTRAL, COV, None, 0, 0), "n_replicas must be a positive integer"),
        ((CENTRAL, COV, None, -3, 0), "n_replicas must be a positive integer"),
        ((CENTRAL, COV, None, 5, -1), "seed must be a non-negative integer"),
        ((CENTRAL[:, None], COV, None, 5, 0), "central must be 1-D"),
    ],
)
def test_draw_replicas_errors(args, message):
    with pytest.raises(ValueError, match=message):
        draw_replicas(*args)


def test_masks_split_every_group_with_the_same_counts():
    groups = np.array(["a"] * 8 + ["b"] * 4 + ["c"] + ["d"] * 3)
    masks = training_masks(groups.size, groups, 50, fraction=0.75, seed=3)
    assert masks.shape == (50, 16) and masks.dtype == bool
    for name, n_train in {"a": 6, "b": 3, "c": 1, "d": 2}.items():
        assert np.all(masks[:, groups == name].sum(1) == n_train)
    assert len({m.tobytes() for m in masks}) > 40
    np.testing.assert_array_equal(masks[:7], training_masks(16, groups, 7, 0.75, seed=3))
    assert not np.array_equal(masks, training_masks(16, groups, 50, 0.75, seed=4))


def test_shared_masks_give_every_replica_replica_0s_split():
    groups = np.repeat([0, 1], 6)
    shared = training_masks(12, groups, 5, 0.75, seed=3, shared=True)
    np.testing.assert_array_equal(shared, np.repeat(training_masks(12, groups, 1, 0.75, seed=3), 5, 0))


def test_masks_edge_fractions():
    groups = np.repeat([0, 1], 5)
    assert training_masks(10, groups, 4, fraction=1.0).all()
    low = training_masks(10, groups, 4, fraction=0.01)
    assert np.all(low.sum(1) == 2)  # at least one training point per group


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((10, np.zeros(9), 4), r"groups must have shape \(10,\)"),
        ((10, np.zeros(10), 0), "n_replicas must be a positive integer"),
        ((10, np.zeros(10), 4, 0.0), r"fraction must be in \(0, 1\]"),
        ((10, np.zeros(10), 4, 1.5), r"fraction must be in \(0, 1\]"),
    ],
)
def test_training_masks_errors(args, message):
    with pytest.raises(ValueError, match=message):
        training_masks(*args)
