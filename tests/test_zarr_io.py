"""engine.zarr_io's chunk rule: small maps are merged into bands of whole input chunks, the same
bands for every map of an output, so each band is written (and its blocks freed) once complete."""

from __future__ import annotations

import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from engine.zarr_io import MIN_CHUNK_BYTES, merged_chunks, prepare_for_write
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("shape", "chunks", "itemsize", "expected"),
    [
        ((1000, 1000), (32, 32), 4, (288, 1000)),  # 9 block rows: the fewest reaching 1 MiB
        ((1000, 1000), (32, 32), 1, (1000, 1000)),  # a boolean map: 1 MB, whole
        ((400, 400), (32, 32), 4, (400, 400)),  # under 1 MiB whole
        ((3162, 3162), (32, 32), 4, (96, 3162)),
        ((10,), (5,), 8, (10,)),
        ((4, 1000, 1000), (1, 32, 32), 4, (1, 288, 1000)),  # leading dims keep their chunks
    ],
)
def test_merged_chunks_are_bands_of_whole_input_chunks(shape, chunks, itemsize, expected):
    merged = merged_chunks(shape, chunks, itemsize)
    assert merged == expected
    for size, chunk, extent in zip(merged, chunks, shape, strict=True):
        assert size == extent or size % chunk == 0  # whole input chunks: no block is split
    whole = np.prod(shape) * itemsize
    assert np.prod(merged) * itemsize >= min(MIN_CHUNK_BYTES, whole)


def maps(side: int = 1000, chunk: int = 32) -> xr.Dataset:
    t = da.random.default_rng(0).random((side, side), chunks=chunk).astype(np.float32)
    cube = da.zeros((side // 10, side // 10, 256), chunks=(32, 32, 256), dtype=np.float32)
    return xr.Dataset(
        {"t": (("y", "x"), t), "found": (("y", "x"), da.isfinite(t)), "cube": (("a", "b", "e"), cube)}
    )


def test_small_maps_of_one_output_share_their_bands_and_big_chunks_are_kept():
    prepared = prepare_for_write(maps())
    assert prepared["t"].data.chunksize == (288, 1000)
    assert prepared["found"].data.chunksize == (288, 1000)  # cut where the float map is
    assert prepared["cube"].data.chunksize == (32, 32, 256)  # 1 MiB chunks: not merged
    kept = prepare_for_write(maps(), merge_small_chunks=False)
    assert kept["t"].data.chunksize == (32, 32)


def test_each_band_depends_on_its_own_blocks_only():
    """A band's chunk needs the 9 x 32 blocks of its rows, not the whole map: computed in order,
    a band can be stored and its blocks freed long before the map is done."""
    source = maps()["t"].data
    band = prepare_for_write(maps())["t"].data
    graph = dict(band.__dask_graph__())
    inputs = {key for key in graph if isinstance(key, tuple) and key[0] == source.name}
    assert len(inputs) == 32 * 32

    def leaves(key, seen=None):
        seen = set() if seen is None else seen
        found = set()
        for dependency in _dependencies(graph, key):
            if dependency in seen:
                continue
            seen.add(dependency)
            found |= {dependency} if dependency in inputs else leaves(dependency, seen)
        return found

    for row in range(band.numblocks[0]):
        rows = {key[1] for key in leaves((band.name, row, 0))}
        assert rows == set(range(9 * row, min(9 * row + 9, 32)))


def _dependencies(graph, key):
    from dask.core import get_dependencies

    return get_dependencies(graph, key)


def test_merging_does_not_import_distributed():
    """dask's rechunk asks whether distributed's p2p method applies unless told the method, which
    imported distributed (+13 MiB resident, ~0.4 CPU-s) in every run that merged a map."""
    code = (
        "import sys; from tests.test_zarr_io import maps; from engine.zarr_io import prepare_for_write;"
        "prepare_for_write(maps()); print('distributed' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out
