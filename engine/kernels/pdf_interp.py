"""LHAPDF's log-bicubic interpolation of PDF grids, vectorised over points and columns.

The scheme (LHAPDF's LogBicubicInterpolator): in each Q subgrid, cubic Hermite in ln x, then
cubic Hermite in ln Q^2, the derivative at every knot being the average of the divided
differences on its two sides (one-sided at the subgrid's edges); a subgrid with fewer than 4 Q
knots (or 4 x knots) falls back to linear in ln x and ln Q^2. Subgrids are never interpolated
across: a point uses the subgrid whose Q range holds it, the upper one when Q is exactly on a
threshold. Outside x in [x_min, x_max] or Q in [Q_min, Q_max]: an error, NaN, or the nearest
edge value (`extrapolation`).

Why it vectorises: LHAPDF's Q derivatives are finite differences of x-interpolated values, and
both steps are linear in the knot values, so they commute. The result is therefore the bicubic
Hermite patch built from four quantities per knot: f, df/dlnx, df/dlnQ^2 and the cross
derivative, all precomputed once per set (`hermite_grid`). Evaluating a point is then one
search per axis, four row gathers (the cell's corners) and 16 weights shared by every column
(member x flavour), so millions of points and all members cost one multiply-add per weight and
value. Per-knot rows need 4x less memory than per-cell polynomial coefficients for the same
arithmetic.

Device-agnostic: the tables are built with numpy on the host and moved to the namespace and
device of the points (numpy, cupy or torch, through array-api-compat).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import array_api_compat
import numpy as np

Extrapolation = Literal["error", "nearest", "nan"]
BATCH_BYTES = 4 * 2**20  # gathered rows per batch of points (bounds temporaries, stays in cache)
CUBIC_MIN_KNOTS = 4


def knot_derivatives(values: np.ndarray, log_knots: np.ndarray, axis: int) -> np.ndarray:
    """d values / d log_knots at every knot: mean of the two adjacent slopes, one-sided at ends."""
    values = np.moveaxis(values, axis, 0)
    slopes = np.diff(values, axis=0) / np.diff(log_knots).reshape((-1,) + (1,) * (values.ndim - 1))
    out = np.empty_like(values)
    out[0], out[-1] = slopes[0], slopes[-1]
    out[1:-1] = 0.5 * (slopes[:-1] + slopes[1:])
    return np.moveaxis(out, 0, axis)


@dataclass(frozen=True)
class Subgrid:
    """One Q subgrid ready to evaluate: log knots (host) and per-knot rows (point's device)."""

    log_x: np.ndarray
    log_q2: np.ndarray
    table: Any  # (nx * nq, 4, columns): f, f_lnx, f_lnq2, f_lnx_lnq2 per knot
    cubic: bool


@dataclass(frozen=True)
class HermiteGrid:
    """All subgrids of a set; `columns` values per point (e.g. members x flavours, flattened)."""

    subgrids: tuple[Subgrid, ...]
    columns: int

    @property
    def q_edges(self) -> np.ndarray:
        """ln Q^2 where each subgrid starts, and where the last one ends."""
        return np.array([s.log_q2[0] for s in self.subgrids] + [self.subgrids[-1].log_q2[-1]])

    def to(self, like) -> HermiteGrid:
        """The same grid with its tables in the array namespace and on the device of `like`."""
        xp = array_api_compat.array_namespace(like)
        if xp is array_api_compat.array_namespace(self.subgrids[0].table):
            return self
        device = array_api_compat.device(like)
        moved = [Subgrid(s.log_x, s.log_q2, xp.asarray(s.table, device=device), s.cubic)
                 for s in self.subgrids]
        return HermiteGrid(tuple(moved), self.columns)


def hermite_grid(values: Sequence[np.ndarray], xs: Sequence[np.ndarray],
                 qs: Sequence[np.ndarray]) -> HermiteGrid:
    """Precompute per-knot Hermite rows of every subgrid.

    values[k]: (..., nx_k, nq_k) for subgrid k with knots xs[k] and qs[k] (Q in GeV); the
    leading dims (member, flavour) are flattened into columns in C order.
    """
    subgrids, columns = [], None
    for k, (grid, x, q) in enumerate(zip(values, xs, qs, strict=True)):
        grid = np.asarray(grid, dtype=np.float64)
        log_x, log_q2 = np.log(np.asarray(x, np.float64)), 2 * np.log(np.asarray(q, np.float64))
        if grid.shape[-2:] != (log_x.size, log_q2.size) or min(log_x.size, log_q2.size) < 2:
            raise ValueError(f"subgrid {k}: expected values (..., {log_x.size}, {log_q2.size}) with at "
                             f"least 2 knots per axis, got shape {grid.shape}")
        if not (np.all(np.diff(log_x) > 0) and np.all(np.diff(log_q2) > 0)):
            raise ValueError(f"subgrid {k}: knots must be strictly increasing")
        flat = grid.reshape(-1, log_x.size, log_q2.size)
        if columns is not None and flat.shape[0] != columns:
            raise ValueError(f"subgrid {k}: expected {columns} columns like subgrid 0, got {flat.shape[0]}")
        columns = flat.shape[0]
        d_x = knot_derivatives(flat, log_x, axis=1)
        rows = np.stack([flat, d_x, knot_derivatives(flat, log_q2, axis=2),
                         knot_derivatives(d_x, log_q2, axis=2)])  # (4, C, nx, nq)
        table = np.ascontiguousarray(rows.transpose(2, 3, 0, 1)).reshape(-1, 4, columns)
        cubic = min(log_x.size, log_q2.size) >= CUBIC_MIN_KNOTS
        subgrids.append(Subgrid(log_x, log_q2, table, cubic))
    if not subgrids:
        raise ValueError("expected at least one subgrid")
    return HermiteGrid(tuple(subgrids), int(columns))


def _hermite_weights(xp, t, width, cubic: bool):
    """(value at low, value at high, slope at low, slope at high) weights at t in [0, 1]."""
    if not cubic:
        zero = xp.zeros_like(t)
        return 1 - t, t, zero, zero
    t2 = t * t
    t3 = t2 * t
    return (2 * t3 - 3 * t2 + 1, 3 * t2 - 2 * t3, (t3 - 2 * t2 + t) * width, (t3 - t2) * width)


def _cell(xp, knots: np.ndarray, points):
    """Index of the cell holding each point (the last cell for the last knot), t and width."""
    device = array_api_compat.device(points)
    grid = xp.asarray(knots, device=device)
    index = xp.searchsorted(grid, points, side="right") - 1
    index = xp.clip(index, 0, knots.size - 2)
    low = xp.take(grid, index)
    width = xp.take(grid, index + 1) - low
    return index, (points - low) / width, width


def _outside(grid: HermiteGrid, log_x, log_q2, xp):
    """Mask of points outside every subgrid (x range of the subgrid its Q selects, Q range)."""
    edges = grid.q_edges
    bad = ~((log_q2 >= edges[0]) & (log_q2 <= edges[-1]))
    x_low = min(float(s.log_x[0]) for s in grid.subgrids)
    x_high = max(float(s.log_x[-1]) for s in grid.subgrids)
    same_x = all(np.array_equal(s.log_x, grid.subgrids[0].log_x) for s in grid.subgrids)
    if same_x:
        return bad | ~((log_x >= x_low) & (log_x <= x_high))
    which = _subgrid_of(grid, log_q2, xp)
    for k, sub in enumerate(grid.subgrids):
        bad = bad | ((which == k) & ~((log_x >= float(sub.log_x[0])) & (log_x <= float(sub.log_x[-1]))))
    return bad


def _subgrid_of(grid: HermiteGrid, log_q2, xp):
    """Subgrid index per point: the upper subgrid on a threshold, like LHAPDF."""
    inner = xp.asarray(grid.q_edges[1:-1], device=array_api_compat.device(log_q2))
    if inner.shape[0] == 0:
        return xp.zeros(log_q2.shape, dtype=xp.int64, device=array_api_compat.device(log_q2))
    return xp.searchsorted(inner, log_q2, side="right")


def _range_message(grid: HermiteGrid, x, q, bad, xp) -> str:
    n_bad = int(xp.sum(xp.astype(bad, xp.int64)))
    xs, qs = x[bad], q[bad]
    x_low = min(float(np.exp(s.log_x[0])) for s in grid.subgrids)
    x_high = max(float(np.exp(s.log_x[-1])) for s in grid.subgrids)
    q_low, q_high = np.exp(grid.q_edges[[0, -1]] / 2)
    return (f"{n_bad} of {x.shape[0]} points are outside the PDF grid (x in [{x_low:.6g}, {x_high:.6g}], "
            f"Q in [{q_low:.6g}, {q_high:.6g}] GeV): those points have x in [{float(xp.min(xs)):.6g}, "
            f"{float(xp.max(xs)):.6g}] and Q in [{float(xp.min(qs)):.6g}, {float(xp.max(qs)):.6g}] GeV; "
            "set extrapolation: nearest or nan to accept them")


def evaluate(grid: HermiteGrid, x, q, extrapolation: Extrapolation = "error"):
    """x f at points (x, Q in GeV) for every column: returns (columns, n_points).

    x and q are 1-D arrays of one namespace (numpy, cupy or torch); the result lives there too.
    NaN coordinates count as outside the grid.
    """
    xp = array_api_compat.array_namespace(x, q)
    if x.ndim != 1 or x.shape != q.shape:
        raise ValueError(f"expected 1-D x and q of the same length, got shapes {x.shape} and {q.shape}")
    grid = grid.to(x)
    x = xp.astype(x, xp.float64)
    q = xp.astype(q, xp.float64)
    log_x, log_q2 = xp.log(x), 2 * xp.log(q)
    bad = _outside(grid, log_x, log_q2, xp)
    has_bad = bool(xp.any(bad))
    if has_bad and extrapolation == "error":
        raise ValueError(_range_message(grid, x, q, bad, xp))
    if has_bad:  # nan: evaluate them at the edge too (finite arithmetic), then blank them
        log_q2 = xp.clip(xp.where(xp.isnan(log_q2), float(grid.q_edges[0]), log_q2),
                         float(grid.q_edges[0]), float(grid.q_edges[-1]))
        log_x = xp.where(xp.isnan(log_x), float(grid.subgrids[0].log_x[0]), log_x)
    which = _subgrid_of(grid, log_q2, xp)
    out = xp.empty((x.shape[0], grid.columns), dtype=xp.float64, device=array_api_compat.device(x))
    for k, sub in enumerate(grid.subgrids):
        selected = xp.nonzero(which == k)[0] if len(grid.subgrids) > 1 else None
        lx = log_x if selected is None else xp.take(log_x, selected)
        lq = log_q2 if selected is None else xp.take(log_q2, selected)
        if has_bad:
            lx = xp.clip(lx, float(sub.log_x[0]), float(sub.log_x[-1]))
        _evaluate_subgrid(sub, lx, lq, out, selected, xp)
    if has_bad and extrapolation == "nan":
        out = xp.where(bad[:, None], xp.nan, out)
    return out.T


def _evaluate_subgrid(sub: Subgrid, log_x, log_q2, out, selected, xp) -> None:
    """Fill out[selected] (points, columns) from one subgrid, batch by batch.

    Everything per point is done per batch so temporaries stay in cache: the cell search, the 16
    weights, one gather of the 4 corner knots' rows as (points, 16, columns) and one batched
    (1 x 16) @ (16 x columns) product (measured 1.7x faster than a product per corner).
    """
    nq, columns = sub.log_q2.size, out.shape[1]
    device = array_api_compat.device(log_x)
    offsets = xp.asarray([0, 1, nq, nq + 1], device=device)
    batch = max(256, BATCH_BYTES // (16 * columns * 8))
    for start in range(0, log_x.shape[0], batch):
        stop = min(log_x.shape[0], start + batch)
        ix, tx, wx = _cell(xp, sub.log_x, log_x[start:stop])
        iq, tq, wq = _cell(xp, sub.log_q2, log_q2[start:stop])
        # (p, d, slope) for the low/high knot (d) and value/slope (slope) of each axis
        hx = xp.permute_dims(xp.reshape(xp.stack(_hermite_weights(xp, tx, wx, sub.cubic), axis=1),
                                        (-1, 2, 2)), (0, 2, 1))
        hq = xp.permute_dims(xp.reshape(xp.stack(_hermite_weights(xp, tq, wq, sub.cubic), axis=1),
                                        (-1, 2, 2)), (0, 2, 1))
        # weight[p, dx, dq, slope_q, slope_x]: the table's rows f, f_x, f_q, f_xq (slope_q major)
        # at corners (dx, dq) = (0,0), (0,1), (1,0), (1,1)
        weights = xp.reshape(hx[:, :, None, None, :] * hq[:, None, :, :, None], (stop - start, 1, 16))
        corners = xp.reshape((ix * nq + iq)[:, None] + offsets[None, :], (-1,))
        rows = xp.reshape(xp.take(sub.table, corners, axis=0), (stop - start, 16, columns))
        values = xp.matmul(weights, rows)[:, 0, :]
        if selected is None:
            out[start:stop, ...] = values
        else:
            out[selected[start:stop], ...] = values
