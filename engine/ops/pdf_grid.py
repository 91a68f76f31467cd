"""`pdf.evaluate`: a PDF set (engine.ingest.lhapdf_format layout) interpolated at (x, Q) points.

The set is small and the points are many: for each chunk of members the per-knot Hermite
tables are built once (one delayed task shared by every point chunk), then the kernel maps over
point chunks. Output chunks are (member chunk, all flavours, point chunk), with point chunks cut
so one output chunk stays near OUTPUT_CHUNK_BYTES whatever the number of members.
"""

from __future__ import annotations

from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ..bounds import Params
from ..errors import IngestError, OpError
from ..ingest.lhapdf_format import FLAVOUR, GLUON, MEMBER, subgrid_count, subgrid_names
from ..kernels import pdf_interp as kernels
from ..registry import register_op
from .core import as_delayed

OUTPUT_CHUNK_BYTES = 32 * 2**20
TABLE_BYTES = 64 * 2**20  # Hermite tables built per member chunk (4x the chunk's grid values)
POINT_CHUNK = 2**18  # points per chunk when the points come in memory


class EvaluateParams(Params):
    extrapolation: Literal["error", "nearest", "nan"] = Field(
        "error", description="points outside the grid: fail naming them, take the nearest edge value "
        "of the grid, or give NaN")
    flavours: list[int] | None = Field(None, description="PDG ids to evaluate (default all; 0 = gluon)")
    members: list[int] | None = Field(None, description="members to evaluate (default all)")
    x: str = Field("x", description="variable of the points holding x")
    q: str = Field("q", description="variable of the points holding Q in GeV (not Q^2)")


def _select(pdf: xr.Dataset, dim: str, wanted: list[int] | None) -> xr.Dataset:
    if wanted is None:
        return pdf
    have = pdf[dim].values.tolist()
    missing = [w for w in wanted if w not in have]
    if missing:
        raise OpError(f"{dim} {missing} not in the PDF set; it has {dim}s {have}")
    return pdf.sel({dim: wanted})


def _points(points: xr.Dataset, params: EvaluateParams) -> tuple[xr.DataArray, xr.DataArray]:
    for name in (params.x, params.q):
        if name not in points.variables:
            raise OpError(f"the points have no variable {name!r}; they have "
                          f"{', '.join(map(str, points.variables))} (set params x: and q:)")
    x, q = points[params.x], points[params.q]
    if x.dims != q.dims or x.ndim == 0:
        raise OpError(f"expected {params.x!r} and {params.q!r} along the same point dims, found "
                      f"{x.dims} and {q.dims}")
    clash = {MEMBER, FLAVOUR} & set(x.dims)
    if clash:
        raise OpError(f"the points may not have dims named {sorted(clash)}: the output uses them")
    if x.chunks is None:
        x, q = x.chunk({x.dims[0]: POINT_CHUNK}), q.chunk({q.dims[0]: POINT_CHUNK})
    x, q = xr.unify_chunks(x, q)
    return x, q


def _check_in_memory_points(grid_ranges, x: xr.DataArray, q: xr.DataArray, points: xr.Dataset,
                            params: EvaluateParams) -> None:
    """Points held in memory are checked now, so a recipe fails before it runs."""
    originals = points[params.x].data, points[params.q].data
    if params.extrapolation != "error" or any(isinstance(a, da.Array) for a in originals):
        return
    (x_low, x_high), (q_low, q_high) = grid_ranges
    xs, qs = np.asarray(originals[0], float).ravel(), np.asarray(originals[1], float).ravel()
    bad = ~((xs >= x_low) & (xs <= x_high) & (qs >= q_low) & (qs <= q_high))
    if bad.any():
        raise OpError(f"{int(bad.sum())} of {xs.size} points are outside the PDF grid (x in "
                      f"[{x_low:.6g}, {x_high:.6g}], Q in [{q_low:.6g}, {q_high:.6g}] GeV): those points "
                      f"have x in [{xs[bad].min():.6g}, {xs[bad].max():.6g}] and Q in "
                      f"[{qs[bad].min():.6g}, {qs[bad].max():.6g}] GeV; set extrapolation: nearest or "
                      "nan to accept them")


