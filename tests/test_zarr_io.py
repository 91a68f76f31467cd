"""engine.zarr_io's chunk rule: small maps are merged into bands of whole input chunks, the same
bands for every map of an output, so each band is written (and its blocks freed) once complete."""

from __future__ import annotations

import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from zarr.codecs import BloscCodec

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


DIRECT_CODECS = {
    "none": (),
    "lz4 byte shuffle": (BloscCodec(cname="lz4", clevel=3, shuffle="shuffle"),),
    "lz4 bit shuffle": (BloscCodec(cname="lz4", clevel=3, shuffle="bitshuffle"),),
    "zstd": (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),),
}


def write_arrays(path, arrays: dict, compressors: tuple = (), fill_value=None, **create) -> None:
    """A zarr v3 group holding `arrays` (name -> (data, chunks, dims)) as xarray reads it."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    for name, (data, chunks, dims) in arrays.items():
        array = group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype,
                                   compressors=compressors, fill_value=fill_value,
                                   dimension_names=dims, **create)
        array[...] = data


def direct(dataset: xr.Dataset, name: str) -> bool:
    """Whether the variable reads through zarr_io.DirectChunks (not xarray's wrappers)."""
    from engine.zarr_io import DIRECT_PREFIX

    return dataset[name].data.name.startswith(DIRECT_PREFIX)


def zarr_reference(path, name: str) -> np.ndarray:
    """The array as zarr's own codec pipeline reads it."""
    import zarr

    with zarr.config.set({"codec_pipeline.path": REFERENCE_PIPELINE}):
        return zarr.open_array(str(path / name), mode="r")[...]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint16, bool])
@pytest.mark.parametrize("compressors", list(DIRECT_CODECS))
def test_direct_chunk_reads_equal_zarr_s_own(tmp_path, dtype, compressors):
    """zarr_io.open_dataset reads 1-D and 3-D variables straight from their chunk files, equal
    to zarr's own pipeline: edge chunks (in-bounds part), a chunk file never written (the fill
    value, NaN for floats), dask chunks of several whole zarr chunks, and chunks that cut zarr
    chunks (zarr reads those); a 0-d variable, which xarray loads at once, stays xarray's."""
    from engine import zarr_io

    rng = np.random.default_rng(1)
    fill = {"f": np.nan, "b": True}.get(np.dtype(dtype).kind, 7)

    def values(*shape: int) -> np.ndarray:
        drawn = rng.normal(size=shape) * 300
        return drawn > 0 if dtype is bool else drawn.astype(dtype)

    arrays = {
        "line": (values(1003), (100,), ["event"]),
        "cube": (values(13, 11, 40), (4, 4, 16), ["y", "x", "e"]),
        "scalar": (np.array(5, dtype), (), []),
    }
    write_arrays(tmp_path, arrays, DIRECT_CODECS[compressors], fill_value=fill)
    (tmp_path / "cube" / "c" / "1" / "2" / "0").unlink()  # never written: reads as the fill value
    (tmp_path / "line" / "c" / "10").unlink()  # the edge chunk
    expected = {name: data.copy() for name, (data, _, _) in arrays.items()}
    expected["cube"][4:8, 8:11, :16] = fill
    expected["line"][1000:] = fill
    for chunks in ({}, {"event": 300, "y": 8, "x": 8, "e": 32}, {"event": 77, "y": 5}):
        dataset = zarr_io.open_dataset(str(tmp_path), consolidated=False, chunks=chunks)
        reference = xr.open_zarr(tmp_path, consolidated=False, chunks=chunks)
        assert direct(dataset, "line") and direct(dataset, "cube")
        assert dataset["cube"].chunks == reference["cube"].chunks
        for name in arrays:
            got = dataset[name].values
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got, zarr_reference(tmp_path, name))
            np.testing.assert_array_equal(got, expected[name])


