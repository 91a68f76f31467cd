"""Checksums of published stores, and finding the chunk that is damaged.

Every published store carries a manifest: the blake2b digest of each of its files, recorded when
it was published, kept in the attributes of a small `_integrity` zarr group inside the store
(a group, not a loose file, so zarr and xarray see a valid hierarchy and simply skip it).
`find_damage` compares a store with its manifest and names each damaged file as an array and a
chunk index, which is what a person can act on ("re-ingest raw/x", "chunk (3, 1) of counts").
Stores without a manifest (hand-written catalogs, entries published before manifests) are
checked against their arrays' metadata instead (every chunk it implies must be there) and by
decoding every chunk; for a lake entry, which always gets one at publish, a missing manifest is
damage itself.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import posixpath
from dataclasses import dataclass

import fsspec
import zarr

from .errors import LakeError

MANIFEST_GROUP = "_integrity"
MANIFEST_FILE = f"{MANIFEST_GROUP}/zarr.json"
_NOT_A_MANIFEST = ("expected a checksum manifest (JSON attributes.files: {file: {digest, size}}), "
                   "found bytes that are not one")
ALGORITHM = "blake2b-128"


@dataclass(frozen=True)
class Damage:
    """One damaged file of a store: which array and chunk it holds and what is wrong."""

    store: str
    file: str
    problem: str

    @property
    def location(self) -> str:
        """'array counts, chunk (3, 1)' for chunk files, else the file name."""
        parts = self.file.split("/")
        if "c" in parts and parts[-1] != "zarr.json":
            at = parts.index("c")
            index = ", ".join(parts[at + 1:]) or "0"
            return f"array {'/'.join(parts[:at])!r}, chunk ({index})"
        return f"metadata file {self.file!r}"

    def __str__(self) -> str:
        return f"{self.store}: {self.location}: {self.problem}"


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def store_files(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, int]:
    """Size of every file of the store (by path relative to it), its manifest left out."""
    fs.invalidate_cache(path)  # object stores: listings cached before the last writes
    found = fs.find(path, detail=True)
    sizes = {posixpath.relpath(name, path): int(info["size"]) for name, info in found.items()}
    return {name: size for name, size in sorted(sizes.items()) if name.split("/")[0] != MANIFEST_GROUP}


def write_manifest(fs: fsspec.AbstractFileSystem, path: str, known: dict[str, str] | None = None) -> int:
    """Record the digest and size of every file of the store at `path`; return how many files.

    `known` holds digests computed when the chunks were written (the runner's chunk records),
    so a finished output is not read back whole a second time.
    """
    known = known or {}
    files = {name: {"digest": known.get(name) or digest(fs.cat_file(f"{path}/{name}")), "size": size}
             for name, size in store_files(fs, path).items()}
    meta = {"zarr_format": 3, "node_type": "group",
            "attributes": {"algorithm": ALGORITHM, "files": files}}
    fs.makedirs(f"{path}/{MANIFEST_GROUP}", exist_ok=True)
    fs.pipe_file(f"{path}/{MANIFEST_FILE}", json.dumps(meta).encode())
    return len(files)


def read_manifest(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, dict] | None:
    """{file: {"digest", "size"}} recorded at publish, or None for a store without a manifest.

    A manifest that cannot be read as one is a LakeError naming it (an empty one is a
    manifest of no files, which the listing check then finds wrong)."""
    file = f"{path}/{MANIFEST_FILE}"
    try:
        data = fs.cat_file(file)
    except FileNotFoundError:
        return None
    try:
        files = json.loads(data)["attributes"]["files"]
        if isinstance(files, dict) and all(isinstance(f, dict) and {"digest", "size"} <= set(f)
                                           for f in files.values()):
            return files
    except (ValueError, KeyError, TypeError):  # not JSON or not UTF-8 (both ValueError), wrong shape
        pass
    raise LakeError(f"{file}: {_NOT_A_MANIFEST}")


def find_damage(fs: fsspec.AbstractFileSystem, path: str, label: str | None = None,
                quick: bool = False, require_manifest: bool = False) -> list[Damage]:
    """Every damaged file of the store at `path`: changed, missing or unexpected chunks.

    With a manifest, each file's digest is compared; without one, every chunk the arrays'
    metadata implies must be there and, unless `quick`, decode. `quick` compares only the
    listing (names and sizes) with the manifest: one listing, no chunk reads, so a run can
    afford it before it starts; it finds missing, truncated and stray chunks, not a flipped bit
    (that takes the full check). `require_manifest`: a store the engine published always has
    one, so its absence is damage too (a deleted chunk could not otherwise be told from one
    zarr left unwritten because it held only the fill value).
    """
    label = label or path
    present = store_files(fs, path)
    try:
        manifest = read_manifest(fs, path)
    except LakeError:
        return [Damage(label, MANIFEST_FILE, _NOT_A_MANIFEST),
                *_chunks_without_manifest(fs, path, label, present, quick)]
    if manifest is None:
        missing = "missing: no checksum manifest, so a deleted chunk cannot be told from an unwritten one"
        damage = [Damage(label, MANIFEST_FILE, missing)] if require_manifest else []
        return damage + _chunks_without_manifest(fs, path, label, present, quick)
    damage = []
    for name, recorded in manifest.items():
        if name not in present:
            damage.append(Damage(label, name, "missing (listed in the manifest)"))
        elif present[name] != recorded["size"]:
            damage.append(Damage(label, name, f"{present[name]} bytes, {recorded['size']} at publish "
                                              "(truncated or rewritten)"))
        elif not quick and digest(fs.cat_file(f"{path}/{name}")) != recorded["digest"]:
            damage.append(Damage(label, name, "checksum differs from the one recorded at publish"))
    for name in sorted(set(present) - set(manifest)):
        damage.append(Damage(label, name, "not in the manifest (written after publish)"))
    return damage


def _chunks_without_manifest(fs: fsspec.AbstractFileSystem, path: str, label: str, present: dict[str, int],
                             quick: bool) -> list[Damage]:
    """Chunks of a store without a manifest that its arrays' metadata implies but the listing
    lacks (zarr would read them as fill value) and, unless `quick`, chunks that do not decode."""
    url = path if "file" in _protocols(fs) else fs.unstrip_protocol(path)
    try:
        arrays = [(name, node) for name, node in zarr.open_group(url, mode="r").members(max_depth=None)
                  if isinstance(node, zarr.Array)]
    except Exception as exc:  # noqa: BLE001 - any failure to open is the damage we report
        return [Damage(label, "zarr.json", f"cannot be opened: {type(exc).__name__}: {exc}")]
    damage = []
    for name, array in arrays:
        for index in _chunk_indices(array):
            file = f"{name}/{array.metadata.encode_chunk_key(index)}"
            if file not in present:
                damage.append(Damage(label, file, "missing (its array's metadata implies it, and no "
                                                  "manifest says it was left unwritten as all fill value)"))
                continue
            if quick:
                continue
            region = tuple(slice(i * c, min((i + 1) * c, n))
                           for i, c, n in zip(index, array.chunks, array.shape, strict=True))
            try:
                array[region]
            except Exception as exc:  # noqa: BLE001 - codec errors have no common base class
                damage.append(Damage(label, file, f"cannot be decoded: {type(exc).__name__}"))
    return damage


def _chunk_indices(array: zarr.Array):
    grid = [-(-n // c) for n, c in zip(array.shape, array.chunks, strict=True)]
    return itertools.product(*(range(g) for g in grid))


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
