"""`replicalake doctor`: every inconsistency between the lake's stores, manifests and catalog, and
with `--repair` a consistent lake again, without ever deleting a complete, verified output.

Why a command of its own: `verify` checks the bytes of what the catalog lists, so it cannot see
what the catalog does not (a store on disk it misses, a lost catalog), nor what killed processes
left in `.tmp/`. The doctor looks at the lake from disk: the catalog file, publishes cut short,
retired copies, every store (listed or not, whole or not), the versions kept in `.history/`,
`.tmp/` leftovers and links out. `replicalake gc` (collect_garbage) shares its leftover check.
Each check repairs what it found before the next one looks, so later checks see the repaired
lake (a retired copy put back into place is then listed like any unlisted store).

What `--repair` never does: delete or rewrite a store in a zone. Damaged stores are reported
with what recomputes them (their recipe, or a re-ingest); leftovers are removed only when no
live process holds them (the flock locks of entries and ingest staging say which do).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from .catalog import (
    filesystem_for,
    read_lake_catalog,
    register_entry,
    settle_publish,
    unregister_entry,
)
from .errors import CatalogError, LakeError
from .history import beyond, drop, entries_with_history, history_size, split_key
from .integrity import find_damage
from .links import links_out
from .locks import LOCK_DIR, LockError, is_held, lock_path, output_locks
from .names import LAKE_CATALOG_FILE, ZONES, entry_name_problem
from .plan import human_bytes
from .resume import RESUME_DIR
from .storage import PROVENANCE_KEY, PUBLISH_DIR, TMP_DIR, Lake

KEPT_TMP = {RESUME_DIR, PUBLISH_DIR, "checkpoints"}  # resumable work, and records (checked apart)
_RETIRED = re.compile(r"retired-(?P<zone>[a-z]+)-(?P<flat>.+)-[0-9a-f]{12}")


@dataclass
class Finding:
    """One inconsistency: what kind, where (an entry key or a path inside the lake), what is
    wrong, and the remedy: what `--repair` does (`repairable`) or what a person can do."""

    kind: str
    where: str
    problem: str
    remedy: str
    repairable: bool
    repaired: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def examine(lake: Lake, repair: bool = False) -> list[Finding]:
    """Every inconsistency of the lake, each repaired (where it can be) when `repair`."""
    if not lake.fs.isdir(lake.root):
        raise LakeError(f"no lake at {lake.root_url!r}: expected a folder holding its zones and "
                        "catalog.yaml (`replicalake init` makes one)")
    findings: list[Finding] = []
    for check in (_catalog_file, _interrupted_publishes, _retired_copies, _stores, _history,
                  _tmp_leftovers, _links_out):
        findings += check(lake, repair)
    return findings


def _fix(lake: Lake, finding: Finding, repair: bool, key: str | None, action: Callable[[], None]) -> None:
    """Do a repairable finding's `action` under the lock `key` (an entry's, 'catalog', or none);
    a lock that a live process holds leaves the finding as it is, saying so."""
    if not (repair and finding.repairable):
        return
    try:
        with output_locks(lake, [key] if key else [], "replicalake doctor --repair", timeout=0):
            action()
    except LockError as exc:
        finding.remedy += f" (not now: {exc})"
        return
    finding.repaired = True


def _relative(lake: Lake, path: str) -> str:
    return posixpath.relpath(path, lake.root)


# -- the checks, in the order they run ---------------------------------------------------------
def _catalog_file(lake: Lake, repair: bool) -> list[Finding]:
    """A catalog file that cannot be read is moved aside; the store check then lists every store again."""
    try:
        read_lake_catalog(lake)
    except CatalogError as exc:
        path = lake.path(LAKE_CATALOG_FILE)
        aside = f"{path}.unreadable-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
        finding = Finding("unreadable catalog", LAKE_CATALOG_FILE, " ".join(str(exc).split()),
                          f"move it aside to {_relative(lake, aside)} and list every whole store in a new "
                          "catalog", True)
        _fix(lake, finding, repair, "catalog", partial(lake.fs.mv, path, aside))
        return [finding]
    return []


def _interrupted_publishes(lake: Lake, repair: bool) -> list[Finding]:
    """Publishes a killed ingest or run left half done (their records in .tmp/publish/)."""
    try:
        records = lake.interrupted_publishes()
    except LakeError as exc:
        return [Finding("unreadable publish record", f"{TMP_DIR}/{PUBLISH_DIR}", str(exc),
                        "remove that file once no ingest or run is publishing, then run doctor again", False)]
    findings = []
    for record in records:
        if lake.is_local and is_held(lock_path(lake, record.key)):
            continue  # a live publish
        finding = Finding("interrupted publish", record.key,
                          f"a publish killed half way ({_relative(lake, record.file)})",
                          "finish it (the new store is in place) or undo it (the old one is put back)", True)
        _fix(lake, finding, repair, record.key, partial(settle_publish, lake, record))
        findings.append(finding)
    return findings


def _retired_copies(lake: Lake, repair: bool) -> list[Finding]:
    """Old versions a publish moved aside and did not remove (no record names them any more)."""
    recorded = {record.retired for record in _records(lake)}
    findings = []
    for path in _tmp_entries(lake):
        match = _RETIRED.fullmatch(posixpath.basename(path))
        name = match and match["flat"].replace("__", "/")
        if not match or match["zone"] not in ZONES or entry_name_problem(name) or path in recorded:
            continue
        zone, where = match["zone"], _relative(lake, path)
        if not lake.exists(zone, name):
            finding = Finding("retired copy", f"{zone}/{name}", f"{where}: the entry's previous version, "
                              "moved aside by a publish that never moved the new one in",
                              "move it back into place", True)
            action = partial(lake.move_tree, path, lake.entry_path(zone, name))
        elif _damage(lake, lake.entry_path(zone, name)):
            findings.append(Finding("retired copy", f"{zone}/{name}", f"{where}: an older version of an "
                                    "entry that is damaged", "keep it: it may be the version to put back "
                                    "by hand", False))
            continue
        else:
            finding = Finding("retired copy", f"{zone}/{name}", f"{where}: an older version of a whole "
                              "entry, left by a publish", "remove it", True)
            action = partial(lake.discard, path)
        _fix(lake, finding, repair, f"{zone}/{name}", action)
        findings.append(finding)
    return findings


def _stores(lake: Lake, repair: bool) -> list[Finding]:
    """Stores on disk against the catalog: damaged ones, unlisted ones, listed ones that are gone."""
    try:
        listed = read_lake_catalog(lake).entries
    except CatalogError:
        listed = None  # reported (and not repaired) by _catalog_file: nothing to compare with
    no_catalog = "" if lake.fs.exists(lake.path(LAKE_CATALOG_FILE)) else " (there is no catalog.yaml)"
    pending = {record.key for record in _records(lake)}  # settling their publish comes first
    findings = []
    on_disk = {key: path for key, path in _stores_on_disk(lake).items() if key not in pending}
    for key, path in on_disk.items():
        damage = _damage(lake, path)
        if damage:
            unlisted = listed is not None and key not in listed
            findings.append(Finding("damaged store", key, damage + ("; and the lake catalog does not list "
                                    f"it{no_catalog}" if unlisted else ""), _remedy(lake, key, path), False))
        elif listed is not None and key not in listed:
            finding = Finding("unlisted store", key, f"a whole store that the lake catalog does not list"
                              f"{no_catalog}", "list it in the lake catalog", True)
            _fix(lake, finding, repair, key, partial(_list, lake, key, path))
            findings.append(finding)
    for key, entry in (listed or {}).items():
        fs, path = filesystem_for(entry.url, lake)
        if key in on_disk or key in pending or fs.exists(f"{path}/zarr.json"):
            continue
        if fs.exists(path) and fs.find(path):
            findings.append(Finding("damaged store", key, f"{entry.url} holds files but no root zarr.json",
                                    _remedy(lake, key, path), False))
            continue
        finding = Finding("listed without store", key, f"the lake catalog lists it, but {entry.url} holds "
                          "no zarr store", "remove it from the catalog (re-ingest it, or rerun the recipe "
                          "that made it, to have it back)", True)
        _fix(lake, finding, repair, key, partial(unregister_entry, lake, key))
        findings.append(finding)
    return findings


def _history(lake: Lake, repair: bool) -> list[Finding]:
    """Versions in .history/ (engine/history.py): damaged ones are reported (gc drops them; a run
    never reads history), folders that hold no store (an object store's cut-short copy) removed."""
    pending = {record.key for record in _records(lake)}
    findings = []
    for key in entries_with_history(lake):
        if key in pending:
            continue  # settling its publish comes first
        zone, name = split_key(key)
        for version in lake.history_versions(zone, name):
            path = lake.history_path(zone, name, version)
            where = _relative(lake, path)
            if not lake.fs.exists(f"{path}/zarr.json"):
                finding = Finding("history leftover", where, "a folder of the entry's history that holds "
                                  "no store (a copy cut short)", "remove it", True)
                _fix(lake, finding, repair, key, partial(drop, lake, key, [path]))
                findings.append(finding)
                continue
            damage = _damage(lake, path)
            if damage:
                findings.append(Finding("damaged history version", where, damage, "`replicalake gc` drops "
                                        f"the history of {key} (runs never read it; `--at {version}` "
                                        "would read the damaged chunks)", False))
    return findings


def collect_garbage(lake: Lake, keep: int = 0, dry_run: bool = False) -> list[Finding]:
    """`replicalake gc`: drop each entry's history beyond its newest `keep` versions, and the
    `.tmp/` leftovers no live process holds (doctor's check); with `dry_run` only say what would go.

    Each entry's history is dropped under its lock, taken without waiting: an entry being
    published (or read by a run, or exported at a version) is left as it is, and said so.
    """
    if keep < 0:
        raise LakeError(f"--keep {keep}: expected a number of versions to keep, >= 0")
    if not lake.fs.isdir(lake.root):
        raise LakeError(f"no lake at {lake.root_url!r}: expected a folder holding its zones and "
                        "catalog.yaml (`replicalake init` makes one)")
    findings = []
    for key in entries_with_history(lake):
        paths = beyond(lake, key, keep)
        if not paths:
            continue
        size = sum(lake.size(path) for path in paths)
        finding = Finding("history", key, f"{len(paths)} older version{'s' if len(paths) > 1 else ''} "
                          f"({human_bytes(size)}) beyond the newest {keep} kept",
                          f"remove {', '.join(posixpath.basename(path) for path in paths)}", True)
        _fix(lake, finding, not dry_run, key, partial(drop, lake, key, paths))
        findings.append(finding)
    return findings + _tmp_leftovers(lake, not dry_run)


def history_bytes(lake: Lake) -> int:
    """Bytes all of the lake's history takes (what `gc` with --keep 0 frees)."""
    return sum(history_size(lake, key) for key in entries_with_history(lake))


def _tmp_leftovers(lake: Lake, repair: bool) -> list[Finding]:
    """What killed ingests and runs left in .tmp/ (and half-written catalog files) that no live
    process holds: ingest staging whose lock is free; anything else only while no writer runs."""
    busy = _busy(lake)
    staged = {record.staged for record in _records(lake)}  # their publish's to settle first
    findings = []
    for path in sorted(set(_leftovers(lake)) - staged - {f"{path}.lock" for path in staged}):
        lock = Path(path if path.endswith(".lock") else f"{path}.lock")  # an ingest's staging lock
        if lake.is_local and lock.exists():
            if is_held(lock):
                continue  # a live ingest's staging
            paths = sorted({path, str(lock)})
        elif busy:
            findings.append(Finding("leftover", _relative(lake, path), "left in the lake by an earlier "
                                    "process, or in use by a live one", "run doctor again when no run or "
                                    f"ingest is writing (now: {', '.join(busy)})", False))
            continue
        else:
            paths = [path]
        finding = Finding("leftover", _relative(lake, path), "left by a killed ingest or run; nothing "
                          "reads it", "remove it", True)
        _fix(lake, finding, repair, None, partial(_discard_all, lake, paths))
        findings.append(finding)
    return findings


def _links_out(lake: Lake, repair: bool) -> list[Finding]:
    """Links out of the lake root: reported, never changed (the lake refuses to write through them)."""
    if not lake.is_local:
        return []
    return [Finding("link out of the lake", link, f"a symbolic link to {target}, outside the lake root: "
                    "ingests and runs refuse to write through it", "replace the link with a folder (or "
                    "use the linked folder as a lake of its own)", False)
            for link, target in links_out(lake.root)]


# -- helpers -----------------------------------------------------------------------------------
def _records(lake: Lake) -> list:
    try:
        return lake.interrupted_publishes()
    except LakeError:  # reported by _interrupted_publishes
        return []


def _tmp_entries(lake: Lake) -> list[str]:
    folder = lake.path(TMP_DIR)
    return sorted(lake.fs.ls(folder, detail=False)) if lake.fs.isdir(folder) else []


def _stores_on_disk(lake: Lake) -> dict[str, str]:
    """{ZONE/NAME: path} of every outermost zarr store in the zones."""
    stores: dict[str, str] = {}
    for zone in ZONES:
        folder = lake.path(zone)
        if not lake.fs.isdir(folder):
            continue
        roots = sorted(posixpath.dirname(path) for path in lake.fs.find(folder)
                       if posixpath.basename(path) == "zarr.json")
        for root in roots:
            if root != folder and not any(root.startswith(outer + "/") for outer in stores.values()):
                stores[f"{zone}/{posixpath.relpath(root, folder)}"] = root
    return stores


def _damage(lake: Lake, path: str) -> str:
    """The listing check of a store against its manifest, as one line ('' when whole)."""
    return "; ".join(f"{found.location}: {found.problem}"
                     for found in find_damage(lake.fs, path, quick=True, require_manifest=True))


def _remedy(lake: Lake, key: str, path: str) -> str:
    """What recomputes a damaged store: the recipe its provenance names, else a re-ingest."""
    try:
        recipe = (lake.attributes(path).get(PROVENANCE_KEY) or {}).get("recipe_path")
    except LakeError:
        recipe = None
    if recipe:
        return f"rerun `replicalake run {recipe}`: it recomputes and republishes {key}"
    return f"re-ingest {key} (or restore it from a backup); `replicalake verify {key}` names what is damaged"


def _discard_all(lake: Lake, paths: list[str]) -> None:
    for path in paths:
        lake.discard(path)


def _list(lake: Lake, key: str, path: str) -> None:
    """List a whole store found on disk, describing it from its provenance."""
    provenance = lake.attributes(path).get(PROVENANCE_KEY) or {}
    zone, name = key.split("/", 1)
    made_by = provenance.get("recipe") and f"{provenance['recipe']}: step {provenance.get('step')}"
    register_entry(lake, zone, name, f"{made_by or 'found on disk'} (listed again by replicalake doctor)",
                   {"token": provenance["token"]} if provenance.get("token") else {})


def _leftovers(lake: Lake) -> list[str]:
    """Candidates: .tmp/ folders that are not kept or retired copies, publish records' stray
    temporary files, and half-written catalog files at the root."""
    found = [path for path in _tmp_entries(lake)
             if posixpath.basename(path) not in KEPT_TMP and not _RETIRED.fullmatch(posixpath.basename(path))
             and not (path.endswith(".lock") and lake.fs.exists(path[:-len(".lock")]))]  # with its folder
    resume = lake.path(TMP_DIR, RESUME_DIR)
    if lake.fs.isdir(resume):  # a run's staging: resumable while its store is there
        found += [path for path in sorted(lake.fs.ls(resume, detail=False))
                  if not lake.fs.exists(f"{path}/store/zarr.json")]
    publish = lake.path(TMP_DIR, PUBLISH_DIR)
    if lake.fs.isdir(publish):
        found += [path for path in sorted(lake.fs.ls(publish, detail=False)) if path.endswith(".tmp")]
    return found + sorted(path for path in lake.fs.ls(lake.root, detail=False)
                          if posixpath.basename(path).startswith(f"{LAKE_CATALOG_FILE}.")
                          and path.endswith(".tmp"))


def _busy(lake: Lake) -> list[str]:
    """Lock files that live writers hold (entry locks and ingest staging locks), by name."""
    if not lake.is_local:
        return []
    locks = [*Path(lake.path(LOCK_DIR)).glob("*.lock"), *Path(lake.path(TMP_DIR)).glob("*.lock")]
    return sorted(path.stem for path in locks if is_held(path))
