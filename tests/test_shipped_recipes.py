"""Every recipe shipped in recipes/ passes the structural and op-parameter checks.

Sources are not opened (most need an ingest first); the recipe's own tests run them end to end.
"""

from __future__ import annotations

import pytest

from engine.graph import check_recipe_offline
from tests.conftest import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_is_valid(path):
    check_recipe_offline(path)
