"""Lake history: the versions of each entry, as `replicalake log` shows them and `gc` drops them.

Each publish moves the entry's previous store to `.history/ZONE/NAME/VERSION/` (engine/storage.py,
crash-safe through the publish record) and gives the new one a version id: the UTC time of the
publish and a random token, so ids sort by time and never repeat. A version's provenance is the
one its publish stored (recipe, step, op, params, input tokens, code fingerprints), read here from
its root zarr.json. The lake catalog lists only the current version, and runs never read history;
`--at VERSION` (export, `Lake.open`, `rl.open_lake(...).open(name, at=...)`) reads an older one.

Why history is a folder beside the zones and not an Icechunk repository: see the README ("The
lake", measured by tests/benchmarks/bench_history.py).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import LakeError
from .names import ZONES
from .storage import HISTORY_DIR, PROVENANCE_KEY, VERSION_ID, Lake, content_token


@dataclass
class Version:
    """One version of an entry: its id, whether it is the current one, where it is, its provenance."""

    key: str
    version: str
    current: bool
    path: str
    provenance: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why its provenance could not be read (a damaged zarr.json)

    @property
    def published(self) -> str:
        """The UTC time of the publish, from the version id (ISO 8601)."""
        stamp = VERSION_ID.fullmatch(self.version)["time"]
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC).isoformat()

    @property
    def made_by(self) -> str:
        """'recipe R, step S (op O)' or 'ingest I' or '-' from the provenance."""
        prov = self.provenance
        if prov.get("recipe"):
            return f"recipe {prov['recipe']}, step {prov.get('step')} (op {prov.get('op')})"
        if prov.get("ingest"):
            return f"ingest {prov['ingest']}"
        return "-"

    @property
    def params_digest(self) -> str | None:
        """Short digest of the step's params and the run's recipe params (None for an ingest)."""
        prov = self.provenance
        if "params" not in prov and not prov.get("recipe_params"):
            return None
        return content_token(prov.get("params"), prov.get("recipe_params"))[:12]

    def to_dict(self) -> dict[str, Any]:
        prov = self.provenance
        return {
            "entry": self.key,
            "version": self.version,
            "current": self.current,
            "published": self.published,
            "path": self.path,
            "made_by": self.made_by,
            "recipe": prov.get("recipe"),
            "recipe_path": prov.get("recipe_path"),
            "recipe_hash": prov.get("recipe_hash"),
            "step": prov.get("step"),
            "op": prov.get("op"),
            "op_version": prov.get("op_version"),
            "params_digest": self.params_digest,
            "params": prov.get("params"),
            "recipe_params": prov.get("recipe_params"),
            "token": prov.get("token"),
            "code": prov.get("code"),
            "inputs": prov.get("inputs"),
            "ingest": prov.get("ingest"),
            "problem": self.problem,
        }


def versions(lake: Lake, key: str) -> list[Version]:
    """Every version of entry `key` (ZONE/NAME) the lake holds, newest first, the current one
    marked; a LakeError when it holds none (no entry and no history)."""
    zone, name = split_key(key)
    found = []
    if lake.exists(zone, name):
        path = lake.entry_path(zone, name)
        found.append(_version(lake, key, lake.store_version(path), True, path))
    for version in lake.history_versions(zone, name):
        path = lake.history_path(zone, name, version)
        if lake.fs.exists(f"{path}/zarr.json"):  # (a cut-short copy on an object store: doctor's)
            found.append(_version(lake, key, version, False, path))
    if not found:
        raise LakeError(f"no entry {key!r} and no history of it in the lake at {lake.root_url!r}")
    return sorted(found, key=lambda item: (item.version, item.current), reverse=True)


def _version(lake: Lake, key: str, version: str, current: bool, path: str) -> Version:
    try:
        provenance, problem = lake.attributes(path).get(PROVENANCE_KEY) or {}, None
    except LakeError as exc:
        provenance, problem = {}, str(exc)
    return Version(key, version, current, path, provenance if isinstance(provenance, dict) else {}, problem)


def split_key(key: str) -> tuple[str, str]:
    """ZONE and NAME of an entry key, checked."""
    zone, _, name = key.partition("/")
    if zone not in ZONES or not name:
        raise LakeError(f"lake entry {key!r}: expected ZONE/NAME with ZONE one of {', '.join(ZONES)}")
    return zone, name


def entries_with_history(lake: Lake) -> list[str]:
    """Keys of the entries that have versions in .history/, sorted (folders are walked down to
    the version folders, never into the stores)."""
    keys = set()
    for zone in ZONES:
        root = lake.path(HISTORY_DIR, zone)
        folders = [root] if lake.fs.isdir(root) else []
        while folders:
            folder = folders.pop()
            for info in lake.fs.ls(folder, detail=True):
                path = info["name"].rstrip("/")
                if info["type"] != "directory":
                    continue
                if VERSION_ID.fullmatch(posixpath.basename(path)) and folder != root:
                    keys.add(f"{zone}/{posixpath.relpath(folder, root)}")
                else:
                    folders.append(path)
    return sorted(keys)


def history_size(lake: Lake, key: str) -> int:
    """Bytes the entry's history takes on disk."""
    zone, name = split_key(key)
    folder = lake.history_path(zone, name)
    return lake.size(folder) if lake.fs.isdir(folder) else 0


def beyond(lake: Lake, key: str, keep: int) -> list[str]:
    """Paths of the entry's history versions older than the newest `keep` (whole stores or not)."""
    if keep < 0:
        raise LakeError(f"--keep {keep}: expected a number of versions >= 0")
    zone, name = split_key(key)
    return [lake.history_path(zone, name, version) for version in lake.history_versions(zone, name)[keep:]]


def drop(lake: Lake, key: str, paths: list[str]) -> None:
    """Remove history versions of `key` (the caller holds the entry's lock), then empty folders."""
    zone, name = split_key(key)
    for path in paths:
        lake.discard(path)
    lake.prune_history_folders(zone, name)
