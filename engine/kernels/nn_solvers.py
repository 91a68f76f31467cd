"""Neural-network solvers of differential equations: the equation and its boundary conditions in
the loss, one network per replica (Lagaris, Likas & Fotiadis 1998; Piscopo, Spannowsky & Waite
2019, arXiv:1902.05563).

A trial solution psi_t(x) = A(x) + B(x) N(x) satisfies the boundary (or initial) conditions by
construction: A carries the boundary values, B vanishes where they are imposed, N is the network.
The loss is the mean squared residual of the equation at collocation points, so a zero loss is an
exact solution. Replicas are networks trained from different initialisations (EnsembleMLP, keyed
by (seed, replica)); their spread shows how far the optimisation, not the data, leaves the answer
undetermined.

Why derivatives are propagated forward (Taylor mode) instead of by autograd: the residual needs
dN/dx and d2N/dx2 at every collocation point, and the loss then needs their gradient with respect
to the weights. Nested autograd would differentiate three times through every layer; pushing
(value, first, second derivative) through each layer together costs about three forward passes
and one backward, with exact derivatives.

The known-truth problems of the issue (with their analytic solutions, derived in `PROBLEMS`):
- ode1: psi' + (x + (1+3x^2)/(1+x+x^3)) psi = x^3 + 2x + x^2 (1+3x^2)/(1+x+x^3), psi(0) = 1 on
  [0, 2]; psi = exp(-x^2/2)/(1+x+x^3) + x^2. Trial psi = 1 + x N.
- ode2: psi'' + psi'/5 + psi = -exp(-x/5) cos(x)/5, psi(0) = 0, psi'(0) = 1 on [0, 2];
  psi = exp(-x/5) sin x. Trial psi = x + x^2 N.
- poisson: laplacian(psi) = exp(-x) (x - 2 + y^3 + 6y) on the unit square, Dirichlet values of
  psi = exp(-x) (x + y^3). Trial psi = A + x(1-x) y(1-y) N, A the Coons patch of the four edges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .mlp import EnsembleMLP, resolve_device
from .optim import OptimiserConfig
from .train import Progress, StoppingConfig, TrainResult, train_ensemble

Tensor = torch.Tensor
JET_ACTIVATIONS = ("tanh", "sigmoid")


# -- Taylor-mode jets through an ensemble --------------------------------------------------------
def _activation_jet(name: str, z: Tensor, dz: Tensor, d2z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """a(z) (R, B, w) with its derivatives dz, d2z (R, d, B, w) along each input direction."""
    if name == "linear":
        return z, dz, d2z
    if name == "tanh":
        a = torch.tanh(z)
        s = 1 - a * a  # a'
        a1 = a.unsqueeze(1)
        s1 = s.unsqueeze(1)
        return a, s1 * dz, s1 * d2z - 2 * a1 * s1 * dz * dz
    if name == "sigmoid":
        a = torch.sigmoid(z)
        s = (a * (1 - a)).unsqueeze(1)
        return a, s * dz, s * d2z + s * (1 - 2 * a.unsqueeze(1)) * dz * dz
    raise ValueError(
        f"solver networks need smooth activations {JET_ACTIVATIONS} (+ linear output), got {name!r}"
    )


def hidden_jet(model: EnsembleMLP, x: Tensor, layers: int | None = None):
    """Activations after the first `layers` layers (all by default) at inputs x (B, d), with their
    first and diagonal second derivatives along each input: (R, B, w), (d, R, B, w), (d, R, B, w).

    Values and derivatives travel as one (R, (1 + 2d) B, width) tensor, so each layer is one
    batched matmul (3-4x faster than a broadcast matmul per derivative).
    """
    r, (b, d) = model.n_replicas, x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    parts = [
        x,
        *(eye[j].expand(b, d) for j in range(d)),
        torch.zeros(d * b, d, dtype=x.dtype, device=x.device),
    ]
    h = torch.cat(parts).unsqueeze(0).expand(r, -1, -1)
    pairs = list(zip(model.layers(), model.activations))[:layers]
    for (w, bias), act in pairs:
        z = torch.bmm(h, w)
        value, first, second = z[:, :b] + bias, z[:, b : (d + 1) * b], z[:, (d + 1) * b :]
        value, first, second = _activation_jet(
            act, value, first.unflatten(1, (d, b)), second.unflatten(1, (d, b))
        )
        h = torch.cat([value, first.flatten(1, 2), second.flatten(1, 2)], dim=1)
    first = h[:, b : (d + 1) * b].unflatten(1, (d, b)).transpose(0, 1)
    second = h[:, (d + 1) * b :].unflatten(1, (d, b)).transpose(0, 1)
    return h[:, :b], first, second


def network_jet(model: EnsembleMLP, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """N (R, B), dN/dx_j (d, R, B) and d2N/dx_j^2 (d, R, B) at inputs x (B, d), per replica.

    Only the diagonal second derivatives are propagated: the equations here need no mixed ones.
    """
    n, dn, d2n = hidden_jet(model, x)
    return n[..., 0], dn[..., 0], d2n[..., 0]


# -- problems ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """An equation on a box with its trial solution; `residual(x, N, dN, d2N)` -> (R, B) residuals
    of psi_t built from the network jet (derivatives with respect to the raw coordinates x);
    `solution(x, N, dN)` -> psi_t (R, B); `exact` (numpy) the analytic solution."""

    name: str
    domain: tuple[tuple[float, float], ...]
    residual: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    solution: Callable[[Tensor, Tensor], Tensor]
    exact: Callable[[np.ndarray], np.ndarray]
    equation: str

    @property
    def dim(self) -> int:
        return len(self.domain)


def _ode1_p(x):
    return x + (1 + 3 * x**2) / (1 + x + x**3)


def _ode1_residual(x, n, dn, d2n):
    x = x[:, 0]
    psi, dpsi = 1 + x * n, n + x * dn[0]
    rhs = x**3 + 2 * x + x**2 * (1 + 3 * x**2) / (1 + x + x**3)
    return dpsi + _ode1_p(x) * psi - rhs


def _ode2_residual(x, n, dn, d2n):
    x = x[:, 0]
    psi = x + x**2 * n
    dpsi = 1 + 2 * x * n + x**2 * dn[0]
    d2psi = 2 * n + 4 * x * dn[0] + x**2 * d2n[0]
    return d2psi + dpsi / 5 + psi + torch.exp(-x / 5) * torch.cos(x) / 5


def _poisson_exact(x, y, lib=np):
    return lib.exp(-x) * (x + y**3)


def _poisson_boundary(x, y):
    """Coons patch A of the edge values of exp(-x)(x + y^3) and its laplacian (linear blends of
    edge functions have zero second derivative across the blend)."""
    e = math.exp(-1.0)
    f0, f1 = y**3, (1 + y**3) * e  # x = 0, x = 1
    g0, g1 = x * torch.exp(-x), (x + 1) * torch.exp(-x)  # y = 0, y = 1
    g0_ends, g1_ends = (0.0, e), (1.0, 2 * e)
    a = (
        (1 - x) * f0
        + x * f1
        + (1 - y) * (g0 - (1 - x) * g0_ends[0] - x * g0_ends[1])
        + y * (g1 - (1 - x) * g1_ends[0] - x * g1_ends[1])
    )
    lap = (1 - x) * 6 * y + x * 6 * y * e + (1 - y) * (x - 2) * torch.exp(-x) + y * (x - 1) * torch.exp(-x)
    return a, lap


def _poisson_residual(xy, n, dn, d2n):
    x, y = xy[:, 0], xy[:, 1]
    _, lap_a = _poisson_boundary(x, y)
    bx, by = x * (1 - x), y * (1 - y)
    b = bx * by
    grad_b = ((1 - 2 * x) * by, bx * (1 - 2 * y))
    lap_b = -2 * by - 2 * bx
    lap = lap_a + n * lap_b + 2 * (grad_b[0] * dn[0] + grad_b[1] * dn[1]) + b * (d2n[0] + d2n[1])
    return lap - torch.exp(-x) * (x - 2 + y**3 + 6 * y)


PROBLEMS: dict[str, Problem] = {
    "ode1": Problem(
        "ode1",
        ((0.0, 2.0),),
        _ode1_residual,
        lambda x, n: 1 + x[:, 0] * n,
        lambda x: np.exp(-(x[:, 0] ** 2) / 2) / (1 + x[:, 0] + x[:, 0] ** 3) + x[:, 0] ** 2,
        "psi' + (x + (1+3x^2)/(1+x+x^3)) psi = x^3 + 2x + x^2 (1+3x^2)/(1+x+x^3), psi(0) = 1",
    ),
    "ode2": Problem(
        "ode2",
        ((0.0, 2.0),),
        _ode2_residual,
        lambda x, n: x[:, 0] + x[:, 0] ** 2 * n,
        lambda x: np.exp(-x[:, 0] / 5) * np.sin(x[:, 0]),
        "psi'' + psi'/5 + psi = -exp(-x/5) cos(x)/5, psi(0) = 0, psi'(0) = 1",
    ),
    "poisson": Problem(
        "poisson",
        ((0.0, 1.0), (0.0, 1.0)),
        _poisson_residual,
        lambda xy, n: (
            _poisson_boundary(xy[:, 0], xy[:, 1])[0]
            + xy[:, 0] * (1 - xy[:, 0]) * xy[:, 1] * (1 - xy[:, 1]) * n
        ),
        lambda xy: _poisson_exact(xy[:, 0], xy[:, 1]),
        "laplacian(psi) = exp(-x)(x - 2 + y^3 + 6y) on [0,1]^2, psi = exp(-x)(x + y^3) on the edges",
    ),
}


def get_problem(name: str) -> Problem:
    if name not in PROBLEMS:
        from .architecture import unknown_name

        raise unknown_name(name, PROBLEMS, "equation")
    return PROBLEMS[name]


def grid(problem: Problem, n: int, interior: bool = False) -> np.ndarray:
    """A regular grid (n^d, d) over the domain; `interior` uses cell midpoints (no boundary)."""
    axes = []
    for low, high in problem.domain:
        if interior:
            edges = np.linspace(low, high, n + 1)
            axes.append(0.5 * (edges[1:] + edges[:-1]))
        else:
            axes.append(np.linspace(low, high, n))
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


# -- scaled networks ----------------------------------------------------------------------------
class ScaledNetwork:
    """N(x) = net((x - centre) * scale): the network sees [-1, 1]; jets are in raw coordinates."""

    def __init__(self, model: EnsembleMLP, domain):
        bounds = np.asarray(domain, float)
        self.model = model
        self.centre = torch.as_tensor(bounds.mean(1), dtype=model.dtype, device=model.device)
        self.scale = torch.as_tensor(
            2.0 / (bounds[:, 1] - bounds[:, 0]), dtype=model.dtype, device=model.device
        )

    def jet(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, dn, d2n = network_jet(self.model, (x - self.centre) * self.scale)
        s = self.scale.view(-1, 1, 1)
        return n, dn * s, d2n * s * s

    def feature_jet(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The last hidden layer's jet (R, B, K), (d, R, B, K) in raw coordinates, with a constant
        feature appended (the output bias)."""
        h, dh, d2h = hidden_jet(self.model, (x - self.centre) * self.scale, len(self.model.sizes) - 2)
        s = self.scale.view(-1, 1, 1, 1)
        one = torch.ones_like(h[..., :1])
        return (
            torch.cat([h, one], -1),
            torch.cat([dh * s, 0 * one.expand_as(dh[..., :1])], -1),
            torch.cat([d2h * s * s, 0 * one.expand_as(d2h[..., :1])], -1),
        )


