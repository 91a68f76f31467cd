"""Settings with environment overrides: where the lake is and how work is scheduled.

Kept tiny on purpose: every command line option that has a default reads it from here, so the
environment variable names are documented in one place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConfigError

LAKE_ENV = "REPLICALAKE_LAKE"
SCHEDULER_ENV = "REPLICALAKE_SCHEDULER"
SCHEDULER_TIMEOUT_ENV = "REPLICALAKE_SCHEDULER_TIMEOUT"
DEFAULT_SCHEDULER_TIMEOUT_S = 10.0
CATALOG_DIR_ENV = "REPLICALAKE_CATALOGS"
MAX_MEMORY_ENV = "REPLICALAKE_MAX_MEMORY"
# Share of the machine's RAM a run may be projected to use when no budget is given: the rest is
# left to the OS page cache (zarr reads come through it) and to other processes.
DEFAULT_MEMORY_FRACTION = 0.75
CODE_CACHE_ENV = "REPLICALAKE_CODE_CACHE"
DEFAULT_LAKE = "storage"
# Pixel chunk of ingested spectral images (the energy axis is always one chunk). 32 x 32 x 2048
# float32 is 8 MiB: measured, 10^4 -> 10^6 spectra grew peak RSS of the thickness recipe by 1.15x
# (64 x 64: 1.39x) at the same speed.
DEFAULT_PIXEL_CHUNKS = (32, 32)


def lake_root(explicit: str | None = None) -> str:
    """The lake root: the explicit value, else $REPLICALAKE_LAKE, else ./storage."""
    return explicit or os.environ.get(LAKE_ENV) or DEFAULT_LAKE


def scheduler_address(explicit: str | None = None) -> str | None:
    """A dask.distributed scheduler address, or None for the in-process threaded scheduler."""
    return explicit or os.environ.get(SCHEDULER_ENV) or None


def scheduler_timeout() -> float:
    """Seconds to wait for a dask.distributed scheduler to answer before a run gives up:
    $REPLICALAKE_SCHEDULER_TIMEOUT, else DEFAULT_SCHEDULER_TIMEOUT_S (dask's own default is 30 s)."""
    text = os.environ.get(SCHEDULER_TIMEOUT_ENV)
    if not text:
        return DEFAULT_SCHEDULER_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"${SCHEDULER_TIMEOUT_ENV}: expected a positive number of seconds, found {text!r}")
    return seconds


def checked_lock_timeout(seconds: float | None) -> float | None:
    """`--lock-timeout`: seconds to wait for another run's lock (None: until it is done), checked.

    NaN compares false with every deadline, so it waited forever while saying it would not;
    inf says the same as None less plainly, and a negative wait means nothing.
    """
    if seconds is not None and not 0 <= seconds < float("inf"):
        raise ConfigError(f"--lock-timeout: expected a finite number of seconds >= 0, found {seconds!r}")
    return seconds


def worker_threads() -> int:
    """Threads of the runner's local pool: one per core (the threaded scheduler's own default)."""
    return os.cpu_count() or 1


def code_cache_dir() -> Path:
    """Folder of parsed-source summaries (engine/fingerprint.py): $REPLICALAKE_CODE_CACHE, else
    $XDG_CACHE_HOME/replicalake/code, else ~/.cache/replicalake/code. Safe to delete any time."""
    explicit = os.environ.get(CODE_CACHE_ENV)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "replicalake" / "code"


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?)?b?\s*", re.IGNORECASE)
_UNIT_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}


def parse_bytes(text: str | int, setting: str = "--max-memory") -> int:
    """Bytes from '4GiB' (binary), '500MB' (decimal), '2g' (decimal) or a plain number of bytes."""
    match = _SIZE.fullmatch(str(text))
    size = 0
    if match is not None:
        number, unit = match.groups()
        scale = 1
        if unit:
            base = 1024 if unit.lower().endswith("i") else 1000
            scale = base ** _UNIT_POWERS[unit[0].lower()]
        size = int(float(number) * scale)
    if size <= 0:
        raise ConfigError(f"{setting}: expected a positive size such as 4GiB, 500MB or a number of "
                          f"bytes, found {text!r}")
    return size


def max_memory(explicit: str | int | None = None) -> int:
    """The memory budget of a run in bytes: explicit (--max-memory), else $REPLICALAKE_MAX_MEMORY,
    else DEFAULT_MEMORY_FRACTION of the machine's RAM."""
    if explicit is not None:
        return parse_bytes(explicit)
    if os.environ.get(MAX_MEMORY_ENV):
        return parse_bytes(os.environ[MAX_MEMORY_ENV], f"${MAX_MEMORY_ENV}")
    import psutil

    return int(DEFAULT_MEMORY_FRACTION * psutil.virtual_memory().total)


def catalog_dir(explicit: str | Path | None = None) -> Path:
    """Folder of the hand-written Intake catalogs: explicit, $REPLICALAKE_CATALOGS, ./catalogs."""
    return Path(explicit or os.environ.get(CATALOG_DIR_ENV) or "catalogs")
