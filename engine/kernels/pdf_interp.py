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
derivative, all precomputed once per set (`hermite_grid`) into one table for all subgrids.
Evaluating a point is then one search per axis, one gather of its cell's 4 corner rows and 16
weights shared by every column (member x flavour), so millions of points and all members cost
one multiply-add per weight and value. Per-knot rows need 4x less memory than per-cell
polynomial coefficients for the same arithmetic. Points are handled in their own order, in
cache-sized batches, and the result is written column-major (columns, points), the layout of
the op's output, so nothing is scattered or transposed afterwards.

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
BATCH_BYTES = 2 * 2**20  # gathered rows per batch of points (bounds temporaries, near-cache sized)
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
    """One Q subgrid: log knots (host numpy) and where its knots start in the shared table."""

    log_x: np.ndarray
    log_q2: np.ndarray
    first_row: int
    cubic: bool


@dataclass(frozen=True)
class HermiteGrid:
    """All subgrids of a set; `columns` values per point (e.g. members x flavours, flattened).

    `table` (knots of every subgrid, 4, columns) holds f, f_lnx, f_lnq2, f_lnx_lnq2 per knot,
    knot (ix, iq) of subgrid k at row first_row + ix * nq + iq.
    """

    subgrids: tuple[Subgrid, ...]
    table: Any
    columns: int

    @property
    def q_edges(self) -> np.ndarray:
        """ln Q^2 where each subgrid starts, and where the last one ends."""
        return np.array([s.log_q2[0] for s in self.subgrids] + [self.subgrids[-1].log_q2[-1]])

    def to(self, like) -> HermiteGrid:
        """The same grid with its table in the array namespace and on the device of `like`."""
        xp = array_api_compat.array_namespace(like)
        if xp is array_api_compat.array_namespace(self.table):
            return self
        return HermiteGrid(self.subgrids, xp.asarray(self.table, device=array_api_compat.device(like)),
                           self.columns)


def hermite_grid(values: Sequence[np.ndarray], xs: Sequence[np.ndarray],
                 qs: Sequence[np.ndarray]) -> HermiteGrid:
    """Precompute per-knot Hermite rows of every subgrid.

    values[k]: (..., nx_k, nq_k) for subgrid k with knots xs[k] and qs[k] (Q in GeV); the
    leading dims (member, flavour) are flattened into columns in C order.
    """
    subgrids, tables, columns, first_row = [], [], None, 0
    for k, (grid, x, q) in enumerate(zip(values, xs, qs, strict=True)):
        grid = np.asarray(grid, dtype=np.float64)
        log_x, log_q2 = np.log(np.asarray(x, np.float64)), 2 * np.log(np.asarray(q, np.float64))
        if grid.shape[-2:] != (log_x.size, log_q2.size) or min(log_x.size, log_q2.size) < 2:
            raise ValueError(f"subgrid {k}: expected values (..., {log_x.size}, {log_q2.size}) with at "
                             f"least 2 knots per axis, got shape {grid.shape}")
        if not (np.all(np.diff(log_x) > 0) and np.all(np.diff(log_q2) > 0)):
            raise ValueError(f"subgrid {k}: knots must be strictly increasing")
        # (nx, nq, C): columns innermost, so every derivative pass runs over contiguous memory
        flat = np.ascontiguousarray(np.moveaxis(grid.reshape(-1, log_x.size, log_q2.size), 0, -1))
        if columns is not None and flat.shape[-1] != columns:
            raise ValueError(f"subgrid {k}: expected {columns} columns like subgrid 0, got {flat.shape[-1]}")
        columns = flat.shape[-1]
        d_x = knot_derivatives(flat, log_x, axis=0)
        rows = np.stack([flat, d_x, knot_derivatives(flat, log_q2, axis=1),
                         knot_derivatives(d_x, log_q2, axis=1)], axis=2)  # (nx, nq, 4, C)
        tables.append(rows.reshape(-1, 4, columns))
        cubic = min(log_x.size, log_q2.size) >= CUBIC_MIN_KNOTS
        subgrids.append(Subgrid(log_x, log_q2, first_row, cubic))
        first_row += log_x.size * log_q2.size
    if not subgrids:
        raise ValueError("expected at least one subgrid")
    return HermiteGrid(tuple(subgrids), np.ascontiguousarray(np.concatenate(tables)), int(columns))


