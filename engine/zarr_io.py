"""How the lake writes zarr (one codec choice and one chunk rule for every writer) and reads it.

The codec is Blosc(lz4, level 5, bitshuffle), chosen by measurement on the lake's own data:
synthetic EELS counts (float32 with read noise, 32 x 32 x 2048 chunks) store 1.26x smaller than
raw and decode at 0.9-1.1 GB per CPU-second, against 1.28x and 0.5-0.7 GB/CPU-s for the earlier
Blosc(zstd, 3, bitshuffle) and 1.2-1.9 GB/CPU-s uncompressed; real CMS dimuon kinematics (float64)
1.24x vs 1.25x at about the same decode cost. Noisy floats barely compress whatever the codec,
so decode speed decides. Sharding (4 x 4 chunks per shard) read no faster from local disk. Dask
chunks are made uniform before writing because a dask chunk that straddles two zarr chunks would
make parallel writes race.

Reads go through DecodeIntoOutput, zarr's codec pipeline with one shortcut (registered and made
zarr's default when this module is imported; the runner and the ops import it): a whole Blosc
chunk is decoded straight into the array the caller reads into, where zarr decodes into a fresh
buffer and copies it over; a whole uncompressed chunk in a local file is read straight into it
(the LHC event columns: a 10^6-event float64 chunk 1.5-1.7 against 0.53 CPU-ms, zarr's read of
the file into fresh bytes and the copy skipped). Reading a 1.6 x 10^5 x 2048 synthetic EELS image
through xarray (threaded dask, 2 cores, interleaved, best of 4, load 5-7): 1.10 against 1.30
CPU-s stored with bitshuffle, 0.80 against 0.97 with the byte shuffle the ingest now uses for
spectra (engine/ingest/synthetic_eels.py). The image's edge chunks, read in part, go zarr's way.

Entries the lake opens from local stores skip that machinery too: open_dataset (what
Lake.open_store and catalog.open_entry call) opens the store with xr.open_zarr (coordinates,
attributes and encodings stay xarray's) and gives each data variable that DirectChunks reads
exactly (zarr v3, regular chunk grid, default chunk keys, plain bytes in this machine's order
under one Blosc codec or none, values xarray does not decode) a dask array of the same chunks and
graph shape whose task per chunk opens the chunk file and `readinto`s a fresh array or Blosc-
decodes into it: no xarray indexing wrappers, no zarr Array.__getitem__, no hop onto zarr's event
loop. An edge chunk is read whole into a buffer and its in-bounds part copied; a missing chunk
file is the fill value; a file of another size is an error naming it; selections that are not
whole chunks are zarr's. Dask names carry the array's folder and its zarr.json's inode, mtime and
size, so a store rewritten in place never reuses a graph built before. Measured in one process,
the entry opened either way, interleaved, best of 7, load 2.5-4.6 on 2 cores (the lhc_dimuon
recipe on 10^7 CMS events, 10 columns in 10^6-event chunks, synchronous; the one-pass thickness
of a 1.6 x 10^5 x 2048 bitshuffled EELS image, threads): lhc_dimuon 0.639 -> 0.550 CPU-s with
M_TRIM_THRESHOLD 512 MiB (uproot + numpy + hist on LZ4 1.93x -> 2.24x), 0.628 -> 0.542 with the
engine's malloc settings; the EELS read (a sum over energy) 1.14-1.20 -> 0.93-0.98 CPU-s, the
one pass 1.34-1.39 -> 1.23-1.24.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from zarr.codecs import BloscCodec, BytesCodec
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
from zarr.core.codec_pipeline import BatchedCodecPipeline, codecs_from_list
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.registry import register_pipeline
from zarr.storage import LocalStore

CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
MIN_CHUNK_BYTES = 2**20


def encoding_for(dataset: xr.Dataset, codecs: dict[str, BloscCodec] | None = None) -> dict[str, dict]:
    """Per-variable zarr encoding: our codec (or the one `codecs` names for a variable) and the
    (uniform) dask chunks."""
    encoding = {}
    for name, var in dataset.variables.items():
        entry: dict = {}
        if np.issubdtype(var.dtype, np.number) or var.dtype == bool:
            entry["compressors"] = ((codecs or {}).get(str(name), CODEC),)
        if var.chunks:
            entry["chunks"] = tuple(max(c) for c in var.chunks)
        encoding[str(name)] = entry
    return encoding


def prepare_for_write(dataset: xr.Dataset, merge_small_chunks: bool = True) -> xr.Dataset:
    """Copy without inherited encodings, each variable with uniform chunks of a sensible size.

    Chunks smaller than MIN_CHUNK_BYTES are merged into bands (merged_chunks): a thickness map
    inherits the image's 32 x 32-pixel chunking, and writing 10^6 pixels as a thousand 4 KiB
    chunks cost more than computing them (zarr's per-chunk overhead, and more so on S3).
    Irregular chunks are made uniform (each dim's largest chunk). Ingests, which fill a store
    block by block from several threads, keep their chunks (`merge_small_chunks=False`): a
    chunk shared by two blocks would be written by two threads at once.
    """
    dataset = dataset.copy()
    merged = _merged_by_variable(dataset) if merge_small_chunks else {}
    for name, var in dataset.variables.items():
        var.encoding = {}
        if not var.chunks or name in dataset.indexes:
            continue
        data = var.data
        largest = merged.get(name, tuple(max(c) for c in data.chunks))
        # method="tasks": dask's default asks whether distributed's p2p rechunk applies, which
        # imports distributed (+13 MiB resident, ~0.4 CPU-s) in every run that merges a map
        if largest != tuple(max(c) for c in data.chunks) or any(
            len(set(c[:-1])) > 1 or c[-1] > c[0] for c in data.chunks
        ):
            data = data.rechunk(largest, method="tasks")
        dataset[name] = var.copy(data=data)
    return dataset


def _merged_by_variable(dataset: xr.Dataset) -> dict:
    """merged_chunks of each variable whose chunks are under MIN_CHUNK_BYTES, the same bands for
    all such variables with the same dims and chunks (the narrowest of them: a boolean map is
    cut where the float maps beside it are), so that one band of blocks completes a chunk of
    every output at once."""
    merged, groups = {}, {}
    for name, var in dataset.variables.items():
        if not var.chunks or name in dataset.indexes:
            continue
        largest = tuple(max(c) for c in var.chunks)
        if math.prod(largest) * var.dtype.itemsize < MIN_CHUNK_BYTES:
            merged[name] = merged_chunks(var.shape, largest, var.dtype.itemsize)
            groups.setdefault((var.dims, var.shape, largest), []).append(name)
    for names in groups.values():
        narrowest = tuple(map(min, zip(*(merged[name] for name in names), strict=True)))
        merged.update(dict.fromkeys(names, narrowest))
    return merged


def merged_chunks(shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks of at least MIN_CHUNK_BYTES made of whole input chunks: bands in C order.

    The trailing dims are taken whole while that stays under MIN_CHUNK_BYTES, then the next
    dim in the fewest whole input chunks that reach it (a 1000 x 1000 float32 map in 32 x 32
    blocks: 4 bands of 288 x 1000, 1.1 MiB each). A band is written, and its blocks freed, as
    soon as its own blocks are done, not when the whole map is (merging into one chunk of up to
    8 MiB held every block of a 10^6-pixel map until the last was computed); how many bands are
    open at once is up to dask's ordering of the blocks.
    """
    merged = list(chunks)
    for axis in reversed(range(len(shape))):
        whole = merged[:axis] + [shape[axis]] + merged[axis + 1 :]
        if math.prod(whole) * itemsize <= MIN_CHUNK_BYTES:
            merged = whole
            continue
        per_chunk = math.prod(merged) * itemsize  # bytes of one input chunk's extent along axis
        merged[axis] = min(chunks[axis] * math.ceil(MIN_CHUNK_BYTES / per_chunk), shape[axis])
        break
    return tuple(merged)


def write_template(
    dataset: xr.Dataset, url: str, storage_options: dict | None = None, merge_small_chunks: bool = True,
    codecs: dict[str, BloscCodec] | None = None,
) -> list:
    """Lay out the store; return the dask collections that fill it (nothing computed yet).

    Compute them all in one `dask.compute(*writes)` (they yield nothing, so memory stays flat).

    xarray writes the metadata and in-memory variables; the dask variables are stored by our
    own `da.store(..., optimize_graph=False)`. xarray's store optimises each output's graph on
    its own when the template is made, which renames fused tasks: a step shared by two outputs
    (a training feeding both a model and a prediction) then ran once per output.
    """
    dataset, lazy = lay_out(dataset, url, storage_options, merge_small_chunks, codecs)
    if not lazy:
        return []
    group = zarr.open_group(url, mode="r+", storage_options=storage_options or None)
    stored = da.store(
        [dataset[name].data for name in lazy],
        [group[str(name)] for name in lazy],
        lock=False,
        compute=False,
        optimize_graph=False,
    )
    return list(stored) if isinstance(stored, tuple | list) else [stored]


def lay_out(
    dataset: xr.Dataset, url: str, storage_options: dict | None = None, merge_small_chunks: bool = True,
    codecs: dict[str, BloscCodec] | None = None,
) -> tuple[xr.Dataset, list[str]]:
    """Write a store's metadata and in-memory variables; return the prepared dataset and the
    names of its dask variables, whose chunks the caller stores (nothing is computed here).
    `codecs`: variables stored with another codec than the lake's (encoding_for)."""
    dataset = prepare_for_write(dataset, merge_small_chunks)
    dataset.to_zarr(
        url,
        mode="w",
        compute=False,
        consolidated=False,
        zarr_format=3,
        encoding=encoding_for(dataset, codecs),
        storage_options=storage_options or None,
    )
    return dataset, lazy_variables(dataset)


def lazy_variables(dataset: xr.Dataset) -> list[str]:
    """Names of the variables whose data is a dask array (the ones stored chunk by chunk)."""
    return [str(name) for name, var in dataset.variables.items() if isinstance(var.data, da.Array)]


def settle_background_writes(timeout: float = 60.0) -> None:
    """Wait until zarr has no write in flight: call before removing a store a failed write left.

    zarr runs the writes of one call (a store's metadata files, the chunks of a region) at once
    on its own event loop; when one fails (a full disk) the call raises straight away while the
    others go on, and those may make folders and files again in a store already discarded.
    """
    import asyncio

    from zarr.core.sync import sync

    async def others_done() -> None:
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=timeout)

    sync(others_done())


class DecodeIntoOutput(BatchedCodecPipeline):
    """zarr's default codec pipeline, except that a read of whole chunks stored as plain bytes,
    under one Blosc codec or none, puts each chunk straight into its place in the output (see
    the module docstring); every other read, and every write, is zarr's own."""

    async def read_batch(self, batch_info, out, drop_axes: tuple[int, ...] = ()) -> None:
        batch_info = list(batch_info)
        targets = self._targets(batch_info, out, drop_axes)
        if targets is None:
            return await super().read_batch(batch_info, out, drop_axes)
        into = self._decode_blosc if self.bytes_bytes_codecs else _read_plain
        pairs = zip(batch_info, targets, strict=True)
        await asyncio.gather(*(into(info[0], info[1], target) for info, target in pairs))

    async def _decode_blosc(self, byte_getter, spec, target: np.ndarray) -> None:
        stored = await byte_getter.get(prototype=spec.prototype)
        if stored is None:  # a chunk never written reads as the fill value (set in every v3 array)
            target[...] = spec.fill_value
            return
        compressed = stored.as_array_like()
        _check_decoded_size(compressed, target, byte_getter)
        blosc = self.bytes_bytes_codecs[0]._blosc_codec
        await asyncio.to_thread(blosc.decode, compressed, target)  # in a worker thread, as zarr

    def _targets(self, batch_info: list, out, drop_axes: tuple[int, ...]) -> list | None:
        """The C-contiguous numpy views of `out` (zarr's own, of the array's dtype) the chunks of
        batch_info decode into, or None where the shortcut does not apply: codecs other than one
        Blosc or none, another byte order, part of a chunk, a selection that is no view."""
        if drop_axes or not _whole_chunk_codecs(
            self.array_array_codecs, self.array_bytes_codec, self.bytes_bytes_codecs
        ):
            return None
        array = out.as_ndarray_like()
        if not isinstance(array, np.ndarray):
            return None
        targets = []
        for _, spec, chunk_selection, out_selection, *_ in batch_info:
            if not _selects_whole(chunk_selection, spec.shape):
                return None
            if not (isinstance(out_selection, tuple) and all(isinstance(p, slice) for p in out_selection)):
                return None  # only basic slicing makes a view of `out` to decode into
            target = array[out_selection]
            if not isinstance(target, np.ndarray) or target.shape != spec.shape:
                return None
            if not target.flags.c_contiguous:
                return None
            targets.append(target)
        return targets


async def _read_plain(byte_getter, spec, target: np.ndarray) -> None:
    """An uncompressed chunk into `target`: a local file read straight into it (in a worker
    thread, as zarr reads), any other store's bytes (a shard's inner chunk's too) copied once."""
    store = getattr(byte_getter, "store", None)  # none for a chunk inside a shard
    if isinstance(store, LocalStore):
        found = await asyncio.to_thread(_read_file_into, store.root / byte_getter.path, target)
    else:
        stored = await byte_getter.get(prototype=spec.prototype)
        found = stored is not None
        if found:
            raw = stored.as_numpy_array()
            _check_size(raw.nbytes, target, byte_getter)
            target.reshape(-1).view(np.uint8)[...] = raw
    if not found:  # a chunk never written reads as the fill value (set in every v3 array)
        target[...] = spec.fill_value


def _read_file_into(path, target: np.ndarray) -> bool:
    """Fill `target` (C-contiguous) with the file's bytes; False where there is no such file. A
    file of another size is refused, not read in part."""
    try:
        file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below; FileNotFoundError first)
    except FileNotFoundError:
        return False
    with file:
        size = os.fstat(file.fileno()).st_size
        _check_size(size, target, path)
        view, done = memoryview(target).cast("B"), 0
        while done < size:  # a raw read may return less than asked
            got = file.readinto(view[done:])
            if not got:
                raise ValueError(f"chunk {path} ended after {done} of its {size} bytes")
            done += got
    return True


