"""`replicalake ingest root FILE... NAME --tree TREE`: ROOT trees into the lake as event samples.

The trees are read with `uproot.iterate` in steps of `step_size` events (never a whole file),
several files one after another, and regrouped into event chunks of exactly `step_size` events
(the last one shorter): a step ends at every file boundary, but zarr needs one chunk size per
column. Branches sharing a prefix and a counter (`Muon_Px`, `Muon_Py`, ... with `NMuon`) are
zipped by uproot into one collection `Muon` of records; flat branches become columns along
`event`, collections are stored losslessly by engine.jagged (layout in its docstring). Tree and
branch names are checked in every file before anything is read, with suggestions for typos.
Like every writer, the ingest fills `.tmp/` and publishes raw/NAME atomically.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import awkward as ak
import numpy as np
import zarr
from pydantic import Field

from ..bounds import Rows
from ..errors import IngestError, did_you_mean
from ..jagged import ATTR, EVENT_DIM, CollectionWriter, UnsupportedLayout
from ..storage import PROVENANCE_KEY, Lake, content_token
from ..zarr_io import CODEC
from .eels_files import _file_digest, _source
from .registry import EntryName, IngestParams, register_format
from .staging import staged_entry

INGEST = "root-files"
INGEST_VERSION = "1"
DEFAULT_STEP_SIZE = 100_000


class RootFilesParams(IngestParams):
    """Stream ROOT trees into raw/NAME: flat branches as columns, jagged ones losslessly."""

    files: list[Path] = Field(description="ROOT files; their trees are concatenated in the order given")
    name: EntryName
    tree: str = Field(description="name of the TTree in every file")
    branches: list[str] | None = Field(None, description="branch to keep (repeat the option); default all")
    step_size: Rows = Field(
        DEFAULT_STEP_SIZE, ge=1, description="events read per step, and events per chunk in the lake"
    )


@register_format("root", RootFilesParams, positional=("files", "name"))
def ingest_root_files(
    lake: Lake,
    files: Sequence[str | Path],
    name: str,
    tree: str,
    branches: Sequence[str] | None = None,
    step_size: int = DEFAULT_STEP_SIZE,
) -> str:
    """Ingest `tree` of every file into raw/NAME; returns a summary line."""
    import uproot

    paths = [Path(f) for f in files]
    _check_request(lake, paths, name, step_size)
    events = sum(_check_tree(uproot, path, tree, branches) for path in paths)
    token = content_token(
        INGEST, INGEST_VERSION, [_file_digest(p) for p in paths], tree, sorted(branches or []), step_size
    )
    with staged_entry(lake, "raw", name) as stage:
        group = zarr.open_group(
            lake.url(stage.path),
            mode="w",
            zarr_format=3,
            storage_options=None if lake.is_local else lake.storage_options,
        )
        steps = uproot.iterate(
            {str(p): tree for p in paths},
            step_size=step_size,
            how="zip",
            expressions=list(branches) if branches else None,
            library="ak",
        )
        columns, writers = _write_chunks(group, _reblock(_read(steps, paths), step_size), step_size)
        group.attrs.update(
            {
                ATTR: {n: w.description() for n, w in writers.items()},
                "tree": tree,
                "original_files": [p.name for p in paths],
                PROVENANCE_KEY: {
                    "token": token,
                    "ingest": INGEST,
                    "ingest_version": INGEST_VERSION,
                    "files": [str(p.resolve()) for p in paths],
                    "tree": tree,
                    "step_size": step_size,
                },
            }
        )
        stage.publish(f"{events} events of tree {tree!r} from {_source(paths)}", {"token": token})
    size = lake.size(lake.entry_path("raw", name))
    return (
        f"{events} events, {len(columns)} columns, {len(writers)} jagged collections "
        f"({', '.join(writers) or 'none'}), {size / 2**20:.1f} MiB on disk"
    )


def _check_request(lake: Lake, paths: list[Path], name: str, step_size: int) -> None:
    lake.new_entry_path("raw", name)
    if not paths:
        raise IngestError("expected at least one ROOT file to ingest, found none")
    if step_size < 1:
        raise IngestError(f"--step-size must be a positive number of events, found {step_size}")
    for path in paths:
        if not path.is_file():
            raise IngestError(f"{path}: no such file")


def _check_tree(uproot, path: Path, tree: str, branches: Sequence[str] | None) -> int:
    """The tree's number of entries, after checking that it and every branch exist."""
    try:
        handle = uproot.open(path)
    except Exception as exc:
        raise IngestError(
            f"{path}: expected a ROOT file, but uproot could not open it ({type(exc).__name__}: {exc})"
        ) from exc
    with handle:
        trees = handle.keys(cycle=False, filter_classname="TTree")
        if tree not in trees:
            raise IngestError(
                f"{path}: no tree {tree!r}{did_you_mean(tree, trees)}; trees in this "
                f"file: {', '.join(trees) or 'none'}"
            )
        found = handle[tree]
        names = found.keys()
        for branch in branches or []:
            if branch not in names:
                raise IngestError(
                    f"{path}: tree {tree!r} has no branch {branch!r}"
                    f"{did_you_mean(branch, names)}; it has {len(names)} branches"
                )
        return int(found.num_entries)


