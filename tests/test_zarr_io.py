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


REFERENCE_PIPELINE = "zarr.core.codec_pipeline.BatchedCodecPipeline"
SELECTIONS = (np.s_[:], np.s_[8:16, 8:16], np.s_[3:30, 5:20, 2:9], np.s_[0], np.s_[::2], np.s_[[1, 5, 9]],
              np.s_[..., 3], np.s_[36, 28, 15])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, bool, ">f4"])
@pytest.mark.parametrize("compressors", ["byte shuffle", "lake codec", "none"])
def test_reads_decoded_into_the_output_equal_zarr_s_own(tmp_path, dtype, compressors):
    """DecodeIntoOutput (zarr's default once engine.zarr_io is imported) against zarr's own
    pipeline: whole, partial, strided, fancy and scalar selections, edge chunks, a chunk never
    written (fill value), another byte order and stores it does not shortcut."""
    import zarr
    from zarr.codecs import BloscCodec

    from engine import zarr_io

    codecs = {"byte shuffle": (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),),
              "lake codec": (zarr_io.CODEC,), "none": ()}[compressors]
    data = (np.random.default_rng(0).normal(size=(37, 29, 16)) * 50).astype(dtype)
    path = str(tmp_path / "a")
    array = zarr.create_array(path, shape=data.shape, chunks=(8, 8, 16), dtype=data.dtype,
                              compressors=codecs, fill_value=0)
    array[:32] = data[:32]  # rows 32.. are never written: they read as the fill value
    expected = data.copy()
    expected[32:] = 0
    assert type(zarr.open_array(path).async_array.codec_pipeline) is zarr_io.DecodeIntoOutput
    for selection in SELECTIONS:
        got = zarr.open_array(path)[selection]
        with zarr.config.set({"codec_pipeline.path": REFERENCE_PIPELINE}):
            reference = zarr.open_array(path)[selection]
        np.testing.assert_array_equal(got, reference)
        np.testing.assert_array_equal(got, expected[selection])


def test_a_chunk_declaring_another_size_is_refused_not_half_filled(tmp_path):
    """A Blosc frame holding fewer bytes than its chunk would decode into only the start of the
    output: the shortcut names the chunk instead."""
    import zarr

    from engine import zarr_io

    path = tmp_path / "a"
    array = zarr.create_array(str(path), shape=(16, 16), chunks=(8, 8), dtype="f8",
                              compressors=(zarr_io.CODEC,), fill_value=0)
    array[:] = np.arange(256.0).reshape(16, 16)
    small = zarr.create_array(str(tmp_path / "b"), shape=(4, 8), chunks=(4, 8), dtype="f8",
                              compressors=(zarr_io.CODEC,), fill_value=0)
    small[:] = 1.0
    (path / "c" / "0" / "0").write_bytes((tmp_path / "b" / "c" / "0" / "0").read_bytes())
    with pytest.raises(ValueError, match="decodes to 256 bytes, not the 512"):
        zarr.open_array(str(path))[:8, :8]


def test_uncompressed_chunks_read_straight_into_the_output_from_files_and_other_stores(tmp_path):
    """A whole plain chunk is read from its file into its place in the output (LocalStore) or
    copied once from another store's bytes (MemoryStore): both equal zarr's own pipeline; a chunk
    file of another size is named, not read in part."""
    import zarr
    from zarr.storage import MemoryStore

    data = np.arange(48 * 5, dtype=np.float64).reshape(48, 5)
    for store in (str(tmp_path / "a"), MemoryStore()):
        array = zarr.create_array(store, shape=data.shape, chunks=(16, 5), dtype=data.dtype,
                                  compressors=None, fill_value=-1.0)
        array[:32] = data[:32]  # the last chunk is never written: the fill value
        got = zarr.open_array(store)[:]
        with zarr.config.set({"codec_pipeline.path": REFERENCE_PIPELINE}):
            np.testing.assert_array_equal(got, zarr.open_array(store)[:])
        np.testing.assert_array_equal(got[:32], data[:32])
        assert np.all(got[32:] == -1.0)
    chunk = tmp_path / "a" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"holds 632 bytes, not the 640 of a \(16, 5\) float64 chunk"):
        zarr.open_array(str(tmp_path / "a"))[:]
