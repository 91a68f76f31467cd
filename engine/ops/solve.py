"""Neural-network equation solvers as lake steps: `solve.equation` and `solve.bounce`.

Both train replicas of a network over initialisations (batched, seeded by (seed, replica)), with
the equation and its boundary conditions in the loss (kernels/nn_solvers.py, kernels/bounce.py),
and publish the solution with its replica mean and spread beside the known truth: the analytic
solution for the issue's ODEs and Poisson problem, and the thin-wall start for the bounce (the
CosmoTransitions reference is measured beside it by the tests and tests/benchmarks/bench_solvers.py,
not by the op: it is a dev dependency).
"""

from __future__ import annotations

from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field, model_validator

from ..bounds import Epochs, GridNodes, Replicas, Seed, Widths
from ..bounds import Params as _Params
from ..key_numbers import mark
from ..registry import StepContext, register_op
from . import needs
from .ensembles import (
    REPLICA,
    checkpointed_training,
    ensemble_architecture,
    history_length,
    lazy_ensemble,
    require_layer_activations,
    result_arrays,
    result_layout,
)
from .replicas import OptimiserParams

SMOOTH = ("tanh", "sigmoid")
QUANTILES = (0.16, 0.5, 0.84)
# dims and ranges of kernels.nn_solvers.PROBLEMS, known here without importing torch (a test
# checks that the two agree)
EQUATION_RANGES = {
    "ode1": {"x": (0.0, 2.0)},
    "ode2": {"x": (0.0, 2.0)},
    "poisson": {"x": (0.0, 1.0), "y": (0.0, 1.0)},
}
EQUATION_DOMAINS = {name: tuple(ranges) for name, ranges in EQUATION_RANGES.items()}


class SolverParams(_Params):
    """Networks and training shared by the solver ops."""

    replicas: Replicas = Field(8, gt=0, description="networks from different initialisations")
    hidden: Widths = Field([20, 20], description="hidden layer widths")
    activations: list[str] = Field(
        ["tanh", "tanh", "linear"], description="smooth hidden activations (tanh, sigmoid), linear output"
    )
    epochs: Epochs = Field(1000, gt=0)
    validation_every: Epochs = Field(50, gt=0)
    optimiser: OptimiserParams = OptimiserParams(lr=3e-2, lr_final=1e-4)
    n_collocation: GridNodes = Field(64, ge=4, description="collocation points per dimension")
    polish: bool = Field(
        True, description="finish with a least-squares (Gauss-Newton) solve of each replica's output layer"
    )
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _layers(self):
        require_layer_activations(self.hidden, self.activations)
        bad = [a for a in self.activations[:-1] if a not in SMOOTH]
        if bad or self.activations[-1] != "linear":
            raise ValueError(
                f"the residual needs second derivatives: hidden activations must be one "
                f"of {SMOOTH} and the output 'linear', found {self.activations}"
            )
        return self

    def config(self):
        from ..kernels.nn_solvers import SolverConfig
        from ..kernels.optim import OptimiserConfig

        return SolverConfig(
            tuple(self.hidden),
            tuple(self.activations),
            self.replicas,
            self.epochs,
            OptimiserConfig(**self.optimiser.model_dump()),
            None,
            self.validation_every,
            self.n_collocation,
            self.polish,
            self.seed,
            self.device,
            "float64",
        )


def _architecture(params: SolverParams, n_in: int) -> dict:
    return ensemble_architecture(n_in, params.hidden, params.activations, params.seed, dtype="float64")


def _solver_need(points: int, n_in: int):
    """The ensemble's training on the collocation points, with value and derivative streams
    (1 + 2 n_in rows per point), in float64 (twice ensemble_training_bytes' float32)."""

    def need(params, inputs, output) -> int:
        rows = (1 + 2 * n_in) * points
        sizes = [n_in, *params.hidden, 1]
        return 2 * needs.ensemble_training_bytes(params.replicas, sizes, rows) + 4 * needs.whole_bytes(output)

    return need


