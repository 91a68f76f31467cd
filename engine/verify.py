"""`replicalake verify`: check lake entries against the checksums recorded when they were published.

With `history`, the versions of those entries kept in `.history/` too (each carries the manifest
of its own publish; a history move is a rename, so it still matches). Without, they are skipped
and counted (`skipped_history`), since runs never read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalog import LAKE_CATALOG, filesystem_for, load_catalog
from .errors import LakeError, did_you_mean
from .history import split_key
from .integrity import Damage, find_damage, read_manifest
from .names import LAKE_CATALOG_FILE, entry_key_problem
from .storage import Lake


@dataclass
class EntryReport:
    entry: str
    files: int
    checked_by: str  # "manifest" or "decoding" (no manifest was recorded)
    damage: list[Damage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage

    @property
    def status(self) -> str:
        state = "ok" if self.ok else f"DAMAGED ({len(self.damage)} files)"
        return state if self.checked_by == "manifest" else f"{state}, no manifest: every chunk decoded"

    def to_dict(self) -> dict:
        return {"entry": self.entry, "ok": self.ok, "files": self.files, "checked_by": self.checked_by,
                "damage": [{"location": d.location, "file": d.file, "problem": d.problem}
                           for d in self.damage]}


def verify_entries(lake: Lake, names: list[str], history: bool = False) -> list[EntryReport]:
    """Check the named entries (default: every entry of the lake catalog), and with `history` the
    versions of them kept in .history/ (reported as ZONE/NAME@VERSION).

    A lake without its catalog file is an error, not an empty success: every published entry is
    listed there, so "nothing to check" would hide a lost catalog.
    """
    catalog = load_catalog(LAKE_CATALOG, lake)
    if not lake.fs.exists(lake.path(LAKE_CATALOG_FILE)):
        raise LakeError(f"no lake catalog at {catalog.path}: the lake lists no entries to verify; "
                        "expected the catalog.yaml the first ingest writes (`replicalake doctor --repair` "
                        "rebuilds a lost one from the stores on disk)")
    entries = catalog.entries
    for name in names:
        problem = entry_key_problem(name)
        if problem:
            raise LakeError(f"lake entry {name!r} {problem}")
        if name not in entries:
            raise LakeError(f"no entry {name!r}{did_you_mean(name, entries)} in the lake catalog of "
                            f"{lake.root_url!r}; entries: {', '.join(sorted(entries)) or 'none'}")
    reports = []
    for name in names or sorted(entries):
        reports.append(_check_entry(lake, name, entries[name].url))
        if history:
            zone, entry = split_key(name)
            for version in lake.history_versions(zone, entry):
                path = lake.history_path(zone, entry, version)
                reports.append(_check_entry(lake, f"{name}@{version}", lake.url(path)))
    return reports


def skipped_history(lake: Lake, reports: list[EntryReport]) -> int:
    """How many history versions the entries checked have (what `verify --history` would add)."""
    keys = {report.entry for report in reports if "@" not in report.entry}
    return sum(len(lake.history_versions(*split_key(key))) for key in keys)


def _check_entry(lake: Lake, name: str, url: str) -> EntryReport:
    """Every file of one entry against its manifest (a missing manifest is damage: publish writes one)."""
    fs, path = filesystem_for(url, lake)
    if not fs.exists(f"{path}/zarr.json"):
        gone = f"missing: the catalog lists this entry, but {url} holds no zarr store"
        return EntryReport(name, 0, "manifest", [Damage(name, "zarr.json", gone)])
    try:
        manifest = read_manifest(fs, path)
    except LakeError:  # find_damage names it
        manifest = None
    return EntryReport(name, len(manifest) if manifest is not None else 0,
                       "manifest" if manifest is not None else "decoding",
                       find_damage(fs, path, name, require_manifest=True))
