"""`replicalake ingest eels FILE... NAME`: real EELS files into the lake's raw/ zone.

Whatever the file's own layout, the entry is `counts` (y, x, energy) float32 with the whole
energy axis in one chunk. Data are copied one pixel block (one zarr chunk) at a time from the
reader's lazy array, so memory is bounded by the block, not the file: a DigitalMicrograph image
stored energy-first is transposed block by block, never loaded whole. Non-finite values are
counted on the way and refused unless asked for, because a single NaN poisons every sum over
energy downstream. Like every writer, the ingest fills `.tmp/` and publishes atomically.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from pydantic import Field

from ..bounds import PixelChunk
from ..config import DEFAULT_PIXEL_CHUNKS
from ..errors import IngestError
from ..kernels.eels import ZLP_SEARCH_EV
from ..storage import PROVENANCE_KEY, Lake, content_token
from .eels_formats import LABELS, Spectra, format_of, open_spectra
from .registry import EntryName, IngestParams, Progress, register_format
from .staging import pixel_blocks, staged_entry, write_blocks

INGEST = "eels-files"
INGEST_VERSION = "1"
# Plain-text spectra carry no energy axis. Without --energy-start/--dispersion the only axis
# assumed is that of EELSfitter's WS2 specimen-4 spectra (../shared/data/eels/README.md), and
# only for spectra that are recognisably those: TEXT_CHANNELS channels with their zero-loss peak
# within ZLP_SEARCH_EV of 0 eV on that axis; any other text file must state its axis. Each
# channel is labelled by its lower edge: the 1981 channels cover -4.054 ... 45.471 eV, and
# EELSfitter's own loader labels them by their centres, 0.0125 eV higher.
TEXT_ENERGY_START_EV = -4.054
TEXT_DISPERSION_EV = 0.025
TEXT_CHANNELS = 1981
MAX_THREADS = 8  # each thread holds about three copies of one block in memory


class EelsFilesParams(IngestParams):
    """Copy real EELS spectra into raw/NAME as counts (y, x, energy) with an eV energy axis."""

    files: list[Path] = Field(description="DM3/DM4, .msa, .hspy or .txt spectra; several .txt files "
                              "become one line scan in the order given")
    name: EntryName
    chunks: tuple[PixelChunk, PixelChunk] = Field(DEFAULT_PIXEL_CHUNKS, description="CY CX pixel chunk")
    energy_start: float | None = Field(
        None, description="text only: energy of the first channel in eV (give it with --dispersion; "
        f"without both, only EELSfitter's WS2 spectra are accepted, as {TEXT_ENERGY_START_EV})")
    dispersion: float | None = Field(
        None, gt=0, description="text only: eV per channel (give it with --energy-start; without both, "
        f"only EELSfitter's WS2 spectra are accepted, as {TEXT_DISPERSION_EV})")
    allow_nonfinite: bool = Field(False, description="keep NaN/inf values instead of refusing the file")
    progress: Progress = True


@register_format("eels", EelsFilesParams, positional=("files", "name"))
def ingest_eels_files(lake: Lake, files: Sequence[str | Path], name: str,
                      chunks: tuple[int, int] = DEFAULT_PIXEL_CHUNKS, energy_start: float | None = None,
                      dispersion: float | None = None, allow_nonfinite: bool = False,
                      progress: bool = True, threads: int | None = None) -> str:
    """Ingest DM3/DM4, EMSA, hspy or plain-text spectra into raw/NAME; returns a summary line."""
    paths = [Path(f) for f in files]
    _check_request(lake, paths, name, chunks)
    fmt = format_of(paths)
    text_axis = _text_axis(paths[0], fmt, energy_start, dispersion)
    token = content_token(INGEST, INGEST_VERSION, [_file_digest(p) for p in paths], list(chunks),
                          text_axis, allow_nonfinite)
    with staged_entry(lake, "raw", name) as stage, open_spectra(paths, fmt, chunks, text_axis) as spectra:
        ny, nx, ne = spectra.counts.shape
        block = (min(chunks[0], ny), min(chunks[1], nx))
        dataset = _template(spectra, block, paths, fmt, token)
        group = stage.layout(dataset)
        bad = _copy_blocks(spectra.counts, group["counts"], block, _source(paths), progress,
                           threads or min(MAX_THREADS, os.cpu_count() or 1))
        if bad and not allow_nonfinite:
            raise IngestError(f"{_source(paths)}: expected finite counts, found {bad} non-finite "
                              f"values (NaN or inf) among {ny * nx * ne}; pass --allow-nonfinite "
                              "to keep them")
        group.attrs["nonfinite_values"] = bad
        group.attrs["energy_axis"] = axis_note = _checked_axis(spectra, paths, fmt, energy_start is None)
        stage.publish(f"EELS {ny}x{nx}x{ne} from {LABELS[fmt]} {_source(paths)}", {"token": token})
    size = lake.size(lake.entry_path("raw", name))
    kept = f", {bad} non-finite values kept" if bad else ""
    calibrated = "".join(f", {dim} {step:.4g} nm/pixel" for dim, (_, step) in spectra.positions.items())
    return (f"{ny}x{nx} spectra x {ne} channels, {dataset.energy.values[0]:g} .. "
            f"{dataset.energy.values[-1]:g} eV ({axis_note}){calibrated}{kept}, "
            f"{size / 2**20:.1f} MiB on disk")


def _check_request(lake: Lake, paths: list[Path], name: str, chunks: tuple[int, int]) -> None:
    """Refuse what can be refused before any reading, so bad requests cost nothing."""
    lake.new_entry_path("raw", name)
    if not paths:
        raise IngestError("expected at least one file to ingest, found none")
    if len(chunks) != 2 or min(chunks) < 1:
        raise IngestError(f"--chunks must be two positive integers CY CX, found {tuple(chunks)}")
    for path in paths:
        if not path.exists():
            raise IngestError(f"{path}: no such file")
        if not path.is_file():
            raise IngestError(f"{path}: expected a file, found a folder or special file")


def _text_axis(path: Path, fmt: str, start: float | None,
               dispersion: float | None) -> tuple[float, float] | None:
    """(start, dispersion) for text spectra: both given, or neither (the WS2 axis, which
    `_checked_axis` accepts only for the WS2 spectra); None for files that carry an axis."""
    if fmt == "text":
        if (start is None) != (dispersion is None):
            given, missing = ("--energy-start", "--dispersion") if dispersion is None else (
                "--dispersion", "--energy-start")
            raise IngestError(f"{path}: {given} was given without {missing}; plain-text spectra need "
                              "both (eV of the first channel and eV per channel)")
        return (TEXT_ENERGY_START_EV if start is None else start,
                TEXT_DISPERSION_EV if dispersion is None else dispersion)
    if start is not None or dispersion is not None:
        raise IngestError(f"{path}: --energy-start/--dispersion apply to plain-text spectra only; "
                          f"a {LABELS[fmt]} file carries its own energy axis")
    return None


def _checked_axis(spectra: Spectra, paths: list[Path], fmt: str, assumed: bool) -> str:
    """Where the energy axis came from (stored as the entry's `energy_axis` attribute); refuses
    text spectra without --energy-start/--dispersion unless they are the WS2 spectra."""
    energy = spectra.energy
    if fmt != "text":
        return f"from the file: {energy[0]:g} eV + {energy[1] - energy[0]:g} eV/channel"
    if not assumed:
        return f"given: --energy-start {energy[0]:g} --dispersion {energy[1] - energy[0]:g}"
    mean = np.nanmean(np.asarray(spectra.counts, dtype=np.float64), axis=(0, 1))
    peak = float(energy[int(np.nanargmax(mean))]) if np.isfinite(mean).any() else float("nan")
    if energy.size != TEXT_CHANNELS or not abs(peak) <= ZLP_SEARCH_EV:
        found = (f"{energy.size} channels" if energy.size != TEXT_CHANNELS else
                 f"{TEXT_CHANNELS} channels, but their highest mean count is at {peak:.3g} eV on that axis, "
                 f"not within {ZLP_SEARCH_EV:g} eV of 0 (where a zero-loss peak would be)")
        raise IngestError(
            f"{_source(paths)}: plain-text spectra carry no energy axis; pass --energy-start (eV of "
            "the first channel) and --dispersion (eV per channel). Without them only EELSfitter's WS2 "
            f"specimen-4 spectra are accepted ({TEXT_CHANNELS} channels, --energy-start "
            f"{TEXT_ENERGY_START_EV} --dispersion {TEXT_DISPERSION_EV}); found {found}")
    return (f"assumed: EELSfitter's WS2 specimen-4 axis (--energy-start {TEXT_ENERGY_START_EV} "
            f"--dispersion {TEXT_DISPERSION_EV}): {TEXT_CHANNELS} channels, zero-loss peak at {peak:.3g} eV")


def _file_digest(path: Path) -> str:
    """Content hash of a file, read in pieces (the token must not depend on its name or age)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _source(paths: list[Path]) -> str:
    return str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more)"


