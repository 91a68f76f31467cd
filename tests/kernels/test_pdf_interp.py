"""Log-bicubic interpolation kernel: known truths, LHAPDF's own step order, subgrids, range errors.

`lhapdf_point` below follows LHAPDF's LogBicubicInterpolator literally, one point at a time:
Hermite in ln x at four Q knots, then Q derivatives as finite differences of those x-interpolated
values. The kernel computes the same numbers from precomputed per-knot tables, so agreement to
rounding checks that reformulation (and the edge and fallback cases) directly.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.kernels.pdf_interp import evaluate, hermite_grid, knot_derivatives


def _cubic(t, low, slope_low, high, slope_high):
    t2, t3 = t * t, t * t * t
    return ((2 * t3 - 3 * t2 + 1) * low + (t3 - 2 * t2 + t) * slope_low + (3 * t2 - 2 * t3) * high
            + (t3 - t2) * slope_high)


def _below(knots, value):
    i = int(np.searchsorted(knots, value, side="right"))
    return min(i, len(knots) - 1) - 1


def _d_dlogx(log_x, f, ix, iq):
    if ix == 0:
        return (f[1, iq] - f[0, iq]) / (log_x[1] - log_x[0])
    if ix == len(log_x) - 1:
        return (f[ix, iq] - f[ix - 1, iq]) / (log_x[ix] - log_x[ix - 1])
    return 0.5 * ((f[ix, iq] - f[ix - 1, iq]) / (log_x[ix] - log_x[ix - 1])
                  + (f[ix + 1, iq] - f[ix, iq]) / (log_x[ix + 1] - log_x[ix]))


def lhapdf_point(x_knots, q_knots, f, x, q):
    """One value of one subgrid f (nx, nq), in LHAPDF's order of steps."""
    log_x, log_q2 = np.log(x_knots), np.log(np.asarray(q_knots) ** 2)
    ix, iq = _below(x_knots, x), _below(np.asarray(q_knots) ** 2, q * q)
    lx, lq = np.log(x), np.log(q * q)
    if len(q_knots) < 4:  # LHAPDF's log-bilinear fallback
        tx = (lx - log_x[ix]) / (log_x[ix + 1] - log_x[ix])
        low = f[ix, iq] + tx * (f[ix + 1, iq] - f[ix, iq])
        high = f[ix, iq + 1] + tx * (f[ix + 1, iq + 1] - f[ix, iq + 1])
        return low + (lq - log_q2[iq]) / (log_q2[iq + 1] - log_q2[iq]) * (high - low)
    dx = log_x[ix + 1] - log_x[ix]
    tx = (lx - log_x[ix]) / dx
    dq = log_q2[iq + 1] - log_q2[iq]
    tq = (lq - log_q2[iq]) / dq

    def along_x(j):
        return _cubic(tx, f[ix, j], _d_dlogx(log_x, f, ix, j) * dx, f[ix + 1, j],
                      _d_dlogx(log_x, f, ix + 1, j) * dx)

    low, high = along_x(iq), along_x(iq + 1)
    last = len(q_knots) - 1
    if 0 < iq and iq + 1 < last:
        slope_low = ((high - low) / dq + (low - along_x(iq - 1)) / (log_q2[iq] - log_q2[iq - 1])) / 2
        slope_high = ((high - low) / dq + (along_x(iq + 2) - high) / (log_q2[iq + 2] - log_q2[iq + 1])) / 2
    elif iq == 0:
        slope_low = (high - low) / dq
        slope_high = (slope_low + (along_x(iq + 2) - high) / (log_q2[iq + 2] - log_q2[iq + 1])) / 2
    else:
        slope_high = (high - low) / dq
        slope_low = (slope_high + (low - along_x(iq - 1)) / (log_q2[iq] - log_q2[iq - 1])) / 2
    return _cubic(tq, low, slope_low * dq, high, slope_high * dq)


