"""Which recipe an output belongs to, and the two ways a person overrides the lake's judgement.

Outputs are named RECIPE/STEP by default, so a copied recipe file whose `name:` was left alone
(the usual first experiment) publishes to the outputs of the original. A run therefore refuses,
before it stages anything, to publish over an output whose provenance names another recipe,
unless it is told to replace it (`run --replace`, `replace=True`). A recipe is identified by its
name, the file it was read from, and whether `params=` overrides were merged into it
(`recipe_identity`): editing a recipe file in place is the same recipe, a copy is not.

`--force STEP` is the opposite case: the output is the recipe's own and up to date, and the
person wants it computed again anyway (a flaky input, a suspicion). `forced_steps` names the
steps to recompute: the ones asked for and every step downstream of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, LakeError, OutputConflictError, did_you_mean

if TYPE_CHECKING:
    from .plan import Plan

# What `recipe_path` holds for a recipe given as a Python dict rather than read from a file.
DICT_RECIPE = "<dict>"


def recipe_location(path: str) -> str:
    """The recipe file as an absolute path (the same file from any working directory); other
    labels (a recipe given as a dict) as they are."""
    return os.path.abspath(path) if os.path.isfile(path) else path


def recipe_identity(name: str | None, path: str | None, overridden: bool) -> tuple[str, str, bool]:
    return (name or "", os.path.realpath(path) if path and os.path.isabs(path) else path or "",
            bool(overridden))


def same_recipe(stored: Mapping[str, Any], plan: Plan) -> bool:
    """Whether the provenance `stored` was written by the recipe of `plan`.

    A relative `recipe_path` (written before paths were made absolute) cannot be placed: there,
    names that agree are taken to be the same recipe."""
    then = stored.get("recipe_path") or ""
    ours = recipe_identity(plan.recipe.name, recipe_location(plan.path), bool(plan.overrides))
    if then and not os.path.isabs(then) and then != DICT_RECIPE:
        return stored.get("recipe") == ours[0] and bool(stored.get("recipe_params")) == ours[2]
    return recipe_identity(stored.get("recipe"), then, bool(stored.get("recipe_params"))) == ours


def describe(name: str | None, path: str | None, overridden: bool) -> str:
    where = "given as a dict" if path == DICT_RECIPE else (path or "file unknown")
    return f"recipe {name!r} ({where}{', with params= overrides' if overridden else ''})"


def refuse_other_recipes_outputs(plan: Plan, replace: bool = False) -> None:
    """Raise OutputConflictError naming each stale output whose store another recipe published
    (its provenance names another recipe), unless `replace`. Stores without a recipe in their
    provenance (none, or unreadable: a damaged store) are the run's to write."""
    if replace:
        return
    conflicts = []
    for step in plan.stale_outputs:
        try:
            stored = plan.lake.provenance(step.zone, step.name)
        except LakeError:
            continue
        if not isinstance(stored, dict) or not stored.get("recipe") or same_recipe(stored, plan):
            continue
        owner = describe(stored.get("recipe"), stored.get("recipe_path"), bool(stored.get("recipe_params")))
        conflicts.append(f"{step.zone}/{step.name} (step {step.id!r}) was published by {owner}")
    if conflicts:
        ours = describe(plan.recipe.name, recipe_location(plan.path), bool(plan.overrides))
        raise OutputConflictError(
            f"{ours} would replace outputs another recipe published: " + "; ".join(conflicts)
            + ". Nothing was run. Give this recipe's outputs other names (`name:` of the recipe, or "
            "`outputs.STEP.name`), or replace them on purpose with `--replace` (replace=True in Python).")


def forced_steps(step_inputs: Mapping[str, Iterable[str]], force: Iterable[str],
                 sources: Iterable[str] = ()) -> set[str]:
    """The steps `force` names plus every step downstream of them.

    `step_inputs`: step id -> ids it reads (sources and steps), in any order. An id that is no
    step (a typo, a source) is a ConfigError naming the steps there are."""
    force = list(dict.fromkeys(force))
    steps = list(step_inputs)
    for step_id in force:
        if step_id not in step_inputs:
            what = "is a source, not a step" if step_id in set(sources) else \
                f"is no step{did_you_mean(step_id, steps)}"
            raise ConfigError(f"--force {step_id!r}: {what}; the recipe's steps are {', '.join(steps)}")
    forced = set(force)
    changed = True
    while changed:  # a few passes over a few dozen steps: no topological order needed
        changed = False
        for step_id, inputs in step_inputs.items():
            if step_id not in forced and forced.intersection(inputs):
                forced.add(step_id)
                changed = True
    return forced
