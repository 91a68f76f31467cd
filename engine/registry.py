"""The op registry: names -> pure, lazy functions with a params model.

Recipes can only call what is registered here (built-in ops from engine.ops, third-party ops from
the `replicalake.ops` entry-point group), so a recipe never names Python code directly.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from pydantic import BaseModel

from .bounds import Params
from .errors import UnknownOpError, did_you_mean

ENTRY_POINT_GROUP = "replicalake.ops"

# What one task of an op holds in memory (`register_op(memory=...)`): a number m, the need being
# m x (bytes of one chunk of every input + one chunk of the output), or a function
# (params, {input name: dataset}, output dataset) -> bytes for ops whose need is not
# chunk-proportional (training on a sample, reductions to one block); ops that run torch wrap
# either in engine.ops.needs.TorchNeed (a callable). engine/projection.py turns these into a
# run's projected peak.
MemoryNeed = float | Callable[..., int]


class NoParams(Params):
    """Params model of ops that take none."""


@dataclass(frozen=True)
class OpSpec:
    """A registered op: its function, params model, input names and version.

    `version` enters every output's content token next to the fingerprint of the op's code
    (engine/fingerprint.py), which already follows code edits: bump it when results change for
    a reason the code does not show (a data file it reads), so the lake recomputes them.
    """

    name: str
    func: Callable
    params: type[BaseModel]
    inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...] = ()
    version: str = "1"
    doc: str = ""
    wants_context: bool = False
    memory: MemoryNeed | None = None

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""


@dataclass(frozen=True)
class StepContext:
    """What an op may know about where it runs: its step, content token and the lake root."""

    step_id: str
    token: str
    lake_url: str
    storage_options: dict | None = None

    @property
    def checkpoint_path(self) -> str:
        """Lake-relative folder for this step's checkpoints: same token, same checkpoint."""
        return f".tmp/checkpoints/{self.token}"


_OPS: dict[str, OpSpec] = {}
_loaded = False


def register_op(
    name: str,
    params: type[BaseModel] = NoParams,
    inputs: tuple[str, ...] = ("data",),
    optional_inputs: tuple[str, ...] = (),
    version: str = "1",
    wants_context: bool = False,
    memory: MemoryNeed | None = None,
) -> Callable[[Callable], Callable]:
    """Register `func(params, **inputs) -> xarray.Dataset` under `name`.

    Params models should derive from engine.bounds.Params, which refuses unknown keys (a typo
    in a recipe is an error rather than a silently ignored setting) and non-finite floats, and
    bound their counts with its types (Replicas, Epochs, ...) so validation cannot exhaust memory.
    Ops that must keep state in the lake while they run (training checkpoints) set
    `wants_context` and receive a `context=StepContext` keyword. `memory` declares what one of
    its tasks holds (see MemoryNeed); an op without it is projected with a cautious default
    multiplier.
    """

    def decorate(func: Callable) -> Callable:
        if name in _OPS and _OPS[name].func is not func:
            raise ValueError(f"op {name!r} is already registered by {_OPS[name].func.__module__}")
        _OPS[name] = OpSpec(name, func, params, tuple(inputs), tuple(optional_inputs), version,
                            func.__doc__ or "", wants_context, memory=memory)
        return func

    return decorate


@dataclass(frozen=True)
class FailedPlugin:
    """An entry point of the `replicalake.ops` group whose import raised, kept for error messages."""

    name: str
    target: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.name!r} ({self.target}) failed to load: {self.error}"


_failed_plugins: list[FailedPlugin] = []


def _load_ops() -> None:
    """Import built-in ops, then each third-party entry point, once, on first use.

    Each plugin is imported on its own: one that raises must not take the built-in ops (and so
    every recipe) down with it. Its failure is warned about once and kept, so that asking for an
    op it may have provided says why that op is missing; later calls retry nothing. Built-in
    ops import before the registry counts as loaded, so a bug there fails every call loudly.
    """
    global _loaded
    if _loaded:
        return
    importlib.import_module("engine.ops")
    _loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:  # any error in third-party code: report it, keep the rest
            failed = FailedPlugin(entry.name, entry.value, f"{type(exc).__name__}: {exc}")
            _failed_plugins.append(failed)
            warnings.warn(f"{failed}; its ops are unavailable", stacklevel=3)


def get_op(name: str) -> OpSpec:
    _load_ops()
    try:
        return _OPS[name]
    except KeyError:
        failed = "".join(f"; {plugin}, so its ops are missing" for plugin in _failed_plugins)
        raise UnknownOpError(
            f"unknown op {name!r}{did_you_mean(name, _OPS)}{failed}; "
            "`replicalake ops` lists the registered ones"
        ) from None


def list_ops() -> list[OpSpec]:
    _load_ops()
    return [_OPS[name] for name in sorted(_OPS)]


def op_names() -> list[str]:
    _load_ops()
    return sorted(_OPS)
