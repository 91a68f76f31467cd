"""Plain-text EELS spectra: one line of whitespace-separated counts per spectrum.

This is how EELSfitter's WS2 data ships (one line of 1981 tab-separated counts and a trailing
tab). Such files carry no energy axis, so the caller supplies one. Every line of every file, in
the order given, becomes one pixel of a line scan, which is why all rows must have the same
number of channels; a mismatch is reported with the file and line rather than padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import IngestError

EXPECTED = "one line of tab-separated counts per spectrum"


def read_text_spectra(paths: Sequence[Path]) -> np.ndarray:
    """All spectra of `paths` as rows of a (spectra, channels) float64 array, in file order."""
    rows: list[np.ndarray] = []
    first: tuple[Path, int, int] | None = None
    for path in paths:
        found = 0
        for number, line in enumerate(_read(path).splitlines(), start=1):
            tokens = line.split()
            if not tokens:
                continue
            row = _parse_row(path, number, tokens)
            if first is None:
                first = (path, number, row.size)
            elif row.size != first[2]:
                raise IngestError(
                    f"{path}:{number}: expected {first[2]} values per row (as in "
                    f"{first[0]}:{first[1]}), found {row.size}; all spectra of one entry need "
                    "the same channels")
            rows.append(row)
            found += 1
        if not found:
            raise IngestError(f"{path}: expected {EXPECTED}, found no values (empty file)")
    assert first is not None  # every path contributed at least one row
    if first[2] < 2:
        raise IngestError(f"{first[0]}: expected {EXPECTED} (at least 2 channels), found "
                          "1 value per row; a single-column file is not supported")
    return np.stack(rows)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: expected plain text ({EXPECTED}), found binary data "
                          f"(byte {exc.start} is not UTF-8)") from exc


def _parse_row(path: Path, number: int, tokens: list[str]) -> np.ndarray:
    try:
        return np.array(tokens, dtype=np.float64)
    except ValueError:
        column, token = next((i, t) for i, t in enumerate(tokens, start=1) if not _is_number(t))
        raise IngestError(f"{path}:{number}: column {column}: expected a number, "
                          f"found {token!r}") from None


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
