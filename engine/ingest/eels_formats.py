"""Foreign EELS files as one uniform view: counts (y, x, energy), an energy axis in eV, metadata.

RosettaSciIO reads DigitalMicrograph, EMSA and HyperSpy files into dicts whose axes come in the
file's own order (DigitalMicrograph puts energy first). This module finds the energy axis by its
unit, moves it last with a lazy transpose (no data is read here), and pulls the few metadata
fields the lake keeps. Plain-text spectra carry no axis, so theirs comes from the caller.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..errors import IngestError
from .eels_text import read_text_spectra

FORMATS = {".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".msa": "msa",
           ".ems": "msa", ".emsa": "msa", ".hspy": "hspy", ".txt": "text", ".tsv": "text"}
LABELS = {"digitalmicrograph": "DigitalMicrograph DM3/DM4", "msa": "EMSA/MSA",
          "hspy": "HyperSpy .hspy", "text": "plain-text spectra"}
# reader module and the keyword arguments that make it lazy (EMSA has no lazy mode: it is text)
READERS = {"digitalmicrograph": ("rsciio.digitalmicrograph", {"lazy": True}),
           "msa": ("rsciio.msa", {}), "hspy": ("rsciio.hspy", {"lazy": True})}
BEAM_ENERGY = "Acquisition_instrument.TEM.beam_energy"
COLLECTION_ANGLE = "Acquisition_instrument.TEM.Detector.EELS.collection_angle"


@dataclass
class Spectra:
    """What an ingest needs from any source: counts indexed (y, x, energy) and their axis."""

    counts: Any  # numpy or (lazy) dask array, dims (y, x, energy)
    energy: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)  # dispersion_ev, beam_energy_kev, ...
    # the file's spatial calibration: dim ("y", "x") -> (offset, step) in nm of a calibrated axis
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)


# Length units of spatial axes as DigitalMicrograph and HyperSpy write them, in nm. An axis in
# other units (none, "<undefined>", 1/nm of a diffraction pattern) is left in pixels.
NM_PER_UNIT = {"nm": 1.0, "µm": 1e3, "μm": 1e3, "um": 1e3, "micron": 1e3, "mm": 1e6, "m": 1e9,
               "pm": 1e-3, "å": 0.1, "angstrom": 0.1}


def format_of(paths: Sequence[Path]) -> str:
    """The one format of `paths`, from their suffixes; several files must all be text."""
    for path in paths:
        if path.suffix.lower() not in FORMATS:
            raise IngestError(f"{path}: unknown format {path.suffix or '(no suffix)'!r}; expected "
                              f"one of {', '.join(FORMATS)}")
    formats = {FORMATS[p.suffix.lower()] for p in paths}
    if len(paths) > 1 and formats != {"text"}:
        raise IngestError("several files combine into one entry only as plain-text spectra "
                          f"(.txt); found {', '.join(p.name for p in paths)}")
    return formats.pop()


def energy_axis(source: object, start: float, step: float, size: int) -> np.ndarray:
    """A linear energy axis in eV, refusing the ones no EELS op can use."""
    if not (np.isfinite(start) and np.isfinite(step) and step > 0):
        raise IngestError(f"{source}: expected an increasing energy axis (finite start, "
                          f"dispersion > 0 eV/channel), found start {start} eV, dispersion {step}")
    if size < 2:
        raise IngestError(f"{source}: expected at least 2 energy channels, found {size}")
    return start + step * np.arange(size, dtype=np.float64)


@contextmanager
def open_spectra(paths: Sequence[Path], fmt: str, pixel_chunks: tuple[int, int],
                 text_axis: tuple[float, float] | None = None) -> Iterator[Spectra]:
    """Open `paths` as Spectra for the duration of the block (readers may hold files open).

    `text_axis` is (first energy, dispersion) in eV, required for plain text, which has none.
    """
    if fmt == "text":
        if text_axis is None:
            raise IngestError(f"{paths[0]}: plain-text spectra need an energy axis (start, dispersion)")
        rows = read_text_spectra(paths)
        yield Spectra(rows[None], energy_axis(paths[0], *text_axis, rows.shape[1]),
                      {"dispersion_ev": float(text_axis[1])})
        return
    path = paths[0]
    signal = _read_signal(path, fmt, pixel_chunks)
    try:
        yield _as_spectra(path, signal)
    finally:
        if fmt == "hspy":
            _close_hdf5(signal["data"])


def _read_signal(path: Path, fmt: str, pixel_chunks: tuple[int, int]) -> dict:
    """The file's one EELS signal; DigitalMicrograph is read again chunked as we copy it.

    The DM reader's default chunks are cubes across energy and pixels; copying a pixel block
    from those would load several whole cubes per block. Asking for chunks of one pixel block
    with the whole energy axis makes each block we copy exactly one memory-mapped read.
    """
    signal = _one_eels_signal(path, _call_reader(path, fmt))
    if fmt == "digitalmicrograph":
        chunks = _file_chunks(signal["axes"], pixel_chunks)
        signal = _one_eels_signal(path, _call_reader(path, fmt, chunks=chunks))
    return signal


def _call_reader(path: Path, fmt: str, **kwargs: Any) -> list[dict]:
    module_name, lazy = READERS[fmt]
    try:
        reader = importlib.import_module(module_name).file_reader
    except ImportError as exc:
        raise IngestError(f"{path}: reading {LABELS[fmt]} files needs {exc.name or module_name}, "
                          "which is not installed; install the 'eels' extra "
                          "(pip install 'replicalake[eels]')") from exc
    try:
        return reader(str(path), **lazy, **kwargs)
    except Exception as exc:
        raise IngestError(f"{path}: expected a readable {LABELS[fmt]} file, but its reader "
                          f"failed ({type(exc).__name__}: {exc}); is it truncated or of "
                          "another format?") from exc


def _energy_axes(axes: list[dict]) -> list[int]:
    return [i for i, axis in enumerate(axes) if str(axis.get("units") or "").strip().lower() == "ev"]


def _describe(axes: list[dict]) -> str:
    return "(" + ", ".join(f"{a.get('name') or '?'} [{a.get('units') or 'no units'}] x{a.get('size')}"
                           for a in axes) + ")"


def _one_eels_signal(path: Path, signals: list[dict]) -> dict:
    """The single signal with exactly one axis in eV, or an error listing what was found."""
    eels = [s for s in signals if len(_energy_axes(s["axes"])) == 1]
    if len(eels) != 1:
        found = "; ".join(_describe(s["axes"]) for s in signals) or "no signals"
        raise IngestError(f"{path}: expected one spectrum signal with exactly one energy axis in "
                          f"eV, found {len(eels)} among {len(signals)} signal(s) with axes {found}")
    return eels[0]


def _file_chunks(axes: list[dict], pixel_chunks: tuple[int, int]) -> dict[int, int]:
    """Reader chunks in the file's axis order: the whole energy axis, one pixel block."""
    energy = _energy_axes(axes)[0]
    spatial = [i for i in range(len(axes)) if i != energy]
    return {energy: -1, **dict(zip(reversed(spatial), reversed(pixel_chunks), strict=False))}


