"""Recipe schema and safe loading.

A recipe is data: it is parsed with YAML's safe constructors only (a `!!python/...` tag is an
error, not an object), its structure is checked by pydantic models that forbid unknown keys, and
every problem is reported with the file, line and key it came from. Line numbers come from
composing the YAML node tree once; the data itself comes from ruamel's safe loader.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .bounds import STRICT, ChunkLength
from .errors import Problem, ProblemsError, RecipeError, did_you_mean
from .names import LAKE_CATALOG, catalog_name_problem, entry_key_problem, entry_name_problem

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
MAX_YAML_NODES = 200_000  # far above any real recipe; stops alias "billion laughs" documents
# Recipes and catalogs are a few KB. Pure-Python YAML reads ~40 KB/s (three passes: compose, line
# map, load), so 1 MiB already takes ~25 s and the 50 MB list a user once fed it took minutes.
MAX_YAML_BYTES = 2**20
# Maps and lists nest 5 deep in a recipe. Composing YAML recurses per level: a few hundred levels
# exhaust Python's stack, so the check must come first (see _too_deep).
MAX_YAML_DEPTH = 64
STANDARD_TAGS = {
    "tag:yaml.org,2002:" + t
    for t in ("map", "seq", "str", "int", "float", "bool", "null", "timestamp")
}


class _Model(BaseModel):
    model_config = STRICT  # unknown keys and NaN/inf refused, as in every params model


def _checked(value: str, problem: str | None) -> str:
    """`value`, or the ValueError pydantic reports at its key when engine.names found a problem."""
    if problem:
        raise ValueError(problem)
    return value


class Source(_Model):
    """An input: one entry of a catalog, optionally rechunked when opened."""

    catalog: str = Field(description="stem of a file in catalogs/, or 'lake' for the lake's own catalog")
    entry: str = Field(description="entry name in that catalog")
    chunks: dict[str, ChunkLength] | None = Field(None, description="dask chunk sizes per dim at open time")

    @field_validator("catalog")
    @classmethod
    def _catalog_stem(cls, value: str) -> str:
        return _checked(value, catalog_name_problem(value))

    @field_validator("entry")
    @classmethod
    def _lake_entry_key(cls, value: str, info: ValidationInfo) -> str:
        """Entries of the lake's catalog are ZONE/NAME keys; other catalogs name theirs freely."""
        if info.data.get("catalog") != LAKE_CATALOG:
            return value
        return _checked(value, entry_key_problem(value))


class Step(_Model):
    """One op applied to named inputs with params."""

    id: str = Field(pattern=NAME_PATTERN, description="unique name of this step's result")
    op: str = Field(description="registered op name, see `replicalake ops`")
    inputs: dict[str, str] = Field(default_factory=dict, description="op input name -> source or step id")
    params: dict[str, Any] = Field(default_factory=dict, description="op params, checked by the op's model")


class Plot(_Model):
    """A PNG picture of one output variable, written to reports/ after publishing.

    kind `band`: `variable` is the base name of a replicas.summary output; the picture fills
    between its first and last quantile and draws the middle one, with `overlay` variables as
    lines and `points` variables as markers. kind `scan`: a likelihood scan -2 Delta log L
    (`variable` and `overlay`s): curves with the 95% line for one coefficient, 95% contours for two.
    kind `roc`: `variable` is eps_B (replica, signal_efficiency), drawn as 1/eps_B (log scale)
    with its band over replicas. kind `hist`: a 1-D lhc.histogram output drawn as steps over
    its bin edges, with sqrt(variances) error bars.

    Axis labels come from the `long_name` and `units` attributes of the variable and coordinates.
    Among `points`, NAME with NAME_low and NAME_high is drawn as NAME with those error bars.
    """

    variable: str
    kind: Literal["map", "line", "band", "scan", "roc", "hist"] = "map"
    title: str | None = None
    cmap: str = "viridis"
    overlay: list[str] = Field(default_factory=list)
    points: list[str] = Field(default_factory=list)
    x: str | None = Field(None, description="band and line plots: the coordinate along the variable's dim "
                          "to plot against (default: the dim's first 1-D coordinate)")
    log_x: bool = Field(False, description="logarithmic horizontal axis")
    colour_by: str | None = Field(None, description="band plots: a coordinate along the variable's dim "
                                  "(e.g. Q2) whose values group the points into colours")
    style: Literal["auto", "plain", "hep"] = Field(
        "auto", description="hep: mplhep's ROOT style (the lhc extra); auto: hep for hist, roc and scan")


class Output(_Model):
    """A step result that is written to the lake."""

    zone: Literal["derived", "models"] = "derived"
    name: str | None = Field(None, description="lake name inside the zone; default RECIPE/STEP")
    plots: list[Plot] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _entry_name(cls, value: str | None) -> str | None:
        return value if value is None else _checked(value, entry_name_problem(value))