@torch.no_grad()
def polish_output_layer(problem: Problem, net: ScaledNetwork, x: np.ndarray) -> None:
    """Set each replica's output layer to the least-squares minimiser of its residual at x.

    Why: for a linear equation the residual is affine in the output layer's weights (the trial
    solution is A + B N and N is linear in them), so given the features the hidden layers have
    learned, one least-squares solve finds the output layer that gradient steps only approach
    (Adam leaves ode1's residual ~100x above this minimum after thousands of steps). Only for
    linear problems with a linear output layer; the hidden layers stay as trained.
    """
    model = net.model
    if model.activations[-1] != "linear":
        raise ValueError("polishing needs a linear output layer")
    xt = torch.as_tensor(x, dtype=model.dtype, device=model.device)
    h, dh, d2h = net.feature_jet(xt)  # (R, B, K+1)
    r, b, k = h.shape
    flat = lambda t: t.movedim(-1, -2).reshape(*t.shape[:-3], r * k, b)  # noqa: E731  (.., R*K, B)
    zero = problem.residual(xt, *(torch.zeros_like(t[..., 0]) for t in (h, dh, d2h)))  # (R, B)
    columns = problem.residual(xt, flat(h), flat(dh), flat(d2h)).reshape(r, k, b) - zero.unsqueeze(1)
    theta = torch.linalg.lstsq(columns.transpose(1, 2), -zero.unsqueeze(-1)).solution[..., 0]  # (R, K+1)
    weight, bias = model.layers()[-1]
    weight[..., 0] = theta[:, :-1]
    bias[..., 0, 0] = theta[:, -1]


