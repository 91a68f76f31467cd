"""Histogram fills: the same bins as numpy, variances, and chunk sums equal to one fill."""

from __future__ import annotations

import numpy as np

from engine.kernels.lhc_hist import Axis, fill, unpack


def test_regular_and_variable_axes_match_numpy_with_half_open_bins():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 2, 5000), [np.nan, 5.0, -5.0, 4.999]])
    for axis in (Axis.from_regular(20, -5, 5), Axis(np.array([-5, -1, 0, 0.5, 3, 5.0]), False)):
        counts, squares, considered, inside = unpack(fill([axis], [values]), [axis])
        finite = values[np.isfinite(values) & (values < 5)]  # numpy closes its last bin; we do not
        expected, _ = np.histogram(finite, axis.edges)
        np.testing.assert_array_equal(counts, expected)
        np.testing.assert_array_equal(squares, expected)
        assert considered == len(values) and inside == expected.sum()


def test_weights_mask_and_two_axes():
    x = np.array([0.5, 1.5, 1.5, 2.5, 0.2])
    y = np.array([0.1, 0.9, 0.9, 0.1, 0.6])
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    mask = np.array([True, True, True, False, True])
    axes = [Axis.from_regular(3, 0, 3), Axis(np.array([0.0, 0.5, 1.0]), False)]
    counts, squares, considered, inside = unpack(fill(axes, [x, y], w, mask), axes)
    assert counts.shape == (3, 2)
    np.testing.assert_array_equal(counts, [[1, 5], [0, 5], [0, 0]])
    np.testing.assert_array_equal(squares, [[1, 25], [0, 13], [0, 0]])
    assert (considered, inside) == (4, 4)


def test_chunk_fills_add_up_to_one_fill():
    rng = np.random.default_rng(2)
    values, weights = rng.exponential(3, 10_001), rng.uniform(0, 2, 10_001)
    axis = Axis.from_regular(40, 0, 20)
    whole = fill([axis], [values], weights)
    parts = sum(fill([axis], [values[i : i + 999]], weights[i : i + 999]) for i in range(0, len(values), 999))
    np.testing.assert_allclose(parts, whole, rtol=1e-12)


def test_regular_index_handles_infinities_nan_and_the_edges():
    axis = Axis.from_regular(60, 60.0, 120.0)
    values = np.array(
        [np.nan, np.inf, -np.inf, 59.999999999999, 60.0, 60.5, 119.99999999999999, 120.0, 1e300]
    )
    np.testing.assert_array_equal(axis.index(values), [-1, -1, -1, -1, 0, 0, 59, -1, -1])
    for seed in range(3):  # one multiply per value gives numpy's bins away from the edges
        values = np.random.default_rng(seed).uniform(50, 130, 10_000)
        found = axis.index(values)
        inside = (values >= 60) & (values < 120)
        np.testing.assert_array_equal(found[~inside], -1)
        np.testing.assert_array_equal(found[inside], np.floor(values[inside] - 60).astype(np.int64))
