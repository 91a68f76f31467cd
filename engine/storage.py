"""The lake: a zarr tree under one root URL, with zones, atomic publishing and provenance.

Every write goes to `.tmp/` first and becomes visible by a rename, so a crashed run never leaves a
half-written entry where a reader (or the catalog) could find it. Each published store carries its
content token and provenance in the zarr attributes under the key `replicalake`.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import uuid
from typing import Any

import fsspec
import xarray as xr

from . import config
from .errors import LakeError
from .integrity import write_manifest
from .names import ZONES, check_entry_name, is_inside

PROVENANCE_KEY = "replicalake"
TMP_DIR = ".tmp"


class Lake:
    """Paths, atomic publish and provenance lookup for one lake root (local path or fsspec URL)."""

    def __init__(self, root: str | None = None, storage_options: dict | None = None):
        self.root_url = config.lake_root(root)
        self.storage_options = storage_options or {}
        self.fs, self.root = fsspec.core.url_to_fs(self.root_url, **self.storage_options)
        self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"Lake({self.root_url!r})"

    @property
    def is_local(self) -> bool:
        return "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    # -- paths ---------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """Filesystem path of `parts` under the root; refuses anything that would leave it."""
        relative = posixpath.normpath(posixpath.join(*parts)) if parts else "."
        if relative.startswith("/") or relative == ".." or relative.startswith("../"):
            raise LakeError(f"path {'/'.join(parts)!r} escapes the lake root {self.root_url!r}")
        return self.root if relative == "." else f"{self.root}/{relative}"

    def entry_path(self, zone: str, name: str) -> str:
        """Path of entry `name` in `zone`, after engine.names has checked both."""
        check_entry_name(zone, name)
        return self.path(zone, name)

    def new_entry_path(self, zone: str, name: str) -> str:
        """Path `name` will be published at, refusing a name inside another entry or around one.

        Publishing replaces the folder at the path whole and writes a checksum manifest into it,
        so a name inside an entry (`ramp/sub`) would overwrite that entry's files, and a name
        around entries (`ramp` over `ramp/sub`) would delete them, while the catalog still lists
        them under their own keys.
        """
        target = self.entry_path(zone, name)
        parts = name.split("/")
        for outer in ("/".join(parts[:depth]) for depth in range(1, len(parts))):
            if self.exists(zone, outer):
                raise LakeError(f"lake entry name {name!r} lies inside the existing entry {zone}/{outer}; "
                                "expected a name outside every entry")
        if not self.exists(zone, name):
            stores = [posixpath.dirname(path) for path in self.fs.find(target)
                      if posixpath.basename(path) == "zarr.json"]
            inner = sorted(path for path in stores if not any(is_inside(path, other) and path != other
                                                              for other in stores))
            if inner:
                found = ", ".join(f"{zone}/{posixpath.relpath(path, self.path(zone))}" for path in inner)
                raise LakeError(f"lake entry name {name!r} would replace the folder {zone}/{name}, "
                                f"which holds the entries {found}; expected a name outside every entry")
        return target

    def url(self, path: str) -> str:
        """A URL xarray/zarr can open for a filesystem path of this lake."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def entry_url(self, zone: str, name: str) -> str:
        return self.url(self.entry_path(zone, name))

    # -- reading -------------------------------------------------------------------------
    def exists(self, zone: str, name: str) -> bool:
        return self.fs.exists(self.entry_path(zone, name) + "/zarr.json")

    def open(self, zone: str, name: str, chunks: dict | None = None) -> xr.Dataset:
        """Open a published entry lazily (dask-backed, on-disk chunking unless `chunks`)."""
        if not self.exists(zone, name):
            raise LakeError(f"no entry {zone}/{name} in the lake at {self.root_url!r}")
        return xr.open_zarr(self.entry_url(zone, name), consolidated=False,
                            chunks=chunks if chunks is not None else {},
                            storage_options=None if self.is_local else self.storage_options)

    def attributes(self, path: str) -> dict[str, Any]:
        """Root-group attributes of the zarr store at `path` ({} when there is none)."""
        try:
            meta = json.loads(self.fs.cat_file(path + "/zarr.json"))
        except FileNotFoundError:
            return {}
        return meta.get("attributes", {})

    def provenance(self, zone: str, name: str) -> dict[str, Any] | None:
        return self.attributes(self.entry_path(zone, name)).get(PROVENANCE_KEY)

    def token(self, zone: str, name: str) -> str | None:
        """Content token recorded when the entry was published, or None if absent."""
        prov = self.provenance(zone, name)
        return prov.get("token") if prov else None

    def size(self, path: str) -> int:
        return sum(info["size"] for info in self.fs.find(path, detail=True).values())

    # -- writing -------------------------------------------------------------------------
    def new_tmp_path(self, label: str) -> str:
        """A fresh folder under .tmp/ for work in progress (never in the catalog)."""
        return self.path(TMP_DIR, f"{_tmp_label(label)}-{uuid.uuid4().hex[:12]}")

    def tmp_paths(self, label: str) -> list[str]:
        """The folders `new_tmp_path(label)` made that are still under .tmp/ (that label only)."""
        folder = self.path(TMP_DIR)
        if not self.fs.exists(folder):
            return []
        pattern = re.compile(re.escape(_tmp_label(label)) + r"-[0-9a-f]{12}")
        return sorted(path for path in self.fs.ls(folder, detail=False)
                      if pattern.fullmatch(posixpath.basename(path.rstrip("/"))))

    def ensure_zones(self) -> None:
        for zone in ZONES:
            self.fs.makedirs(self.path(zone), exist_ok=True)

    def publish(self, tmp_path: str, zone: str, name: str,
                known_digests: dict[str, str] | None = None) -> str:
        """Record the store's checksums, then move it from .tmp/ to zone/name, replacing any older one.

        The old version is first moved aside, so at every instant readers see either the old
        or the new complete store, never a mix. `known_digests` are chunk digests taken when
        the chunks were written (so the manifest does not read them back).
        """
        self.fs.invalidate_cache()  # object stores: listings cached while the store was written
        target = self.new_entry_path(zone, name)
        write_manifest(self.fs, tmp_path, known_digests)
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        retired = None
        if self.fs.exists(target):
            retired = self.new_tmp_path(f"retired-{zone}-{name}")
            self.move_tree(target, retired)
        self.move_tree(tmp_path, target)
        if retired is not None:
            self.fs.rm(retired, recursive=True)
        return target

    def move_tree(self, source: str, target: str) -> None:
        """Move a store: one rename on local disks; on object stores, a copy of every object with
        the root `zarr.json` last (a store is only seen to exist once that object is there), then
        removal of the source. Object stores have no atomic rename of a folder."""
        if self.is_local:
            self.fs.mv(source, target, recursive=True)
            return
        self.fs.invalidate_cache()
        files = sorted(self.fs.find(source), key=lambda path: path == f"{source}/zarr.json")
        for path in files:
            self.fs.copy(path, f"{target}/{posixpath.relpath(path, source)}")
        self.fs.rm(source, recursive=True)
        self.fs.invalidate_cache()

    def discard(self, tmp_path: str) -> None:
        if self.fs.exists(tmp_path):
            self.fs.rm(tmp_path, recursive=True)

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Write a small file (catalog, PNG) so readers see the old or the new file, never half."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open(tmp, "wb") as handle:
            handle.write(data)
        self.fs.mv(tmp, path)


def _tmp_label(label: str) -> str:
    return label.replace("/", "__")


def listing_token(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Token of a store nobody recorded one for: its metadata plus every file's size and stamp.

    Cheap (one listing, no chunk reads) and changes whenever a chunk is rewritten or added.
    """
    digest = hashlib.sha256()
    try:
        files = fs.find(path, detail=True)
    except FileNotFoundError:
        return "missing"
    for name in sorted(files):
        info = files[name]
        stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or ""
        digest.update(f"{posixpath.relpath(name, path)}|{info['size']}|{stamp}\n".encode())
        if name.endswith("zarr.json"):
            digest.update(fs.cat_file(name))
    return digest.hexdigest()[:32]


def content_token(*parts: Any) -> str:
    """Deterministic token of JSON-able parts (op name, params, input tokens, versions)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]
