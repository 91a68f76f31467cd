"""Solver ops as a recipe: analytic solutions and CosmoTransitions' bounce actions, outputs, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.errors import RecipeError
from engine.graph import compile_recipe
from engine.kernels.bounce import QuarticPotential, cosmotransitions_action
from engine.storage import Lake
from engine.testing import raise_if_computes
from tests.conftest import REPO

SMALL = {
    "replicas: 8, epochs: 1000": "replicas: 2, epochs: 150",
    "replicas: 8, epochs: 500": "replicas: 2, epochs: 150",
    "n_grid: 201": "n_grid: 41",
    "n_grid: 51, n_collocation: 24": "n_grid: 11, n_collocation: 12",
    "        - {c2: 0.15, c3: -0.43333333333333335, c4: 0.25}\n": "",
    "        - {c2: 0.2, c3: -0.4666666666666667, c4: 0.25}\n": "",
    "      replicas: 8\n      epochs: 1000\n      n_collocation: 300": (
        "      replicas: 2\n      epochs: 300\n      n_collocation: 200"
    ),
}


def recipe_text(**changes) -> str:
    text = (REPO / "recipes" / "solve_equations.yaml").read_text()
    for old, new in {**SMALL, **changes}.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("solve")
    recipe = folder / "solve.yaml"
    recipe.write_text(recipe_text())
    lake = Lake(str(folder / "lake"))
    engine.run(recipe, lake)
    return lake


def test_op_domains_are_the_kernels():
    from engine.kernels.nn_solvers import PROBLEMS
    from engine.ops.solve import EQUATION_RANGES

    assert {name: tuple(r.values()) for name, r in EQUATION_RANGES.items()} == {
        name: p.domain for name, p in PROBLEMS.items()
    }


def test_compiling_computes_nothing(lake, write_recipe):
    with raise_if_computes():
        plan = compile_recipe(write_recipe(recipe_text()), lake)
    assert plan.step("poisson").dataset["solution"].shape == (2, 11, 11)
    assert plan.step("bounce").dataset["action"].shape == (2, 2)


@pytest.mark.parametrize("name", ["ode1", "ode2", "poisson"])
def test_equations_match_their_analytic_solutions(solved, name):
    """Measured with these quick settings: max |mean - exact| ~1e-6 (ode1), 1e-12 (ode2), 1e-5
    (poisson); the issue's goal is 1e-3, bound 1e-4 on the mean and on every replica."""
    out = solved.open("derived", f"solve-equations/{name}").load()
    assert float(out["max_error"]) < 1e-4
    assert float(out["max_error_replica"].max()) < 1e-4
    np.testing.assert_allclose(out["solution_mean"], out["solution"].mean("replica"))
    assert float(out["max_error"]) == pytest.approx(float(out["abs_error"].max()))
    assert out["weight_0"].shape[0] == 2  # the networks are stored with the solution
    plot = "abs_error" if name == "poisson" else "solution"
    assert solved.fs.exists(solved.path(f"reports/derived/solve-equations/{name}/{plot}.png"))


def test_bounce_actions_agree_with_cosmotransitions(solved):
    """Thick (a = 0.1) and thin (a = 0.235) walls: S3 within 1% of CosmoTransitions (the issue's
    goal) for every replica; measured -0.27% and +0.05%."""
    pytest.importorskip("cosmoTransitions")
    out = solved.open("derived", "solve-equations/bounce").load()
    for case in range(out.sizes["case"]):
        c = out.isel(case=case)
        reference, _ = cosmotransitions_action(QuarticPotential(float(c.c2), float(c.c3), float(c.c4)))
        assert np.all(np.abs(c["action"].values / reference - 1) < 0.01), (c["action"].values, reference)
    assert out["profile"].dims == ("case", "replica", "point")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"equation: ode1,": "equation: ode3,"}, "equation"),
        (
            {"params: {equation: ode2,": "params: {equation: ode2, activations: [relu, relu, linear],"},
            "hidden activations must be one of \\('tanh', 'sigmoid'\\)",
        ),
        (
            {"{c2: 0.1, c3: -0.4, c4: 0.25}": "{c2: 0.3, c3: -0.5333333333333333, c4: 0.25}"},
            "potentials\\[0\\]: .* nothing to tunnel to",
        ),
    ],
)
def test_bad_params_are_recipe_errors(lake, write_recipe, change, message):
    with pytest.raises(RecipeError, match=message):
        compile_recipe(write_recipe(recipe_text(**change)), lake)
