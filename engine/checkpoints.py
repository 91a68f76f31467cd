"""Training checkpoints in the lake: plain arrays in a zarr group, replaced atomically.

A checkpoint lives at `.tmp/checkpoints/<step token>`: the same recipe, params and inputs find
the same checkpoint after a crash, and a changed param (a new token) never resumes from a stale
one. Arrays only (no pickles), so loading a checkpoint runs no code.
"""

from __future__ import annotations

import numpy as np
import zarr

from .storage import Lake


def save_checkpoint(lake: Lake, path: str, state: dict[str, np.ndarray]) -> None:
    """Write `state` as a zarr group at lake path `path`, replacing any older one whole."""
    full = lake.writable(lake.path(path))
    staging = lake.new_tmp_path("checkpoint")
    group = zarr.open_group(lake.url(staging), mode="w", zarr_format=3,
                            storage_options=None if lake.is_local else lake.storage_options)
    for name, value in state.items():
        value = np.asarray(value)
        chunks = tuple(max(1, n) for n in value.shape)  # one chunk; zarr wants no zero sizes
        group.create_array(name, shape=value.shape, dtype=value.dtype, chunks=chunks)[...] = value
    retired = None
    if lake.fs.exists(full):
        retired = lake.new_tmp_path("retired-checkpoint")
        lake.move_tree(full, retired)
    lake.fs.makedirs(full.rsplit("/", 1)[0], exist_ok=True)
    lake.move_tree(staging, full)
    if retired:
        lake.fs.rm(retired, recursive=True)


def load_checkpoint(lake: Lake, path: str) -> dict[str, np.ndarray] | None:
    """The state saved at `path`, or None when there is none."""
    full = lake.path(path)
    if not lake.fs.exists(full + "/zarr.json"):
        return None
    group = zarr.open_group(lake.url(full), mode="r",
                            storage_options=None if lake.is_local else lake.storage_options)
    return {name: np.asarray(array[...]) for name, array in group.arrays()}


def clear_checkpoint(lake: Lake, path: str) -> None:
    full = lake.path(path)
    if lake.fs.exists(full):
        lake.fs.rm(full, recursive=True)