def test_arrays_it_cannot_read_exactly_go_xarray_s_way(tmp_path):
    """Big-endian bytes, sharding, gzip, CF-decoded variables (scale_factor, a _FillValue that
    xarray masks) and empty arrays (a (points, 0) table of systematics: zero-length chunks) are
    read by xarray and zarr as before, with the same values; so is every variable of a remote
    store."""
    import zarr
    from zarr.codecs import BytesCodec, GzipCodec

    from engine import zarr_io

    data = np.arange(6 * 64, dtype=np.float32).reshape(6, 64)
    write_arrays(tmp_path / "big", {"v": (data, (2, 16), ["y", "x"])}, serializer=BytesCodec(endian="big"))
    write_arrays(tmp_path / "shard", {"v": (data, (2, 16), ["y", "x"])}, shards=(2, 32))
    write_arrays(tmp_path / "gzip", {"v": (data, (2, 16), ["y", "x"])}, compressors=(GzipCodec(),))
    write_arrays(tmp_path / "cf", {"v": (data.astype(np.int16), (2, 16), ["y", "x"])})
    zarr.open_array(str(tmp_path / "cf" / "v"), mode="r+").attrs["scale_factor"] = 0.5
    masked = xr.Dataset({"v": (("y", "x"), data)}).chunk(y=2, x=16)  # 0 masked as NaN by xarray
    masked.to_zarr(tmp_path / "masked", zarr_format=3, consolidated=False,
                   encoding={"v": {"_FillValue": 0.0, "compressors": (zarr_io.CODEC,)}})
    write_arrays(tmp_path / "empty", {"v": (data[:, :0], (6, 0), ["y", "x"])})
    expected = {"cf": data * 0.5, "masked": np.where(data == 0, np.nan, data), "empty": data[:, :0]}
    for kind in ("big", "shard", "gzip", "cf", "masked", "empty"):
        dataset = zarr_io.open_dataset(str(tmp_path / kind), consolidated=False, chunks={})
        assert not direct(dataset, "v"), kind
        reference = xr.open_zarr(tmp_path / kind, consolidated=False, chunks={})
        xr.testing.assert_identical(dataset, reference)
        np.testing.assert_array_equal(dataset["v"].values, expected.get(kind, data))
    assert zarr_io._local_root("memory://lake/a", {}) is None
    assert zarr_io._local_root(str(tmp_path), {"storage_options": {"anon": True}}) is None
    assert zarr_io._local_root(f"file://{tmp_path}", {"group": "g"}) == tmp_path / "g"


def test_a_chunk_file_of_another_size_is_named_not_read_in_part(tmp_path):
    """An uncompressed chunk file shorter than its chunk, and a Blosc frame of a smaller chunk,
    are errors naming the file and both sizes."""
    from engine import zarr_io

    data = np.arange(64.0).reshape(8, 8)
    write_arrays(tmp_path / "plain", {"v": (data, (4, 8), ["y", "x"])})
    write_arrays(tmp_path / "blosc", {"v": (data, (4, 8), ["y", "x"]),
                                      "w": (data[:2], (2, 8), ["a", "x"])}, DIRECT_CODECS["zstd"])
    chunk = tmp_path / "plain" / "v" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-8])
    other = tmp_path / "blosc" / "v" / "c" / "1" / "0"
    other.write_bytes((tmp_path / "blosc" / "w" / "c" / "0" / "0").read_bytes())
    for kind, message in (("plain", "holds 248 bytes, not the 256"),
                          ("blosc", "decodes to 128 bytes, not the 256")):
        dataset = zarr_io.open_dataset(str(tmp_path / kind), consolidated=False, chunks={})
        assert direct(dataset, "v")
        with pytest.raises(ValueError, match=f"{tmp_path / kind / 'v' / 'c' / '1' / '0'} {message}"):
            dataset["v"].compute()


def test_a_store_rewritten_in_place_reads_its_new_values(tmp_path):
    """The direct read's dask name is the same for the same store opened twice and another once
    the store is rewritten, so no graph built before serves the old chunks; the reader pickles
    (a distributed worker gets it) without the zarr array it opened."""
    import pickle

    from engine import zarr_io

    def write(values: np.ndarray) -> xr.Dataset:
        """The lake's way: its codec, xarray's _FillValue (NaN) for a float."""
        dataset = xr.Dataset({"v": ("x", values)}).chunk(x=16)
        dataset.to_zarr(tmp_path, mode="w", zarr_format=3, consolidated=False,
                        encoding=zarr_io.encoding_for(dataset))
        return zarr_io.open_dataset(str(tmp_path), consolidated=False, chunks={})

    first = write(np.arange(40.0))
    assert first["v"].data.name == zarr_io.open_dataset(str(tmp_path), consolidated=False).v.data.name
    second = write(np.arange(40.0) * 2)
    assert direct(second, "v") and second["v"].data.name != first["v"].data.name
    np.testing.assert_array_equal(second["v"].values, np.arange(40.0) * 2)
    reader = zarr_io.DirectChunks.of(tmp_path / "v", second["v"])
    assert reader[np.s_[3:9]].tolist() == (np.arange(3.0, 9.0) * 2).tolist()  # zarr's read
    copied = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(copied[np.s_[16:40]], np.arange(16.0, 40.0) * 2)