def _member_chunks(pdf: xr.Dataset, names: list[tuple[str, str, str]]) -> tuple[int, ...]:
    """The set's member chunks, split further where one chunk's Hermite tables would pass
    TABLE_BYTES (4 rows of 8 bytes per knot, flavour and member)."""
    knots = sum(pdf.sizes[xdim] * pdf.sizes[qdim] for _, xdim, qdim in names)
    most = max(1, TABLE_BYTES // (4 * 8 * pdf.sizes[FLAVOUR] * knots))
    stored = pdf[names[0][0]].chunks
    chunks = stored[pdf[names[0][0]].dims.index(MEMBER)] if stored else (pdf.sizes[MEMBER],)
    return tuple(part for size in chunks for part in [most] * (size // most) + [size % most] if part)


def _grid(*blocks: np.ndarray, xs: list[np.ndarray], qs: list[np.ndarray]) -> kernels.HermiteGrid:
    """Hermite tables of one member chunk (blocks: one per subgrid, as separate task inputs)."""
    return kernels.hermite_grid(blocks, xs, qs)


def _evaluate_block(x, q, grid: kernels.HermiteGrid, head: tuple[int, int], extrapolation: str):
    """One output block (members, flavours, *point block shape)."""
    values = kernels.evaluate(grid, x.reshape(-1), q.reshape(-1), extrapolation)
    return values.reshape(head + tuple(x.shape))


@register_op("pdf.evaluate", params=EvaluateParams, inputs=("pdf", "points"),
             memory=4.0)  # per chunk of points: the knot tables of a member chunk and the weights
def evaluate(params: EvaluateParams, pdf: xr.Dataset, points: xr.Dataset) -> xr.Dataset:
    """Interpolate a PDF set at (x, Q) points with LHAPDF's log-bicubic scheme.

    Output: `xf` (member, flavour, *point dims), plus the points' x and q. Each Q subgrid is
    interpolated on its own (a point exactly on a threshold uses the upper one, like LHAPDF).
    """
    try:
        count = subgrid_count(pdf)
    except IngestError as exc:
        raise OpError(f"input 'pdf' is not a PDF set: {exc}") from None
    flavours = None if params.flavours is None else [GLUON if f == 0 else f for f in params.flavours]
    pdf = _select(_select(pdf, MEMBER, params.members), FLAVOUR, flavours)
    names = [subgrid_names(k) for k in range(count)]
    xs = [np.asarray(pdf[xdim].values, np.float64) for _, xdim, _ in names]
    qs = [np.asarray(pdf[qdim].values, np.float64) for _, _, qdim in names]
    ranges = ((min(x[0] for x in xs), max(x[-1] for x in xs)), (qs[0][0], qs[-1][-1]))
    x, q = _points(points, params)
    _check_in_memory_points(ranges, x, q, points, params)
    n_flavours = pdf.sizes[FLAVOUR]
    member_chunks = _member_chunks(pdf, names)
    per_point = max(member_chunks) * n_flavours * 8
    if max(max(c) for c in x.chunks) * per_point > OUTPUT_CHUNK_BYTES:
        x, q = xr.unify_chunks(x.chunk({x.dims[0]: max(1, OUTPUT_CHUNK_BYTES // per_point)}),
                               q.chunk({q.dims[0]: max(1, OUTPUT_CHUNK_BYTES // per_point)}))
    blocks, start = [], 0
    for size in member_chunks:
        members = slice(start, start + size)
        start += size
        parts = [as_delayed(da.asarray(pdf[var].transpose(MEMBER, FLAVOUR, xdim, qdim).data)[members])
                 for var, xdim, qdim in names]
        grid = dask.delayed(_grid, pure=True)(*parts, xs=xs, qs=qs)
        blocks.append(da.map_blocks(
            _evaluate_block, x.data, q.data, grid, head=(size, n_flavours),
            extrapolation=params.extrapolation, new_axis=[0, 1], dtype=np.float64,
            chunks=((size,), (n_flavours,), *x.chunks), meta=np.empty((0,) * (x.ndim + 2))))
    xf = xr.DataArray(da.concatenate(blocks, axis=0), dims=(MEMBER, FLAVOUR, *x.dims),
                      coords={MEMBER: pdf[MEMBER].values, FLAVOUR: pdf[FLAVOUR].values,
                              **{name: c for name, c in x.coords.items()}},
                      attrs={"long_name": "x f(x, Q)", "interpolation": "LHAPDF log-bicubic",
                             "extrapolation": params.extrapolation})
    return xr.Dataset({"xf": xf, params.x: x, params.q: q},
                      attrs={"pdf_set": str((pdf.attrs.get("lhapdf_info") or {}).get("SetDesc", ""))})