def _hermite_weights(xp, t, width):
    """(value at low, value at high, slope at low, slope at high) weights at t in [0, 1]."""
    t2 = t * t
    t3 = t2 * t
    return (2 * t3 - 3 * t2 + 1, 3 * t2 - 2 * t3, (t3 - 2 * t2 + t) * width, (t3 - t2) * width)


def _linear_weights(xp, t, width):
    zero = xp.zeros_like(t)
    return 1 - t, t, zero, zero


def _cell(xp, knots: np.ndarray, points):
    """Index of the cell holding each point (the last cell for the last knot), t and width."""
    device = array_api_compat.device(points)
    grid = xp.asarray(knots, device=device)
    index = xp.searchsorted(grid, points, side="right") - 1
    index = xp.clip(index, 0, knots.size - 2)
    low = xp.take(grid, index)
    width = xp.take(grid, index + 1) - low
    return index, (points - low) / width, width


def _subgrid_of(grid: HermiteGrid, log_q2, xp):
    """Subgrid index per point: the upper subgrid on a threshold, like LHAPDF."""
    inner = xp.asarray(grid.q_edges[1:-1], device=array_api_compat.device(log_q2))
    if inner.shape[0] == 0:
        return xp.zeros(log_q2.shape, dtype=xp.int64, device=array_api_compat.device(log_q2))
    return xp.searchsorted(inner, log_q2, side="right")


def _outside(grid: HermiteGrid, log_x, log_q2, which, xp):
    """Mask of points outside the grid: Q outside every subgrid, or x outside its subgrid's."""
    edges = grid.q_edges
    bad = ~((log_q2 >= edges[0]) & (log_q2 <= edges[-1]))
    for k, sub in enumerate(grid.subgrids):
        in_x = (log_x >= float(sub.log_x[0])) & (log_x <= float(sub.log_x[-1]))
        bad = bad | (~in_x if len(grid.subgrids) == 1 else (which == k) & ~in_x)
    return bad


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


@dataclass
class _Cells:
    """Per point: the 4 corner rows of its cell in the table, and t and width along each axis."""

    corners: Any
    tx: Any
    wx: Any
    tq: Any
    wq: Any
    cubic: Any  # per-point bool, or a bool for all points


def _cells(grid: HermiteGrid, log_x, log_q2, which, clamp_x: bool, xp) -> _Cells:
    """Locate every point in its subgrid (one pass over the points per subgrid, all vectorised)."""
    device = array_api_compat.device(log_x)
    found, x_cells, x_knots = None, None, None
    for k, sub in enumerate(grid.subgrids):
        if x_knots is None or not np.array_equal(sub.log_x, x_knots):  # subgrids mostly share x
            lx = xp.clip(log_x, float(sub.log_x[0]), float(sub.log_x[-1])) if clamp_x else log_x
            x_cells, x_knots = _cell(xp, sub.log_x, lx), sub.log_x
        ix, tx, wx = x_cells
        iq, tq, wq = _cell(xp, sub.log_q2, log_q2)
        nq = sub.log_q2.size
        offsets = xp.asarray([0, 1, nq, nq + 1], dtype=ix.dtype, device=device)
        corners = (sub.first_row + ix * nq + iq)[:, None] + offsets[None, :]
        mine = _Cells(corners, tx, wx, tq, wq, sub.cubic)
        if found is None:
            found = mine
            continue
        here = which == k
        found = _Cells(xp.where(here[:, None], corners, found.corners), xp.where(here, tx, found.tx),
                       xp.where(here, wx, found.wx), xp.where(here, tq, found.tq),
                       xp.where(here, wq, found.wq),
                       found.cubic if found.cubic is sub.cubic and isinstance(found.cubic, bool)
                       else xp.where(here, sub.cubic, found.cubic))
    return found