def _template(spectra: Spectra, block: tuple[int, int], paths: list[Path], fmt: str,
              token: str) -> xr.Dataset:
    """A lazy dataset with the final layout and attributes; only its metadata is written."""
    ny, nx, ne = spectra.counts.shape
    counts = da.zeros((ny, nx, ne), chunks=(*block, ne), dtype=np.float32)
    energy = spectra.energy
    coords = {"y": np.arange(ny), "x": np.arange(nx),
              "energy": ("energy", energy, {"units": "eV", "long_name": "energy loss"})}
    for dim, (offset, step) in spectra.positions.items():  # the file's calibration, beside the
        size = ny if dim == "y" else nx  # pixel indices (recipes select pixels by index)
        coords[f"{dim}_nm"] = (dim, offset + step * np.arange(size),
                               {"units": "nm", "long_name": f"{dim} position"})
    pixel_size = {f"pixel_size_{dim}_nm": step for dim, (_, step) in spectra.positions.items()}
    dataset = xr.Dataset({"counts": (("y", "x", "energy"), counts)}, coords=coords)
    dataset.attrs = {
        **spectra.attrs,
        **pixel_size,
        "original_files": [p.name for p in paths],
        PROVENANCE_KEY: {"token": token, "ingest": INGEST, "ingest_version": INGEST_VERSION,
                         "format": fmt, "files": [str(p.resolve()) for p in paths],
                         "chunks": list(block)},
    }
    return dataset


def _copy_blocks(counts, target: zarr.Array, block: tuple[int, int], source: str, progress: bool,
                 threads: int) -> int:
    """Copy `counts` into `target` block by block; return how many values were not finite."""

    def copy(where: tuple[slice, slice]) -> int:
        values = _load(counts[where], source, where).astype(np.float32, copy=False)
        target[where] = values
        return int(values.size - np.count_nonzero(np.isfinite(values)))

    blocks = pixel_blocks(counts.shape[:2], block)
    return sum(write_blocks(blocks, copy, f"copying {source}", progress, threads))


def _load(block, source: str, where: tuple[slice, slice]) -> np.ndarray:
    """One block in memory; a lazy read that fails (truncated data) names the pixels."""
    if not isinstance(block, da.Array):
        return np.asarray(block)
    try:
        return block.compute(scheduler="synchronous")
    except Exception as exc:
        ys, xs = where
        raise IngestError(f"{source}: expected pixels y {ys.start}:{ys.stop}, x {xs.start}:"
                          f"{xs.stop} to be readable, but reading failed ({type(exc).__name__}: "
                          f"{exc}); is the file truncated?") from exc