def _check_size(size: int, target: np.ndarray, where) -> None:
    """A stored chunk of another size than its place in the output is named, never half read."""
    if size != target.nbytes:
        raise ValueError(f"chunk {where} holds {size} bytes, not the {target.nbytes} of a "
                         f"{target.shape} {target.dtype} chunk")


def _check_decoded_size(compressed, target: np.ndarray, where) -> None:
    """A Blosc frame (bytes or a uint8 array) must declare the chunk's size (bytes 4-7 of its
    header, little-endian): one holding less would decode into only the start of `target`."""
    size = int.from_bytes(bytes(compressed[4:8]), "little") if len(compressed) >= 16 else -1
    if size != target.nbytes:
        raise ValueError(f"chunk {where} decodes to {size} bytes, not the {target.nbytes} of a "
                         f"{target.shape} {target.dtype} chunk")


def _whole_chunk_codecs(array_array: tuple, array_bytes, bytes_bytes: tuple) -> bool:
    """Whether chunks so encoded are their plain bytes in this machine's order, under one Blosc
    codec or none: the encodings a whole chunk can be read or decoded straight into place from."""
    if array_array or not isinstance(array_bytes, BytesCodec):
        return False  # a transpose, sharding or another serializer
    if bytes_bytes and (len(bytes_bytes) != 1 or not isinstance(bytes_bytes[0], BloscCodec)):
        return False
    return array_bytes.endian is None or array_bytes.endian.value == sys.byteorder