def _read(steps: Iterator[ak.Array], paths: list[Path]) -> Iterator[ak.Array]:
    """uproot's steps, with a read failure (truncated file, unreadable branch) named as ours."""
    try:
        yield from steps
    except Exception as exc:
        raise IngestError(
            f"{_source(paths)}: reading the tree failed ({type(exc).__name__}: "
            f"{exc}); is a file truncated or a branch of an unsupported type?"
        ) from exc


def _reblock(steps: Iterator[ak.Array], size: int) -> Iterator[ak.Array]:
    """Regroup steps of any length into chunks of exactly `size` events (the last may be short)."""
    pending: list[ak.Array] = []
    held = 0
    for step in steps:
        pending.append(step)
        held += len(step)
        while held >= size:
            merged = ak.concatenate(pending) if len(pending) > 1 else pending[0]
            yield merged[:size]
            rest = merged[size:]
            pending, held = ([rest], len(rest)) if len(rest) else ([], 0)
    if held:
        yield ak.concatenate(pending) if len(pending) > 1 else pending[0]


def _write_chunks(
    group: zarr.Group, chunks: Iterator[ak.Array], step_size: int
) -> tuple[list[str], dict[str, CollectionWriter]]:
    """Append every chunk: flat fields as columns, the others through a CollectionWriter."""
    columns: list[str] = []
    writers: dict[str, CollectionWriter] = {}
    for chunk in chunks:
        for field in chunk.fields:
            values = chunk[field]
            if field not in columns and field not in writers:
                _start(group, field, values, step_size, columns, writers)
            if field in columns:
                group[field].append(ak.to_numpy(values))
            else:
                try:
                    writers[field].append(values)
                except UnsupportedLayout as exc:
                    raise IngestError(f"branch or collection {field!r}: {exc}") from exc
    if not columns and not writers:
        raise IngestError("the tree holds no events to ingest")
    return columns, writers


def _start(
    group: zarr.Group,
    field: str,
    values: ak.Array,
    step_size: int,
    columns: list[str],
    writers: dict[str, CollectionWriter],
) -> None:
    """Create the storage of one field: a column if it is one number per event."""
    layout = ak.to_packed(values).layout
    if isinstance(layout, ak.contents.NumpyArray) and layout.data.ndim == 1:
        group.create_array(
            field,
            shape=(0,),
            dtype=np.asarray(layout.data).dtype,
            chunks=(step_size,),
            compressors=column_codecs(np.asarray(layout.data).dtype),
            dimension_names=(EVENT_DIM,),
        )
        columns.append(field)
    else:
        writers[field] = CollectionWriter(group, field, step_size)


def column_codecs(dtype: np.dtype) -> tuple:
    """Compressors of a flat event column: none for floats, the lake's codec for the rest.

    Measured on the 10^7 rotated CMS dimuon events of tests/benchmarks/bench_lhc_kinematics.py
    (1M-event chunks, read through the engine): the kinematics doubles stored with
    Blosc(lz4, bitshuffle) take 553 MiB and 0.62 CPU-s to read, uncompressed 620 MiB (integer
    charges still compressed) and 0.31 CPU-s. Momenta are noisy floats that compress by 1.1-1.25x
    whatever the codec, and an analysis reads them all every time; integers (charges, counts,
    flags) compress many times over and decode fast, so they keep the codec.
    """
    return () if np.dtype(dtype).kind == "f" else (CODEC,)
