"""`pdf.compress`: a PDF set of N replicas -> M << N replicas with the same statistics.

The compression (kernels/compress.py, NNPDF's compressor) looks at the set on a grid of x knots
and flavours at one Q (the set's lowest by default, where fits are parametrised) and chooses the
subset; the output holds those replicas whole (every subgrid, every Q) in the lake's PDF-set
layout, so `replicalake export lhapdf` writes it like any set. Member 0 is the average of the
chosen replicas (LHAPDF's convention for Monte Carlo sets).

Memory: the compression reads one Q slice of the set (N x flavours x x knots); the compressed
set is gathered chunk by chunk of members (each input chunk contributes the chosen members it
holds), so a 1000-replica set is never held whole.
"""

from __future__ import annotations

from typing import Annotated

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ..bounds import GridNodes, Repeats, Replicas, Seed
from ..bounds import Params as _Params
from ..errors import IngestError, OpError
from ..ingest.lhapdf_format import (
    DEFAULT_DIGITS,
    DIGITS_ATTR,
    FLAVOUR,
    GLUON,
    HEADERS_ATTR,
    INFO_ATTR,
    KEPT,
    MEMBER,
    subgrid_count,
    subgrid_names,
)
from ..key_numbers import mark
from ..registry import register_op
from . import needs
from .core import as_delayed

ESTIMATOR = "estimator"


class CompressParams(_Params):
    replicas: Replicas = Field(ge=2, description="M, the replicas to keep (M < N)")
    generations: int = Field(
        1000,
        ge=0,
        le=100_000,
        description="genetic search generations (NNPDF's "
        "compressor runs ~15000; the error flattens within a few thousand)",
    )
    mutants: int = Field(16, ge=1, le=1024, description="children per generation")
    seed: Seed = 0
    flavours: list[Annotated[int, Field(ge=-6, le=22)]] | None = Field(
        None, description="PDG ids compared (default all with spread; 0 = gluon)"
    )
    x_range: tuple[float, float] = Field((1e-5, 0.9), description="x knots compared")
    n_x: GridNodes = Field(50, ge=2, description="at most this many x knots, evenly in index")
    q_index: GridNodes = Field(0, ge=0, description="Q knot of subgrid 0 the comparison is made at")
    correlation_x: int = Field(
        5,
        ge=0,
        le=50,
        description="x knots per flavour whose correlations (between flavours and x values) are compared",
    )
    ks_levels: GridNodes = Field(50, ge=2, description="quantiles the search's KS distance is taken at")
    random_trials: Repeats = Field(
        100, ge=1, description="random subsets measured for the normaliser and the estimator table"
    )


def _comparison(pdf: xr.Dataset, params: CompressParams) -> tuple[xr.DataArray, list[int]]:
    """xf (member, flavour, x) at the compared knots, lazily."""
    name, xdim, qdim = subgrid_names(0)
    if params.q_index >= pdf.sizes[qdim]:
        raise OpError(f"q_index {params.q_index} is past subgrid 0's {pdf.sizes[qdim]} Q knots")
    xs = pdf[xdim].values
    low, high = params.x_range
    inside = np.flatnonzero((xs >= low) & (xs <= high))
    if inside.size < 2:
        raise OpError(
            f"x_range {params.x_range} holds {inside.size} of the set's x knots "
            f"[{xs[0]:.4g}, {xs[-1]:.4g}]; expected at least 2"
        )
    knots = inside[
        np.unique(np.linspace(0, inside.size - 1, min(params.n_x, inside.size)).round().astype(int))
    ]
    have = pdf[FLAVOUR].values.tolist()
    wanted = have if params.flavours is None else [GLUON if f == 0 else f for f in params.flavours]
    missing = [f for f in wanted if f not in have]
    if missing:
        raise OpError(f"flavours {missing} are not in the set; it has {have}")
    values = pdf[name].isel({qdim: params.q_index, xdim: knots}).sel({FLAVOUR: wanted})
    return values.transpose(MEMBER, FLAVOUR, xdim), wanted


def _replica_positions(members: np.ndarray, info: dict) -> np.ndarray:
    """Positions along `member` holding replicas: all but member 0 of a Monte Carlo set."""
    has_central = 0 in members.tolist() and str(info.get("ErrorType", "")).lower() == "replicas"
    return np.flatnonzero(members != 0) if has_central else np.arange(members.size)


def _compress(values, kept, positions, members, params: CompressParams, n_flavours: int, n_x: int):
    from ..kernels.compress import compress, estimator_table

    if kept is not None:  # a fit's post-fit selection: dropped replicas are not part of the set
        positions = positions[np.asarray(kept, bool)[positions]]
    values = np.asarray(values, float)[positions]  # (N, flavour, x)
    n = values.shape[0]
    if params.replicas >= n:
        raise ValueError(
            f"replicas: M = {params.replicas} must be below the N = {n} replicas the set "
            "keeps (M >= N compresses nothing)"
        )
    flat = values.reshape(n, -1)
    spread = flat.std(0) > 1e-12 * max(1.0, float(np.abs(flat).max()))
    if not spread.any():
        raise ValueError("no compared point varies over the replicas: nothing to compress")
    corr = np.zeros(flat.shape[1], bool)
    if params.correlation_x:
        picks = np.unique(np.linspace(0, n_x - 1, min(params.correlation_x, n_x)).round().astype(int))
        corr[(np.arange(n_flavours)[:, None] * n_x + picks[None]).ravel()] = True
    index = np.flatnonzero(spread)
    result = compress(
        flat[:, index],
        params.replicas,
        generations=params.generations,
        mutants=params.mutants,
        seed=params.seed,
        corr_index=np.flatnonzero(corr[index]),
        ks_levels=params.ks_levels,
        random_trials=params.random_trials,
    )
    return {
        "positions": positions[result.chosen],
        "chosen": members[positions[result.chosen]],
        "history": result.history,
        **estimator_table(result),
    }


