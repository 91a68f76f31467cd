"""The Python API for notebooks and scripts, also importable as `replicalake`:

    import replicalake as rl

    lake = rl.open_lake("storage")                 # entries by name, each a lazy xarray Dataset
    lake.entries()                                 # ['derived/eels-thickness/thickness', 'raw/...']
    lake["derived/eels-thickness/thickness"]       # (or the bare name when only one zone has it)
    lake.log("raw/demo")                           # its versions, newest first (`replicalake log`)
    lake.open("raw/demo", at="20261205T004233.123456Z-1a2b3c")   # an older version, kept until gc
    rl.ingest.synthetic_eels("demo", shape=(64, 64, 512), lake=lake)   # every ingest format
    rl.plan("recipes/eels_thickness.yaml")         # a Plan: a notebook shows steps, staleness, memory
    rl.run("recipes/eels_thickness.yaml", lake=lake,
           params={"steps": {"thickness": {"params": {"zlp_end": "threshold"}}}})
    rl.report("recipes/eels_thickness.yaml", lake)  # the run's static HTML page; returns its URL
    rl.lineage(lake)                               # raw inputs -> every output, stale ones and why

`params=` is merged into the recipe before it is checked (`merge_params`): `steps` is keyed by
step id, every other mapping merges key by key, anything else replaces. A whole recipe can be a
dict instead of a path. Either way the result is checked exactly like a YAML file (it is dumped to
YAML and loaded by engine.recipe), so errors name the key that is wrong; they give no line numbers,
since the text checked is not a file anyone wrote.

A run with `params=` is a variant of its recipe file: it may not replace outputs the file
published (nor the file the variant's) unless `replace=True` (engine/ownership.py).

Importing this module imports neither xarray, dask, torch nor prefect; each function imports what
it needs when called.
"""

from __future__ import annotations

import copy
import inspect
import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace as replaced
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, IngestError, Problem, RecipeError, UnknownEntryError, did_you_mean

if TYPE_CHECKING:
    import xarray as xr

    from .ingest.registry import IngestFormat
    from .lineage import Lineage
    from .plan import Plan
    from .recipe import LoadedRecipe
    from .runner import RunSummary
    from .storage import Lake

__version__ = version("replicalake")
__all__ = ["LakeView", "__version__", "ingest", "lineage", "load", "merge_params", "open_lake", "plan",
           "report", "run"]

ZONE_ORDER = ("derived", "models", "raw")  # where a bare entry name is looked for