X = np.array([1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
Q_SUBGRIDS = [np.array([1.65, 2.0, 3.0, 4.92]), np.array([4.92, 6.0, 8.0]),
              np.array([8.0, 20.0, 50.0, 200.0, 1e3, 1e4])]


def _random_set(rng, columns=5):
    return [rng.normal(size=(columns, X.size, q.size)) for q in Q_SUBGRIDS]


def _random_points(rng, n):
    x = np.exp(rng.uniform(np.log(X[0]), 0, n))
    q = np.exp(rng.uniform(np.log(Q_SUBGRIDS[0][0]), np.log(Q_SUBGRIDS[-1][-1]), n))
    return x, q


def _subgrid_of(q):
    return 0 if q < Q_SUBGRIDS[1][0] else (1 if q < Q_SUBGRIDS[2][0] else 2)


def test_knot_derivatives_are_averaged_slopes_one_sided_at_edges():
    knots = np.log(np.array([1.0, 2.0, 5.0, 6.0]))
    values = np.array([1.0, 3.0, 4.0, 8.0])
    slopes = np.diff(values) / np.diff(knots)
    expected = [slopes[0], (slopes[0] + slopes[1]) / 2, (slopes[1] + slopes[2]) / 2, slopes[2]]
    np.testing.assert_allclose(knot_derivatives(values, knots, axis=0), expected)


def test_matches_lhapdf_step_order_including_the_linear_fallback_subgrid():
    rng = np.random.default_rng(1)
    values = _random_set(rng)
    grid = hermite_grid(values, [X] * 3, Q_SUBGRIDS)
    x, q = _random_points(rng, 400)
    x[:4], q[:4] = [X[0], 1.0, 0.5, 1e-3], [Q_SUBGRIDS[0][0], 1e4, 4.92, 8.0]  # corners, thresholds
    out = evaluate(grid, x, q)
    assert out.shape == (5, 400)
    for i in range(400):
        k = _subgrid_of(q[i])
        for c in (0, 4):
            expected = lhapdf_point(X, Q_SUBGRIDS[k], values[k][c], x[i], q[i])
            assert out[c, i] == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_subgrids_with_their_own_x_knots():
    rng = np.random.default_rng(8)
    xs = [X, np.geomspace(1e-5, 1, 9), X[1:]]
    values = [rng.normal(size=(2, x.size, q.size)) for x, q in zip(xs, Q_SUBGRIDS, strict=True)]
    grid = hermite_grid(values, xs, Q_SUBGRIDS)
    x, q = _random_points(rng, 300)
    x = np.clip(x, 1e-5, 1)
    out = evaluate(grid, x, q)
    for i in range(300):
        k = _subgrid_of(q[i])
        expected = lhapdf_point(xs[k], Q_SUBGRIDS[k], values[k][1], x[i], q[i])
        assert out[1, i] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError, match="1 of 1 points are outside"):
        evaluate(grid, np.array([2e-6]), np.array([6.0]))  # in subgrid 0's x range, not subgrid 1's


def test_exact_at_knots():
    rng = np.random.default_rng(2)
    values = _random_set(rng)
    grid = hermite_grid(values, [X] * 3, Q_SUBGRIDS)
    for k, q_knots in enumerate(Q_SUBGRIDS):
        xx, qq = np.meshgrid(X, q_knots[:-1] if k < 2 else q_knots, indexing="ij")  # top knot: next subgrid
        out = evaluate(grid, xx.ravel(), qq.ravel()).reshape(5, *xx.shape)
        np.testing.assert_allclose(out, values[k][:, :, :xx.shape[1]], rtol=0, atol=1e-13)


def test_linear_in_log_x_and_log_q2_is_exact_everywhere():
    def truth(x, q):
        return 0.3 - 0.7 * np.log(x) + 1.9 * np.log(q**2)

    values = [np.stack([truth(X[:, None], q[None, :]), -truth(X[:, None], q[None, :])]) for q in Q_SUBGRIDS]
    grid = hermite_grid(values, [X] * 3, Q_SUBGRIDS)
    x, q = _random_points(np.random.default_rng(3), 5000)
    out = evaluate(grid, x, q)
    np.testing.assert_allclose(out[0], truth(x, q), rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(out[1], -truth(x, q), rtol=1e-12, atol=1e-11)


def _smooth_error(n_x: int, x_range=(1e-4, 1.0), q_range=(2.0, 1e4)) -> float:
    """Max error at random points in the ranges, for a smooth function on n_x log-spaced x knots
    in [1e-4, 1] and n_x / 2 in Q in [2, 1e4] GeV."""
    def truth(x, q):
        return np.sin(1.3 * np.log(x)) * np.cos(0.4 * np.log(q**2)) + x * (1 - x)

    xs = np.geomspace(1e-4, 1, n_x)
    qs = np.geomspace(2, 1e4, n_x // 2)
    grid = hermite_grid([truth(xs[:, None], qs[None, :])[None]], [xs], [qs])
    rng = np.random.default_rng(4)
    x = np.exp(rng.uniform(*np.log(x_range), 20000))
    q = np.exp(rng.uniform(*np.log(q_range), 20000))
    return float(np.max(np.abs(evaluate(grid, x, q)[0] - truth(x, q))))


def test_error_on_smooth_functions_shrinks_at_the_scheme_rate():
    """Averaged-slope derivatives are second-order on a uniform (log) grid: the interpolation
    error falls as h^3 inside, and as h^2 overall (one-sided derivatives in the edge cells)."""
    overall = np.array([_smooth_error(n) for n in (20, 40, 80)])
    inside = np.array([_smooth_error(n, (1e-3, 0.1), (20.0, 1e3)) for n in (20, 40, 80)])
    assert overall[-1] < 5e-3
    assert np.all(np.log2(overall[:-1] / overall[1:]) > 1.8), overall
    assert np.all(np.log2(inside[:-1] / inside[1:]) > 2.7), inside


def test_q_on_a_threshold_uses_the_upper_subgrid_and_subgrids_are_not_mixed():
    xs = [X, X]
    qs = [np.array([2.0, 3.0, 4.0, 5.0]), np.array([5.0, 6.0, 7.0, 8.0])]
    values = [np.full((1, X.size, 4), 1.0), np.full((1, X.size, 4), 2.0)]
    grid = hermite_grid(values, xs, qs)
    out = evaluate(grid, np.full(4, 0.1), np.array([4.999999, 5.0, 5.000001, 8.0]))[0]
    np.testing.assert_array_equal(out, [1.0, 2.0, 2.0, 2.0])


def test_points_outside_the_grid_error_nan_or_nearest():
    rng = np.random.default_rng(5)
    values = _random_set(rng, columns=2)
    grid = hermite_grid(values, [X] * 3, Q_SUBGRIDS)
    x = np.array([0.1, 1e-7, 0.2, 0.5])
    q = np.array([10.0, 10.0, 2e4, 1.0])
    with pytest.raises(ValueError, match=r"3 of 4 points are outside the PDF grid \(x in \[1e-06, 1\], Q in "
                       r"\[1.65, 10000\] GeV\): those points have x in \[1e-07, 0.5\] and Q in \[1, 20000\]"):
        evaluate(grid, x, q)
    nan = evaluate(grid, x, q, "nan")
    assert np.isfinite(nan[:, 0]).all() and np.isnan(nan[:, 1:]).all()
    nearest = evaluate(grid, x, q, "nearest")
    edge = evaluate(grid, np.array([0.1, 1e-6, 0.2, 0.5]), np.array([10.0, 10.0, 1e4, 1.65]))
    np.testing.assert_allclose(nearest, edge, rtol=1e-14)
    with pytest.raises(ValueError, match="1 of 1 points are outside"):
        evaluate(grid, np.array([np.nan]), np.array([10.0]))


def test_torch_tensors_in_torch_tensors_out():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    grid = hermite_grid(_random_set(rng), [X] * 3, Q_SUBGRIDS)
    x, q = _random_points(rng, 1000)
    out = evaluate(grid, torch.from_numpy(x), torch.from_numpy(q))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), evaluate(grid, x, q), rtol=1e-13, atol=1e-13)


@pytest.mark.gpu
def test_cuda_tensors_match_numpy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(7)
    grid = hermite_grid(_random_set(rng), [X] * 3, Q_SUBGRIDS)
    x, q = _random_points(rng, 100000)
    out = evaluate(grid, torch.from_numpy(x).cuda(), torch.from_numpy(q).cuda())
    assert out.device.type == "cuda"
    np.testing.assert_allclose(out.cpu().numpy(), evaluate(grid, x, q), rtol=1e-12, atol=1e-12)


def test_shapes_are_checked():
    grid = hermite_grid([np.ones((1, X.size, 4))], [X], [Q_SUBGRIDS[0]])
    with pytest.raises(ValueError, match="expected 1-D x and q of the same length"):
        evaluate(grid, np.ones(3) * 0.1, np.ones(2) * 2)
    with pytest.raises(ValueError, match=r"subgrid 0: expected values \(\.\.\., 12, 4\)"):
        hermite_grid([np.ones((1, 4, X.size))], [X], [Q_SUBGRIDS[0]])
