"""Lake names: the one parser every entry name, entry key and catalog name goes through.

Names reach the lake from the CLI, recipes, catalogs and Python calls. Every one of them becomes
part of a path, of a catalog key, of a `{...}`-templated URL and of rich terminal text, so one set
of rules serves all: a name is parts of letters, digits and `_ - . +` joined by `/`, each part
starting with a letter or digit. That refuses escapes (`..`, `/abs`, `.`, which names the zone
itself), the lake's and zarr's own files (`.tmp`, `.locks`, `_integrity`, `zarr.json`), markup
(`[`, `]`), templates (`{lake}`), backslashes and control characters, without a list of special
cases that the next reader has to keep complete.
"""

from __future__ import annotations

import re

from .errors import LakeError

ZONES = ("raw", "derived", "models", "reports")
LAKE_CATALOG = "lake"  # the name recipes and the CLI use for the lake's own catalog
LAKE_CATALOG_FILE = "catalog.yaml"
# Whole names an entry may not take: a zone's name reads as the zone (`verify raw`), and the
# catalog's file name as the catalog, in every listing a person looks at.
RESERVED_NAMES = {**{zone: "a lake zone" for zone in ZONES}, LAKE_CATALOG_FILE: "the lake's catalog file"}
ZARR_METADATA = "zarr.json"  # a part of this name would overwrite a store's metadata
MAX_PART_BYTES = 255  # NAME_MAX of local filesystems
# The lake writes a name into one file or folder name with '/' as '__' (staging folders, lock
# files, resume areas) next to at most 55 bytes of its own, so that form must stay this short.
MAX_FLAT_BYTES = 200
_CHARACTER = r"[A-Za-z0-9_.+\-]"
_ALLOWED_CHARACTER = re.compile(_CHARACTER)
_PART = re.compile(r"[A-Za-z0-9]" + _CHARACTER + "*")
_ALLOWED = "letters, digits, '_', '-', '.', '+'"
_RELATIVE = "must be a relative name inside the zone"


def entry_name_problem(name: str) -> str | None:
    """What is wrong with `name` as an entry name inside a zone (None when nothing is).

    The text reads after the name ("'../x' must be a relative name inside the zone, ...").
    """
    if not name:
        return f"{_RELATIVE}, found an empty name"
    if name.startswith("/"):
        return f"{_RELATIVE}, found a leading '/'"
    problem = _characters_problem(name) or next(filter(None, map(_part_problem, name.split("/"))), None)
    if problem:
        return problem
    if name in RESERVED_NAMES:
        return f"must not be {name!r}: that is {RESERVED_NAMES[name]}; expected a name of its own"
    flat = len(name.replace("/", "__").encode())
    if flat > MAX_FLAT_BYTES:
        return (f"must stay within {MAX_FLAT_BYTES} bytes with each '/' written as '__' (the lake "
                f"keeps it in one file name for staging and locks), found {flat} bytes")
    return None


def entry_key_problem(key: str) -> str | None:
    """What is wrong with `key` as a lake catalog key ZONE/NAME (None when nothing is)."""
    zone, _, name = key.partition("/")
    if zone not in ZONES:
        return f"must be ZONE/NAME with ZONE one of {', '.join(ZONES)}, found zone {zone!r}"
    problem = entry_name_problem(name)
    return f"must be ZONE/NAME, and its name {name!r} {problem}" if problem else None


def catalog_name_problem(name: str) -> str | None:
    """What is wrong with `name` as a catalog name: a plain stem of catalogs/*.yaml, or 'lake'."""
    if "/" in name or name in ("", ".", ".."):
        return f"must be the stem of a file in the catalogs folder (no '/', '.' or '..'), found {name!r}"
    return _characters_problem(name) or _part_problem(name)


def check_entry_name(zone: str, name: str) -> None:
    """Raise LakeError unless `zone` is a zone and `name` a valid entry name inside it."""
    if zone not in ZONES:
        raise LakeError(f"unknown lake zone {zone!r}; expected one of {', '.join(ZONES)}")
    problem = entry_name_problem(name)
    if problem:
        raise LakeError(f"lake entry name {name!r} in zone {zone!r} {problem}")


def is_inside(inner: str, outer: str) -> bool:
    """Whether the name `inner` is `outer` itself or lies in its folder."""
    return inner == outer or inner.startswith(outer + "/")


def nesting_pairs(named: dict[str, str]) -> list[tuple[str, str]]:
    """(first, second) keys of `named` whose names are equal or nest, in the order given.

    Writing both would make the later publish replace or overwrite the earlier one.
    """
    keys = list(named)
    return [(first, second) for i, first in enumerate(keys) for second in keys[i + 1:]
            if is_inside(named[first], named[second]) or is_inside(named[second], named[first])]


def _characters_problem(name: str) -> str | None:
    """Control characters and backslashes, named before the generic character-set message."""
    control = next((c for c in name if ord(c) < 32 or ord(c) == 127), None)
    if control is not None:
        return f"must hold printable characters only, found the control character {control!r}"
    if "\\" in name:
        return "must use '/' between parts, found a backslash"
    return None


def _part_problem(part: str) -> str | None:
    if part in ("", ".", ".."):
        found = {"": "an empty part (a doubled or trailing '/')", ".": "a '.' part",
                 "..": "a '..' part"}[part]
        return f"{_RELATIVE}, found {found}"
    size = len(part.encode())
    if size > MAX_PART_BYTES:
        return f"must have parts of at most {MAX_PART_BYTES} bytes, found a part of {size} bytes"
    if not _PART.fullmatch(part):
        bad = next((c for c in part if not _ALLOWED_CHARACTER.fullmatch(c)), None)
        if bad is not None:
            return f"must hold only {_ALLOWED}, found {bad!r} in part {part!r}"
        own = " (parts starting with '_' or '.' are the lake's and zarr's own files)"
        return (f"must start every part with a letter or digit, found part {part!r}"
                + (own if part[0] in "_." else ""))
    if part == ZARR_METADATA:
        return f"must not have a part {ZARR_METADATA!r}: that is a zarr store's metadata file"
    return None