# -- ODEs and PDEs with analytic solutions -----------------------------------------------------------
class EquationParams(SolverParams):
    equation: Literal["ode1", "ode2", "poisson"] = Field(
        description="ode1: first-order ODE on [0, 2]; ode2: second-order ODE on [0, 2]; poisson: "
        "2-D Poisson problem on the unit square (kernels/nn_solvers.py states each)"
    )
    n_grid: GridNodes = Field(101, ge=2, description="output grid points per dimension")


def _solve_equation(params: EquationParams, context: StepContext) -> dict[str, np.ndarray]:
    from ..kernels.nn_solvers import solve_on_grid

    arrays = {}

    def fit(**hooks):
        arrays.update(solve_on_grid(params.equation, params.config(), params.n_grid, **hooks))
        return arrays["result"]

    result = checkpointed_training(context, params.epochs, params.validation_every, fit)
    shape = (params.n_grid,) * len(EQUATION_DOMAINS[params.equation])
    solution = arrays["solution"]
    mean = solution.mean(0)
    error = np.abs(solution - arrays["exact"])
    return {
        **result_arrays(result, history_length(params.epochs, params.validation_every)),
        "solution": solution.reshape(-1, *shape),
        "exact": arrays["exact"].reshape(shape),
        "solution_mean": mean.reshape(shape),
        "solution_std": (solution.std(0, ddof=1) if len(solution) > 1 else 0 * mean).reshape(shape),
        "solution_quantile": np.quantile(solution, QUANTILES, axis=0).reshape(-1, *shape),
        "abs_error": np.abs(mean - arrays["exact"]).reshape(shape),
        "max_error": np.array(np.abs(mean - arrays["exact"]).max()),
        "max_error_replica": error.max(1),
        "residual": arrays["residual"],
    }


@register_op(
    "solve.equation",
    params=EquationParams,
    inputs=(),
    wants_context=True,
    memory=needs.TorchNeed(
        lambda p, i, o: _solver_need(
            p.n_collocation ** len(EQUATION_DOMAINS[p.equation]), len(EQUATION_DOMAINS[p.equation])
        )(p, i, o)
    ),
)
def equation(params: EquationParams, context: StepContext) -> xr.Dataset:
    """Solve a known-truth ODE/PDE with replica networks (the equation and its conditions in the loss).

    Outputs solution (replica, x[, y]), its mean, std and quantiles (quantile, x[, y]), the analytic
    solution `exact`, abs_error of the mean, max_error (scalar) and max_error_replica, residual
    (mean-square equation residual per replica), and the networks (weights, training record).
    """
    dims = EQUATION_DOMAINS[params.equation]
    n, r = params.n_grid, params.replicas
    grid = (n,) * len(dims)
    architecture = _architecture(params, len(dims))
    layout = result_layout(architecture, r, history_length(params.epochs, params.validation_every))
    layout.update(
        {
            "solution": ((REPLICA, *dims), (r, *grid), float),
            "exact": (dims, grid, float),
            "solution_mean": (dims, grid, float),
            "solution_std": (dims, grid, float),
            "solution_quantile": (("quantile", *dims), (len(QUANTILES), *grid), float),
            "abs_error": (dims, grid, float),
            "max_error": ((), (), float),
            "max_error_replica": ((REPLICA,), (r,), float),
            "residual": ((REPLICA,), (r,), float),
        }
    )
    solved = dask.delayed(_solve_equation, pure=True)(params, context)
    result = lazy_ensemble(
        solved,
        layout,
        architecture,
        {"kind": "neural equation solver", "equation": params.equation, "epochs": params.epochs},
    )
    ranges = EQUATION_RANGES[params.equation]
    result = result.assign_coords(
        {d: np.linspace(*ranges[d], params.n_grid) for d in dims} | {"quantile": list(QUANTILES)}
    )
    mark(result["max_error"], "value", label=f"{params.equation}: max |mean - exact|")
    return result


# -- the bounce ---------------------------------------------------------------------------------
class Potential(_Params):
    """V = c2 phi^2 + c3 phi^3 + c4 phi^4, false vacuum at phi = 0."""

    c2: float = Field(gt=0)
    c3: float
    c4: float = Field(gt=0)