class ResidualLoss:
    """A train_ensemble loss_fn: per-replica mean squared residual at the collocation points,
    validated on the cell midpoints between them (points the training never saw)."""

    def __init__(self, problem: Problem, net: ScaledNetwork, train: np.ndarray, validation: np.ndarray):
        self.problem, self.net = problem, net
        as_tensor = lambda a: torch.as_tensor(a, dtype=net.model.dtype, device=net.model.device)  # noqa: E731
        self.train, self.validation = as_tensor(train), as_tensor(validation)

    def mean_square(self, x: Tensor) -> Tensor:
        return self.problem.residual(x, *self.net.jet(x)).pow(2).mean(-1)

    def __call__(self, model, validate: bool):
        train = self.mean_square(self.train)
        if not validate:
            return train, None
        with torch.no_grad():
            return train, self.mean_square(self.validation)


@dataclass(frozen=True)
class SolverConfig:
    hidden: tuple[int, ...] = (20, 20)
    activations: tuple[str, ...] = ("tanh", "tanh", "linear")
    replicas: int = 8
    epochs: int = 4000
    optimiser: OptimiserConfig = OptimiserConfig(lr=1e-2, lr_final=1e-4)
    patience: int | None = None
    validation_every: int = 50
    n_collocation: int = 64
    polish: bool = True
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float64"


