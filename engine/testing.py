"""Helpers for tests: small datasets in a lake, and a guard that proves nothing is computed."""

from __future__ import annotations

from contextlib import contextmanager

import dask
import numpy as np
import xarray as xr
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
