"""How the lake writes zarr: one codec choice and one chunk rule for every writer.

The codec is Blosc(zstd, level 3, bitshuffle): measured 6x smaller than raw EELS counts and ~2x
faster to read than zarr's default zstd. Dask chunks are made uniform before writing because a
dask chunk that straddles two zarr chunks would make parallel writes race.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec

CODEC = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def encoding_for(dataset: xr.Dataset) -> dict[str, dict]:
    """Per-variable zarr encoding: our codec and the (uniform) dask chunks."""
    encoding = {}
    for name, var in dataset.variables.items():
        entry: dict = {}
        if np.issubdtype(var.dtype, np.number) or var.dtype == bool:
            entry["compressors"] = (CODEC,)
        if var.chunks:
            entry["chunks"] = tuple(max(c) for c in var.chunks)
        encoding[str(name)] = entry
    return encoding


def prepare_for_write(dataset: xr.Dataset) -> xr.Dataset:
    """Copy without inherited encodings, with uniform chunks (each dim's largest chunk)."""
    dataset = dataset.copy()
    for var in dataset.variables.values():
        var.encoding = {}
    if dataset.chunks:
        uniform = {dim: max(sizes) for dim, sizes in dataset.chunks.items()}
        if any(len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0] for sizes in dataset.chunks.values()):
            dataset = dataset.chunk(uniform)
    return dataset


def write_template(dataset: xr.Dataset, url: str, storage_options: dict | None = None):
    """Lay out the store and return the dask graph that fills it (nothing computed yet)."""
    dataset = prepare_for_write(dataset)
    return dataset.to_zarr(url, mode="w", compute=False, consolidated=False, zarr_format=3,
                           encoding=encoding_for(dataset), storage_options=storage_options or None)
