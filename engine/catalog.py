"""Catalogs: open named inputs lazily, and keep the lake's own catalog of published entries.

Catalog files are native Intake 2 catalogs (`version: 2`, `data:` + `entries:` with
XArrayDatasetReader over Zarr), so plain `intake.from_yaml_file(...)` opens them. The engine
reads them with its own small model rather than through Intake, because Intake expands templates
in one pass and hides typos: here `{lake}` is the configured lake root, `{CATALOG_DIR}` the
catalog's folder, and a missing entry or store is a clear error naming the file and line.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import fsspec
import xarray as xr
from ruamel.yaml import YAML

from . import zarr_io
from .config import catalog_dir
from .errors import CatalogError, Problem, did_you_mean
from .integrity import read_manifest
from .locks import LockError, catalog_lock, file_lock, output_locks
from .names import LAKE_CATALOG, LAKE_CATALOG_FILE, catalog_name_problem
from .recipe import MAX_YAML_BYTES, parse_yaml
from .storage import PROVENANCE_KEY, Lake, PublishRecord, listing_token, store_attributes

log = logging.getLogger(__name__)

# The lake's own catalog grows by ~460 bytes an entry, so the 1 MiB limit for hand-written files
# would refuse a lake of ~2,000 entries; 16 MiB holds ~36,000. Reading it is pure-Python YAML
# (~40 KB/s), so a lake that large pays seconds per command.
LAKE_CATALOG_MAX_BYTES = 16 * MAX_YAML_BYTES

READER = "intake.readers.readers:XArrayDatasetReader"
DATATYPE = "intake.readers.datatypes:Zarr"
_DATA_REF = re.compile(r"^\{data\((?P<key>[^)]+)\)\}$")


@dataclass
class CatalogEntry:
    """One openable input: where its zarr store is and how to open it."""

    name: str
    url: str
    description: str = ""
    open_kwargs: dict[str, Any] = field(default_factory=dict)
    line: int | None = None


@dataclass
class Catalog:
    name: str
    path: str
    entries: dict[str, CatalogEntry]

    def entry(self, name: str) -> CatalogEntry:
        if name not in self.entries:
            listing = ", ".join(sorted(self.entries)) or "none"
            raise CatalogError(
                [Problem(f"no entry {name!r}{did_you_mean(name, self.entries)}; entries: {listing}",
                         self.path)], f"catalog {self.name!r}")
        return self.entries[name]


def parse_catalog(text: str, path: str, name: str, substitutions: dict[str, str],
                  max_bytes: int = MAX_YAML_BYTES) -> Catalog:
    """Parse an Intake 2 catalog text into entries with resolved URLs."""
    data, lines = parse_yaml(text, path, CatalogError, max_bytes)
    problems: list[Problem] = []
    if not isinstance(data, dict) or data.get("version") != 2:
        found = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise CatalogError([Problem(f"expected an Intake 2 catalog ('version: 2'), found {found!r}",
                                    path, 1, "version")], f"catalog {name!r}")
    for section in ("data", "entries"):
        if not isinstance(data.get(section) or {}, dict):
            found = json.dumps(data[section], default=str)[:60]
            raise CatalogError([lines.problem(f"expected a mapping of names, found {found}", section)],
                               f"catalog {name!r}")
    stores = data.get("data") or {}
    entries: dict[str, CatalogEntry] = {}
    for entry_name, spec in (data.get("entries") or {}).items():
        loc = ("entries", entry_name)
        if not isinstance(spec, dict):
            problems.append(lines.problem("expected a mapping with reader and kwargs", *loc))
            continue
        if spec.get("reader") != READER:
            problems.append(lines.problem(f"expected reader {READER!r}, found {spec.get('reader')!r}",
                                     *loc, "reader"))
            continue
        kwargs = dict(spec.get("kwargs") or {})
        args = kwargs.pop("args", None) or [None]
        match = _DATA_REF.match(str(args[0]))
        if not match or match["key"] not in stores:
            problems.append(lines.problem(
                f"expected args: ['{{data(KEY)}}'] naming a key of 'data:' "
                f"({', '.join(stores) or 'none defined'}), found {args[0]!r}", *loc, "kwargs", "args"))
            continue
        store = stores[match["key"]] or {}
        url = (store.get("kwargs") or {}).get("url")
        if store.get("datatype") != DATATYPE or not isinstance(url, str):
            problems.append(lines.problem(f"expected datatype {DATATYPE!r} with a kwargs.url string",
                                     "data", match["key"]))
            continue
        for key, value in substitutions.items():
            url = url.replace("{" + key + "}", value)
        description = (spec.get("metadata") or {}).get("description", "")
        entries[entry_name] = CatalogEntry(entry_name, url, description, kwargs, lines.line_of(*loc))
    if problems:
        raise CatalogError(problems, f"catalog {name!r}")
    return Catalog(name, path, entries)


def available_catalogs(catalogs: Path | str | None = None) -> list[str]:
    folder = catalog_dir(catalogs)
    return sorted(p.stem for p in folder.glob("*.yaml") if not catalog_name_problem(p.stem)) + [LAKE_CATALOG]


def load_catalog(name: str, lake: Lake, catalogs: Path | str | None = None) -> Catalog:
    """Load catalog `name`: a stem of catalogs/*.yaml, or 'lake' for the lake's own catalog."""
    if name == LAKE_CATALOG:
        finish_interrupted_publishes(lake)
        return read_lake_catalog(lake)
    folder = catalog_dir(catalogs)
    problem = catalog_name_problem(name)
    if problem:  # a name is a plain stem: never a path to some other *.yaml file
        raise CatalogError([Problem(f"catalog name {name!r} {problem}", str(folder))], "catalogs")
    path = folder / f"{name}.yaml"
    if not path.is_file():
        choices = available_catalogs(folder)
        raise CatalogError([Problem(f"no catalog {name!r}{did_you_mean(name, choices)}; "
                                    f"available: {', '.join(choices)}", str(path))], "catalogs")
    return parse_catalog(_decode(path.read_bytes(), str(path)), str(path), name,
                         {"CATALOG_DIR": str(folder.resolve()), "lake": lake.url(lake.root)})


def read_lake_catalog(lake: Lake) -> Catalog:
    """The lake's catalog as it is on disk (no entries when there is no file); unlike
    `load_catalog`, it finishes no interrupted publish first, so it changes nothing."""
    text, url = _lake_catalog_text(lake)
    return Catalog(LAKE_CATALOG, url, {}) if text is None else _parse_lake_catalog(lake, text, url)


def _parse_lake_catalog(lake: Lake, text: str, url: str) -> Catalog:
    root = lake.url(lake.root)
    return parse_catalog(text, url, LAKE_CATALOG, {"CATALOG_DIR": root, "lake": root},
                         LAKE_CATALOG_MAX_BYTES)


def _lake_catalog_text(lake: Lake) -> tuple[str | None, str]:
    """The text of the lake's catalog file (None when there is none) and its URL."""
    path = lake.path(LAKE_CATALOG_FILE)
    url = lake.url(path)
    if not lake.fs.exists(path):
        return None, url
    return _decode(lake.fs.cat_file(path), url), url


def _decode(data: bytes, path: str) -> str:
    """Catalog bytes as text: a file that is not UTF-8 is a CatalogError naming it and the byte."""
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise CatalogError([Problem(f"expected UTF-8 text (a YAML catalog), found byte "
                                    f"0x{data[exc.start]:02x} at offset {exc.start}", path)],
                           "catalog file") from None


def open_entry(entry: CatalogEntry, lake: Lake, chunks: dict[str, int] | None = None) -> xr.Dataset:
    """Open an entry lazily as a dask-backed Dataset (on-disk chunking unless `chunks`)."""
    fs, path = filesystem_for(entry.url, lake)
    if not fs.exists(posixpath.join(path, "zarr.json")):
        raise FileNotFoundError(f"entry {entry.name!r} points at {entry.url}, which holds no zarr store")
    store_attributes(fs, path)  # a root zarr.json or a manifest that is not one: a LakeError naming
    read_manifest(fs, path)  # the file, where zarr and xarray would fail with a bare JSON or TypeError
    kwargs = {"consolidated": False, **entry.open_kwargs}
    kwargs["chunks"] = chunks if chunks is not None else (kwargs.get("chunks") or {})
    return zarr_io.open_dataset(entry.url, **kwargs)


def entry_token(entry: CatalogEntry, lake: Lake) -> str:
    """Content token of an entry: the one recorded at publish time, else a listing token."""
    fs, path = filesystem_for(entry.url, lake)
    if not fs.exists(posixpath.join(path, "zarr.json")):
        return "missing"
    recorded = (store_attributes(fs, path).get(PROVENANCE_KEY) or {}).get("token")
    return recorded or listing_token(fs, path)


def filesystem_for(url: str, lake: Lake) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of a URL, reusing the lake's filesystem for lake URLs."""
    if url.startswith(lake.url(lake.root)):
        return lake.fs, lake.fs._strip_protocol(url)
    return fsspec.core.url_to_fs(url)


# -- the lake's own catalog ---------------------------------------------------------------------
def _empty_lake_catalog() -> dict[str, Any]:
    return {"version": 2, "metadata": {"description": "ReplicaLake entries (written by replicalake)"},
            "user_parameters": {}, "aliases": {}, "data": {}, "entries": {}}


def editable_lake_catalog(lake: Lake) -> dict[str, Any]:
    """The lake catalog as plain data, ready to update; a file that is not a readable Intake 2
    catalog is a CatalogError naming it. Writers call this before they change anything, so a
    malformed catalog (or one that is a link out of the lake) stops an ingest or run before it
    publishes, not after."""
    lake.writable(lake.path(LAKE_CATALOG_FILE))
    text, url = _lake_catalog_text(lake)
    if text is None:
        return _empty_lake_catalog()
    _parse_lake_catalog(lake, text, url)  # the structure every catalog must have, with file and line
    doc = parse_yaml(text, url, CatalogError, LAKE_CATALOG_MAX_BYTES)[0]  # plain data only, tags refused
    for section in ("data", "entries", "aliases"):
        doc[section] = doc.get(section) or {}
    return doc


def register_entry(lake: Lake, zone: str, name: str, description: str = "",
                   metadata: dict[str, Any] | None = None) -> str:
    """Add or replace `zone/name` in the lake catalog (written atomically); return its key.

    The name is checked here too because it becomes a key and a `{...}`-templated URL.
    """
    lake.entry_path(zone, name)
    key = f"{zone}/{name}"
    data_key = key.replace("/", "__")
    with catalog_lock(lake):
        doc = editable_lake_catalog(lake)
        doc["data"][data_key] = {"datatype": DATATYPE, "kwargs": {"url": "{CATALOG_DIR}/" + key},
                                 "metadata": {}, "user_parameters": {}}
        doc["entries"][key] = {
            "reader": READER,
            "kwargs": {"args": [f"{{data({data_key})}}"], "consolidated": False, "chunks": {}},
            "output_instance": "xarray:Dataset",
            "metadata": {"description": description, **(metadata or {})},
            "user_parameters": {},
        }
        doc["aliases"][key] = key
        _write_lake_catalog(lake, doc)
    return key


def unregister_entry(lake: Lake, key: str) -> None:
    """Remove entry `key` (ZONE/NAME) from the lake catalog, for an entry whose store is gone."""
    with catalog_lock(lake):
        doc = editable_lake_catalog(lake)
        entry = doc["entries"].pop(key, None)
        match = _DATA_REF.match(str(((entry or {}).get("kwargs") or {}).get("args", [None])[0]))
        if match:
            doc["data"].pop(match["key"], None)
        doc["aliases"].pop(key, None)
        _write_lake_catalog(lake, doc)


def _write_lake_catalog(lake: Lake, doc: dict[str, Any]) -> None:
    writer = YAML(typ="safe", pure=True)
    writer.default_flow_style = False
    buffer = StringIO()
    writer.dump(doc, buffer)
    lake.write_bytes_atomic(lake.path(LAKE_CATALOG_FILE), buffer.getvalue().encode())


def publish_entry(lake: Lake, tmp_path: str, zone: str, name: str, description: str = "",
                  metadata: dict[str, Any] | None = None, known_digests: dict[str, str] | None = None) -> str:
    """Make a finished store visible: checksum it, move it into place, list it in the lake catalog.

    Under the entry's lock: a run reading the entry (a shared lock) finishes before it is replaced.
    Each step is recorded first (storage.PublishRecord), so a publish that a kill cut short is
    finished or undone by the next one (here, or `finish_interrupted_publishes`).
    """
    key = f"{zone}/{name}"
    with output_locks(lake, [key], f"publish {key}"):
        editable_lake_catalog(lake)
        for interrupted in lake.interrupted_publishes(key):
            settle_publish(lake, interrupted)
        record = lake.move_into_place(tmp_path, zone, name, known_digests,
                                      {"description": description, "metadata": metadata or {}})
        try:
            register_entry(lake, zone, name, description, metadata)
        except Exception:  # (a full disk) renames only: the store back to staging, the old one in place
            lake.move_tree(lake.entry_path(zone, name), tmp_path)
            lake.settle_publish(record)
            raise
        lake.finish_publish(record)
    return key


def finish_interrupted_publishes(lake: Lake) -> list[str]:
    """Finish or undo every publish a killed ingest or run left half done; return their entry keys.

    A publish whose entry lock is held is still in progress and left alone. Object stores have
    no locks, so there a live publish cannot be told from a dead one: `replicalake doctor
    --repair` settles them, when no writer runs.
    """
    if not lake.is_local:
        return []
    settled = []
    for record in lake.interrupted_publishes():
        try:
            with file_lock(lake, record.key, "finish an interrupted publish", timeout=0):
                if lake.fs.exists(record.file):  # not finished while we took the lock
                    settle_publish(lake, record)
                    settled.append(record.key)
        except LockError:
            continue
    return settled


def settle_publish(lake: Lake, record: PublishRecord) -> None:
    """Finish or undo one interrupted publish (the caller holds the entry's lock)."""
    finished = lake.settle_publish(record)
    if finished:
        register_entry(lake, record.zone, record.name, **record.listing)
        lake.finish_publish(record)
    log.warning("%s the publish of %s that a killed process left half done",
                "finished" if finished else "undid", record.key)