def _selects_whole(selection, shape: tuple[int, ...]) -> bool:
    """Whether a chunk selection (a tuple of slices, or anything zarr passes) is the whole chunk."""
    return (
        isinstance(selection, tuple)
        and len(selection) == len(shape)
        and all(
            isinstance(part, slice) and part.indices(size) == (0, size, 1)
            for part, size in zip(selection, shape, strict=True)
        )
    )


DIRECT_PREFIX = "open_dataset-direct-"  # of the dask names of DirectChunks' reads
# encoding keys of a variable xarray reads as stored (no scale, offset, time or mask decoding)
PLAIN_ENCODING = {"chunks", "preferred_chunks", "compressors", "filters", "shards", "serializer",
                  "fill_value", "dtype", "coordinates"}


def open_dataset(url, **open_zarr_kwargs) -> xr.Dataset:
    """xr.open_zarr(url, ...), each data variable of a local zarr v3 store that DirectChunks can
    read exactly read by it (same dask chunks; coords, attrs and encodings are xarray's): a
    chunk's task then opens its file and reads or decodes it into the block, where xarray's
    indexing wrappers and zarr's per-call machinery cost ~1 CPU-ms a chunk (module docstring).
    Remote stores, zarr v2, other codecs and decoded (CF) variables read xarray's way."""
    dataset = xr.open_zarr(url, **open_zarr_kwargs)
    root = _local_root(url, open_zarr_kwargs)
    if root is None:
        return dataset
    direct = {}
    for name, var in dataset.data_vars.items():
        if not isinstance(var.data, da.Array) or not _read_as_stored(var):
            continue
        reader = DirectChunks.of(root / str(name), var)
        if reader is not None:
            direct[name] = var.variable.copy(deep=False, data=reader.dask(var.data.chunks))
    return dataset.assign(direct) if direct else dataset


