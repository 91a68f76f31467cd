"""Helpers for tests: small datasets in a lake, a guard that proves nothing is computed, and a
check that a graph computes no task twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import contextmanager

import dask
import numpy as np
import xarray as xr
from dask._task_spec import Task
from dask.callbacks import Callback

from .catalog import publish_entry
from .storage import PROVENANCE_KEY, Lake, content_token
from .zarr_io import write_template


class ComputedError(AssertionError):
    """Raised when dask executes a task inside `raise_if_computes()`."""


class _Guard(Callback):
    def _pretask(self, key, dsk, state):
        raise ComputedError(f"dask computed task {key!r} where nothing should be computed")


@contextmanager
def raise_if_computes():
    """Fail loudly if any dask task runs on the local schedulers inside the block."""
    with _Guard():
        yield


def repeated_tasks(graph: Mapping) -> dict:
    """Tasks the graph would run more than once: {key: times}; empty when each runs once.

    Why: handing a dask array straight to dask.delayed (or anything else that finalises it)
    optimises its graph on the spot, inlining upstream tasks into the copy. A task shared with
    another output (a training, a sample generation) then runs once per copy, in parallel, each
    copy writing the same checkpoint. An inlined copy keeps its key, so counting every task,
    top-level and nested inside another task's arguments, finds it.
    """
    seen: Counter = Counter()

    def visit(node) -> None:
        if isinstance(node, Task):
            if node.key is not None and not str(node.key).startswith("__dask_blockwise__"):
                seen[node.key] += 1  # (anonymous inline calls and blockwise templates have none)
            visit_all(node.args)
            visit_all(node.kwargs.values())
        elif isinstance(node, list | tuple | set | frozenset):
            visit_all(node)
        elif isinstance(node, dict):
            visit_all(node.values())

    def visit_all(nodes: Iterable) -> None:
        for node in nodes:
            visit(node)

    visit_all(dict(graph).values())
    return {key: n for key, n in seen.items() if n > 1}


def ramp_dataset(ny: int = 8, nx: int = 6, chunks: int = 4) -> xr.Dataset:
    """A small (y, x) dataset with known values: a[y, x] = 10 y + x."""
    values = (10 * np.arange(ny)[:, None] + np.arange(nx)[None, :]).astype(np.float32)
    return xr.Dataset({"a": (("y", "x"), values)},
                      coords={"y": np.arange(ny), "x": np.arange(nx) * 0.5}).chunk({"y": chunks,
                                                                                    "x": chunks})


def put_in_lake(lake: Lake, name: str, dataset: xr.Dataset, zone: str = "raw") -> str:
    """Publish `dataset` as zone/name (atomically, with a token), like an ingest would."""
    dataset = dataset.copy()
    token = content_token("test-data", name, dataset.to_dict(data="list") if dataset.nbytes < 2**20
                          else str(dataset.sizes))
    dataset.attrs[PROVENANCE_KEY] = {"token": token, "ingest": "testing"}
    tmp = lake.new_tmp_path(name)
    dask.compute(*write_template(dataset.chunk() if not dataset.chunks else dataset, lake.url(tmp),
                                 merge_small_chunks=False))  # stored as given, like an ingest
    return publish_entry(lake, tmp, zone, name, description="test data")