# -- the lake ------------------------------------------------------------------------------------
class LakeView:
    """A lake opened in Python: `entries()`, and `lake[name]` as a lazy xarray Dataset.

    Reading only: nothing here writes to the lake (`rl.run` and `rl.ingest` do). `.lake` is the
    engine's Lake (paths, provenance) for everything else.
    """

    def __init__(self, lake: Lake):
        self.lake = lake

    @property
    def root_url(self) -> str:
        return self.lake.root_url

    def entries(self, zone: str | None = None) -> list[str]:
        """The lake catalog's entries (ZONE/NAME), sorted; only those of `zone` if given."""
        from .catalog import read_lake_catalog

        names = sorted(read_lake_catalog(self.lake).entries)
        return [n for n in names if zone is None or n.split("/", 1)[0] == zone]

    def key(self, name: str) -> str:
        """The catalog key of `name`: ZONE/NAME as given, or a bare NAME found in exactly one zone."""
        names = self.entries()
        if name in names:
            return name
        found = [f"{zone}/{name}" for zone in ZONE_ORDER if f"{zone}/{name}" in names]
        if len(found) == 1:
            return found[0]
        if found:
            raise UnknownEntryError(f"{name!r} is in several zones of the lake at {self.root_url}: "
                                    f"{', '.join(found)}; give ZONE/NAME")
        choices = names + [n.split("/", 1)[1] for n in names]  # keys, and their bare names
        raise UnknownEntryError(f"no entry {name!r} in the lake at {self.root_url}"
                                f"{did_you_mean(name, choices)}; entries: {', '.join(names) or 'none'}")

    def __getitem__(self, name: str) -> xr.Dataset:
        """The entry as a lazy, dask-backed Dataset (nothing is read but metadata)."""
        from .catalog import open_entry, read_lake_catalog

        key = self.key(name)
        return open_entry(read_lake_catalog(self.lake).entries[key], self.lake)

    def open(self, name: str, at: str | None = None, chunks: dict[str, int] | None = None) -> xr.Dataset:
        """The entry as a lazy Dataset, as `lake[name]`; `at`: an older version of it (an id from
        `log(name)`), kept in the lake's history until `replicalake gc`."""
        if at is None:
            from .catalog import open_entry, read_lake_catalog

            return open_entry(read_lake_catalog(self.lake).entries[self.key(name)], self.lake, chunks)
        zone, entry = self._history_key(name).split("/", 1)
        return self.lake.open(zone, entry, chunks, at=at)

    def log(self, name: str) -> list[dict[str, Any]]:
        """The versions of the entry, newest first: version id, whether current, when published,
        recipe, step, params (and their digest), token and code fingerprints."""
        from .history import versions

        return [item.to_dict() for item in versions(self.lake, self._history_key(name))]

    def _history_key(self, name: str) -> str:
        """ZONE/NAME of `name`: a catalog entry, or a ZONE/NAME whose only versions are in history."""
        try:
            return self.key(name)
        except UnknownEntryError:
            if "/" in name and name.split("/", 1)[0] in ZONE_ORDER:
                return name
            raise

    def provenance(self, name: str) -> dict[str, Any] | None:
        """How the entry was made: recipe, step, op, params, input tokens, versions, memory."""
        zone, entry = self.key(name).split("/", 1)
        return self.lake.provenance(zone, entry)

    def __contains__(self, name: object) -> bool:
        try:
            self.key(str(name))
        except UnknownEntryError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries())

    def __len__(self) -> int:
        return len(self.entries())

    def __repr__(self) -> str:
        names = self.entries()
        shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
        return f"<lake at {self.root_url}: {len(names)} entries{': ' + shown if names else ''}>"


def open_lake(root: str | Path | None = None, storage_options: dict | None = None) -> LakeView:
    """The lake at `root` (a folder or fsspec URL; default $REPLICALAKE_LAKE, else ./storage)."""
    from .storage import Lake

    return LakeView(Lake(None if root is None else str(root), storage_options))


def _store(lake: LakeView | Lake | str | Path | None) -> Lake:
    from .storage import Lake

    if isinstance(lake, LakeView):
        return lake.lake
    if isinstance(lake, Lake):
        return lake
    return Lake(None if lake is None else str(lake))


# -- recipes ---------------------------------------------------------------------------------------
def load(recipe: str | Path | Mapping[str, Any] | LoadedRecipe,
         params: Mapping[str, Any] | None = None) -> LoadedRecipe:
    """A recipe checked like a YAML file: a path, a whole recipe as a dict, or a loaded recipe,
    with `params` merged in (see `merge_params`)."""
    from .ownership import DICT_RECIPE
    from .recipe import LoadedRecipe, load_recipe, parse_yaml

    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"params= must be a dict merged into the recipe, e.g. {{'steps': {{STEP: "
                          f"{{'params': {{...}}}}}}}}; found {type(params).__name__}")
    if isinstance(recipe, Mapping):
        data, path, label = _plain(recipe), DICT_RECIPE, DICT_RECIPE
    else:
        loaded = recipe if isinstance(recipe, LoadedRecipe) else load_recipe(recipe)
        if not params:
            return loaded
        data, path, label = parse_yaml(loaded.text, loaded.path)[0], loaded.path, f"{loaded.path} + params="
    if params:
        data = merge_params(data, params, label)
    checked = _load_text(_dump_yaml(data), label)
    checked.path = path  # the file (provenance, ownership); `label` is what errors name
    checked.overrides = _plain(params) if params else None
    return checked


