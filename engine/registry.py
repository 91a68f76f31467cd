"""The op registry: names -> pure, lazy functions with a params model.

Recipes can only call what is registered here (built-in ops from engine.ops, third-party ops from
the `replicalake.ops` entry-point group), so a recipe never names Python code directly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from pydantic import BaseModel, ConfigDict

from .errors import UnknownOpError, did_you_mean

ENTRY_POINT_GROUP = "replicalake.ops"


class NoParams(BaseModel):
    """Params model of ops that take none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class OpSpec:
    """A registered op: its function, params model, input names and version.

    `version` enters every output's content token: bump it when the op's results change, so
    the lake recomputes what it produced before.
    """

    name: str
    func: Callable
    params: type[BaseModel]
    inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...] = ()
    version: str = "1"
    doc: str = ""
    wants_context: bool = False

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
) -> Callable[[Callable], Callable]:
    """Register `func(params, **inputs) -> xarray.Dataset` under `name`.

    Params models should forbid extra keys (`model_config = ConfigDict(extra="forbid")`) so a
    typo in a recipe is an error rather than a silently ignored setting. Ops that must keep
    state in the lake while they run (training checkpoints) set `wants_context` and receive a
    `context=StepContext` keyword.
    """

    def decorate(func: Callable) -> Callable:
        if name in _OPS and _OPS[name].func is not func:
            raise ValueError(f"op {name!r} is already registered by {_OPS[name].func.__module__}")
        _OPS[name] = OpSpec(name, func, params, tuple(inputs), tuple(optional_inputs), version,
                            func.__doc__ or "", wants_context)
        return func

    return decorate


def _load_ops() -> None:
    """Import built-in ops and third-party entry points once, on first use."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("engine.ops")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def get_op(name: str) -> OpSpec:
    _load_ops()
    try:
        return _OPS[name]
    except KeyError:
        raise UnknownOpError(
            f"unknown op {name!r}{did_you_mean(name, _OPS)}; `replicalake ops` lists them all"
        ) from None


def list_ops() -> list[OpSpec]:
    _load_ops()
    return [_OPS[name] for name in sorted(_OPS)]


def op_names() -> list[str]:
    _load_ops()
    return sorted(_OPS)
