"""LHAPDF `lhagrid1` PDF sets <-> xarray datasets: the lake layout of a PDF set.

A set NAME is a folder NAME/ with NAME.info (YAML: SetDesc, Format, NumMembers, Flavors, ErrorType,
XMin, ...) and one NAME_NNNN.dat per member. A .dat file is a YAML header (PdfType, Format), then
blocks each ended by a `---` line: x knots, Q knots (GeV), PDG ids, then Nx*NQ rows of x*f values
(x outer loop, Q inner), one column per id. Blocks are Q subgrids split at heavy-quark thresholds:
the last Q knot of a block is the first of the next.

Layout in the lake (the contract every PDF op reads and writes): one dataset per set with, for
each Q subgrid k (0-based, file order),

- variable `xf_{k}`, dims (`member`, `flavour`, `x_{k}`, `q_{k}`), float64;
- coords `x_{k}` (x knots) and `q_{k}` (Q knots in GeV, not Q^2), both strictly increasing;
- shared coords `flavour` (PDG ids, int; the gluon is 21, never 0) and `member` (int);
- attrs `lhapdf_info` (the .info keys, a JSON-able dict), `lhapdf_member_headers` (member id as a
  string -> that .dat file's header dict) and `lhapdf_value_digits` (mantissa digits the values
  were printed with, so a written set prints them as the read one did).

Every member shares member 0's knots and ids (LHAPDF allows otherwise, no real set does, and a
shared grid is what lets one array hold the set). Round trips are exact: knots are written with
the shortest text that reads back as the same double, values with the digits they were read with.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import IngestError, ProblemsError
from ..recipe import parse_yaml

FORMAT = "lhagrid1"
MEMBER = "member"
KEPT = "kept"  # optional post-fit selection flag along member
FLAVOUR = "flavour"
INFO_ATTR = "lhapdf_info"
HEADERS_ATTR = "lhapdf_member_headers"
DIGITS_ATTR = "lhapdf_value_digits"
DEFAULT_DIGITS = 8  # LHAPDF's own writers print %.8e
GLUON = 21
SEPARATOR = "---"


class LhapdfFormatError(IngestError):
    """An LHAPDF file does not follow lhagrid1; the message names the file and line."""


def subgrid_names(k: int) -> tuple[str, str, str]:
    """(variable, x dim, q dim) of subgrid k in the lake layout."""
    return f"xf_{k}", f"x_{k}", f"q_{k}"


def subgrid_count(dataset: xr.Dataset) -> int:
    """How many Q subgrids the set holds (xf_0, xf_1, ... without gaps)."""
    count = 0
    while subgrid_names(count)[0] in dataset.data_vars:
        count += 1
    if count == 0:
        raise IngestError(f"expected a PDF set with variables xf_0, xf_1, ...; found "
                          f"{', '.join(map(str, dataset.data_vars)) or 'no variables'}")
    return count


# -- reading -------------------------------------------------------------------------------------
def _fail(path: Path | str, line: int | None, message: str) -> LhapdfFormatError:
    where = f"{path}:{line}" if line is not None else str(path)
    return LhapdfFormatError(f"{where}: {message}")


def _yaml_mapping(text: str, path: Path, first_line: int = 1) -> tuple[dict, Any]:
    """Safely parse a YAML mapping; errors name the file and the line."""
    if not text.strip():
        return {}, None
    try:
        data, lines = parse_yaml(text, str(path), _YamlProblems)
    except _YamlProblems as exc:
        problem = exc.problems[0]
        line = None if problem.line is None else problem.line + first_line - 1
        raise _fail(path, line, problem.message) from None
    if not isinstance(data, dict):
        raise _fail(path, first_line, f"expected 'Key: value' lines, found {type(data).__name__}")
    return data, lines


class _YamlProblems(ProblemsError, ValueError):
    """parse_yaml's error type here; turned into LhapdfFormatError with the file's line."""


def _flavour_id(pid: int) -> int:
    return GLUON if pid == 0 else int(pid)


def read_info(path: Path) -> dict[str, Any]:
    """The .info file as a dict, checked for what reading the members needs."""
    if not path.is_file():
        raise _fail(path, None, "no such file; expected the set's .info file")
    info, lines = _yaml_mapping(path.read_text(), path)

    def line(key: str) -> int | None:
        return lines.line_of(key) if lines is not None and key in info else None

    if info.get("Format") != FORMAT:
        found = f"found {info['Format']!r}" if "Format" in info else "the key is missing"
        raise _fail(path, line("Format"), f"expected 'Format: {FORMAT}', {found}")
    flavours = info.get("Flavors")
    if not isinstance(flavours, list) or not flavours or not all(
            isinstance(f, int) and not isinstance(f, bool) for f in flavours):
        found = f"found {flavours!r}" if "Flavors" in info else "the key is missing"
        raise _fail(path, line("Flavors"), f"expected 'Flavors: [PDG ids]' (a list of integers), {found}")
    members = info.get("NumMembers")
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        found = f"found {members!r}" if "NumMembers" in info else "the key is missing"
        raise _fail(path, line("NumMembers"), f"expected 'NumMembers: N' with N >= 1, {found}")
    return info


@dataclass
class Member:
    """One member file: its header, and per subgrid the knots and values (flavour, x, q)."""

    header: dict[str, Any]
    xs: list[np.ndarray]
    qs: list[np.ndarray]
    pids: np.ndarray
    values: list[np.ndarray]
    digits: int


def _knots(text: str, path: Path, line: int, what: str, dtype=float) -> np.ndarray:
    try:
        knots = np.array(text.split(), dtype=dtype)
    except ValueError:
        raise _fail(path, line, f"expected a line of {what}, found {text.strip()[:60]!r}") from None
    if knots.size == 0:
        raise _fail(path, line, f"expected a line of {what}, found an empty line")
    return knots


def _check_increasing(knots: np.ndarray, path: Path, line: int, what: str) -> None:
    if not np.all(np.isfinite(knots)):
        raise _fail(path, line, f"expected finite {what}, found {float(knots[~np.isfinite(knots)][0])}")
    if not np.all(knots > 0):
        raise _fail(path, line, f"expected positive {what}, found {knots[knots <= 0][0]!r}")
    steps = np.diff(knots)
    if knots.size < 2 or not np.all(steps > 0):
        bad = "only one knot" if knots.size < 2 else (
            f"{knots[np.argmax(steps <= 0)]!r} followed by {knots[np.argmax(steps <= 0) + 1]!r}")
        raise _fail(path, line, f"expected at least 2 strictly increasing {what}, found {bad}")


def _mantissa_digits(token: str) -> int:
    """Digits after the decimal point of a value printed like '1.23456789e-01'."""
    mantissa = re.split("[eE]", token)[0]
    return len(mantissa.split(".")[1]) if "." in mantissa else 0


def _block(lines: list[str], start: int, stop: int, path: Path, allow_nonfinite: bool):
    """Parse lines[start:stop] (one subgrid block); line numbers in errors are 1-based.

    NaN or inf values are refused unless `allow_nonfinite`: interpolating a grid spreads one to
    every point near it, so a damaged file would give NaN PDFs far from the damage."""
    if stop - start < 3:
        raise _fail(path, start + 1, "expected a block of x knots, Q knots and PDG ids lines, found "
                    f"{stop - start} line(s) before '{SEPARATOR}'")
    x = _knots(lines[start], path, start + 1, "x knots")
    q = _knots(lines[start + 1], path, start + 2, "Q knots (GeV)")
    pids = _knots(lines[start + 2], path, start + 3, "integer PDG ids", dtype=np.int64)
    _check_increasing(x, path, start + 1, "x knots")
    if x[-1] > 1:
        raise _fail(path, start + 1, f"expected x knots at most 1, found {x[-1]!r}")
    _check_increasing(q, path, start + 2, "Q knots")
    rows = lines[start + 3:stop]
    expected_rows = x.size * q.size
    if len(rows) != expected_rows:
        raise _fail(path, start + 4, f"expected {x.size} x knots * {q.size} Q knots = {expected_rows} "
                    f"rows of values before '{SEPARATOR}', found {len(rows)}")
    split = [row.split() for row in rows]
    for i, tokens in enumerate(split):
        if len(tokens) != pids.size:
            raise _fail(path, start + 4 + i, f"expected {pids.size} columns (one per PDG id), found "
                        f"{len(tokens)}")
    try:
        values = np.array([t for tokens in split for t in tokens], dtype=np.float64)
    except ValueError:
        bad = next(i for i, tokens in enumerate(split) if not _all_numbers(tokens))
        raise _fail(path, start + 4 + bad, f"expected numbers, found {rows[bad].strip()[:60]!r}") from None
    nonfinite = ~np.isfinite(values)
    if nonfinite.any() and not allow_nonfinite:
        row, column = divmod(int(np.argmax(nonfinite)), pids.size)
        raise _fail(path, start + 4 + row, f"expected finite values, found {int(nonfinite.sum())} NaN or "
                    f"inf (the first, {split[row][column]!r}, in column {column + 1}); pass "
                    "--allow-nonfinite to keep them")
    digits = max((_mantissa_digits(t) for t in split[0]), default=DEFAULT_DIGITS)
    values = values.reshape(x.size, q.size, pids.size).transpose(2, 0, 1)
    return x, q, pids, np.ascontiguousarray(values), digits


def _all_numbers(tokens: list[str]) -> bool:
    try:
        [float(t) for t in tokens]
    except ValueError:
        return False
    return True


def read_member(path: Path, reference: Member | None = None, allow_nonfinite: bool = False) -> Member:
    """Read one .dat file; with a `reference` (member 0), require its knots and ids."""
    if not path.is_file():
        raise _fail(path, None, "no such file; expected one .dat file per member (NumMembers)")
    lines = path.read_text().splitlines()
    separators = [i for i, text in enumerate(lines) if text.strip() == SEPARATOR]
    if not separators:
        raise _fail(path, 1, f"expected a header and subgrid blocks separated by '{SEPARATOR}' lines, "
                    "found none")
    header, header_lines = _yaml_mapping("\n".join(lines[:separators[0]]), path)
    if header.get("Format", FORMAT) != FORMAT:
        line = header_lines.line_of("Format") if header_lines is not None else None
        raise _fail(path, line, f"expected 'Format: {FORMAT}', found {header['Format']!r}")
    bounds = list(zip(separators, separators[1:] + [len(lines)], strict=True))
    if not any(text.strip() for text in lines[bounds[-1][0] + 1:]):
        bounds = bounds[:-1]  # the file ends with '---', as LHAPDF writes it
    if not bounds:
        raise _fail(path, separators[0] + 1, "expected at least one subgrid block, found none")
    member = Member(header, [], [], np.empty(0, np.int64), [], DEFAULT_DIGITS)
    for k, (sep, stop) in enumerate(bounds):
        x, q, pids, values, digits = _block(lines, sep + 1, stop, path, allow_nonfinite)
        pids = np.array([_flavour_id(p) for p in pids], dtype=np.int64)
        if k == 0:
            member.pids, member.digits = pids, digits
        elif not np.array_equal(pids, member.pids):
            raise _fail(path, sep + 4, f"expected the PDG ids of the first block {member.pids.tolist()}, "
                        f"found {pids.tolist()}")
        elif q[0] != member.qs[-1][-1]:
            raise _fail(path, sep + 3, f"expected subgrid {k} to start at the last Q knot of subgrid "
                        f"{k - 1} ({member.qs[-1][-1]!r} GeV), found {q[0]!r}")
        member.xs.append(x)
        member.qs.append(q)
        member.values.append(values)
    if reference is not None:
        _check_like(member, reference, path, lines, bounds)
    return member


def _check_like(member: Member, reference: Member, path: Path, lines: list[str], bounds) -> None:
    """Members share member 0's grid: same subgrids, knots and ids."""
    if len(member.xs) != len(reference.xs):
        raise _fail(path, len(lines), f"expected {len(reference.xs)} subgrid blocks like member 0, "
                    f"found {len(member.xs)}")
    for k, (sep, _) in enumerate(bounds):
        for offset, mine, theirs, what in ((1, member.xs[k], reference.xs[k], "x knots"),
                                           (2, member.qs[k], reference.qs[k], "Q knots")):
            if not np.array_equal(mine, theirs):
                raise _fail(path, sep + 1 + offset, f"expected the {what} of member 0 in subgrid {k} "
                            f"({theirs.size} knots {theirs[0]!r} .. {theirs[-1]!r}), found {mine.size} "
                            f"knots {mine[0]!r} .. {mine[-1]!r}")
    if not np.array_equal(member.pids, reference.pids):
        raise _fail(path, bounds[0][0] + 4, f"expected the PDG ids of member 0 {reference.pids.tolist()}, "
                    f"found {member.pids.tolist()}")