def merge_params(recipe: Mapping[str, Any], params: Mapping[str, Any], label: str = "params=") -> dict:
    """`recipe` (plain data) with `params` merged in: `steps` is a mapping of step id -> what to
    merge into that step (`{"steps": {"fit": {"params": {"epochs": 100}}}}`), or a list replacing
    them all; other mappings merge key by key; any other value (a list, a number) replaces."""
    merged = copy.deepcopy(dict(recipe))
    for key, value in _plain(params).items():
        if key == "steps" and isinstance(value, dict):
            steps = merged.get("steps") if isinstance(merged.get("steps"), list) else []
            by_id = {step.get("id"): step for step in steps if isinstance(step, dict)}
            problems = []
            for step_id, change in value.items():
                if step_id not in by_id:
                    problems.append(Problem(f"no step {step_id!r}{did_you_mean(step_id, by_id)}; the "
                                            f"recipe's steps are {', '.join(map(str, by_id)) or 'none'}",
                                            label, None, f"steps.{step_id}"))
                elif not isinstance(change, dict):
                    problems.append(Problem(f"expected a mapping of the step's keys (op, inputs, "
                                            f"params), found {type(change).__name__}", label, None,
                                            f"steps.{step_id}"))
                else:
                    by_id[step_id].update(_merged(by_id[step_id], change))
            if problems:
                raise RecipeError(problems, "the params= overrides")
        else:
            merged[key] = _merged(merged.get(key), value)
    return merged


def _merged(base: Any, change: Any) -> Any:
    if isinstance(base, dict) and isinstance(change, dict):
        out = dict(base)
        for key, value in change.items():
            out[key] = _merged(base.get(key), value)
        return out
    return change


