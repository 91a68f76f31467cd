"""Resumable staging of outputs: a run killed mid-write picks up where it stopped.

An output is staged at `.tmp/resume/<zone>__<name>-<token>/`: `store/` is the zarr store being
filled, `chunks/<variable>/<i.j...>` holds one small record per chunk written (the chunk file's
path and blake2b digest), written only after the chunk is on disk. A rerun with the same token
(same op, params and inputs) finds the staging area, keeps every chunk whose file still matches
its record and schedules only the others, so their upstream tasks are culled and not recomputed.
Nothing here is visible to readers: the store joins the lake by the runner's publish.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from .integrity import digest
from .storage import PROVENANCE_KEY, TMP_DIR, Lake
from .zarr_io import lay_out, lazy_variables, prepare_for_write

RESUME_DIR = "resume"
TEMPLATE_DONE = "template.done"


@dataclass
class StagedOutput:
    """An output's staging area and what a run scheduled into it."""

    lake: Lake
    root: str
    writes: list[Delayed] = field(default_factory=list)
    chunks_written: int = 0
    chunks_resumed: int = 0

    @property
    def store(self) -> str:
        return f"{self.root}/store"

    @property
    def records(self) -> str:
        return f"{self.root}/chunks"

    def digests(self) -> dict[str, str]:
        """Digest of every chunk file recorded so far, by path inside the store (for the manifest)."""
        found = {}
        for path in self.lake.fs.find(self.records):
            record = _read_record(self.lake, path)
            if record and record["file"]:
                found[record["file"]] = record["digest"]
        return found

    def add_provenance(self, **entries) -> None:
        """Add to the staged store's provenance what is known only once computed (measured memory)."""
        options = None if self.lake.is_local else self.lake.storage_options
        group = zarr.open_group(self.lake.url(self.store), mode="r+", storage_options=options)
        group.attrs[PROVENANCE_KEY] = {**group.attrs[PROVENANCE_KEY], **entries}

    def remove(self) -> None:
        self.lake.discard(self.root)


def staging_root(lake: Lake, zone: str, name: str, token: str) -> str:
    return lake.writable(lake.path(TMP_DIR, RESUME_DIR, f"{zone}__{name.replace('/', '__')}-{token}"))


def discard_other_attempts(lake: Lake, zone: str, name: str, token: str) -> None:
    """Remove staging areas of this output for other tokens: they can never be resumed."""
    keep = staging_root(lake, zone, name, token)
    prefix = keep.rsplit("-", 1)[0] + "-"
    folder = posixpath.dirname(keep)
    if not lake.fs.exists(folder):
        return
    for path in lake.fs.ls(folder, detail=False):
        if path.startswith(prefix) and path.rstrip("/") != keep:
            lake.fs.rm(path, recursive=True)


def stage_output(lake: Lake, dataset: xr.Dataset, zone: str, name: str, token: str,
                 provenance: dict) -> StagedOutput:
    """Lay out (or reopen) the staging store of an output and schedule its missing chunks."""
    staged = StagedOutput(lake, staging_root(lake, zone, name, token))
    options = None if lake.is_local else lake.storage_options
    dataset = dataset.copy()
    dataset.attrs[PROVENANCE_KEY] = provenance
    url = lake.url(staged.store)
    laid_out = f"{staged.root}/{TEMPLATE_DONE}", f"{staged.store}/zarr.json"
    if all(lake.fs.exists(path) for path in laid_out):  # (a kill mid-publish moved the store away)
        dataset = prepare_for_write(dataset)
        lazy = lazy_variables(dataset)
        group = zarr.open_group(url, mode="r+", storage_options=options)
        group.attrs[PROVENANCE_KEY] = {**provenance, "resumed": True}
    else:
        lake.discard(staged.root)
        dataset, lazy = lay_out(dataset, url, options)
        lake.fs.pipe_file(f"{staged.root}/{TEMPLATE_DONE}", b"ok")
        group = zarr.open_group(url, mode="r+", storage_options=options)
    for variable in lazy:
        target = group[variable]
        done = _verified_chunks(lake, staged, variable, target)
        write = _store_missing_chunks(dataset[variable].data, target, lake, staged, variable, done)
        staged.chunks_resumed += len(done)
        staged.chunks_written += int(np.prod(dataset[variable].data.numblocks)) - len(done)
        if write is not None:
            staged.writes.append(write)
    return staged


def _record_path(staged: StagedOutput, variable: str, index: tuple[int, ...]) -> str:
    return f"{staged.records}/{variable}/{'.'.join(map(str, index)) or '0'}"


def _read_record(lake: Lake, path: str) -> dict | None:
    try:
        return json.loads(lake.fs.cat_file(path))
    except (FileNotFoundError, ValueError):  # a record cut short by a crash counts as absent
        return None


def _verified_chunks(lake: Lake, staged: StagedOutput, variable: str, target: zarr.Array) -> set:
    """Indices of chunks whose file on disk still matches the record written with it."""
    folder = f"{staged.records}/{variable}"
    if not lake.fs.exists(folder):
        return set()
    done = set()
    for path in lake.fs.ls(folder, detail=False):
        record = _read_record(lake, path)
        if record is None:
            continue
        index = tuple(record["index"])
        if record["file"] is None:  # an all-fill chunk: right as long as no file appeared
            ok = not lake.fs.exists(f"{staged.store}/{variable}/{target.metadata.encode_chunk_key(index)}")
        else:
            try:
                ok = digest(lake.fs.cat_file(f"{staged.store}/{record['file']}")) == record["digest"]
            except FileNotFoundError:
                ok = False
        if ok:
            done.add(index)
    return done


def _store_missing_chunks(array: da.Array, target: zarr.Array, lake: Lake, staged: StagedOutput,
                          variable: str, done: set) -> Delayed | None:
    """One task per chunk not yet done, writing it and then its record; None when all are done."""
    name = "store-resumable-" + tokenize(array.name, staged.store, variable, sorted(done))
    layer: dict = {}
    for index in np.ndindex(*array.numblocks):
        if index not in done:
            layer[(name, *index)] = (_write_chunk, (array.name, *index), target, index, lake.fs,
                                     staged.store, _record_path(staged, variable, index), variable)
    if not layer:
        return None
    final = name + "-all"
    layer[final] = (len, list(layer))
    graph = HighLevelGraph.from_collections(final, layer, dependencies=[array])
    return Delayed(final, graph)


def _write_chunk(block: np.ndarray, target: zarr.Array, index: tuple[int, ...], fs, store: str,
                 record: str, variable: str) -> None:
    """Write one chunk, read its file back for the digest, then record it (in that order)."""
    region = tuple(slice(i * c, i * c + n) for i, c, n in zip(index, target.chunks, block.shape,
                                                                 strict=True))
    target[region] = block
    relative = f"{variable}/{target.metadata.encode_chunk_key(index)}"
    try:
        data = fs.cat_file(f"{store}/{relative}")
        entry = {"index": list(index), "file": relative, "digest": digest(data)}
    except FileNotFoundError:  # zarr leaves chunks equal to the fill value unwritten
        entry = {"index": list(index), "file": None, "digest": None}
    fs.makedirs(posixpath.dirname(record), exist_ok=True)
    fs.pipe_file(record, json.dumps(entry).encode())