def info_path(setdir: Path) -> Path:
    """SETDIR/NAME.info, NAME being the folder's name (LHAPDF's rule)."""
    return setdir / f"{setdir.name}.info"


def member_paths(setdir: Path, info: dict[str, Any]) -> list[Path]:
    """The NumMembers .dat files, all present, and no stray ones beyond them.

    The count is checked against the files present before a path is made per member, so a .info
    claiming 10^9 members costs one folder listing, not a billion paths in memory.
    """
    name, count = setdir.name, info["NumMembers"]
    present = {p.name for p in setdir.glob(f"{name}_*.dat") if p.is_file()}
    expected = (f"{name}_{i:04d}.dat" for i in range(count))
    missing = list(itertools.islice((file for file in expected if file not in present), 4))
    if missing or len(present) != count:
        raise _fail(info_path(setdir), None, f"NumMembers is {count}, so expected {name}_0000.dat .. "
                    f"{name}_{count - 1:04d}.dat; found {len(present)} member files"
                    + (f", missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
                       if missing else ""))
    return [setdir / f"{name}_{i:04d}.dat" for i in range(count)]


def check_flavours(info: dict[str, Any], member: Member, path: Path) -> None:
    """The .info Flavors and the files' PDG ids must name the same partons."""
    declared = sorted(_flavour_id(f) for f in info["Flavors"])
    if declared != sorted(member.pids.tolist()):
        raise _fail(path, None, f"expected the PDG ids declared in Flavors {declared}, found "
                    f"{sorted(member.pids.tolist())}")