def _model(config: SolverConfig, n_in: int) -> EnsembleMLP:
    for name in config.activations:
        if name not in (*JET_ACTIVATIONS, "linear"):
            raise ValueError(
                f"solver networks need smooth activations {JET_ACTIVATIONS} (+ linear output), got {name!r}"
            )
    return EnsembleMLP(
        config.replicas,
        [n_in, *config.hidden, 1],
        list(config.activations),
        seed=config.seed,
        device=resolve_device(config.device),
        dtype=getattr(torch, config.dtype),
    )


def _stopping(config: SolverConfig) -> StoppingConfig:
    # No data to overfit: stopping only ends replicas whose residual no longer improves.
    return StoppingConfig(
        threshold=math.inf, patience=config.patience or config.epochs, stagnation_epochs=None
    )


def solve(
    problem: Problem,
    config: SolverConfig,
    *,
    progress: Callable[[Progress], None] | None = None,
    on_checkpoint: Callable | None = None,
    resume_from: Mapping[str, np.ndarray] | None = None,
) -> tuple[TrainResult, ScaledNetwork]:
    """Train `config.replicas` trial solutions of `problem`; returns the result and the networks."""
    torch.set_num_threads(1)
    if config.n_collocation < 4:
        raise ValueError(f"n_collocation must be >= 4 points per dimension, got {config.n_collocation}")
    net = ScaledNetwork(_model(config, problem.dim), problem.domain)
    loss = ResidualLoss(
        problem,
        net,
        grid(problem, config.n_collocation),
        grid(problem, config.n_collocation - 1, interior=True),
    )
    result = train_ensemble(
        net.model,
        loss,
        config.epochs,
        optimiser=config.optimiser,
        stopping=_stopping(config),
        validation_every=config.validation_every,
        progress=progress,
        checkpoint_every=None if on_checkpoint is None else max(config.validation_every, config.epochs // 10),
        on_checkpoint=on_checkpoint,
        resume_from=resume_from,
    )
    if config.polish:
        polish_output_layer(problem, net, grid(problem, config.n_collocation))
        result.weights = net.model.to_arrays()
        with torch.no_grad():
            train, val = (
                loss.mean_square(x).cpu().numpy().astype(np.float64) for x in (loss.train, loss.validation)
            )
        result.best_train, result.best_val = train, val
    return result, net


def evaluate(problem: Problem, net: ScaledNetwork, points: np.ndarray) -> np.ndarray:
    """(R, n) trial solutions of every replica at points (n, d)."""
    x = torch.as_tensor(points, dtype=net.model.dtype, device=net.model.device)
    with torch.no_grad():
        n, _, _ = net.jet(x)
        return problem.solution(x, n).cpu().numpy().astype(np.float64)


def solve_on_grid(name: str, config: SolverConfig, n_grid: int, **hooks) -> dict[str, np.ndarray]:
    """Solve problem `name` and return arrays: points (n, d), solution (R, n), exact (n,),
    residual loss per replica and the training result under 'result'."""
    problem = get_problem(name)
    result, net = solve(problem, config, **hooks)
    points = grid(problem, n_grid)
    solution = evaluate(problem, net, points)
    return {
        "points": points,
        "solution": solution,
        "exact": problem.exact(points),
        "residual": result.best_train,
        "result": result,
    }