class BounceParams(SolverParams):
    potentials: list[Potential] = Field(
        min_length=1, max_length=64, description="one bounce per potential (the 'case' dim)"
    )
    n_collocation: GridNodes = Field(300, ge=4, description="collocation radii")
    n_profile: GridNodes = Field(
        2001, ge=5, description="radii of the published profile and of the action integral"
    )
    # lr 1e-2 made the thick-wall residual diverge from the start (S3 +8%); 2e-3 then Gauss-Newton
    # measured within 0.3% of CosmoTransitions on every case
    optimiser: OptimiserParams = OptimiserParams(lr=2e-3, lr_final=2e-5)

    @model_validator(mode="after")
    def _vacua(self):
        from ..kernels.bounce import QuarticPotential

        for k, p in enumerate(self.potentials):
            try:
                QuarticPotential(p.c2, p.c3, p.c4)
            except ValueError as exc:
                raise ValueError(f"potentials[{k}]: {exc}") from None
        return self


def _solve_bounce(potential: Potential, params: BounceParams) -> dict[str, np.ndarray]:
    from ..kernels.bounce import QuarticPotential, solve_bounce

    out = solve_bounce(
        QuarticPotential(potential.c2, potential.c3, potential.c4),
        params.config(),
        n_profile=params.n_profile,
    )
    return {
        "action": out["action"],
        "action_derrick": out["action_derrick"],
        "phi0": out["phi0"],
        "residual": out["residual"],
        "profile": out["profile"],
        "radius": out["radius"],
        "guess_action": np.array(out["guess_action"]),
    }


@register_op(
    "solve.bounce",
    params=BounceParams,
    inputs=(),
    memory=needs.TorchNeed(lambda p, i, o: _solver_need(p.n_collocation, 1)(p, i, o)),
)
def bounce(params: BounceParams) -> xr.Dataset:
    """O(3) bounce and action S3 of quartic potentials from replica networks (one task per potential).

    Outputs action (case, replica) = 4 pi int r^2 (phi'^2/2 + V), action_derrick (2/3 of the
    kinetic term, equal at a true bounce), their replica mean and std, phi0 (field at the centre),
    residual (mean-square scaled equation residual), guess_action (the tanh-wall start),
    profile (case, replica, point) on radius (case, point).
    """
    r, m = params.replicas, params.n_profile + (params.n_profile + 1) % 2
    cases = [dask.delayed(_solve_bounce, pure=True)(p, params) for p in params.potentials]
    layout = {
        "action": ((r,), float),
        "action_derrick": ((r,), float),
        "phi0": ((r,), float),
        "residual": ((r,), float),
        "profile": ((r, m), float),
        "radius": ((m,), float),
        "guess_action": ((), float),
    }
    dims = {
        "action": (REPLICA,),
        "action_derrick": (REPLICA,),
        "phi0": (REPLICA,),
        "residual": (REPLICA,),
        "profile": (REPLICA, "point"),
        "radius": ("point",),
        "guess_action": (),
    }
    variables = {
        name: (("case", *dims[name]), da.stack([da.from_delayed(c[name], shape, dtype) for c in cases]))
        for name, (shape, dtype) in layout.items()
    }
    result = xr.Dataset(
        variables,
        coords={
            "case": np.arange(len(cases)),
            REPLICA: np.arange(r),
            "c2": ("case", [p.c2 for p in params.potentials]),
            "c3": ("case", [p.c3 for p in params.potentials]),
            "c4": ("case", [p.c4 for p in params.potentials]),
        },
    )
    result["action_mean"] = result["action"].mean(REPLICA)
    result["action_std"] = result["action"].std(REPLICA, ddof=1) if r > 1 else 0 * result["action_mean"]
    result["action_derrick_mean"] = result["action_derrick"].mean(REPLICA)
    mark(result["action_mean"], "value", label="bounce action S3 (replica mean)")
    return result
