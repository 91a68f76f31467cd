"""ReplicaLake: a declarative data-lake engine for physics machine learning.

The Python API mirrors the CLI: `load_recipe` (schema check), `compile_recipe` (a lazy Plan),
`run` (compute and publish; engine/api.py, which `import replicalake` offers too, with
`open_lake`, `plan` and the ingest formats as functions). Importing `engine` imports neither
torch, cupy nor prefect, and xarray only once one of these names is used: every `engine.*`
import runs this file first, the CLI's included, and `replicalake --help` needs none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import RecipeError, ReplicaLakeError

if TYPE_CHECKING:
    from .api import run
    from .graph import compile_recipe
    from .recipe import load_recipe
    from .storage import Lake

__all__ = ["Lake", "RecipeError", "ReplicaLakeError", "compile_recipe", "load_recipe", "run"]

_LAZY = {"compile_recipe": "graph", "load_recipe": "recipe", "Lake": "storage",  # name -> module
         "run": "api"}


def __getattr__(name: str):
    """The API names above, imported from their modules on first use (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

