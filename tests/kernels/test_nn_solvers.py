"""NN equation solvers against analytic solutions, and the bounce against CosmoTransitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.kernels.bounce import QuarticPotential, cosmotransitions_action, solve_bounce, wall_guess
from engine.kernels.mlp import EnsembleMLP
from engine.kernels.nn_solvers import PROBLEMS, SolverConfig, get_problem, network_jet, solve_on_grid
from engine.kernels.optim import OptimiserConfig


def thin_thick(a: float) -> QuarticPotential:
    """CosmoTransitions' example family: V = a phi^2 - (1 + 2a)/3 phi^3 + phi^4/4, true vacuum at
    phi = 1 (V'(1) = 0); a -> 1/4 is degenerate (thin wall), small a a thick wall."""
    return QuarticPotential(a, -(1 + 2 * a) / 3, 0.25)


def test_jets_equal_autograd_derivatives():
    model = EnsembleMLP(3, [2, 5, 4, 1], ["tanh", "sigmoid", "linear"], seed=1, dtype=torch.float64)
    x = torch.rand(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    n, dn, d2n = network_jet(model, x)
    xr = x.unsqueeze(0).expand(3, 7, 2).clone().requires_grad_(True)
    out = model(xr)[..., 0]
    grad = torch.autograd.grad(out.sum(), xr, create_graph=True)[0]
    np.testing.assert_allclose(n.detach(), out.detach(), atol=1e-14)
    for j in range(2):
        second = torch.autograd.grad(grad[..., j].sum(), xr, retain_graph=True)[0][..., j]
        np.testing.assert_allclose(dn[j].detach(), grad[..., j].detach(), atol=1e-13)
        np.testing.assert_allclose(d2n[j].detach(), second.detach(), atol=1e-13)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_analytic_solutions_solve_their_equations(name):
    """The stated solutions make the residual vanish: N chosen so the trial function is exact."""
    problem = get_problem(name)
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.uniform(lo + 0.05, hi, 50) for lo, hi in problem.domain])
    # residual of the exact solution by finite differences of the analytic formula
    h = 1e-4
    exact = problem.exact
    if problem.dim == 1:
        f = lambda s: exact(s[:, None])  # noqa: E731
        xs = x[:, 0]
        d1, d2 = (f(xs + h) - f(xs - h)) / (2 * h), (f(xs + h) - 2 * f(xs) + f(xs - h)) / h**2
        if name == "ode1":
            p = xs + (1 + 3 * xs**2) / (1 + xs + xs**3)
            rhs = xs**3 + 2 * xs + xs**2 * (1 + 3 * xs**2) / (1 + xs + xs**3)
            residual = d1 + p * f(xs) - rhs
        else:
            residual = d2 + d1 / 5 + f(xs) + np.exp(-xs / 5) * np.cos(xs) / 5
    else:
        lap = sum((exact(x + h * e) - 2 * exact(x) + exact(x - h * e)) / h**2 for e in np.eye(2))
        residual = lap - np.exp(-x[:, 0]) * (x[:, 0] - 2 + x[:, 1] ** 3 + 6 * x[:, 1])
    assert np.abs(residual).max() < 1e-5  # finite differences at h = 1e-4: ~1e-7 truncation


QUICK = SolverConfig(
    replicas=3,
    epochs=150,
    validation_every=50,
    n_collocation=24,
    optimiser=OptimiserConfig(lr=3e-2, lr_final=1e-3),
)


@pytest.mark.parametrize("name", ["ode1", "ode2", "poisson"])
def test_solutions_match_the_analytic_ones(name):
    """Measured (150 Adam steps + output-layer least squares, 3 replicas): max |error| 1e-6 (ode1),
    1e-12 (ode2), 2e-5 (poisson, 24 x 24 points). The issue's goal is 1e-3; bound 1e-4, which
    Adam alone does not reach (ode1 Adam-only: 5e-3 after 5000 steps)."""
    config = QUICK if name != "poisson" else SolverConfig(**{**QUICK.__dict__, "n_collocation": 12})
    out = solve_on_grid(name, config, 21)
    error = np.abs(out["solution"] - out["exact"]).max(1)
    assert error.max() < 1e-4, error
    assert out["solution"].std(0).max() > 0  # replicas start apart and stay distinct