def _plain(value: Any) -> Any:
    """Plain YAML-able data: mappings as dicts, tuples as lists, numpy scalars as numbers, paths
    as strings."""
    if isinstance(value, Mapping):
        return {str(k) if isinstance(k, Path) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", None) == 0:
        return value.item()  # a numpy scalar
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        return value.tolist()  # a numpy array
    return value


def _dump_yaml(data: Any) -> str:
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    buffer = io.StringIO()
    try:
        yaml.dump(data, buffer)
    except Exception as exc:  # a value YAML cannot represent (an object, a function)
        raise ConfigError(f"the recipe or params= hold a value that is not plain data "
                          f"(dicts, lists, strings, numbers, booleans): {exc}") from None
    return buffer.getvalue()


def _load_text(text: str, label: str) -> LoadedRecipe:
    """load_recipe_text with the lines of the generated text left out of every later error."""
    from .recipe import LineMap, load_recipe_text

    try:
        loaded = load_recipe_text(text, label)
    except RecipeError as exc:
        raise RecipeError([replaced(p, line=None) for p in exc.problems], exc.phase) from None
    loaded.lines = LineMap(label)
    return loaded


def plan(recipe: str | Path | Mapping[str, Any] | LoadedRecipe, lake: LakeView | Lake | str | None = None,
         *, params: Mapping[str, Any] | None = None, catalogs: str | Path | None = None,
         force: Iterable[str] = ()) -> Plan:
    """Compile the recipe (with `params` merged in) against the lake; compute nothing. In a
    notebook the Plan shows as a table of steps: status and why, sizes, projected peak memory."""
    from .graph import compile_recipe

    return compile_recipe(load(recipe, params), _store(lake), catalogs, force=_ids(force))


def run(recipe: str | Path | Mapping[str, Any] | LoadedRecipe, lake: LakeView | Lake | str | None = None,
        scheduler: str | None = None, progress: bool = False, max_memory: int | str | None = None, *,
        params: Mapping[str, Any] | None = None, catalogs: str | Path | None = None,
        replace: bool = False, force: Iterable[str] = (), lock_timeout: float | None = None,
        verify_inputs: bool = False) -> RunSummary:
    """Compile and execute a recipe; returns the RunSummary (see engine.runner.execute).

    `replace`: publish over outputs another recipe made (refused otherwise); `force`: step ids to
    recompute, with everything downstream of them, although their outputs are up to date."""
    from .runner import execute

    compiled = plan(recipe, lake, params=params, catalogs=catalogs, force=force)
    return execute(compiled, scheduler=scheduler, progress=progress, lock_timeout=lock_timeout,
                   verify_inputs=verify_inputs, max_memory=max_memory, replace=replace)


def report(recipe: str | Path | Mapping[str, Any] | LoadedRecipe, lake: LakeView | Lake | str | None = None,
           *, params: Mapping[str, Any] | None = None, catalogs: str | Path | None = None) -> str:
    """Write the static HTML page of the recipe's latest run into the lake's reports/ zone
    (engine/html_report.py: provenance, key numbers, plots inline, steps, lineage); return its URL."""
    from .html_report import recipe_lineage, write_report

    compiled = plan(recipe, lake, params=params, catalogs=catalogs)
    return compiled.lake.url(write_report(compiled, lineage=recipe_lineage(compiled, catalogs)))


def lineage(lake: LakeView | Lake | str | None = None, entry: str | None = None, *,
            recipes: Iterable[str | Path] = (), catalogs: str | Path | None = None) -> Lineage:
    """The graph from raw inputs to every output of the lake (and of `recipes`), with staleness;
    only what `entry` was made from and what is made from it, if given. Shown as nested lists
    in a notebook, as indented lines by print()."""
    from .graph import compile_recipe
    from .lineage import lake_lineage

    store = _store(lake)
    found = lake_lineage(store, catalogs, [compile_recipe(r, store, catalogs) for r in recipes])
    return found if entry is None else found.around(entry)


def _ids(force: Iterable[str] | str) -> list[str]:
    return [force] if isinstance(force, str) else list(force)  # force="fit" means one step


# -- ingest formats as functions ---------------------------------------------------------------------
class IngestFunctions:
    """`rl.ingest.<format>(...)`: each ingest format (`replicalake ingest --help`) as a function.

    A format named with a dash is spelt with an underscore (`synthetic-eels` -> `synthetic_eels`).
    Arguments are the reader's keywords (its command's arguments, in order, may be positional),
    plus `lake=`; they are checked by the format's params model like a command line. Returns the
    reader's summary line; the entry is then `rl.open_lake(...)["raw/NAME"]`.
    """

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        from .ingest.registry import list_formats

        formats = {spec.name.replace("-", "_"): spec for spec in list_formats()}
        if name not in formats:
            raise AttributeError(f"no ingest format {name!r}{did_you_mean(name, formats)}; formats: "
                                 f"{', '.join(formats)}")
        return _ingest_function(formats[name])

    def __dir__(self) -> list[str]:
        from .ingest.registry import list_formats

        return [spec.name.replace("-", "_") for spec in list_formats()]

    def __repr__(self) -> str:
        return f"<ingest formats: {', '.join(self.__dir__())}>"


ingest = IngestFunctions()


def _ingest_function(spec: IngestFormat):
    """A Python function for one format: positional args in the command's order, then keywords."""
    fields = spec.params.model_fields
    by_cli = {field.alias or name: name for name, field in fields.items()}
    positional = [by_cli[name] for name in spec.positional]

    def function(*args: Any, lake: LakeView | Lake | str | None = None, **kwargs: Any) -> str:
        if len(args) > len(positional):
            raise TypeError(f"ingest.{function.__name__}() takes {len(positional)} positional arguments "
                            f"({', '.join(positional)}), {len(args)} given")
        values = dict(zip(positional, args))
        twice = sorted(set(values) & set(kwargs))
        if twice:
            raise TypeError(f"ingest.{function.__name__}() got several values for {', '.join(twice)}")
        values.update(kwargs)
        data = {(fields[key].alias or key) if key in fields else key: value for key, value in values.items()}
        return spec.ingest(_store(lake), _validated(spec, data))

    function.__name__ = function.__qualname__ = spec.name.replace("-", "_")
    function.__doc__ = (spec.help + "\n\nReturns the reader's summary line; the entry is raw/NAME.")
    params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD
                                if name in positional else inspect.Parameter.KEYWORD_ONLY,
                                default=inspect.Parameter.empty if fields[name].is_required()
                                else fields[name].get_default(call_default_factory=True))
              for name in [*positional, *(n for n in fields if n not in positional)]]
    params.append(inspect.Parameter("lake", inspect.Parameter.KEYWORD_ONLY, default=None))
    function.__signature__ = inspect.Signature(sorted(params, key=lambda p: p.kind))
    return function


def _validated(spec: IngestFormat, data: dict[str, Any]):
    from pydantic import ValidationError

    from .recipe import expected_and_found

    try:
        return spec.params.model_validate(data)
    except ValidationError as exc:
        by_cli = {field.alias or name: name for name, field in spec.params.model_fields.items()}
        problems = [(f"{by_cli.get(str(e['loc'][0]), e['loc'][0])}: " if e["loc"] else "")
                    + expected_and_found(e) for e in exc.errors()]
        raise IngestError(f"ingest.{spec.name.replace('-', '_')}: " + "; ".join(problems)) from None
