"""Compile a recipe into a Plan: check it phase by phase, then build the lazy graph.

Phases, each reporting all of its problems at once before the next one runs:
structure (recipe.py) -> references (ops, inputs, cycles, outputs) -> params (each op's model)
-> sources (catalog entries) -> op checks while building the lazy graph. Nothing is computed:
ops only describe work, and outputs whose content token is already in the lake are opened from
the lake instead of being rebuilt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from importlib.metadata import version
from pathlib import Path

import xarray as xr
from pydantic import BaseModel, ValidationError

from .catalog import entry_token, load_catalog, open_entry
from .errors import CatalogError, LakeError, OpError, Problem, RecipeError, UnknownOpError, did_you_mean
from .fingerprint import code_fingerprint
from .integrity import find_damage
from .names import entry_name_problem, nesting_pairs
from .ownership import forced_steps
from .plan import Plan, PlannedStep
from .recipe import LoadedRecipe, Output, load_recipe, validation_problems
from .registry import OpSpec, StepContext, get_op
from .reports import missing_plot_variables
from .storage import Lake, content_token

ENGINE_VERSION = version("replicalake")


@dataclass
class _Checked:
    """What the reference and params phases learned, for the build phase."""

    ops: dict[str, OpSpec] = field(default_factory=dict)
    params: dict[str, BaseModel] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


def compile_recipe(recipe: LoadedRecipe | str | Path, lake: Lake | None = None,
                   catalogs: str | Path | None = None, force: Iterable[str] = (),
                   staged: Mapping[str, str] | None = None) -> Plan:
    """Validate `recipe` and build its lazy Plan. Raises RecipeError listing every problem.

    `force`: step ids to recompute although their outputs are up to date, with every step
    downstream of them (engine/ownership.py; a ConfigError names an id that is no step).
    `staged`: {output step id: lake path of the store a running run computed it into}, read
    from there instead of computed (the runner's later waves, engine/runner.py)."""
    loaded = recipe if isinstance(recipe, LoadedRecipe) else load_recipe(recipe)
    lake = lake or Lake()
    checked = _check_references(loaded)
    forced = forced_steps({step.id: step.inputs.values() for step in loaded.recipe.steps}, force,
                          loaded.recipe.sources)
    _check_params(loaded, checked)
    sources = _open_sources(loaded, lake, catalogs)
    steps = _build(loaded, checked, sources, lake, forced, staged or {})
    recipe_hash = hashlib.sha256(loaded.text.encode()).hexdigest()[:16]
    return Plan(loaded.recipe, loaded.path, recipe_hash, lake, steps, overrides=loaded.overrides,
                loaded=loaded, catalogs=catalogs)


def check_recipe_offline(recipe: LoadedRecipe | str | Path) -> None:
    """The checks that need no lake: structure, references, cycles and every step's params."""
    loaded = recipe if isinstance(recipe, LoadedRecipe) else load_recipe(recipe)
    _check_params(loaded, _check_references(loaded))


def _check_references(loaded: LoadedRecipe) -> _Checked:
    recipe = loaded.recipe
    problems: list[Problem] = []
    checked = _Checked()
    names: dict[str, tuple] = {name: ("sources", name) for name in recipe.sources}
    for index, step in enumerate(recipe.steps):
        if step.id in names:
            problems.append(loaded.problem(f"id {step.id!r} is already used by "
                                           f"{'.'.join(map(str, names[step.id]))}",
                                           "steps", index, "id"))
        names.setdefault(step.id, ("steps", index))
    graph: dict[str, set[str]] = {}
    for index, step in enumerate(recipe.steps):
        try:
            spec = get_op(step.op)
        except UnknownOpError as exc:  # its text also names any plugin that failed to load
            problems.append(loaded.problem(str(exc), "steps", index, "op"))
            spec = None
        if spec is not None:
            checked.ops[step.id] = spec
            allowed = spec.inputs + spec.optional_inputs
            for input_name in step.inputs:
                if input_name not in allowed:
                    problems.append(loaded.problem(
                        f"op {spec.name!r} has no input {input_name!r}"
                        f"{did_you_mean(input_name, allowed)}; its inputs are {', '.join(allowed)}",
                        "steps", index, "inputs", input_name))
            for input_name in spec.inputs:
                if input_name not in step.inputs:
                    problems.append(loaded.problem(
                        f"op {spec.name!r} needs input {input_name!r}; found only "
                        f"{', '.join(step.inputs) or 'no inputs'}", "steps", index, "inputs"))
        graph[step.id] = set()
        for input_name, ref in step.inputs.items():
            if ref not in names:
                problems.append(loaded.problem(
                    f"unknown input {ref!r}{did_you_mean(ref, names)}; expected a source or step id "
                    f"({', '.join(names)})", "steps", index, "inputs", input_name))
            elif ref in graph or names[ref][0] == "steps":
                graph[step.id].add(ref)
    for name in loaded.recipe.outputs:
        if name not in graph:
            problems.append(loaded.problem(
                f"output {name!r} is not a step id{did_you_mean(name, graph)}", "outputs", name))
    problems += _output_name_problems(loaded)
    if not problems:
        try:
            checked.order = list(TopologicalSorter(graph).static_order())
        except CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            first = exc.args[1][0]
            index = next(i for i, s in enumerate(recipe.steps) if s.id == first)
            problems.append(loaded.problem(f"steps form a cycle: {cycle}", "steps", index, "inputs"))
    if problems:
        raise RecipeError(problems, "references")
    return checked


def _output_name_problems(loaded: LoadedRecipe) -> list[Problem]:
    """Default names (RECIPE/STEP) checked like explicit ones, and outputs that would share a store.

    Two outputs with the same lake name, or one inside the other (`nest`, `nest/inner`), would
    replace each other on every run while each run reports success.
    """
    problems: list[Problem] = []
    written: dict[str, str] = {}
    for key, output in loaded.recipe.outputs.items():
        name = output_name(loaded.recipe.name, key, output.name)
        problem = entry_name_problem(name) if output.name is None else None
        if problem:
            problems.append(loaded.problem(f"the default lake name {name!r} (RECIPE/STEP) {problem}; "
                                           "give this output a name", "outputs", key))
        written[key] = f"{output.zone}/{name}"
    for first, second in nesting_pairs(written):
        relation = "the same store as" if written[first] == written[second] else "a store nested with"
        problems.append(loaded.problem(
            f"output {second!r} writes {written[second]}, {relation} output {first!r} ({written[first]}); "
            "expected a separate lake name per output (one publish would replace the other)",
            "outputs", second))
    return problems


def _check_params(loaded: LoadedRecipe, checked: _Checked) -> None:
    problems: list[Problem] = []
    for index, step in enumerate(loaded.recipe.steps):
        spec = checked.ops[step.id]
        try:
            checked.params[step.id] = spec.params.model_validate(step.params)
        except ValidationError as exc:
            allowed = {("steps", index, "params"): list(spec.params.model_fields)}
            problems += validation_problems(exc, loaded.lines, ("steps", index, "params"), allowed)
    if problems:
        raise RecipeError(problems, "params")


def _open_sources(loaded: LoadedRecipe, lake: Lake,
                  catalogs: str | Path | None) -> dict[str, tuple[xr.Dataset, str, str]]:
    """Each source opened lazily, with its content token and URL (dataset, token, url)."""
    problems: list[Problem] = []
    opened: dict[str, tuple[xr.Dataset, str, str]] = {}
    for name, source in loaded.recipe.sources.items():
        entry = None
        try:
            entry = load_catalog(source.catalog, lake, catalogs).entry(source.entry)
            dataset = open_entry(entry, lake, source.chunks)
            opened[name] = (dataset, entry_token(entry, lake), entry.url)
        except CatalogError as exc:
            for problem in exc.problems:
                key = "catalog" if "no catalog" in problem.message else "entry"
                problems.append(loaded.problem(f"{problem.message} (in {problem.file})",
                                               "sources", name, key))
        except LakeError as exc:  # a store's metadata that is not a JSON object: named in the text
            problems.append(loaded.problem(f"cannot open: {exc}", "sources", name))
        except (FileNotFoundError, ValueError, KeyError) as exc:
            missing = isinstance(exc, FileNotFoundError)
            where = entry.url if entry is not None else "the catalog entry"
            hint = ("; ingest it first (`replicalake ingest ...`)" if missing else
                    f" ({type(exc).__name__}); expected a readable zarr store at {where}")
            problems.append(loaded.problem(f"cannot open: {exc}{hint}", "sources", name))
    if problems:
        raise RecipeError(problems, "sources")
    return opened


def step_token(spec: OpSpec, params: dict, input_tokens: dict[str, str], code: str) -> str:
    """A step's content token: what computes it (op, version, code fingerprint, engine) and
    from what (params as JSON, input tokens). Public so tests can check tokens are stable."""
    return content_token(spec.name, spec.version, params, input_tokens, ENGINE_VERSION, code)


def output_name(loaded_name: str, step_id: str, explicit: str | None) -> str:
    return explicit or f"{loaded_name}/{step_id}"


def _build(loaded: LoadedRecipe, checked: _Checked, sources: dict[str, tuple[xr.Dataset, str, str]],
           lake: Lake, forced: set[str], staged: Mapping[str, str]) -> list[PlannedStep]:
    recipe = loaded.recipe
    index_of = {step.id: i for i, step in enumerate(recipe.steps)}
    results: dict[str, tuple[xr.Dataset, str]] = {name: (ds, token)
                                                  for name, (ds, token, _) in sources.items()}
    # A source's URL goes with it so the runner can check, before publishing, that the data
    # read is still the data whose token was recorded (and find damaged chunks in it).
    planned = [PlannedStep(id=name, op="source", dataset=ds, token=token, inputs={}, params={"url": url})
               for name, (ds, token, url) in sources.items()]
    problems: list[Problem] = []
    failed: set[str] = set()
    for step_id in checked.order:
        step = recipe.steps[index_of[step_id]]
        if any(ref in failed for ref in step.inputs.values()):
            failed.add(step_id)
            continue
        spec, params = checked.ops[step_id], checked.params[step_id]
        code = code_fingerprint(spec.func.__module__)
        made = {"op": spec.name, "op_version": spec.version, "code": code,
                "params": params.model_dump(mode="json"),
                "inputs": {k: results[v][1] for k, v in step.inputs.items()}}
        token = step_token(spec, made["params"], made["inputs"], code)
        output = recipe.outputs.get(step_id)
        zone = output.zone if output else None
        name = output_name(recipe.name, step_id, output.name if output else None) if output else None
        stored, damage = stored_output(lake, zone, name, token) if output else (None, "")
        up_to_date = _has_token(stored, token) and not damage and step_id not in forced
        stale = output is not None and not up_to_date
        if up_to_date:
            dataset = lake.open(zone, name)
        elif step_id in staged:
            dataset = lake.open_store(staged[step_id])
        else:
            kwargs = {k: results[v][0] for k, v in step.inputs.items()}
            if spec.wants_context:
                kwargs["context"] = StepContext(step_id, token, lake.root_url, lake.storage_options)
            try:
                dataset = spec.func(params, **kwargs)
            except OpError as exc:
                problems.append(loaded.problem(f"op {spec.name!r}: {exc}", "steps", index_of[step_id]))
                failed.add(step_id)
                continue
            if not isinstance(dataset, xr.Dataset):
                raise TypeError(f"op {spec.name!r} returned {type(dataset).__name__}, not a Dataset")
        problems += _plot_problems(loaded, step_id, output, dataset) if output else []
        results[step_id] = (dataset, token)
        planned.append(PlannedStep(id=step_id, op=spec.name, dataset=dataset, token=token,
                                   inputs=dict(step.inputs), params=params.model_dump(mode="json"),
                                   output=output, zone=zone, name=name, up_to_date=up_to_date,
                                   op_version=spec.version, code=code, forced=step_id in forced,
                                   staged=stale and step_id in staged,
                                   stale_reason=(f"damaged output: {damage}" if damage else
                                                 "forced" if step_id in forced and _has_token(stored, token)
                                                 else _stale_reason(stored, made)) if stale else ""))
    if problems:
        raise RecipeError(problems, "op checks")
    return planned


def stored_output(lake: Lake, zone: str, name: str, token: str) -> tuple[dict | None, str]:
    """An output's recorded provenance (None when there is none) and what damage keeps it from
    being up to date ('' when none): an output is up to date only when its token is `token` AND
    its store is complete and matches its checksum manifest.

    Only an output with the wanted token is checked, by listing its store once against the
    manifest (integrity.find_damage, quick): missing, truncated or stray chunks and a missing
    manifest, no chunk read. Otherwise a deleted chunk would be served as fill value (NaN).
    """
    try:
        stored = lake.provenance(zone, name)
    except LakeError as exc:  # a root zarr.json that is not a JSON object
        return None, str(exc)
    if not _has_token(stored, token):
        return stored, ""
    damage = find_damage(lake.fs, lake.entry_path(zone, name), f"{zone}/{name}", quick=True,
                         require_manifest=True)
    text = "; ".join(f"{found.location}: {found.problem}" for found in damage[:3])
    return stored, text + (f"; and {len(damage) - 3} more" if len(damage) > 3 else "")


def is_up_to_date(lake: Lake, zone: str, name: str, token: str) -> bool:
    """Whether output zone/name holds `token` in a whole store (see stored_output)."""
    stored, damage = stored_output(lake, zone, name, token)
    return _has_token(stored, token) and not damage


def _has_token(stored: dict | None, token: str) -> bool:
    return stored is not None and stored.get("token") == token


def _plot_problems(loaded: LoadedRecipe, step_id: str, output: Output, dataset: xr.Dataset) -> list[Problem]:
    """A plot naming a variable its output lacks: found while compiling, not after publishing."""
    return [loaded.problem(f"plot {index} ({plot.kind} of {plot.variable!r}): {message}",
                           "outputs", step_id, "plots", index, *key)
            for index, plot in enumerate(output.plots)
            for key, message in missing_plot_variables(dataset, plot)]


def _stale_reason(stored: dict | None, made: dict) -> str:
    """Why an output whose token is not in the lake must be computed, comparing what its stored
    provenance says it was made from with what the step would be made from now (`made`: op,
    op_version, code, params, inputs). An engine upgrade is a code change too, and so is a change
    of how tokens are made, the one way a token can differ while everything else matches."""
    if stored is None:
        return "missing output"
    changed = {
        "new input": stored.get("inputs") != made["inputs"],
        "params changed": stored.get("params") != made["params"],
        "code changed": any(stored.get(key) != made[key] for key in ("op", "op_version", "code"))
        or stored.get("versions", {}).get("replicalake") != ENGINE_VERSION,
    }
    return ", ".join(reason for reason, yes in changed.items() if yes) or "code changed"