def test_least_squares_polish_is_what_reaches_the_goal():
    """Without the output-layer solve the same training is far off (so the bound above tests it)."""
    out = solve_on_grid("ode1", SolverConfig(**{**QUICK.__dict__, "polish": False}), 21)
    assert np.abs(out["solution"] - out["exact"]).max() > 1e-3


def test_unknown_equation_and_bad_activation_are_named():
    with pytest.raises(ValueError, match="unknown equation 'ode3'; did you mean 'ode2' or 'ode1'"):
        get_problem("ode3")
    with pytest.raises(ValueError, match="smooth activations"):
        solve_on_grid("ode1", SolverConfig(activations=("relu", "relu", "linear")), 5)


def test_potential_checks():
    with pytest.raises(ValueError, match="nothing to tunnel to"):
        QuarticPotential(0.3, -(1 + 0.6) / 3, 0.25)  # true vacuum above the false one
    with pytest.raises(ValueError, match="c2 > 0"):
        QuarticPotential(-0.1, 0.0, 0.25)
    p = thin_thick(0.1)
    assert p.true_vacuum == pytest.approx(1.0) and p.barrier == pytest.approx(0.2)
    assert p.dV(p.true_vacuum) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("a", [0.1, 0.235])
def test_bounce_action_agrees_with_cosmotransitions(a):
    """Thick (a = 0.1) and thin (a = 0.235) wall, quick training (2 replicas, 300 steps + Gauss-
    Newton). Measured: S3 -0.27% and +0.05% from CosmoTransitions (6.649, 1092.76), replica spread
    < 0.05%; the issue's goal is 1%: bound 1% on every replica, two-sided."""
    pytest.importorskip("cosmoTransitions")
    potential = thin_thick(a)
    reference, phi0 = cosmotransitions_action(potential)
    config = SolverConfig(
        replicas=2,
        epochs=300,
        validation_every=50,
        n_collocation=200,
        polish=True,
        optimiser=OptimiserConfig(lr=2e-3, lr_final=2e-5),
    )
    out = solve_bounce(potential, config, n_profile=2001)
    assert np.all(np.abs(out["action"] / reference - 1) < 0.01), (out["action"], reference)
    assert np.all(np.abs(out["phi0"] - phi0) < 0.02), (out["phi0"], phi0)


def test_wall_guess_is_a_close_start_but_not_the_answer():
    """The tanh-wall start (Coleman-Glaser-Martin ratio) is within 0.5% on these potentials; the
    networks must then do as well or better on the residual, which the start does not solve."""
    pytest.importorskip("cosmoTransitions")
    for a in (0.1, 0.2):
        potential = thin_thick(a)
        reference, _ = cosmotransitions_action(potential)
        assert abs(wall_guess(potential).action / reference - 1) < 0.005


@pytest.mark.slow
def test_recipe_settings_reach_the_goals():
    """The shipped recipe's settings (8 replicas, 1000 steps; 4 potentials, thin to thick): every
    equation within the issue's 1e-3 (measured 5e-8, 2e-14, 1e-6) and every replica's S3 within
    1% of CosmoTransitions (measured worst 0.32%, tests/benchmarks/bench_solvers.py)."""
    pytest.importorskip("cosmoTransitions")
    from tests.calibration import shipped_params

    for step in ("ode1", "ode2", "poisson"):
        p = shipped_params("solve_equations.yaml", step)
        config = SolverConfig(
            replicas=p["replicas"],
            epochs=p["epochs"],
            n_collocation=p["n_collocation"],
            optimiser=OptimiserConfig(lr=3e-2, lr_final=1e-4),
            seed=p["seed"],
        )
        out = solve_on_grid(p["equation"], config, p["n_grid"])
        assert np.abs(out["solution"] - out["exact"]).max() < 1e-3, step
    p = shipped_params("solve_equations.yaml", "bounce")
    config = SolverConfig(
        replicas=p["replicas"],
        epochs=p["epochs"],
        n_collocation=p["n_collocation"],
        optimiser=OptimiserConfig(lr=2e-3, lr_final=2e-5),
        seed=p["seed"],
    )
    for c in p["potentials"]:
        potential = QuarticPotential(c["c2"], c["c3"], c["c4"])
        reference, _ = cosmotransitions_action(potential)
        out = solve_bounce(potential, config)
        assert np.all(np.abs(out["action"] / reference - 1) < 0.01), (c, out["action"], reference)