def _read_as_stored(var: xr.DataArray) -> bool:
    """Whether xarray's decoding leaves the variable's stored values as they are: no CF step in its
    encoding but a NaN _FillValue of a float variable (xarray writes one for every float; masking
    NaN as NaN changes nothing)."""
    fill = var.encoding.get("_FillValue")
    if fill is not None and not (var.dtype.kind == "f" and np.isnan(fill)):
        return False
    return PLAIN_ENCODING.issuperset(set(var.encoding) - {"_FillValue"})


def _local_root(url, kwargs: dict) -> Path | None:
    """The folder of the (group of the) store, where it is a local one opened in xarray's default
    way; None for anything else (fsspec URLs, storage options, another chunk manager)."""
    if not isinstance(url, str | os.PathLike) or kwargs.get("storage_options"):
        return None
    if kwargs.get("chunked_array_type") not in (None, "dask") or kwargs.get("from_array_kwargs"):
        return None
    url = os.fspath(url)
    url = url.removeprefix("file://")
    if "://" in url or "::" in url:
        return None
    return Path(url, kwargs.get("group") or "")


class DirectChunks:
    """One local zarr v3 array (regular chunks, default chunk keys, plain bytes in this machine's
    order under one Blosc codec or none) as an array-like for da.from_array: a selection of whole
    chunks (an edge chunk's in-bounds part included) is read from the chunk files into a fresh
    array; any other selection is zarr's. Holds no open file or zarr array when pickled."""

    def __init__(self, folder: Path, metadata: ArrayV3Metadata, stamp: tuple) -> None:
        self.folder, self.stamp = folder, stamp
        self.shape = tuple(metadata.shape)
        self.dtype = metadata.dtype.to_native_dtype()
        self.ndim = len(self.shape)
        self.chunk_shape = tuple(metadata.chunk_grid.chunk_shape)
        self.separator = metadata.chunk_key_encoding.separator
        self.fill_value = metadata.fill_value
        blosc = codecs_from_list(metadata.codecs)[2]
        self.blosc = blosc[0]._blosc_codec if blosc else None
        self._zarr = None

    @classmethod
    def of(cls, folder: Path, var: xr.DataArray) -> DirectChunks | None:
        """The reader of the array in `folder`, or None where it cannot read it exactly or xarray
        decoded it into something else (another dtype or shape)."""
        try:
            stat = os.stat(folder / "zarr.json")
            metadata = ArrayV3Metadata.from_dict(json.loads((folder / "zarr.json").read_bytes()))
        except (OSError, ValueError, TypeError):
            return None  # no v3 array there (zarr v2): xarray's read stays
        if not (
            isinstance(metadata.chunk_grid, RegularChunkGrid)
            and isinstance(metadata.chunk_key_encoding, DefaultChunkKeyEncoding)
            and not metadata.storage_transformers
            and _whole_chunk_codecs(*codecs_from_list(metadata.codecs))
        ):
            return None
        reader = cls(folder, metadata, (stat.st_ino, stat.st_mtime_ns, stat.st_size))
        plain = reader.dtype.kind in "biufc" and reader.dtype == var.dtype and reader.shape == var.shape
        empty = 0 in reader.shape or 0 in reader.chunk_shape  # e.g. (points, 0) systematics: no files
        return reader if plain and not empty else None

    def dask(self, chunks: tuple) -> da.Array:
        """A dask array of this array in `chunks`, named by the store's folder, the array's
        zarr.json (inode, mtime, size: a store rewritten in place gets another name) and the
        chunks, so that the same read opened twice is one graph and a rewritten one is not."""
        token = tokenize(str(self.folder), self.stamp, chunks, self.dtype.str)
        name = f"{DIRECT_PREFIX}{self.folder.name}-{token}"  # xarray's prefix: read from a store
        meta = np.empty((0,) * self.ndim, self.dtype)
        return da.from_array(self, chunks=chunks, name=name, asarray=False, meta=meta)

    def __getitem__(self, key):
        box = self._whole_chunks(key)
        if box is None:
            return self._zarr_array()[key]
        out = np.empty(tuple(stop - start for start, stop in box), self.dtype)
        chunks = zip(box, self.chunk_shape, strict=True)
        for index in itertools.product(*(range(start // c, -(-stop // c)) for (start, stop), c in chunks)):
            within = tuple(
                slice(i * c - start, min((i + 1) * c, n) - start)
                for i, c, n, (start, _) in zip(index, self.chunk_shape, self.shape, box, strict=True)
            )
            self._read_chunk(index, out[(*within, ...)])  # a view, a 0-d array's too
        return out

    def _whole_chunks(self, key) -> list[tuple[int, int]] | None:
        """(start, stop) along each axis of the selection `key`, or None where it is not a
        non-empty box of whole chunks (a chunk at the array's end counts as whole)."""
        if not isinstance(key, tuple) or len(key) != self.ndim:
            return None
        box = []
        for part, c, n in zip(key, self.chunk_shape, self.shape, strict=True):
            if not isinstance(part, slice):
                return None
            start, stop, step = part.indices(n)
            if step != 1 or start % c or (stop % c and stop != n) or stop <= start:
                return None
            box.append((start, stop))
        return box

    def _read_chunk(self, index: tuple[int, ...], target: np.ndarray) -> None:
        """Chunk `index` into `target` (its in-bounds part): straight into it where it is the
        whole chunk and C-contiguous, else through a chunk-sized buffer; a chunk file never
        written is the fill value (zarr writes no chunk that is all fill value)."""
        whole = target.shape == self.chunk_shape and target.flags.c_contiguous
        into = target if whole else np.empty(self.chunk_shape, self.dtype)
        path = self.folder / "".join(["c", *(f"{self.separator}{i}" for i in index)])
        if not (_decode_file_into(path, into, self.blosc) if self.blosc else _read_file_into(path, into)):
            target[...] = self.fill_value
        elif not whole:
            target[...] = into[tuple(slice(0, n) for n in target.shape)]

    def _zarr_array(self) -> zarr.Array:
        """zarr's own view of the array, for selections that are not whole chunks."""
        if self._zarr is None:
            self._zarr = zarr.open_array(str(self.folder), mode="r")
        return self._zarr

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zarr": None}


def _decode_file_into(path: Path, target: np.ndarray, blosc) -> bool:
    """Decode the Blosc frame in a chunk file into `target`; False where there is no such file."""
    try:
        compressed = path.read_bytes()
    except FileNotFoundError:
        return False
    _check_decoded_size(compressed, target, path)
    blosc.decode(compressed, target)
    return True


register_pipeline(DecodeIntoOutput)
zarr.config.set({"codec_pipeline.path": f"{DecodeIntoOutput.__module__}.{DecodeIntoOutput.__qualname__}"})
