"""ReplicaLake: a declarative data-lake engine for physics machine learning.

The Python API mirrors the CLI: `load_recipe` (schema check), `compile_recipe` (a lazy Plan),
`run` (compute and publish). Importing `engine` imports neither torch, cupy nor prefect.
"""

from __future__ import annotations

from pathlib import Path

from .errors import RecipeError, ReplicaLakeError
from .graph import compile_recipe
from .recipe import load_recipe
from .storage import Lake

__all__ = ["Lake", "RecipeError", "ReplicaLakeError", "compile_recipe", "load_recipe", "run"]


def run(recipe: str | Path, lake: str | Lake | None = None, scheduler: str | None = None,
        progress: bool = False):
    """Compile and execute a recipe; returns the RunSummary."""
    from .runner import execute

    store = lake if isinstance(lake, Lake) else Lake(lake)
    return execute(compile_recipe(recipe, store), scheduler=scheduler, progress=progress)