def _pick(block: np.ndarray, chosen: np.ndarray, start: int) -> np.ndarray:
    """The chosen members that lie in this member chunk (zeros for the others)."""
    out = np.zeros((chosen.size, *block.shape[1:]), block.dtype)
    local = np.asarray(chosen) - start
    here = (local >= 0) & (local < block.shape[0])
    out[here] = block[local[here]]
    return out


def _gather(values: da.Array, chosen, m: int) -> da.Array:
    """(m, ...) the chosen members of `values` (member first): one partial per member chunk, summed."""
    parts, start = [], 0
    for i, size in enumerate(values.chunks[0]):
        block = values.blocks[i]
        parts.append(
            da.map_blocks(
                _pick,
                block,
                chosen,
                start,
                dtype=values.dtype,
                chunks=((m,), *block.chunks[1:]),
                meta=np.empty((0,) * values.ndim),
            )
        )
        start += size
    return da.stack(parts).sum(0) if len(parts) > 1 else parts[0]


def _need(params: CompressParams, inputs: dict[str, xr.Dataset], output: xr.Dataset) -> int:
    """The compared slice whole (with its standardised copies and KS indicators), chunk-sized gathers."""
    pdf = inputs["pdf"]
    n = pdf.sizes[MEMBER]
    points = min(params.n_x, pdf.sizes["x_0"]) * pdf.sizes[FLAVOUR]
    search = n * points * (8 * 6 + 4 * params.ks_levels) + params.mutants * 3 * points * params.ks_levels * 8
    return search + needs.chunk_task(3.0, inputs, output)


@register_op("pdf.compress", params=CompressParams, inputs=("pdf",), memory=_need)
def compress_set(params: CompressParams, pdf: xr.Dataset) -> xr.Dataset:
    """Compress a Monte Carlo PDF set to M replicas with the statistics of the full set (NNPDF).

    Output: the compressed set in the lake's PDF-set layout (member 0 = average of the chosen,
    members 1..M = the chosen replicas, every subgrid), `chosen` (the source member ids),
    `erf_history` (normalised error of the best subset per generation) and the estimator table over
    `estimator` (attrs "estimators": mean std skewness kurtosis correlation ks): erf_compressed and the random
    subsets' erf_random_median / _low / _high (16% / 84%), distances to the full set.
    """
    try:
        count = subgrid_count(pdf)
    except IngestError as exc:
        raise OpError(f"input 'pdf' is not a PDF set: {exc}") from None
    info = dict(pdf.attrs.get(INFO_ATTR) or {})
    members = pdf[MEMBER].values
    positions = _replica_positions(members, info)
    if params.replicas >= positions.size:
        raise OpError(
            f"replicas: M = {params.replicas} must be below the set's N = {positions.size} "
            "replicas (M >= N compresses nothing)"
        )
    values, flavours = _comparison(pdf, params)
    kept = as_delayed(pdf[KEPT].data) if KEPT in pdf and pdf[KEPT].dims == (MEMBER,) else None
    result = dask.delayed(_compress, pure=True)(
        as_delayed(values.data), kept, positions, members, params, len(flavours), values.shape[2]
    )
    m = params.replicas
    chosen = da.from_delayed(result["chosen"], (m,), np.int64)
    estimators = da.from_delayed(result["erf_compressed"], (6,), float)
    subgrids, coords = {}, {}
    for k in range(count):
        name, xdim, qdim = subgrid_names(k)
        full = pdf[name].transpose(MEMBER, FLAVOUR, xdim, qdim)
        picked = _gather(full.data, result["positions"], m)
        central = picked.mean(0, keepdims=True)
        subgrids[name] = (
            (MEMBER, FLAVOUR, xdim, qdim),
            da.concatenate([central, picked]).rechunk({0: -1}),
            full.attrs,
        )
        coords |= {xdim: pdf[xdim], qdim: pdf[qdim]}
    from ..kernels.compress import ESTIMATORS

    table = {
        name: (ESTIMATOR, da.from_delayed(result[name], (len(ESTIMATORS),), float))
        for name in ("erf_random_median", "erf_random_low", "erf_random_high")
    }
    out = xr.Dataset(
        {
            **subgrids,
            "erf_compressed": (ESTIMATOR, estimators),
            **table,
            "chosen": ("replica", chosen),
            "erf_history": (
                "generation",
                da.from_delayed(result["history"], (params.generations + 1,), float),
            ),
        },
        coords={
            **coords,
            MEMBER: np.arange(m + 1),
            FLAVOUR: pdf[FLAVOUR].values,
            ESTIMATOR: np.arange(len(ESTIMATORS)),
            "replica": np.arange(1, m + 1),
            "generation": np.arange(params.generations + 1),
        },
    )
    source = info.get("SetDesc", "a PDF set")
    out.attrs = {
        INFO_ATTR: {
            **info,
            "NumMembers": m + 1,
            "ErrorType": "replicas",
            "SetDesc": f"{source} compressed to {m} replicas (pdf.compress)",
        },
        HEADERS_ATTR: {},
        DIGITS_ATTR: int(pdf.attrs.get(DIGITS_ATTR, DEFAULT_DIGITS)),
    }
    for name in ("erf_compressed", *table):  # names as an attribute: zarr v3 has no string dtype
        out[name].attrs["estimators"] = " ".join(ESTIMATORS)
    mark(out["erf_compressed"], "median")
    return out