def read_lhapdf_set(setdir: Path | str, allow_nonfinite: bool = False) -> xr.Dataset:
    """Read a whole set into memory, one member file at a time (NaN/inf values refused unless
    `allow_nonfinite`)."""
    setdir = Path(setdir)
    if not setdir.is_dir():
        raise LhapdfFormatError(f"{setdir}: expected an LHAPDF set folder, found no such folder")
    info = read_info(info_path(setdir))
    paths = member_paths(setdir, info)
    first = read_member(paths[0], allow_nonfinite=allow_nonfinite)
    check_flavours(info, first, paths[0])
    members = [first] + [read_member(p, first, allow_nonfinite) for p in paths[1:]]
    values = [np.stack([m.values[k] for m in members]) for k in range(len(first.xs))]
    return pdfset_from_arrays(first.xs, first.qs, first.pids, values, info,
                              headers={str(i): m.header for i, m in enumerate(members)},
                              digits=first.digits)


# -- building ------------------------------------------------------------------------------------
def pdfset_from_arrays(xs: Sequence[np.ndarray], qs: Sequence[np.ndarray], flavours: Sequence[int],
                       xf: Sequence[Any], info: dict[str, Any], members: Sequence[int] | None = None,
                       headers: dict[str, dict] | None = None,
                       digits: int = DEFAULT_DIGITS) -> xr.Dataset:
    """A PDF set in the lake layout from knots and values (numpy or dask arrays).

    xs[k], qs[k]: knots of subgrid k (Q in GeV); xf[k]: values (member, flavour, x, q).
    `members` defaults to 0..M-1; a fit without a central member passes 1..R and the writer adds
    member 0 as the replica average. `info` becomes attrs["lhapdf_info"] (Format, Flavors and
    the grid ranges are filled in when absent).
    """
    if not (len(xs) == len(qs) == len(xf)) or not xs:
        raise IngestError(f"expected the same number (>= 1) of x knot arrays, Q knot arrays and value "
                          f"arrays, found {len(xs)}, {len(qs)}, {len(xf)}")
    flavours = np.array([_flavour_id(f) for f in flavours], dtype=np.int64)
    n_members = xf[0].shape[0]
    members = np.arange(n_members) if members is None else np.asarray(members, dtype=np.int64)
    variables, coords = {}, {MEMBER: (MEMBER, members), FLAVOUR: (FLAVOUR, flavours)}
    for k, (x, q, values) in enumerate(zip(xs, qs, xf, strict=True)):
        name, xdim, qdim = subgrid_names(k)
        x, q = np.asarray(x, np.float64), np.asarray(q, np.float64)
        for knots, what in ((x, "x"), (q, "Q")):
            if knots.ndim != 1 or knots.size < 2 or not np.all(np.diff(knots) > 0) or knots[0] <= 0:
                raise IngestError(f"subgrid {k}: expected at least 2 positive, strictly increasing {what} "
                                  f"knots, found {knots.tolist()[:6]}")
        if k and q[0] != qs[k - 1][-1]:
            raise IngestError(f"subgrid {k}: expected its first Q knot to be the last of subgrid {k - 1} "
                              f"({qs[k - 1][-1]!r}), found {q[0]!r}")
        expected = (members.size, flavours.size, x.size, q.size)
        if tuple(values.shape) != expected:
            raise IngestError(f"subgrid {k}: expected values of shape (member, flavour, x, q) = {expected}, "
                              f"found {tuple(values.shape)}")
        variables[name] = ((MEMBER, FLAVOUR, xdim, qdim), values.astype(np.float64, copy=False),
                           {"long_name": "x f(x, Q)"})
        coords[xdim] = (xdim, x, {"long_name": "x knots"})
        coords[qdim] = (qdim, q, {"units": "GeV", "long_name": "Q knots"})
    full_info = dict(info)
    full_info.setdefault("Format", FORMAT)
    full_info.setdefault("Flavors", flavours.tolist())
    full_info.setdefault("XMin", float(min(x[0] for x in xs)))
    full_info.setdefault("XMax", float(max(x[-1] for x in xs)))
    full_info.setdefault("QMin", float(qs[0][0]))
    full_info.setdefault("QMax", float(qs[-1][-1]))
    attrs = {INFO_ATTR: json.loads(json.dumps(full_info)), HEADERS_ATTR: headers or {},
             DIGITS_ATTR: int(digits)}
    return xr.Dataset(variables, coords=coords, attrs=attrs)


