"""`replicalake ingest lhapdf SETDIR NAME` and `replicalake export lhapdf NAME OUTDIR`.

The ingest streams a set into raw/NAME in the layout of engine.ingest.lhapdf_format: member 0 is
read first to lay out the store, then blocks of members (one zarr chunk along `member` each) are
parsed and written from a few threads, so memory holds a few members' text and values, never the set.
Like every ingest it fills `.tmp/` and publishes atomically: a bad member file anywhere leaves
nothing in the lake.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ..errors import IngestError, LakeError
from ..storage import PROVENANCE_KEY, Lake, content_token
from . import lhapdf_format as fmt
from .registry import EntryName, IngestParams, Progress, register_format
from .staging import staged_entry, write_blocks

INGEST = "lhapdf"
INGEST_VERSION = "1"
CHUNK_BYTES = 8 * 2**20  # per zarr chunk of a subgrid: members (and x, when one member is larger)
MAX_THREADS = 4


def _file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def chunk_shape(n_flavours: int, nx: int, nq: int) -> tuple[int, int]:
    """(members, x knots) per chunk so one chunk of one subgrid stays under CHUNK_BYTES."""
    member_bytes = n_flavours * nx * nq * 8
    if member_bytes <= CHUNK_BYTES:
        return max(1, CHUNK_BYTES // member_bytes), nx
    return 1, max(1, CHUNK_BYTES // (n_flavours * nq * 8))


class LhapdfParams(IngestParams):
    """Read an LHAPDF lhagrid1 set into raw/NAME as xf(member, flavour, x, q) per Q subgrid."""

    setdir: Path = Field(description="LHAPDF set folder (NAME.info, NAME_0000.dat, ...)")
    name: EntryName
    allow_nonfinite: bool = Field(False, description="keep NaN/inf grid values instead of refusing the set")
    progress: Progress = True


@register_format(INGEST, LhapdfParams, positional=("setdir", "name"))
def ingest_lhapdf(lake: Lake, setdir: str | Path, name: str, allow_nonfinite: bool = False,
                  progress: bool = True, threads: int | None = None) -> str:
    """Read the set at SETDIR into raw/NAME; returns a summary line."""
    setdir = Path(setdir)
    lake.new_entry_path("raw", name)
    if not setdir.is_dir():
        raise IngestError(f"{setdir}: expected an LHAPDF set folder (NAME/NAME.info, NAME_0000.dat, "
                          "...), found no such folder")
    info = fmt.read_info(fmt.info_path(setdir))
    paths = fmt.member_paths(setdir, info)
    first = fmt.read_member(paths[0], allow_nonfinite=allow_nonfinite)
    fmt.check_flavours(info, first, paths[0])
    token = content_token(INGEST, INGEST_VERSION, [_file_digest(fmt.info_path(setdir))]
                          + [_file_digest(p) for p in paths])
    n_members, n_flavours = len(paths), first.pids.size
    per_chunk = min(chunk_shape(n_flavours, x.size, q.size)[0] for x, q in zip(first.xs, first.qs,
                                                                                 strict=True))
    template = _template(first, info, n_members, per_chunk, setdir, token)
    with staged_entry(lake, "raw", name) as stage:
        group = stage.layout(template)
        headers: dict[str, dict] = {}

        def write(block: tuple[slice, slice]) -> None:
            members = block[0]
            read = [first if i == 0 else fmt.read_member(paths[i], first, allow_nonfinite)
                    for i in range(members.start, members.stop)]
            for k in range(len(first.xs)):
                group[fmt.subgrid_names(k)[0]][members] = np.stack([m.values[k] for m in read])
            headers.update({str(i): m.header for i, m in zip(range(members.start, members.stop), read,
                                                            strict=True)})

        blocks = [(slice(i, min(i + per_chunk, n_members)), slice(None))
                  for i in range(0, n_members, per_chunk)]
        write_blocks(blocks, write, f"reading {setdir.name}", progress,
                     threads or min(MAX_THREADS, os.cpu_count() or 1))
        group.attrs[fmt.HEADERS_ATTR] = {str(i): headers[str(i)] for i in range(n_members)}
        stage.publish(f"LHAPDF set {setdir.name}: {n_members} members, {len(first.xs)} Q subgrids",
                      {"token": token})
    size = lake.size(lake.entry_path("raw", name))
    return (f"{n_members} members x {n_flavours} flavours, {len(first.xs)} Q subgrids, "
            f"x {first.xs[0][0]:g} .. {first.xs[0][-1]:g}, Q {first.qs[0][0]:g} .. "
            f"{first.qs[-1][-1]:g} GeV, {size / 2**20:.2f} MiB on disk")


def _template(first: fmt.Member, info: dict, n_members: int, per_chunk: int, setdir: Path,
              token: str) -> xr.Dataset:
    """The set's final layout with lazy zeros (only metadata is written from it)."""
    values = []
    for x, q in zip(first.xs, first.qs, strict=True):
        _, x_chunk = chunk_shape(first.pids.size, x.size, q.size)
        values.append(da.zeros((n_members, first.pids.size, x.size, q.size),
                               chunks=(per_chunk, -1, x_chunk, -1), dtype=np.float64))
    dataset = fmt.pdfset_from_arrays(first.xs, first.qs, first.pids, values, info, digits=first.digits)
    dataset.attrs[PROVENANCE_KEY] = {"token": token, "ingest": INGEST, "ingest_version": INGEST_VERSION,
                                     "files": str(setdir.resolve())}
    return dataset


def export_lhapdf(lake: Lake, name: str, outdir: str | Path) -> Path:
    """Write the lake's set NAME (raw/ or derived/) as OUTDIR/NAME/ in lhagrid1; returns the folder."""
    zones = [zone for zone in ("raw", "derived") if lake.exists(zone, name)]
    if not zones:
        raise LakeError(f"no PDF set {name!r} in raw/ or derived/ of the lake at {lake.root_url!r}")
    dataset = lake.open(zones[0], name)
    if fmt.INFO_ATTR not in dataset.attrs:
        raise IngestError(f"{zones[0]}/{name} is not a PDF set: its attributes have no "
                          f"{fmt.INFO_ATTR!r} (expected the layout of engine.ingest.lhapdf_format)")
    return fmt.write_lhapdf_set(dataset, Path(outdir), Path(name).name)
