"""Jagged collections (muons, jets, strings: awkward arrays of lists) stored losslessly in zarr.

Layout of an event sample in the lake (one zarr group, opened as one xarray dataset):

- flat per-event columns: 1-D variables along dim `event`, chunked along `event`;
- each jagged collection C (say `Muon`, a list of records per event) is the buffer set of
  `ak.to_buffers(ak.to_packed(C))`, one zarr array per buffer: leaves named after their field
  (`Muon_Px`), offsets stored as *counts* (`Muon__counts`, the diff of the offsets, same
  dtype). A count belongs to one element of its list node, so the top-level counts lie along
  `event` exactly like a flat column, and every other buffer lies along the dim of the list
  level it belongs to (`Muon` for the first level, `Muon__<node>` below it). Counts split at
  any boundary; offsets would not (chunk k would need the last offset of chunk k-1);
- the group attribute `jagged` holds per collection: the awkward form (JSON), the events in
  each event chunk, buffer -> (variable, dim), and per content dim the number of elements in
  each event chunk. With those lengths a reader rechunks each content variable so that its block k holds
  exactly the elements of event chunk k: the sample streams chunk by chunk with dask, and
  `ak.from_buffers` on one chunk's blocks rebuilds that chunk exactly (dtypes, parameters such as
  strings, field order).

Supported forms are what ROOT jagged branches give: lists (ListOffsetArray), records and numeric
or boolean leaves, at any depth. Option types, unions and fixed-size inner dims are refused with
a message rather than stored in a way this reader could not rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from .errors import OpError
from .zarr_io import CODEC

if TYPE_CHECKING:  # imported where chunks are converted: loading the ops must not pay for awkward
    import awkward as ak

ATTR = "jagged"
EVENT_DIM = "event"
COUNTS_SUFFIX = "-counts"
OFFSETS_SUFFIX = "-offsets"


class UnsupportedLayout(ValueError):
    """An awkward layout this storage cannot round-trip (option, union, regular inner dims)."""


def buffer_layout(form: ak.forms.Form, collection: str) -> dict[str, tuple[str, str]]:
    """Stored buffer key -> (variable name, dim), for a collection whose top node is per event.

    Leaves are named after their field path (`Muon_Px`, as the ROOT branch was), counts after
    their list (`Muon__counts`), so the dataset reads naturally in xarray; a leaf without a
    field name gets `__data`, because a variable named like its own dim would become an index.
    """
    import awkward as ak

    layout: dict[str, tuple[str, str]] = {}

    def name(path: tuple[str, ...], suffix: str) -> str:
        return "_".join((collection, *path)) + suffix

    def walk(node: ak.forms.Form, dim: str, path: tuple[str, ...]) -> None:
        if isinstance(node, ak.forms.ListOffsetForm):
            layout[node.form_key + COUNTS_SUFFIX] = (name(path, "__counts"), dim)
            walk(node.content, collection if node is form else f"{collection}__{node.form_key}", path)
        elif isinstance(node, ak.forms.RecordForm):
            for key, content in zip(node.fields, node.contents, strict=True):
                walk(content, dim, (*path, key))
        elif isinstance(node, ak.forms.NumpyForm) and not node.inner_shape:
            layout[node.form_key + "-data"] = (name(path, "" if path else "__data"), dim)
        else:
            raise UnsupportedLayout(f"expected lists, records and 1-D numeric leaves, found a "
                                    f"{type(node).__name__} in {collection!r}")

    walk(form, EVENT_DIM, ())
    return layout


def to_stored(array: ak.Array) -> tuple[ak.forms.Form, dict[str, np.ndarray]]:
    """The form and stored buffers (offsets turned into counts) of one chunk of a collection."""
    import awkward as ak

    form, _, buffers = ak.to_buffers(ak.to_packed(array))
    stored = {}
    for key, values in buffers.items():
        values = np.asarray(values)
        if key.endswith(OFFSETS_SUFFIX):
            stored[key[: -len(OFFSETS_SUFFIX)] + COUNTS_SUFFIX] = np.diff(values).astype(values.dtype)
        else:
            stored[key] = values
    return form, stored


def from_stored(form: ak.forms.Form | str, length: int, stored: dict[str, np.ndarray]) -> ak.Array:
    """Rebuild a chunk from its stored buffers (the inverse of `to_stored`)."""
    import awkward as ak

    form = ak.forms.from_json(form) if isinstance(form, str) else form
    buffers = {}
    for key, values in stored.items():
        if key.endswith(COUNTS_SUFFIX):
            offsets = np.zeros(len(values) + 1, dtype=values.dtype)
            np.cumsum(values, out=offsets[1:])
            buffers[key[: -len(COUNTS_SUFFIX)] + OFFSETS_SUFFIX] = offsets
        else:
            buffers[key] = values
    return ak.from_buffers(form, length, buffers)


@dataclass
class CollectionWriter:
    """Appends event chunks of one collection to a zarr group, recording each chunk's lengths."""

    group: zarr.Group
    name: str
    chunk_events: int
    form: ak.forms.Form | None = None
    layout: dict[str, tuple[str, str]] = field(default_factory=dict)
    lengths: dict[str, list[int]] = field(default_factory=dict)
    event_chunks: list[int] = field(default_factory=list)

    def append(self, chunk: ak.Array) -> None:
        form, stored = to_stored(chunk)
        if self.form is None:
            self.form, self.layout = form, buffer_layout(form, self.name)
            for key, values in stored.items():
                variable, dim = self.layout[key]
                per_chunk = max(1, int(len(values) * self.chunk_events / max(len(chunk), 1)))
                self.group.create_array(variable, shape=(0,), dtype=values.dtype, chunks=(per_chunk,),
                                        compressors=(CODEC,), dimension_names=(dim,))
        elif form != self.form:
            raise UnsupportedLayout(f"collection {self.name!r} changed layout between chunks: "
                                    f"expected {self.form.type}, found {form.type}")
        lengths = {}
        for key, values in stored.items():
            variable, dim = self.layout[key]
            self.group[variable].append(values)
            lengths[dim] = len(values)
        for dim, length in lengths.items():
            if dim != EVENT_DIM:
                self.lengths.setdefault(dim, []).append(length)
        self.event_chunks.append(len(chunk))

    def description(self) -> dict:
        """What goes into the group's `jagged` attribute for this collection."""
        return {"form": self.form.to_json(), "event_chunks": self.event_chunks,
                "buffers": {key: {"variable": variable, "dim": dim}
                            for key, (variable, dim) in self.layout.items()},
                "chunk_lengths": self.lengths}