class Schedule(_Model):
    """When `replicalake schedule` should run the recipe: a cron expression or an interval."""

    cron: str | None = None
    interval: float | None = Field(None, gt=0, description="seconds between runs")

    @model_validator(mode="after")
    def _exactly_one(self) -> Schedule:
        if (self.cron is None) == (self.interval is None):
            raise ValueError("give exactly one of 'cron' or 'interval'")
        return self


class Recipe(_Model):
    """A declarative analysis: sources, steps, outputs and an optional schedule."""

    version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    sources: dict[str, Source] = Field(default_factory=dict)
    steps: list[Step] = Field(default_factory=list)
    outputs: dict[str, Output] = Field(default_factory=dict)
    schedule: Schedule | None = None

    @field_validator("sources")
    @classmethod
    def _source_names(cls, value: dict[str, Source]) -> dict[str, Source]:
        for name in value:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"source name {name!r} must match {NAME_PATTERN}")
        return value


class LineMap(dict):
    """Key path (e.g. ('steps', 2, 'params', 'k')) -> 1-based line in one YAML file."""

    def __init__(self, path: str, lines: dict[tuple, int] | None = None):
        super().__init__(lines or {})
        self.path = path

    def line_of(self, *loc: Any) -> int | None:
        """Line of the deepest known node on the path `loc`."""
        loc = tuple(loc)
        while loc and loc not in self:
            loc = loc[:-1]
        return self.get(loc)

    def problem(self, message: str, *loc: Any) -> Problem:
        return Problem(message, self.path, self.line_of(*loc), _dotted(loc))


class LoadedRecipe:
    """A validated recipe plus where it came from, so later phases can point at lines."""

    def __init__(self, recipe: Recipe, lines: LineMap, text: str):
        self.recipe = recipe
        self.lines = lines
        self.path = lines.path
        self.text = text
        self.overrides: dict[str, Any] | None = None  # `params=` merged in by engine/api.py

    def problem(self, message: str, *loc: Any) -> Problem:
        return self.lines.problem(message, *loc)


def _dotted(loc: tuple) -> str | None:
    if not loc:
        return None
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_map(node: Node, path: str, error: type[ProblemsError],
              max_nodes: int = MAX_YAML_NODES) -> LineMap:
    """Map every key path of a composed YAML tree to its 1-based line, refusing foreign tags."""
    lines = LineMap(path)
    budget = [max_nodes]

    def walk(current: Node, loc: tuple) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise error(
                [Problem(f"YAML expands to more than {max_nodes} nodes (anchors/aliases?); "
                         "expected a recipe of ordinary size", path, current.start_mark.line + 1)],
                "YAML",
            )
        if len(loc) > MAX_YAML_DEPTH:  # nesting through aliases too, which the text does not show
            raise error([_too_deep(path, current.start_mark.line + 1, _dotted(loc[:1]))], "YAML")
        if current.tag not in STANDARD_TAGS:
            raise error(
                [Problem(f"YAML tag {current.tag!r} is not allowed: this file is plain data "
                         "(maps, lists, strings, numbers, booleans)", path,
                         current.start_mark.line + 1, _dotted(loc))],
                "YAML",
            )
        lines.setdefault(loc, current.start_mark.line + 1)
        if isinstance(current, MappingNode):
            for key_node, value_node in current.value:
                key = key_node.value if isinstance(key_node, ScalarNode) else str(key_node)
                lines[loc + (key,)] = key_node.start_mark.line + 1
                walk(value_node, loc + (key,))
        elif isinstance(current, SequenceNode):
            for index, item in enumerate(current.value):
                walk(item, loc + (index,))

    walk(node, ())
    return lines


def _too_deep(path: str, line: int | None, key: str | None = None) -> Problem:
    return Problem(f"YAML nested deeper than {MAX_YAML_DEPTH} levels of maps and lists; expected a "
                   "file of ordinary shape", path, line, key)


def _deep_line(text: str) -> int | None:
    """Line where the text's nesting first passes MAX_YAML_DEPTH. Parsing events is iterative, so
    this works where composing ran out of stack; it stops there, before the scanner's cost of
    very deep flow nesting (quadratic in the depth) adds up."""
    depth = 0
    for event in YAML(typ="safe", pure=True).parse(text):
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                return event.start_mark.line + 1
        elif isinstance(event, CollectionEndEvent):
            depth -= 1
    return None


def _size_problem(size: int, path: str, limit: int = MAX_YAML_BYTES) -> Problem | None:
    if size <= limit:
        return None
    return Problem(f"the file is {size} bytes; expected a YAML file of at most {limit} bytes "
                   f"({limit / 2**20:g} MiB)", path)


