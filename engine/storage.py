"""The lake: a zarr tree under one root URL, with zones, atomic publishing and provenance.

Every write goes to `.tmp/` first and becomes visible by a rename, so a crashed run never leaves a
half-written entry where a reader (or the catalog) could find it; a publish is recorded before it
moves anything (PublishRecord), so a kill between its steps can be finished or undone. Every path
written goes through `Lake.writable`, which refuses to write through a link out of the lake. Each
published store carries its content token and provenance in the zarr attributes under the key
`replicalake`, with the version id the publish gave it.

History: a publish moves the entry's previous version to `.history/ZONE/NAME/VERSION/` (one rename,
recorded like every other step) instead of deleting it, so older versions stay readable
(`Lake.open(..., at=VERSION)`) until `replicalake gc` drops them (engine/history.py). The catalog
never lists them and runs never read them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import posixpath
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec
import xarray as xr

from . import config, zarr_io
from .errors import LakeError
from .integrity import write_manifest
from .links import refuse_link_out
from .names import ZONES, check_entry_name, is_inside

PROVENANCE_KEY = "replicalake"
TMP_DIR = ".tmp"
PUBLISH_DIR = "publish"  # .tmp/publish/: a record of each publish in progress (PublishRecord)
HISTORY_DIR = ".history"  # .history/ZONE/NAME/VERSION/: the earlier versions of each entry
# A version id: the UTC time of its publish (to the microsecond, so ids sort by time) and a random
# token (so two publishes in the same microsecond, or on two hosts, still differ).
VERSION_ID = re.compile(r"(?P<time>\d{8}T\d{6}\.\d{6}Z)-[0-9a-f]{6}(~[0-9a-f]{6})?")
_VERSION_TIME = "%Y%m%dT%H%M%S.%fZ"
_JSON_KINDS = {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


@dataclass(frozen=True)
class PublishRecord:
    """A publish in progress, written to .tmp/publish/ before anything moves (its paths relative to
    the lake root, so a lake moved or mounted elsewhere still settles).

    Why: a publish is several steps (move the old version to .history/, move the new one in, list
    it in the catalog, drop the record), and a process killed between two of them would leave an
    entry missing, unlisted or doubled. With the record, the next command finishes or undoes
    the publish (Lake.settle_publish) instead of leaving the lake inconsistent.
    """

    file: str
    zone: str
    name: str
    staged: str  # the store being published (gone from there once moved into place)
    retired: str | None  # where the entry's previous version is moved to (in .history/), if it had one
    listing: dict  # the catalog's description and metadata for the entry

    @property
    def key(self) -> str:
        return f"{self.zone}/{self.name}"


class Lake:
    """Paths, atomic publish and provenance lookup for one lake root (local path or fsspec URL)."""

    def __init__(self, root: str | None = None, storage_options: dict | None = None):
        self.root_url = config.lake_root(root)
        self.storage_options = storage_options or {}
        self.fs, self.root = fsspec.core.url_to_fs(self.root_url, **self.storage_options)
        self.root = self.root.rstrip("/")
        self.read_at: str | None = None  # the version `open` reads unless told (Lake.at)

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
        target = self.writable(self.entry_path(zone, name))
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

    def writable(self, path: str) -> str:
        """`path`, once checked to be writable without leaving the lake through a symbolic link
        (engine/links.py); every path the lake writes to goes through here. Object stores have
        no links."""
        return refuse_link_out(self.root, path) if self.is_local else path

    def url(self, path: str) -> str:
        """A URL xarray/zarr can open for a filesystem path of this lake."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def entry_url(self, zone: str, name: str) -> str:
        return self.url(self.entry_path(zone, name))

    # -- reading -------------------------------------------------------------------------
    def exists(self, zone: str, name: str) -> bool:
        return self.fs.exists(self.entry_path(zone, name) + "/zarr.json")

    def open(self, zone: str, name: str, chunks: dict | None = None, at: str | None = None) -> xr.Dataset:
        """Open a published entry lazily (dask-backed, on-disk chunking unless `chunks`); `at`: the
        version with that id (the current one or one kept in .history/; default: the lake's
        `read_at`, else the current version)."""
        at = at or self.read_at
        if at is not None:
            path = self.version_path(zone, name, at)
        elif not self.exists(zone, name):
            raise LakeError(f"no entry {zone}/{name} in the lake at {self.root_url!r}")
        else:
            path = self.entry_path(zone, name)
        return self.open_store(path, chunks)

    def open_store(self, path: str, chunks: dict | None = None) -> xr.Dataset:
        """Open the zarr store at `path` in this lake lazily (a published entry's, or one a run has
        staged and not yet published: engine/runner.py reads earlier waves' outputs from there)."""
        return zarr_io.open_dataset(self.url(path), consolidated=False,
                                    chunks=chunks if chunks is not None else {},
                                    storage_options=None if self.is_local else self.storage_options)

    def at(self, version: str) -> Lake:
        """This lake, reading version `version` wherever an entry is opened without `at`: for code
        that opens one entry by name (an export) and should read an older version of it. Version
        ids are unique, so opening any other entry through it fails, naming the versions it has."""
        self.check_version_id(version)
        pinned = copy.copy(self)
        pinned.read_at = version
        return pinned

    # -- history -------------------------------------------------------------------------
    def history_path(self, zone: str, name: str, version: str | None = None) -> str:
        """.history/ZONE/NAME (the entry's earlier versions), or one version's store in it."""
        check_entry_name(zone, name)
        if version is not None:
            self.check_version_id(version)
        return self.path(HISTORY_DIR, zone, name, *([version] if version else []))

    @staticmethod
    def check_version_id(version: str) -> str:
        if not isinstance(version, str) or not VERSION_ID.fullmatch(version):
            raise LakeError(f"version {version!r}: expected a version id like 20261205T004233.123456Z-1a2b3c "
                            "(`replicalake log ENTRY` lists an entry's versions)")
        return version

    def history_versions(self, zone: str, name: str) -> list[str]:
        """Version ids kept in .history/ for the entry, newest first (whole stores or not); none
        for a name publish refuses (a catalog written before names were checked may list one)."""
        try:
            folder = self.history_path(zone, name)
        except LakeError:
            return []
        if not self.fs.isdir(folder):
            return []
        found = (posixpath.basename(path.rstrip("/")) for path in self.fs.ls(folder, detail=False))
        return sorted((version for version in found if VERSION_ID.fullmatch(version)), reverse=True)

    def store_version(self, path: str) -> str:
        """Version id of the store at `path`: the one its publish recorded; for a store published
        before versions were recorded, one made from its manifest's time and its token."""
        try:
            recorded = (self.attributes(path).get(PROVENANCE_KEY) or {}).get("version")
        except LakeError:  # a damaged root zarr.json: still a version to keep
            recorded = None
        if isinstance(recorded, str) and VERSION_ID.fullmatch(recorded):
            return recorded
        stamp = None
        for file in (f"{path}/_integrity/zarr.json", f"{path}/zarr.json"):
            try:
                info = self.fs.info(file)
            except FileNotFoundError:
                continue
            stamp = info.get("mtime") or info.get("LastModified")
            break
        when = (datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, int | float)
                else stamp if isinstance(stamp, datetime) else datetime.now(UTC))
        return f"{when.strftime(_VERSION_TIME)}-{hashlib.sha256(path.encode()).hexdigest()[:6]}"

    def version_path(self, zone: str, name: str, version: str) -> str:
        """The store of version `version` of the entry: the current one, or one in .history/."""
        self.check_version_id(version)
        if self.exists(zone, name) and self.store_version(self.entry_path(zone, name)) == version:
            return self.entry_path(zone, name)
        path = self.history_path(zone, name, version)
        if self._is_store(path):
            return path
        kept = self.history_versions(zone, name)
        current = self.store_version(self.entry_path(zone, name)) if self.exists(zone, name) else None
        known = ([f"{current} (current)"] if current else []) + kept
        raise LakeError(f"no version {version!r} of {zone}/{name} in the lake at {self.root_url!r}; "
                        f"expected one of: {', '.join(known[:6]) or 'none'}"
                        f"{f' ... ({len(known) - 6} more)' if len(known) > 6 else ''} "
                        "(`replicalake log` lists them; `replicalake gc` may have dropped it)")

    def attributes(self, path: str) -> dict[str, Any]:
        """Root-group attributes of the zarr store at `path` ({} when there is none)."""
        return store_attributes(self.fs, path)

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
        return self.writable(self.path(TMP_DIR, f"{_tmp_label(label)}-{uuid.uuid4().hex[:12]}"))

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
            self.fs.makedirs(self.writable(self.path(zone)), exist_ok=True)

    def publish(self, tmp_path: str, zone: str, name: str,
                known_digests: dict[str, str] | None = None) -> str:
        """Move a finished store into place as zone/name (`move_into_place`) and clean up
        (`finish_publish`), for a store no catalog lists; returns its path."""
        self.finish_publish(self.move_into_place(tmp_path, zone, name, known_digests))
        return self.entry_path(zone, name)

    def move_into_place(self, tmp_path: str, zone: str, name: str,
                        known_digests: dict[str, str] | None = None,
                        listing: dict | None = None) -> PublishRecord:
        """Give the store a version id, record its checksums and a PublishRecord, then move the
        store from .tmp/ to zone/name, moving any older version to .history/ first; the caller
        lists the entry (`listing` says how) and then calls `finish_publish`.

        At every instant readers see either the old or the new complete store, never a mix.
        `known_digests` are chunk digests taken when the chunks were written (so the manifest
        does not read them back).
        """
        self.fs.invalidate_cache()  # object stores: listings cached while the store was written
        target = self.new_entry_path(zone, name)
        self._stamp_version(self.writable(tmp_path))
        write_manifest(self.fs, self.writable(tmp_path), known_digests)
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        retired = self._history_slot(zone, name, target) if self.fs.exists(target) else None
        made = self._make_folders(posixpath.dirname(retired)) if retired else []
        file = self.path(TMP_DIR, PUBLISH_DIR, f"{_tmp_label(f'{zone}-{name}')}-{uuid.uuid4().hex[:12]}.json")
        record = PublishRecord(file, zone, name, tmp_path, retired, listing or {})
        try:
            self.write_bytes_atomic(record.file, json.dumps({
                "zone": zone, "name": name, "staged": self._relative(tmp_path),
                "retired": retired and self._relative(retired), "listing": record.listing}).encode())
        except BaseException:  # (a full disk) nothing moved: no empty history folders either
            self._remove_empty(made)
            raise
        if retired is not None:
            self.move_tree(target, retired)
        self.move_tree(tmp_path, target)
        return record

    def finish_publish(self, record: PublishRecord) -> None:
        """The last step of a publish, once the entry is listed: drop the record (the old version
        stays in .history/ until `replicalake gc`)."""
        self.fs.rm(record.file)

    def _stamp_version(self, path: str) -> str:
        """Record a new version id in the provenance of the store at `path` (root zarr.json,
        replaced atomically: a staged store a failed publish leaves is still whole)."""
        version = f"{datetime.now(UTC).strftime(_VERSION_TIME)}-{uuid.uuid4().hex[:6]}"
        file = f"{path}/zarr.json"
        try:
            meta = json.loads(self.fs.cat_file(file))
        except (FileNotFoundError, ValueError):
            return version  # not a store zarr can read: publishing it fails, as it did before
        if not isinstance(meta, dict) or not isinstance(meta.get("attributes", {}), dict):
            return version
        attributes = meta.setdefault("attributes", {})
        provenance = attributes.get(PROVENANCE_KEY)
        provenance = provenance if isinstance(provenance, dict) else {}
        attributes[PROVENANCE_KEY] = {**provenance, "version": version}
        self.write_bytes_atomic(file, json.dumps(meta, indent=2).encode())
        return version

    def _history_slot(self, zone: str, name: str, target: str) -> str:
        """Where the current store at `target` goes in .history/: its version id (with a suffix in
        the unlikely case a folder of that id is there already)."""
        slot = self.writable(self.history_path(zone, name, self.store_version(target)))
        while self.fs.exists(slot):
            slot = f"{slot.split('~')[0]}~{uuid.uuid4().hex[:6]}"
        return slot

    def _make_folders(self, folder: str) -> list[str]:
        """Make `folder` and its missing parents (local disks); return those made, outermost
        first. Object stores have no folders."""
        if not self.is_local:
            return []
        missing = []
        while folder != self.root and not self.fs.exists(folder):
            missing.append(folder)
            folder = posixpath.dirname(folder)
        made: list[str] = []
        try:
            for path in reversed(missing):
                self.fs.makedirs(path, exist_ok=True)
                made.append(path)
        except BaseException:
            self._remove_empty(made)
            raise
        return made

    def _remove_empty(self, folders: list[str]) -> None:
        """Remove those of `folders` that are empty, innermost first (local disks)."""
        for folder in sorted(folders, key=len, reverse=True):
            try:
                if self.fs.isdir(folder) and not self.fs.ls(folder):
                    self.fs.rmdir(folder)
            except OSError:
                pass

    def prune_history_folders(self, zone: str, name: str) -> None:
        """Remove the entry's history folder and the ones above it up to .history/ when empty."""
        if not self.is_local:
            return
        folder, folders = self.history_path(zone, name), []
        while folder != self.root:
            folders.append(folder)
            folder = posixpath.dirname(folder)
        self._remove_empty(folders)

    def interrupted_publishes(self, key: str | None = None) -> list[PublishRecord]:
        """The publishes whose records are still in .tmp/publish/ (of entry `key` only, if given):
        in progress, or left half done by a killed process (the caller tells which by the entry's lock)."""
        folder = self.path(TMP_DIR, PUBLISH_DIR)
        if not self.fs.exists(folder):
            return []
        records = [self._read_record(path) for path in sorted(self.fs.ls(folder, detail=False))
                   if path.endswith(".json")]
        return [record for record in records if key is None or record.key == key]

    def settle_publish(self, record: PublishRecord) -> bool:
        """Finish or undo a publish a killed process left half done (the caller holds the entry's lock).

        True when the entry holds the published store and is still to be listed (the caller
        lists it, then calls `finish_publish`); False when the lake was put back as it was before
        the publish began (the record is removed; the staged store stays where its owner left it:
        a run resumes from it, an ingest's next attempt removes it).
        """
        target = self.entry_path(record.zone, record.name)
        staged, moved_in, aside = (self._is_store(path) for path in (record.staged, target, record.retired))
        if moved_in and (not staged or self._token(record.staged) == self._token(target)):
            self.discard(record.staged)  # object stores: a copy into place whose source was not yet removed
            return True
        if not moved_in and aside:
            self.discard(target)  # object stores: what a cut-short copy into place got through
            self.move_tree(record.retired, target)
        elif record.retired is not None:
            self.discard(record.retired)  # object stores: a cut-short copy aside; the entry is whole
        self.prune_history_folders(record.zone, record.name)  # made for this publish, now empty
        self.fs.rm(record.file)
        return False

    def _is_store(self, path: str | None) -> bool:
        return path is not None and self.fs.exists(f"{path}/zarr.json")

    def _token(self, path: str) -> str | None:
        return (self.attributes(path).get(PROVENANCE_KEY) or {}).get("token")

    def _relative(self, path: str) -> str:
        return posixpath.relpath(path, self.root)

    def _read_record(self, file: str) -> PublishRecord:
        try:
            data = json.loads(self.fs.cat_file(file))
            return PublishRecord(file, data["zone"], data["name"], self.path(data["staged"]),
                                 data["retired"] and self.path(data["retired"]), data["listing"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LakeError(f"{file}: expected a publish record written by replicalake (JSON with zone, "
                            f"name, staged, retired, listing), found {type(exc).__name__}: {exc}; remove "
                            "it if no ingest or run is publishing") from None

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
        self.fs.makedirs(posixpath.dirname(self.writable(path)), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with self.fs.open(tmp, "wb") as handle:
                handle.write(data)
            self.fs.mv(tmp, path)
        except BaseException:  # a full disk: no half-written .tmp beside the file
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise


def _tmp_label(label: str) -> str:
    return label.replace("/", "__")


def store_attributes(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    """Root-group attributes of the zarr store at `path` ({} when there is none).

    Why not let zarr read it: a root `zarr.json` that is not a JSON object makes zarr fail with
    a TypeError deep inside; here it is a LakeError naming the file and what it holds.
    """
    file = f"{path}/zarr.json"
    try:
        data = fs.cat_file(file)
    except FileNotFoundError:
        return {}
    try:
        meta = json.loads(data)
    except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError)
        meta = None
        found = f"{len(data)} bytes that are not JSON"
    else:
        found = (f"a JSON {_JSON_KINDS.get(type(meta), 'value')}" if not isinstance(meta, dict)
                 else "an object whose 'attributes' are not an object")
    if not isinstance(meta, dict) or not isinstance(meta.get("attributes", {}), dict):
        raise LakeError(f"{file}: expected a zarr store's metadata (a JSON object with an 'attributes' "
                        f"object), found {found}; re-ingest or recompute this entry")
    return meta.get("attributes", {})


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