def collections(dataset: xr.Dataset) -> dict[str, dict]:
    """The jagged collections described in a dataset's attributes (name -> description)."""
    return dict(dataset.attrs.get(ATTR) or {})


def collection_variables(dataset: xr.Dataset) -> set[str]:
    """Names of the variables that store jagged buffers (not columns of their own)."""
    return {buf["variable"] for spec in collections(dataset).values() for buf in spec["buffers"].values()}


def event_chunks(dataset: xr.Dataset) -> tuple[int, ...]:
    """The event chunking of a sample (one chunk when it is not chunked): that of its first
    chunked variable along `event` (Dataset.chunks compares every variable's, 0.85 ms a call on
    a dimuon sample with its kinematics; ops rechunk any other variable to this one)."""
    for variable in dataset.variables.values():
        if variable.chunks and EVENT_DIM in variable.dims:
            return tuple(variable.chunks[variable.dims.index(EVENT_DIM)])
    return (int(dataset.sizes[EVENT_DIM]),)


def align_events(dataset: xr.Dataset) -> xr.Dataset:
    """The dataset with the event chunking its collections were stored with (lazy rechunk).

    Writing an output merges small chunks and a recipe may rechunk `event`; the recorded
    per-chunk lengths stay valid for the stored chunking, so readers go back to it.
    """
    recorded = {tuple(spec["event_chunks"]) for spec in collections(dataset).values()}
    if not recorded:
        return dataset
    if len(recorded) > 1:
        raise OpError("the jagged collections of this sample were stored with different event "
                      "chunkings; expected one (as `replicalake ingest root` writes them)")
    target = recorded.pop()
    if sum(target) != dataset.sizes[EVENT_DIM]:
        raise OpError(f"the jagged collections describe {sum(target)} events, but the sample has "
                      f"{dataset.sizes[EVENT_DIM]}; was it cut without its collections?")
    return dataset if event_chunks(dataset) == target else dataset.chunk({EVENT_DIM: target})


def collection_blocks(dataset: xr.Dataset, name: str) -> list:
    """One delayed awkward array per event chunk of collection `name`, each read on its own.

    The dataset must have its stored event chunking (see `align_events`).
    """
    spec = collections(dataset)[name]
    chunks = event_chunks(dataset)
    if chunks != tuple(spec["event_chunks"]):
        raise OpError(f"jagged collection {name!r} was stored in event chunks of "
                      f"{spec['event_chunks'][0]}, but the events now come in chunks of {chunks[0]}; "
                      "align the sample first (engine.jagged.align_events)")
    stored_chunks = {dim: tuple(lengths) for dim, lengths in spec["chunk_lengths"].items()}
    keys, per_buffer = [], []
    for key, buf in spec["buffers"].items():
        data = dataset[buf["variable"]].data
        if not isinstance(data, da.Array):
            data = da.from_array(np.asarray(data), chunks=-1)
        target = chunks if buf["dim"] == EVENT_DIM else stored_chunks[buf["dim"]]
        if data.chunks[0] != target:
            data = data.rechunk((target,))
        keys.append(key)
        per_buffer.append(data.to_delayed(optimize_graph=False).reshape(-1))
    return [dask.delayed(_rebuild, pure=True)(spec["form"], n, keys, *(blocks[k] for blocks in per_buffer))
            for k, n in enumerate(chunks)]


def _rebuild(form: str, length: int, keys: list[str], *blocks: np.ndarray) -> ak.Array:
    return from_stored(form, length, dict(zip(keys, blocks, strict=True)))


def to_awkward(dataset: xr.Dataset, name: str) -> ak.Array:
    """A whole collection in memory (tests, small samples); streaming code uses collection_blocks."""
    import awkward as ak

    blocks = dask.compute(*collection_blocks(dataset, name), scheduler="threads")
    return ak.concatenate(blocks) if len(blocks) > 1 else blocks[0]
