"""`replicalake verify`: check lake entries against the checksums recorded when they were published."""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalog import LAKE_CATALOG, filesystem_for, load_catalog
from .errors import LakeError, did_you_mean
from .integrity import Damage, find_damage, read_manifest
from .names import entry_key_problem
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


def verify_entries(lake: Lake, names: list[str]) -> list[EntryReport]:
    """Check the named entries (default: every entry of the lake catalog)."""
    entries = load_catalog(LAKE_CATALOG, lake).entries
    for name in names:
        problem = entry_key_problem(name)
        if problem:
            raise LakeError(f"lake entry {name!r} {problem}")
        if name not in entries:
            raise LakeError(f"no entry {name!r}{did_you_mean(name, entries)} in the lake catalog of "
                            f"{lake.root_url!r}; entries: {', '.join(sorted(entries)) or 'none'}")
    reports = []
    for name in names or sorted(entries):
        fs, path = filesystem_for(entries[name].url, lake)
        manifest = read_manifest(fs, path)
        damage = find_damage(fs, path, name)
        reports.append(EntryReport(name, len(manifest) if manifest is not None else 0,
                                   "manifest" if manifest is not None else "decoding", damage))
    return reports
