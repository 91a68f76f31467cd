"""Catalogs: open named inputs lazily, and keep the lake's own catalog of published entries.

Catalog files are native Intake 2 catalogs (`version: 2`, `data:` + `entries:` with
XArrayDatasetReader over Zarr), so plain `intake.from_yaml_file(...)` opens them. The engine
reads them with its own small model rather than through Intake, because Intake expands templates
in one pass and hides typos: here `{lake}` is the configured lake root, `{CATALOG_DIR}` the
catalog's folder, and a missing entry or store is a clear error naming the file and line.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import fsspec
import xarray as xr
from ruamel.yaml import YAML

from .config import catalog_dir
from .errors import CatalogError, Problem, did_you_mean
from .locks import catalog_lock, output_locks
from .names import LAKE_CATALOG, LAKE_CATALOG_FILE, catalog_name_problem
from .recipe import parse_yaml
from .storage import PROVENANCE_KEY, Lake, listing_token

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


def parse_catalog(text: str, path: str, name: str, substitutions: dict[str, str]) -> Catalog:
    """Parse an Intake 2 catalog text into entries with resolved URLs."""
    data, lines = parse_yaml(text, path, CatalogError)
    problems: list[Problem] = []
    if not isinstance(data, dict) or data.get("version") != 2:
        found = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise CatalogError([Problem(f"expected an Intake 2 catalog ('version: 2'), found {found!r}",
                                    path, 1, "version")], f"catalog {name!r}")
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
        path = lake.path(LAKE_CATALOG_FILE)
        if not lake.fs.exists(path):
            return Catalog(LAKE_CATALOG, lake.url(path), {})
        text = lake.fs.cat_file(path).decode()
        return parse_catalog(text, lake.url(path), name,
                             {"CATALOG_DIR": lake.url(lake.root), "lake": lake.url(lake.root)})
    folder = catalog_dir(catalogs)
    problem = catalog_name_problem(name)
    if problem:  # a name is a plain stem: never a path to some other *.yaml file
        raise CatalogError([Problem(f"catalog name {name!r} {problem}", str(folder))], "catalogs")
    path = folder / f"{name}.yaml"
    if not path.is_file():
        choices = available_catalogs(folder)
        raise CatalogError([Problem(f"no catalog {name!r}{did_you_mean(name, choices)}; "
                                    f"available: {', '.join(choices)}", str(path))], "catalogs")
    return parse_catalog(path.read_text(), str(path), name,
                         {"CATALOG_DIR": str(folder.resolve()), "lake": lake.url(lake.root)})


def open_entry(entry: CatalogEntry, lake: Lake, chunks: dict[str, int] | None = None) -> xr.Dataset:
    """Open an entry lazily as a dask-backed Dataset (on-disk chunking unless `chunks`)."""
    fs, path = filesystem_for(entry.url, lake)
    if not fs.exists(posixpath.join(path, "zarr.json")):
        raise FileNotFoundError(f"entry {entry.name!r} points at {entry.url}, which holds no zarr store")
    kwargs = {"consolidated": False, **entry.open_kwargs}
    kwargs["chunks"] = chunks if chunks is not None else (kwargs.get("chunks") or {})
    return xr.open_zarr(entry.url, **kwargs)


def entry_token(entry: CatalogEntry, lake: Lake) -> str:
    """Content token of an entry: the one recorded at publish time, else a listing token."""
    fs, path = filesystem_for(entry.url, lake)
    try:
        attrs = json.loads(fs.cat_file(posixpath.join(path, "zarr.json"))).get("attributes", {})
    except FileNotFoundError:
        return "missing"
    recorded = (attrs.get(PROVENANCE_KEY) or {}).get("token")
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


def register_entry(lake: Lake, zone: str, name: str, description: str = "",
                   metadata: dict[str, Any] | None = None) -> str:
    """Add or replace `zone/name` in the lake catalog (written atomically); return its key.

    The name is checked here too because it becomes a key and a `{...}`-templated URL.
    """
    lake.entry_path(zone, name)
    key = f"{zone}/{name}"
    data_key = key.replace("/", "__")
    path = lake.path(LAKE_CATALOG_FILE)
    with catalog_lock(lake):
        if lake.fs.exists(path):  # parsed like every catalog: plain data only, tags refused
            doc = parse_yaml(lake.fs.cat_file(path).decode(), lake.url(path), CatalogError)[0]
        else:
            doc = _empty_lake_catalog()
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
        writer = YAML(typ="safe", pure=True)
        writer.default_flow_style = False
        buffer = StringIO()
        writer.dump(doc, buffer)
        lake.write_bytes_atomic(path, buffer.getvalue().encode())
    return key


def publish_entry(lake: Lake, tmp_path: str, zone: str, name: str, description: str = "",
                  metadata: dict[str, Any] | None = None, known_digests: dict[str, str] | None = None) -> str:
    """Make a finished store visible: checksum it, rename into place, list it in the lake catalog.

    Under the entry's lock: a run reading the entry (a shared lock) finishes before it is replaced.
    """
    with output_locks(lake, [f"{zone}/{name}"], f"publish {zone}/{name}"):
        lake.publish(tmp_path, zone, name, known_digests)
    return register_entry(lake, zone, name, description, metadata)
