"""Core ops: selection, reduction and rechunking of any dataset.

They are thin, lazy wrappers over xarray; their value is in checking names against the data
before anything runs, so a typo in a dim is a recipe error, not a KeyError deep inside dask.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ..bounds import ChunkLength
from ..bounds import Params as _Params
from ..errors import OpError, did_you_mean
from ..registry import register_op


def require_dims(data: xr.Dataset, dims, what: str = "dim") -> None:
    """Raise OpError naming any of `dims` the dataset lacks (with a suggestion)."""
    for dim in dims:
        if dim not in data.dims:
            raise OpError(f"{what} {dim!r} is not in the data{did_you_mean(dim, data.dims)}; "
                          f"dims are {', '.join(map(str, data.dims))}")


def require_variables(data: xr.Dataset, names) -> None:
    for name in names:
        if name not in data.data_vars:
            raise OpError(f"variable {name!r} is not in the data{did_you_mean(name, data.data_vars)}; "
                          f"variables are {', '.join(map(str, data.data_vars))}")


def as_delayed(array):
    """A whole dask array as one delayed numpy array, its graph left exactly as it is.

    Handing a dask array straight to dask.delayed(...) optimises (fuses and renames) its graph
    on the spot: a task it shares with other outputs, such as a training or a K-means fit, then
    runs once per copy. `to_delayed(optimize_graph=False)` keeps every key, so shared work runs
    once. Anything that is not a dask array is returned unchanged.
    """
    if not isinstance(array, da.Array):
        return array
    blocks = array.to_delayed(optimize_graph=False)
    if blocks.size == 1:
        return blocks.reshape(-1)[0]
    # blocks go in as separate arguments: inside a list they make dask re-optimise the graph
    return dask.delayed(_assemble, pure=True)(*blocks.reshape(-1), grid=blocks.shape)


def _assemble(*blocks: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """Concatenate a grid of numpy blocks (given in C order) into one array."""
    nested = np.empty(grid, dtype=object)
    for index, block in zip(np.ndindex(grid), blocks, strict=True):
        nested[index] = block
    return np.block(nested.tolist())


def second_pass(data, first_pass):
    """The same lazy array or dataset with new task keys, for a second pass over its chunks.

    A two-pass algorithm (a global statistic, then a per-chunk step that needs it) makes dask
    hold every chunk of the shared input in memory until the first pass has finished: 8 GiB at
    10^6 spectra. Cloning the input's graph makes the second pass read (and align) each chunk
    again instead, so memory stays bounded by the chunk size at the cost of one more read.

    The new keys derive from `first_pass`, the first pass's result that the second one uses
    (a delayed statistic, a sample's choice of pixels): the graph, and so a plan, is the same
    on every build, and two second passes over the same data share tasks only when they use
    the same first-pass result, that is, when they are the same computation.
    """
    from dask.base import tokenize
    from dask.graph_manipulation import clone

    seed = tokenize(first_pass)
    if isinstance(data, da.Array):
        return _clone_array(data, seed)
    return clone(data, seed=seed)


def _clone_array(array: da.Array, seed: str) -> da.Array:
    """dask.graph_manipulation.clone for a dask array, renaming every key of its graph.

    dask's clone renames the keys of a materialised layer (a rechunk's, an overlap's) but not
    the references to them inside its tasks, which are now `dask._task_spec.Task` objects that
    the generic `Layer.clone` does not look into: a rechunked input's clone then fails at compute
    with "Missing dependency ('rechunk-split-...')" or "Cannot fuse tasks with multiple outputs".
    Here every task is renamed and its references substituted, in one materialised layer.
    """
    from dask._task_spec import convert_legacy_graph
    from dask.base import clone_key
    from dask.highlevelgraph import HighLevelGraph

    graph = convert_legacy_graph(dict(array.__dask_graph__()))
    rename = {key: clone_key(key, seed) for key in graph}
    cloned = {rename[key]: task.substitute(rename, key=rename[key]) for key, task in graph.items()}
    name = clone_key(array.name, seed)
    return da.Array(HighLevelGraph.from_collections(name, cloned, dependencies=()), name,
                    array.chunks, meta=array._meta)


class SelectParams(_Params):
    labels: dict[str, Any] = Field(default_factory=dict,
                                   description="dim -> coordinate label (or list of labels) to keep")
    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="dim -> [low, high] inclusive coordinate range to keep")
    variables: list[str] | None = Field(None, description="data variables to keep (default all)")
    nearest: bool = Field(False, description="pick the nearest label instead of an exact match")


@register_op("core.select", params=SelectParams,
             memory=1.5)  # slicing: the input chunk and the selected copy
def select(params: SelectParams, data: xr.Dataset) -> xr.Dataset:
    """Keep part of a dataset: labels, coordinate ranges and variables."""
    require_dims(data, list(params.labels) + list(params.ranges))
    if params.variables is not None:
        require_variables(data, params.variables)
        data = data[params.variables]
    for dim, (low, high) in params.ranges.items():
        if dim not in data.coords:  # a range is in coordinate units: an index-only dim has none
            raise OpError(f"dim {dim!r} has no coordinate, so a range of values cannot select on it; "
                          f"select positions with labels instead")
        coord = data[dim]
        if len(coord) and coord[0] > coord[-1]:  # descending coordinate: slice high -> low
            low, high = high, low
        data = data.sel({dim: slice(low, high)})
        if data.sizes[dim] == 0:
            raise OpError(f"range {[low, high]} of {dim!r} selects nothing; the data covers "
                          f"{float(coord.min())} to {float(coord.max())}")
    if params.labels:
        try:
            data = data.sel(params.labels, method="nearest" if params.nearest else None)
        except KeyError as exc:
            raise OpError(f"label not found: {exc}; set nearest: true to pick the closest") from None
    return data


class ReduceParams(_Params):
    dims: list[str] = Field(description="dims to reduce over")
    skipna: bool = Field(True, description="ignore NaN values")


@register_op("core.sum", params=ReduceParams,
             memory=2.0)  # a partial sum per chunk beside its input
def sum_over(params: ReduceParams, data: xr.Dataset) -> xr.Dataset:
    """Sum over dims."""
    require_dims(data, params.dims)
    return data.sum(params.dims, skipna=params.skipna, keep_attrs=True)


@register_op("core.mean", params=ReduceParams,
             memory=2.0)  # a partial sum per chunk beside its input
def mean_over(params: ReduceParams, data: xr.Dataset) -> xr.Dataset:
    """Mean over dims."""
    require_dims(data, params.dims)
    return data.mean(params.dims, skipna=params.skipna, keep_attrs=True)


class RechunkParams(_Params):
    chunks: dict[str, ChunkLength] = Field(description="dim -> chunk size (-1: one chunk along that dim)")


@register_op("core.rechunk", params=RechunkParams,
             memory=2.0)  # the pieces of input chunks and the new chunk
def rechunk(params: RechunkParams, data: xr.Dataset) -> xr.Dataset:
    """Change dask chunking (e.g. before an op that needs a whole axis in one chunk)."""
    require_dims(data, params.chunks)
    for dim, size in params.chunks.items():
        if size == 0 or size < -1:
            raise OpError(f"chunk size of {dim!r} must be positive or -1, found {size}")
    return data.chunk(params.chunks)
