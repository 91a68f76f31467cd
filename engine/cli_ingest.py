"""`replicalake ingest FORMAT ...`: one command per registered ingest format, built from its params.

Commands are generated from each format's params model (engine.ingest.registry) rather than written
one by one, so a new reader needs no CLI code and every ingest parses and checks its command line
the same way: the format's `positional` params are arguments, the rest `--options` (a tuple takes
several values, `--shape NY NX NE`; a list repeats, `--branches a --branches b`; a bool is a flag,
`--x/--no-x` when on by default), help comes from the field descriptions and bounds, and a value
the model refuses is one line naming the option, what was expected and what was found.
"""

from __future__ import annotations

import functools
import inspect
import operator
import types
from collections.abc import Callable
from typing import Annotated, Any, Union, get_args, get_origin

import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from .bounds import limits_text
from .errors import IngestError
from .ingest.registry import ENTRY, IngestFormat, IngestParams, list_formats
from .recipe import expected_and_found


class FormatGroup(TyperGroup):
    """The `ingest` group: one command per registered format, built when the group is first asked
    for its commands, so that every other command starts without importing the reader modules
    (dask.array, awkward, scipy: most of a second)."""

    def list_commands(self, ctx: Any) -> list[str]:
        self._add_formats()
        return super().list_commands(ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> TyperCommand | None:
        self._add_formats()
        return super().get_command(ctx, cmd_name)

    def _add_formats(self) -> None:
        from .cli import LakeOption, out  # the whole CLI's --lake and console, imported by now

        for spec in list_formats():
            if spec.name not in self.commands:
                self.add_command(format_command(spec, LakeOption, out))


def format_command(spec: IngestFormat, lake_option: Any, console: Console) -> TyperCommand:
    """The click command of one format: `lake_option` types its --lake, `console` gets its summary."""
    single = typer.Typer(add_completion=False)
    single.command(spec.name, help=spec.help)(_command(spec, lake_option, console))
    return typer.main.get_command(single)


def _command(spec: IngestFormat, lake_option: Any, console: Console) -> Callable[..., None]:
    """A function whose signature typer reads as the format's arguments and options."""
    fields = spec.fields()
    schema = spec.params.model_json_schema()["properties"]  # keyed like fields: alias, else name
    order = [*spec.positional, *(name for name in fields if name not in spec.positional)]
    parameters = [_parameter(name, fields[name], schema[name], name in spec.positional) for name in order]
    parameters.append(inspect.Parameter("lake", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=lake_option))

    def command(lake: str | None, **values: Any) -> None:
        from .cli import _lake  # the lake a failed write is reported against

        summary = spec.ingest(_lake(lake), _validated(spec, values))
        console.print(escape(f"ingested raw/{values[ENTRY]}: {summary}"))

    command.__signature__ = inspect.Signature(parameters)
    return command


def _parameter(name: str, field: FieldInfo, schema: dict, positional: bool) -> inspect.Parameter:
    """The typer parameter of one field: an argument, a flag or an option named after it."""
    help_text = _help(field, schema)
    if positional:
        info = typer.Argument(help=help_text)
    elif field.annotation is bool and field.default is False:
        info = typer.Option("--" + name.replace("_", "-"), help=help_text)  # no --no-X for an opt-in
    else:
        info = typer.Option(help=help_text)
    default = inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[_plain(field.annotation), info])


def _plain(annotation: Any) -> Any:
    """The type without the bounds annotated inside it: typer reads `tuple[int, int]` and
    `int | None` but not their members' Annotated bounds, which pydantic checks anyway."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _plain(args[0])
    if origin in (Union, types.UnionType):
        return functools.reduce(operator.or_, (_plain(arg) for arg in args))
    if origin is tuple:
        return tuple[tuple(_plain(arg) for arg in args)]
    return annotation


def _help(field: FieldInfo, schema: dict) -> str:
    """The field's description with the bounds of its JSON schema, e.g. 'generator seed (>= 0)'."""
    bounds = limits_text(schema)
    return (field.description or "") + (f" ({bounds})" if bounds else "")


def _validated(spec: IngestFormat, values: dict[str, Any]) -> IngestParams:
    """The params model of the command line; a refused value becomes one IngestError line."""
    try:
        return spec.params.model_validate(values)
    except ValidationError as exc:
        problems = [_where(spec, error["loc"]) + expected_and_found(error) for error in exc.errors()]
        raise IngestError(f"ingest {spec.name}: " + "; ".join(problems)) from None


def _where(spec: IngestFormat, loc: tuple) -> str:
    """'--q2-min: ' for an option, 'NAME: ' for an argument, '' for the whole model."""
    if not loc:
        return ""
    name = str(loc[0])
    return (name.upper() if name in spec.positional else "--" + name.replace("_", "-")) + ": "