def _weights(xp, t, width, cubic):
    if isinstance(cubic, bool):
        return (_hermite_weights if cubic else _linear_weights)(xp, t, width)
    return tuple(xp.where(cubic, c, lin) for c, lin in zip(_hermite_weights(xp, t, width),
                                                          _linear_weights(xp, t, width), strict=True))


def evaluate(grid: HermiteGrid, x, q, extrapolation: Extrapolation = "error"):
    """x f at points (x, Q in GeV) for every column: returns (columns, n_points), C-contiguous.

    x and q are 1-D arrays of one namespace (numpy, cupy or torch); the result lives there too.
    NaN coordinates count as outside the grid.
    """
    xp = array_api_compat.array_namespace(x, q)
    if x.ndim != 1 or x.shape != q.shape:
        raise ValueError(f"expected 1-D x and q of the same length, got shapes {x.shape} and {q.shape}")
    grid = grid.to(x)
    log_x, log_q2 = xp.log(xp.astype(x, xp.float64)), 2 * xp.log(xp.astype(q, xp.float64))
    which = _subgrid_of(grid, log_q2, xp)
    bad = _outside(grid, log_x, log_q2, which, xp)
    has_bad = bool(xp.any(bad))
    if has_bad and extrapolation == "error":
        raise ValueError(_range_message(grid, x, q, bad, xp))
    if has_bad:  # nan: evaluate them at the edge too (finite arithmetic), then blank them
        log_q2 = xp.clip(xp.where(xp.isnan(log_q2), float(grid.q_edges[0]), log_q2),
                         float(grid.q_edges[0]), float(grid.q_edges[-1]))
        log_x = xp.where(xp.isnan(log_x), float(grid.subgrids[0].log_x[0]), log_x)
        which = _subgrid_of(grid, log_q2, xp)
    cells = _cells(grid, log_x, log_q2, which, has_bad, xp)
    out = xp.empty((grid.columns, x.shape[0]), dtype=xp.float64, device=array_api_compat.device(x))
    _fill(grid.table, cells, out, xp)
    if has_bad and extrapolation == "nan":
        out = xp.where(bad[None, :], xp.nan, out)
    return out


def _fill(table, cells: _Cells, out, xp) -> None:
    """out[:, batch] for batch after batch of points.

    Per batch: the 16 weights (outer product of the x and Q Hermite weights), one gather of the
    4 corner knots' rows as (points, 16, columns) and one batched (1 x 16) @ (16 x columns)
    product, measured 1.7x faster than a product per corner; the batch stays in cache.
    """
    columns, n = out.shape
    batch = max(256, BATCH_BYTES // (16 * columns * 8))
    for start in range(0, n, batch):
        part = slice(start, min(n, start + batch))
        cubic = cells.cubic if isinstance(cells.cubic, bool) else cells.cubic[part]
        # (p, d, slope): weight of the low/high knot (d) value/slope (slope) along each axis
        hx = xp.permute_dims(xp.reshape(xp.stack(_weights(xp, cells.tx[part], cells.wx[part], cubic),
                                                 axis=1), (-1, 2, 2)), (0, 2, 1))
        hq = xp.permute_dims(xp.reshape(xp.stack(_weights(xp, cells.tq[part], cells.wq[part], cubic),
                                                 axis=1), (-1, 2, 2)), (0, 2, 1))
        # weight[p, dx, dq, slope_q, slope_x] matches the gathered rows: corners (dx, dq) in the
        # order (0,0), (0,1), (1,0), (1,1), each with f, f_x, f_q, f_xq (slope_q major)
        size = part.stop - part.start
        weights = xp.reshape(hx[:, :, None, None, :] * hq[:, None, :, :, None], (size, 1, 16))
        rows = xp.reshape(xp.take(table, xp.reshape(cells.corners[part], (-1,)), axis=0),
                          (size, 16, columns))
        out[:, part] = xp.matmul(weights, rows)[:, 0, :].T
