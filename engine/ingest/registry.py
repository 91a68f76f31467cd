"""The ingest-format registry: format names -> reader functions with a params model.

Formats are registered like ops (engine.registry) so that an ingest is data, not a hand-written
command: the CLI builds `replicalake ingest FORMAT ...` from each format's params model
(engine/cli_ingest.py), so adding a reader is one decorator and every command line is checked the
same way. A field's alias, when it has one, is its name on the command line (`--jets` for the
reader's `n_jets`), so readers keep the keyword names their Python callers use.

Listing formats imports every reader module, so those modules import their heavy or optional
packages (torch, uproot, h5py, rsciio) inside functions, never at module level.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import Field
from pydantic.fields import FieldInfo

from .. import bounds

if TYPE_CHECKING:
    from ..storage import Lake

BUILTIN_MODULES = ("synthetic_eels", "eels_files", "nnpdf", "root_files", "jet_tables", "lhapdf",
                   "synthetic_calo", "fk_theory", "eko_evolution")
ENTRY = "name"  # every format writes raw/NAME
RESERVED = ("lake",)  # options every ingest command has besides its params

EntryName = Annotated[str, Field(description="entry name under raw/")]
Progress = Annotated[bool, Field(description="show a progress bar")]
Seed = Annotated[bounds.Seed, Field(description="generator seed")]


class IngestParams(bounds.Params):
    """Base of every format's params model; its docstring is the command's help.

    Unknown keys and non-finite numbers are refused (engine.bounds.Params) so a misspelt param or
    a `--dispersion nan` is an error rather than a silently ignored setting or an all-NaN entry.
    """


@dataclass(frozen=True)
class IngestFormat:
    """A registered format: `func(lake, **params) -> summary line`, its params model, and which
    params are positional on the command line (in order)."""

    name: str
    func: Callable[..., str]
    params: type[IngestParams]
    positional: tuple[str, ...]

    @property
    def help(self) -> str:
        return inspect.cleandoc(self.params.__doc__ or "")

    def fields(self) -> dict[str, FieldInfo]:
        """The params by their command-line name (alias, else field name), in model order."""
        return {field.alias or name: field for name, field in self.params.model_fields.items()}

    def ingest(self, lake: Lake, params: IngestParams) -> str:
        """Run the reader on validated params; returns its summary line."""
        return self.func(lake, **{name: getattr(params, name) for name in self.params.model_fields})


_FORMATS: dict[str, IngestFormat] = {}
_loaded = False


def register_format(name: str, params: type[IngestParams],
                    positional: tuple[str, ...] = (ENTRY,)) -> Callable[[Callable], Callable]:
    """Register `func(lake, **params) -> str` as ingest format `name`.

    Checked here rather than when a command runs, so a mismatch fails at import in every test:
    the model has the entry name and no reserved option, its params are the reader's keywords
    (every required one after `lake`), and `positional` names its params.
    """

    def decorate(func: Callable) -> Callable:
        if name in _FORMATS and _FORMATS[name].func is not func:
            raise ValueError(f"ingest format {name!r} is already registered by "
                             f"{_FORMATS[name].func.__module__}")
        spec = IngestFormat(name, func, params, tuple(positional))
        cli_names = spec.fields()
        keywords = inspect.signature(func).parameters
        problems = ([f"no param {ENTRY!r} (the entry under raw/)"] if ENTRY not in cli_names else [])
        problems += [f"param {p!r} clashes with the --{p} option" for p in RESERVED if p in cli_names]
        problems += [f"param {p!r} is no keyword of {func.__name__}" for p in params.model_fields
                     if p not in keywords]
        problems += [f"{func.__name__} needs {p!r}, which is no param" for p, kw in list(keywords.items())[1:]
                     if kw.default is inspect.Parameter.empty and p not in params.model_fields]
        problems += [f"positional {p!r} is no param" for p in positional if p not in cli_names]
        if problems:
            raise ValueError(f"ingest format {name!r}: " + "; ".join(problems))
        _FORMATS[name] = spec
        return func

    return decorate


def _load_formats() -> None:
    """Import the built-in reader modules once, on first use (each registers its formats)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def list_formats() -> list[IngestFormat]:
    """Every registered format, in registration order (the order `ingest --help` lists them)."""
    _load_formats()
    return list(_FORMATS.values())
