"""`replicalake ingest jets`: HDF5 jet tables in the top-tagging reference layout -> raw/NAME.

The reference files hold one row per jet with columns E_i, PX_i, PY_i, PZ_i (i < 200, zero padded,
pT ordered) and the label `is_signal_new`. Two HDF5 layouts carry such columns and both are read
with h5py alone (no pandas/PyTables, never the whole file):

- pandas "fixed" format (`DataFrame.to_hdf(key, format="fixed")`): a group KEY with
  `block{k}_items` (column names) and `block{k}_values` (rows x columns), one block per dtype;
- pandas "table" format (`format="table"`, PyTables): a compound dataset KEY/table whose fields
  `values_block_{k}` hold (rows x columns) and whose column names PyTables stores as a pickled
  list in the attribute `values_block_{k}_kind`. Pickles are never loaded: the names are read
  from the pickle's opcodes (pickletools), so no code in the file can run;
- plain columns: one 1-D dataset per column name at the file's top level.

Rows are copied in blocks into a staged zarr store along dim `jet`, with 2-D variables E, PX, PY,
PZ (jet, constituent) and `label`, and published only when every block is in.
"""

from __future__ import annotations

import pickletools
import re
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ..bounds import Constituents, Events, Rows
from ..errors import IngestError, did_you_mean
from ..kernels.jets_synth import COLUMNS, LABEL, N_CONSTITUENTS, simulate_jets
from ..storage import PROVENANCE_KEY, Lake, content_token
from .registry import EntryName, IngestParams, Progress, Seed, register_format
from .staging import staged_entry, write_blocks