def parse_yaml(text: str, path: str, error: type[ProblemsError] = RecipeError,
               max_bytes: int = MAX_YAML_BYTES) -> tuple[Any, LineMap]:
    """Safely parse YAML text; return (data, line map). Raises `error` naming the line.

    Text over `max_bytes` is refused before parsing, nesting over MAX_YAML_DEPTH before it
    can exhaust the stack, so a hostile file costs seconds, not minutes or a traceback.
    """
    too_big = _size_problem(len(text.encode()), path, max_bytes)
    if too_big:
        raise error([too_big], "YAML")
    yaml = YAML(typ="safe", pure=True)
    try:
        try:
            node = yaml.compose(text)
        except RecursionError:
            raise error([_too_deep(path, _deep_line(text))], "YAML") from None
        if node is None:
            raise error([Problem("the file is empty; expected a mapping", path, 1)], "YAML")
        # Nodes in proportion to the size allowed: a larger file (the lake's catalog) may hold
        # more, aliases still may not multiply them. Refuses tags and alias bombs before loading.
        lines = _line_map(node, path, error, MAX_YAML_NODES * max(1, max_bytes // MAX_YAML_BYTES))
        data = YAML(typ="safe", pure=True).load(text)  # duplicate keys are found only here
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise error([Problem(f"not valid YAML: {exc.problem or exc}", path, line)], "YAML") from None
    except YAMLError as exc:
        raise error([Problem(f"not valid YAML: {exc}", path)], "YAML") from None
    return data, lines


def expected_and_found(error: dict) -> str:
    """What one pydantic error expected and found; recipes and ingest command lines share it so
    their errors read alike."""
    found = error.get("input")
    found_text = json.dumps(found, default=str) if not isinstance(found, dict) else "a mapping"
    if len(found_text) > 60:
        found_text = found_text[:57] + "..."
    if error["type"] == "extra_forbidden":
        return f"unknown key (found {found_text})"
    if error["type"] == "missing":
        return "required key is missing"
    if error["type"] == "int_parsing_size":  # pydantic's own words speak of parsing a string
        return f"Input should be an integer of ordinary size (found {found_text})"
    return f"{error['msg']} (found {found_text})"


def validation_problems(
    exc: ValidationError, lines: LineMap, prefix: tuple = (),
    allowed: dict[tuple, list[str]] | None = None,
) -> list[Problem]:
    """Turn pydantic errors into Problems with file, line, key and a 'did you mean' for typos."""
    problems = []
    for error in exc.errors():
        loc = prefix + tuple(p for p in error["loc"] if not str(p).startswith("function-after"))
        message = expected_and_found(error)
        if error["type"] == "extra_forbidden" and allowed is not None:
            choices = allowed.get(loc[:-1], [])
            message += did_you_mean(str(loc[-1]), choices)
            if choices:
                message += f"; allowed: {', '.join(choices)}"
        problems.append(lines.problem(message, *loc))
    return problems


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read and structurally validate a recipe file. Raises RecipeError with every problem."""
    path = str(path)
    try:
        with open(path, "rb") as handle:  # at most one byte past the limit, even from a pipe
            raw = handle.read(MAX_YAML_BYTES + 1)
            too_big = _size_problem(max(len(raw), os.fstat(handle.fileno()).st_size), path)
        if too_big:
            raise RecipeError([too_big], "the recipe file")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise RecipeError([Problem("no such recipe file", path)], "the recipe file") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise RecipeError([Problem(f"cannot read as UTF-8 text: {exc}", path)], "the recipe file") from None
    return load_recipe_text(text, path)


def load_recipe_text(text: str, path: str = "<recipe>") -> LoadedRecipe:
    data, lines = parse_yaml(text, path)
    if not isinstance(data, dict):
        found = type(data).__name__
        raise RecipeError([Problem(f"expected a mapping with sources/steps/outputs, found a {found}",
                                   path, 1)], "structure")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        allowed = {(): _allowed_keys(Recipe)}
        for name in data.get("sources") or {}:
            allowed[("sources", name)] = _allowed_keys(Source)
        for index in range(len(data.get("steps") or [])):
            allowed[("steps", index)] = _allowed_keys(Step)
        for name in data.get("outputs") or {}:
            allowed[("outputs", name)] = _allowed_keys(Output)
        allowed[("schedule",)] = _allowed_keys(Schedule)
        raise RecipeError(validation_problems(exc, lines, allowed=allowed), "structure") from None
    return LoadedRecipe(recipe, lines, text)


def recipe_json_schema() -> dict:
    """JSON Schema of recipes, for editor completion (`replicalake schema`)."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ReplicaLake recipe"
    return schema