def _as_spectra(path: Path, signal: dict) -> Spectra:
    """Move the energy axis last and pad to (y, x, energy); lazy arrays stay lazy."""
    data, axes = signal["data"], signal["axes"]
    if data.ndim != len(axes) or data.size == 0:
        raise IngestError(f"{path}: expected data matching its axes {_describe(axes)}, found an "
                          f"array of shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise IngestError(f"{path}: expected real-valued counts, found dtype {data.dtype}")
    energy = _energy_axes(axes)[0]
    spatial = [i for i in range(len(axes)) if i != energy]
    if len(spatial) > 2:
        raise IngestError(f"{path}: expected a spectrum, line scan or spectral image (at most 2 "
                          f"spatial axes besides energy), found axes {_describe(axes)}")
    counts = data.transpose(*spatial, energy)[(None,) * (2 - len(spatial))]
    axis = axes[energy]
    if "scale" not in axis:
        raise IngestError(f"{path}: expected a uniform energy axis (offset + scale), found a "
                          f"non-uniform axis {axis.get('name')!r}")
    values = energy_axis(path, float(axis.get("offset", 0.0)), float(axis["scale"]), int(axis["size"]))
    positions = spatial_calibration(path, [axes[i] for i in spatial])
    return Spectra(counts, values, {**_metadata(signal), "dispersion_ev": float(axis["scale"])}, positions)


def spatial_calibration(path: Path, axes: list[dict]) -> dict[str, tuple[float, float]]:
    """(offset, step) in nm of each spatial axis the file calibrates in a length unit, by lake
    dim: two axes are (y, x), one is x (a line scan). A calibrated axis with a step that is not
    finite and positive is refused: maps would be drawn with a wrong scale."""
    found = {}
    for dim, axis in zip(("y", "x")[2 - len(axes):], axes, strict=True):
        units = str(axis.get("units") or "").strip()
        factor = NM_PER_UNIT.get(units) or NM_PER_UNIT.get(units.lower())
        if factor is None or "scale" not in axis:
            continue
        step, offset = float(axis["scale"]) * factor, float(axis.get("offset", 0.0)) * factor
        if not (np.isfinite(step) and step > 0 and np.isfinite(offset)):
            raise IngestError(f"{path}: expected a positive finite pixel size on the {dim} axis, found "
                              f"scale {axis['scale']} {units} (offset {axis.get('offset', 0.0)})")
        found[dim] = (offset, step)
    return found


def _lookup(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _metadata(signal: dict) -> dict[str, Any]:
    """Beam energy, collection angle and title, from the reader's metadata or, for DM, from
    its mapping of original tags (the same conversions HyperSpy applies, e.g. volts to keV).

    DigitalMicrograph writes 0 for a collection angle nobody entered, so only positive values
    are kept: a recorded angle must be one a calculation may trust.
    """
    values = {path: _lookup(signal.get("metadata") or {}, path) for path in (BEAM_ENERGY, COLLECTION_ANGLE)}
    for source, (target, convert) in (signal.get("mapping") or {}).items():
        if target not in values or values[target] is not None:
            continue
        raw = _lookup(signal.get("original_metadata") or {}, source)
        if raw is not None:
            values[target] = convert(raw) if convert else raw
    attrs: dict[str, Any] = {}
    for key, path in (("beam_energy_kev", BEAM_ENERGY), ("collection_angle_mrad", COLLECTION_ANGLE)):
        value = values[path]
        if isinstance(value, int | float | np.number) and np.isfinite(value) and value > 0:
            attrs[key] = float(value)
    title = _lookup(signal.get("metadata") or {}, "General.title")
    if isinstance(title, str) and title.strip():
        attrs["title"] = title.strip()
    return attrs


def _close_hdf5(data: Any) -> None:
    """Close the HDF5 files behind a lazy hspy read (RosettaSciIO leaves them open for dask)."""
    if not isinstance(data, da.Array):
        return
    import h5py

    for value in dict(data.__dask_graph__()).values():
        if isinstance(value, h5py.Dataset) and value.id.valid:
            value.file.close()