DEFAULT_KEY = "table"
STRING_OPCODES = {"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}
BLOCK_ROWS = 10_000
FLOAT_BLOCK, LABEL_BLOCK = 0, 1


class JetTable:
    """Column access to one HDF5 jet table: name -> (dataset, column index or None)."""

    def __init__(self, path: Path, key: str = DEFAULT_KEY):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise IngestError(f"{self.path}: no such file")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as exc:
            raise IngestError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        self.columns: dict[str, tuple[object, str | None, int | None]] = {}
        group = self.file.get(key)
        if isinstance(group, h5py.Group) and isinstance(group.get("table"), h5py.Dataset):
            self._pandas_table(group["table"], key)
        elif isinstance(group, h5py.Group):
            self._pandas_blocks(group, key)
        else:
            self._plain_columns(key)
        lengths = {name: ds.shape[0] for name, (ds, _, _) in self.columns.items()}
        self.n_rows = min(lengths.values())
        if max(lengths.values()) != self.n_rows:
            longest = max(lengths, key=lengths.get)
            raise IngestError(f"{self.path}: column {longest!r} has {lengths[longest]} rows but "
                              f"others have {self.n_rows}; every column must have one row per jet")

    def _pandas_blocks(self, group, key: str) -> None:
        blocks = sorted(int(m.group(1)) for name in group if (m := re.fullmatch(r"block(\d+)_items", name)))
        if not blocks:
            raise IngestError(f"{self.path}: group {key!r} has no block0_items/block0_values: not a "
                              f"pandas fixed-format table (found {sorted(group)})")
        for k in blocks:
            items, values = group[f"block{k}_items"], group.get(f"block{k}_values")
            if values is None or values.ndim != 2 or values.shape[1] != items.shape[0]:
                found = None if values is None else values.shape
                raise IngestError(f"{self.path}: {key}/block{k}_values must be 2-D with "
                                  f"{items.shape[0]} columns (one per block{k}_items), found {found}")
            for index, name in enumerate(items[()]):
                self.columns[name.decode() if isinstance(name, bytes) else str(name)] = (values, None, index)

    def _pandas_table(self, table, key: str) -> None:
        fields = [f for f in (table.dtype.names or ()) if f.startswith("values_block_")]
        if not fields:
            raise IngestError(f"{self.path}: {key}/table has no values_block_* fields: not a pandas "
                              f"table (fields {table.dtype.names})")
        for field in fields:
            width = table.dtype[field].shape[0] if table.dtype[field].shape else 1
            names = _pickled_strings(table.attrs.get(f"{field}_kind", b""))
            if len(names) != width:
                raise IngestError(f"{self.path}: {key}/table attribute {field}_kind should name "
                                  f"{width} columns, found {len(names)} names")
            for index, name in enumerate(names):
                self.columns[name] = (table, field, index if table.dtype[field].shape else None)

    def _plain_columns(self, key: str) -> None:
        for name, ds in self.file.items():
            if hasattr(ds, "shape") and ds.ndim == 1:
                self.columns[name] = (ds, None, None)
            elif hasattr(ds, "shape"):
                raise IngestError(f"{self.path}: column {name!r} must be 1-D (one value per jet), "
                                  f"found shape {ds.shape}")
        if not self.columns:
            raise IngestError(f"{self.path}: neither a pandas table under key {key!r} nor 1-D "
                              f"column datasets; found {sorted(self.file)}")

    def require(self, name: str) -> None:
        if name not in self.columns:
            raise IngestError(f"{self.path}: column {name!r} is missing"
                              f"{did_you_mean(name, self.columns)} ({len(self.columns)} columns, "
                              f"e.g. {', '.join(list(self.columns)[:6])})")

    def n_constituents(self) -> int:
        """How many constituents the table holds: E_0..E_{n-1} with PX/PY/PZ beside each."""
        n = 0
        while f"E_{n}" in self.columns:
            n += 1
        if n == 0:
            self.require("E_0")
        for i in range(n):
            for column in COLUMNS:
                self.require(f"{column}_{i}")
        return n

    def read(self, names: list[str], start: int, stop: int) -> np.ndarray:
        """(stop - start, len(names)) values of the named columns, read one block per dataset."""
        out = np.empty((stop - start, len(names)), np.float64)
        by_dataset: dict[int, tuple[object, list[tuple[int, str | None, int | None]]]] = {}
        for j, name in enumerate(names):
            ds, field, index = self.columns[name]
            by_dataset.setdefault(id(ds), (ds, []))[1].append((j, field, index))
        for ds, wanted in by_dataset.values():
            rows = ds[start:stop]
            for j, field, index in wanted:
                values = rows if field is None else rows[field]
                out[:, j] = values if index is None else values[:, index]
        return out

    def close(self) -> None:
        self.file.close()


def _pickled_strings(data) -> list[str]:
    """The string constants of a pickle (PyTables' list of column names), without unpickling it."""
    raw = data.tobytes() if hasattr(data, "tobytes") else bytes(data)
    try:
        return [arg for op, arg, _ in pickletools.genops(raw) if op.name in STRING_OPCODES]
    except (ValueError, EOFError):
        return []


def _template(n_jets: int, n_const: int, block_rows: int) -> xr.Dataset:
    chunks = (min(block_rows, max(n_jets, 1)), n_const)
    variables = {c: (("jet", "constituent"), da.zeros((n_jets, n_const), chunks=chunks, dtype=np.float32))
                 for c in COLUMNS}
    variables["label"] = (("jet",), da.zeros(n_jets, chunks=chunks[0], dtype=np.int8))
    return xr.Dataset(variables, coords={"jet": np.arange(n_jets), "constituent": np.arange(n_const)})


class JetTableParams(IngestParams):
    """Copy a top-tagging-layout jet table (E_i, PX_i, PY_i, PZ_i, label) into raw/NAME."""

    path: Path = Field(alias="file", description="HDF5 jet table: a pandas frame (fixed or table format, "
                       "under --key) or one 1-D dataset per column")
    name: EntryName
    key: str = Field(DEFAULT_KEY, description="group of a pandas table")
    label: str = Field(LABEL, description="label column (1 = signal)")
    constituents: Constituents | None = Field(None, ge=1, description="keep the first N constituents")
    block_rows: Rows = Field(BLOCK_ROWS, ge=1, description="jets read per block, and per chunk")
    progress: Progress = True


@register_format("jets", JetTableParams, positional=("file", "name"))
def ingest_jet_table(lake: Lake, path: Path, name: str, key: str = DEFAULT_KEY, label: str = LABEL,
                     constituents: int | None = None, block_rows: int = BLOCK_ROWS,
                     progress: bool = True) -> str:
    """Copy an HDF5 jet table into raw/NAME block by block; returns a one-line description."""
    table = JetTable(path, key)
    try:
        available = table.n_constituents()
        table.require(label)
        if constituents is not None and not 1 <= constituents <= available:
            raise IngestError(f"--constituents must lie in [1, {available}] for {path}, found {constituents}")
        n_const = constituents or available
        if table.n_rows == 0:
            raise IngestError(f"{path}: the table has no rows (no jets)")
        dataset = _template(table.n_rows, n_const, block_rows)
        stat = Path(path).stat()
        token = content_token("jet-table", str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns,
                              key, label, n_const)
        dataset.attrs = {"description": f"jets from {Path(path).name}", "source_file": str(path),
                         PROVENANCE_KEY: {"token": token, "ingest": "jet-table", "key": key,
                                          "label_column": label}}
        names = [f"{c}_{i}" for c in COLUMNS for i in range(n_const)]
        with staged_entry(lake, "raw", name) as stage:
            group = stage.layout(dataset)

            def copy(start: int) -> None:
                stop = min(start + block_rows, table.n_rows)
                values = table.read(names, start, stop).reshape(stop - start, len(COLUMNS), n_const)
                labels = table.read([label], start, stop)[:, 0]
                if not np.isin(labels, (0, 1)).all():
                    bad = labels[~np.isin(labels, (0, 1))][0]
                    raise IngestError(f"{path}: column {label!r} must hold 0 (background) or 1 "
                                      f"(signal); found {bad:g} in rows {start}-{stop - 1}")
                for k, column in enumerate(COLUMNS):
                    group[column][start:stop] = values[:, k].astype(np.float32)
                group["label"][start:stop] = labels.astype(np.int8)

            write_blocks(list(range(0, table.n_rows, block_rows)), copy, f"ingesting raw/{name}",
                         progress, threads=1)  # h5py serialises reads anyway
            stage.publish(f"{table.n_rows} jets x {n_const} constituents from {Path(path).name}",
                          {"token": token})
    finally:
        table.close()
    return f"{table.n_rows} jets x {n_const} constituents"


def write_reference_table(path: Path, n_jets: int, seed: int = 0, signal_fraction: float = 0.5,
                          n_constituents: int = N_CONSTITUENTS, block_rows: int = BLOCK_ROWS) -> Path:
    """Write synthetic jets (kernels.jets_synth) as a pandas fixed-format table, block by block.

    Columns E_0, PX_0, PY_0, PZ_0, E_1, ... (the reference order) in block0 (float32) and the
    label in block1 (int64): the datasets pandas writes for such a frame (its PyTables attributes,
    which no reader here needs, are left out).
    """
    import h5py

    if n_jets < 1:
        raise IngestError(f"--jets must be positive, found {n_jets}")
    names = [f"{c}_{i}" for i in range(n_constituents) for c in COLUMNS]
    with h5py.File(path, "w") as f:
        group = f.create_group(DEFAULT_KEY)
        group.attrs["pandas_type"], group.attrs["pandas_version"] = "frame", "0.15.2"
        group.create_dataset("axis0", data=np.array([*names, LABEL], dtype="S"))
        group.create_dataset("axis1", data=np.arange(n_jets, dtype=np.int64))
        group.create_dataset(f"block{FLOAT_BLOCK}_items", data=np.array(names, dtype="S"))
        group.create_dataset(f"block{LABEL_BLOCK}_items", data=np.array([LABEL], dtype="S"))
        values = group.create_dataset(f"block{FLOAT_BLOCK}_values", (n_jets, len(names)), np.float32,
                                      chunks=(min(block_rows, n_jets), len(names)))
        labels = group.create_dataset(f"block{LABEL_BLOCK}_values", (n_jets, 1), np.int64)
        for block, start in enumerate(range(0, n_jets, block_rows)):
            count = min(block_rows, n_jets - start)
            jets = simulate_jets(count, seed, block, signal_fraction, n_constituents)
            values[start:start + count] = np.stack([jets[c] for c in COLUMNS], axis=-1).reshape(count, -1)
            labels[start:start + count, 0] = jets["label"]
    return Path(path)


class SyntheticJetsParams(IngestParams):
    """Generate QCD-like and top-like jets as a reference-layout HDF5 table and ingest it."""

    name: EntryName
    n_jets: Events = Field(100_000, alias="jets", ge=1, description="number of jets")
    seed: Seed = 0
    signal_fraction: float = Field(0.5, ge=0, le=1, description="fraction of top jets")
    n_constituents: Constituents = Field(N_CONSTITUENTS, alias="constituents", ge=1,
                                description="constituent slots per jet")
    progress: Progress = True


@register_format("synthetic-jets", SyntheticJetsParams)
def ingest_synthetic_jets(lake: Lake, name: str, n_jets: int, seed: int = 0,
                          signal_fraction: float = 0.5, n_constituents: int = N_CONSTITUENTS,
                          progress: bool = True) -> str:
    """Generate a reference-layout HDF5 file in a temporary folder and ingest it as raw/NAME."""
    import tempfile

    lake.new_entry_path("raw", name)  # refuse a bad name before generating
    if not 0 <= signal_fraction <= 1:
        raise IngestError(f"--signal-fraction must lie in [0, 1], found {signal_fraction}")
    with tempfile.TemporaryDirectory(prefix="replicalake-jets-") as folder:
        path = write_reference_table(Path(folder) / f"{Path(name).name}.h5", n_jets, seed, signal_fraction,
                                     n_constituents)
        return ingest_jet_table(lake, path, name, progress=progress)