# -- writing -------------------------------------------------------------------------------------
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.+-]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _yaml_value(value: Any) -> str:
    """One value as YAML flow text that LHAPDF (yaml-cpp), PyYAML and ruamel all read back alike."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, str):
        return value if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS else json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_yaml_value(str(k))}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    raise IngestError(f"cannot write {value!r} ({type(value).__name__}) to an LHAPDF .info file")


def _float_text(value: float) -> str:
    """Shortest text that reads back as the same double, always with a '.' (PyYAML needs it)."""
    if not math.isfinite(value):
        return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
    text = repr(float(value))
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return mantissa + ("e" + exponent if exponent else "")


def _mapping_text(mapping: dict[str, Any]) -> str:
    return "".join(f"{key}: {_yaml_value(value)}\n" for key, value in mapping.items())


def _member_order(dataset: xr.Dataset, info: dict[str, Any]) -> tuple[list[int], bool]:
    """Members to write (file order) and whether member 0 must be made as the replica average."""
    members = sorted(int(m) for m in dataset[MEMBER].values)
    add_average = 0 not in members
    if add_average and str(info.get("ErrorType", "")).lower() != "replicas":
        raise IngestError(f"the set has no member 0 and ErrorType is {info.get('ErrorType')!r}; only "
                          "Monte Carlo sets (ErrorType: replicas) get member 0 as the replica average")
    return members, add_average


def write_lhapdf_set(dataset: xr.Dataset, outdir: Path | str, name: str) -> Path:
    """Write OUTDIR/NAME/ as an lhagrid1 set; returns the set folder.

    Members are written in increasing id order as NAME_0000.dat, NAME_0001.dat, ...; a Monte
    Carlo set without member 0 gets it as the average of its replicas (LHAPDF's convention).
    A boolean `kept` variable along member (a fit's post-fit selection) leaves the dropped
    replicas out, as NNPDF's postfit does: users of the set never see them. Dask-backed sets are
    computed one member at a time.
    """
    if not name or "/" in name or name.startswith("."):
        raise IngestError(f"expected a set name without '/', found {name!r}")
    if KEPT in dataset and dataset[KEPT].dims == (MEMBER,):
        dataset = dataset.isel({MEMBER: np.flatnonzero(np.asarray(dataset[KEPT].values, bool))})
    count = subgrid_count(dataset)
    info = dict(dataset.attrs.get(INFO_ATTR) or {})
    headers = dataset.attrs.get(HEADERS_ATTR) or {}
    digits = int(dataset.attrs.get(DIGITS_ATTR, DEFAULT_DIGITS))
    members, add_average = _member_order(dataset, info)
    subgrids = [dataset[subgrid_names(k)[0]].transpose(MEMBER, FLAVOUR, *subgrid_names(k)[1:])
                for k in range(count)]
    setdir = Path(outdir) / name
    setdir.mkdir(parents=True, exist_ok=True)
    info.update(Format=FORMAT, NumMembers=len(members) + add_average,
                Flavors=[int(f) for f in dataset[FLAVOUR].values])
    (setdir / f"{name}.info").write_text(_mapping_text(info))
    jobs: list[tuple[int | None, dict]] = [(None, {"PdfType": "central", "Format": FORMAT})] * add_average
    jobs += [(m, headers.get(str(m)) or {"PdfType": "central" if m == 0 else "replica",
                                         "Format": FORMAT}) for m in members]
    step = max(subgrids[0].chunks[0]) if subgrids[0].chunks else len(members) or 1
    loaded: dict[int, list[np.ndarray]] = {}
    for index, (member, header) in enumerate(jobs):
        if member is None:
            blocks = [grid.mean(MEMBER).values for grid in subgrids]
        else:
            if member not in loaded:  # one chunk of members at a time: each chunk is read once
                group = members[members.index(member):members.index(member) + step]
                values = [grid.sel({MEMBER: group}).values for grid in subgrids]
                loaded = {m: [v[i] for v in values] for i, m in enumerate(group)}
            blocks = loaded[member]
        _write_member(setdir / f"{name}_{index:04d}.dat", header, subgrids, blocks, digits)
    return setdir


def _write_member(path: Path, header: dict, subgrids: list[xr.DataArray], blocks: list[np.ndarray],
                  digits: int) -> None:
    fmt = f"%.{digits}e"
    pids = " ".join(str(int(f)) for f in subgrids[0][FLAVOUR].values)
    with path.open("w") as handle:
        handle.write(_mapping_text(header if "Format" in header else {**header, "Format": FORMAT})
                     + SEPARATOR + "\n")
        for grid, values in zip(subgrids, blocks, strict=True):
            xdim, qdim = grid.dims[2:]
            handle.write(" ".join(_float_text(v) for v in grid[xdim].values.tolist()) + "\n")
            handle.write(" ".join(_float_text(v) for v in grid[qdim].values.tolist()) + "\n")
            handle.write(pids + "\n")
            rows = np.asarray(values).transpose(1, 2, 0).reshape(-1, values.shape[0])
            np.savetxt(handle, rows, fmt=fmt, delimiter=" ")
            handle.write(SEPARATOR + "\n")
