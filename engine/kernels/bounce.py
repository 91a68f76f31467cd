"""The O(3)-symmetric bounce of a quartic potential from neural networks, and its action S3.

The bounce phi(r) of a single scalar field solves phi'' + (2/r) phi' = V'(phi) with phi'(0) = 0
and phi(inf) = phi_false; the thermal tunnelling rate goes as exp(-S3/T) with
S3 = 4 pi int r^2 (phi'^2/2 + V(phi) - V(phi_false)) dr. Here V = c2 phi^2 + c3 phi^3 + c4 phi^4,
false vacuum phi = 0, true vacuum the other minimum.

Why a starting profile: phi = phi_false solves the same equation with the same boundary values,
so a residual loss has that trivial zero too, and networks started anywhere fall into it. The
bounce is instead reached from a profile near it, found without solving the equation: by Coleman,
Glaser and Martin (1978) the O(3) bounce minimises T^(3/2) / sqrt(-U) (kinetic T, potential U;
the ratio does not change under r -> lambda r) among profiles with U < 0, and a rescaling then
makes T + 3U = 0 (Derrick), where S3 = 2T/3. Minimising that ratio over a two-parameter family of
tanh walls, A [tanh(rho + r) + tanh(rho - r)] / 2, gives the start (thin or thick wall alike); the
networks then learn the correction from the equation's residual.

The trial profile keeps the boundary conditions exact (BounceProfile): phi'(0) = 0, and
phi(R) = 0 at the domain's end R, many decay lengths outside the wall. The loss is the mean
square of phi'' + 2 phi'/r - V'(phi) (3 phi'' - V' at r = 0, the limit), scaled by the largest
V' of the starting profile. Not the equation times r: that hides the core,
where a thick wall's phi(0) is decided (it left phi(0) 2% off with the residual stuck).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .mlp import EnsembleMLP, resolve_device
from .nn_solvers import SolverConfig, hidden_jet, network_jet
from .train import Progress, StoppingConfig, train_ensemble

Tensor = torch.Tensor


@dataclass(frozen=True)
class QuarticPotential:
    """V = c2 phi^2 + c3 phi^3 + c4 phi^4; false vacuum at 0, true vacuum the other minimum."""

    c2: float
    c3: float
    c4: float

    def __post_init__(self):
        if not (self.c2 > 0 and self.c4 > 0):
            raise ValueError(
                f"the potential needs c2 > 0 (a false vacuum at phi = 0) and c4 > 0 "
                f"(bounded below); got c2 = {self.c2}, c4 = {self.c4}"
            )
        disc = 9 * self.c3**2 - 32 * self.c2 * self.c4
        if disc <= 0 or self.V(self.true_vacuum) >= 0:
            raise ValueError(
                f"V = {self.c2} phi^2 + {self.c3} phi^3 + {self.c4} phi^4 has no minimum "
                "below the false vacuum at phi = 0 (need 9 c3^2 > 32 c2 c4 and a negative "
                "V at the second minimum): nothing to tunnel to"
            )

    @property
    def true_vacuum(self) -> float:
        root = math.sqrt(max(9 * self.c3**2 - 32 * self.c2 * self.c4, 0.0))
        return (-3 * self.c3 - math.copysign(root, self.c3)) / (8 * self.c4)

    @property
    def barrier(self) -> float:
        return 2 * self.c2 / (4 * self.c4 * self.true_vacuum)  # product of the roots: c2 / (2 c4)

    @property
    def mass(self) -> float:
        return math.sqrt(2 * self.c2)

    def V(self, phi):
        return self.c2 * phi**2 + self.c3 * phi**3 + self.c4 * phi**4

    def dV(self, phi):
        return 2 * self.c2 * phi + 3 * self.c3 * phi**2 + 4 * self.c4 * phi**3

    def d2V(self, phi):
        return 2 * self.c2 + 6 * self.c3 * phi + 12 * self.c4 * phi**2


def _simpson(y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Simpson's rule over the last axis on an even-spaced grid with an odd number of points."""
    h = r[1] - r[0]
    return h / 3 * (y[..., 0] + y[..., -1] + 4 * y[..., 1:-1:2].sum(-1) + 2 * y[..., 2:-1:2].sum(-1))


def action_terms(r: np.ndarray, phi: np.ndarray, dphi: np.ndarray, potential: QuarticPotential):
    """(T, U) = 4 pi int r^2 phi'^2/2, 4 pi int r^2 V(phi) over the grid r (odd length), per row."""
    kinetic = _simpson(r**2 * dphi**2 / 2, r) * 4 * math.pi
    return kinetic, _simpson(r**2 * potential.V(phi), r) * 4 * math.pi


@dataclass(frozen=True)
class WallGuess:
    """A phi_t [tanh(rho + r/lam) + tanh(rho - r/lam)] / 2 with its thin-wall action estimate."""

    amplitude: float
    rho: float
    lam: float
    action: float

    def __call__(self, r, lib=np):
        """Profile and its first and second r-derivatives (numpy or torch)."""
        a, b = lib.tanh(self.rho + r / self.lam), lib.tanh(self.rho - r / self.lam)
        sa, sb = 1 - a * a, 1 - b * b
        k = self.amplitude / 2
        return (k * (a + b), k * (sa - sb) / self.lam, -2 * k * (a * sa + b * sb) / self.lam**2)


def wall_guess(potential: QuarticPotential, n_amplitude: int = 60, n_rho: int = 161) -> WallGuess:
    """The tanh wall that minimises the scale-free ratio T^(3/2) / sqrt(-U), rescaled to T + 3U = 0."""
    phi_t = potential.true_vacuum
    amplitudes = np.linspace(1 / n_amplitude, 1.0, n_amplitude) * phi_t
    best = (math.inf, None)
    x = np.linspace(0.0, 200.0, 4001)
    for rho in np.linspace(0.0, 80.0, n_rho):
        grid = x[x <= rho + 25]
        grid = grid[: grid.size - (grid.size + 1) % 2]
        shape = WallGuess(1.0, float(rho), 1.0, 0.0)(grid)
        phi, dphi = amplitudes[:, None] * shape[0], amplitudes[:, None] * shape[1]
        t, u = action_terms(grid, phi, dphi, potential)
        ratio = np.full(u.shape, np.inf)
        ratio[u < 0] = t[u < 0] ** 1.5 / np.sqrt(-u[u < 0])
        k = int(np.argmin(ratio))
        if ratio[k] < best[0]:
            best = (ratio[k], (amplitudes[k], float(rho), t[k], u[k]))
    if best[1] is None:
        raise ValueError(f"no tanh wall with negative potential energy was found for {potential}")
    amplitude, rho, t, u = best[1]
    lam = math.sqrt(t / (-3 * u))
    return WallGuess(float(amplitude), rho, lam, float(2 * lam * t / 3))


class BounceProfile:
    """phi(r) = g(r) - g(R) q^2 + (1 - q^2) [N(q) - q N'(0)], q = r/R, with its r-derivatives.

    The network sees u = 2q - 1 (the whole domain spread over [-1, 1]; an even input such as q^2
    would crowd a thick wall's core into a few percent of it), and subtracting q N'(0) keeps
    phi'(0) = 0 exactly.
    """

    def __init__(self, model: EnsembleMLP, guess: WallGuess, r_max: float):
        self.model, self.guess, self.r_max = model, guess, r_max
        self.edge = float(guess(np.array(r_max))[0])

    def _correction(self, r: Tensor, jet) -> tuple[Tensor, Tensor, Tensor]:
        """(1 - q^2)(f(q) - q f'(0)) and its r-derivatives for every function f in `jet`'s last dim."""
        q = r / self.r_max
        u = torch.cat([2 * q - 1, -torch.ones_like(q[:1])]).unsqueeze(-1)
        f, df, d2f = jet(u)  # (R, B+1, K), d/du
        slope0 = 2 * df[:, -1:]  # df/dq at q = 0
        f, df, d2f = f[:, :-1], 2 * df[:, :-1], 4 * d2f[:, :-1]  # d/dq
        qq = q.unsqueeze(-1) if f.dim() == 3 else q
        m, dm = f - qq * slope0, df - slope0
        c = (1 - qq * qq) * m
        dc = (-2 * qq * m + (1 - qq * qq) * dm) / self.r_max
        d2c = (-2 * m - 4 * qq * dm + (1 - qq * qq) * d2f) / self.r_max**2
        return c, dc, d2c

    def jet(self, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        def network(u):
            n, dn, d2n = network_jet(self.model, u)
            return n, dn[0], d2n[0]

        c, dc, d2c = self._correction(r, network)
        g, dg, d2g = self.guess(r, torch)
        rm2 = self.r_max**2
        return (
            g - self.edge * r * r / rm2 + c,
            dg - 2 * self.edge * r / rm2 + dc,
            d2g - 2 * self.edge / rm2 + d2c,
        )

    def basis_jet(self, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The correction for each last-hidden-layer feature and a constant (the output bias):
        phi is linear in the output layer through these, (R, B, K+1)."""

        def features(u):
            h, dh, d2h = hidden_jet(self.model, u, len(self.model.sizes) - 2)
            return (
                torch.cat([h, torch.ones_like(h[..., :1])], -1),
                torch.cat([dh[0], torch.zeros_like(dh[0][..., :1])], -1),
                torch.cat([d2h[0], torch.zeros_like(d2h[0][..., :1])], -1),
            )

        return self._correction(r, features)


class BounceLoss:
    """Mean square of (phi'' + 2 phi'/r - V'(phi)) / scale at collocation radii; validation on
    the midpoints between them."""

    def __init__(self, profile: BounceProfile, potential: QuarticPotential, n: int):
        self.profile, self.potential = profile, potential
        dtype, device = profile.model.dtype, profile.model.device
        edges = np.linspace(0.0, profile.r_max, n + 1)
        self.train = torch.as_tensor(np.linspace(0.0, profile.r_max, n), dtype=dtype, device=device)
        self.validation = torch.as_tensor(0.5 * (edges[1:] + edges[:-1]), dtype=dtype, device=device)
        self.scale = float(np.abs(potential.dV(profile.guess(edges)[0])).max())

    def residual(self, r: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled residual (R, B) and the profile phi (R, B) at radii r."""
        phi, dphi, d2phi = self.profile.jet(r)
        centre = torch.where(r > 0, 1.0, 3.0)  # (2/r) phi' -> 2 phi''(0) at the centre
        friction = torch.where(r > 0, 2 / torch.where(r > 0, r, 1.0), 0.0)
        return (centre * d2phi + friction * dphi - self.potential.dV(phi)) / self.scale, phi

    def mean_square(self, r: Tensor) -> Tensor:
        return self.residual(r)[0].pow(2).mean(-1)

    @torch.no_grad()
    def polish(self, iterations: int = 20) -> None:
        """Gauss-Newton on each replica's output layer at the collocation radii.

        Why: the equation is nonlinear in phi but phi is linear in the output layer, so the
        residual's Jacobian there is c'' + 2 c'/r - V''(phi) c for the basis c_k = (1 - q^2) h_k;
        a few least-squares steps reach the minimum that thousands of Adam steps only approach.
        A step is kept for a replica only where it lowers that replica's loss (halved otherwise).
        """
        r = self.train
        weight, bias = self.profile.model.layers()[-1]
        c, dc, d2c = self.profile.basis_jet(r)  # the hidden layers do not change here
        step = torch.ones(weight.shape[0], dtype=weight.dtype, device=weight.device)
        for _ in range(iterations):
            residual, phi = self.residual(r)
            before = residual.pow(2).mean(-1)
            rr = r.unsqueeze(-1)
            centre = torch.where(rr > 0, 1.0, 3.0)
            friction = torch.where(rr > 0, 2 / torch.where(rr > 0, rr, 1.0), 0.0)
            jac = (centre * d2c + friction * dc - self.potential.d2V(phi).unsqueeze(-1) * c) / self.scale
            delta = torch.linalg.lstsq(jac, -residual.unsqueeze(-1)).solution[..., 0]  # (R, K+1)
            old_w, old_b = weight.clone(), bias.clone()
            weight[..., 0] += step[:, None] * delta[:, :-1]
            bias[..., 0, 0] += step * delta[:, -1]
            worse = self.mean_square(r) > before
            weight.copy_(torch.where(worse[:, None, None], old_w, weight))
            bias.copy_(torch.where(worse[:, None, None], old_b, bias))
            step = torch.where(worse, step / 2, torch.clamp(step * 2, max=1.0))

    def __call__(self, model, validate: bool):
        train = self.mean_square(self.train)
        if not validate:
            return train, None
        with torch.no_grad():
            return train, self.mean_square(self.validation)


def domain_end(potential: QuarticPotential, guess: WallGuess, decay_lengths: float = 14.0) -> float:
    """Where phi is set to the false vacuum: the wall plus `decay_lengths` of the field's tail."""
    return guess.lam * (guess.rho + 2) + decay_lengths / potential.mass


def solve_bounce(
    potential: QuarticPotential,
    config: SolverConfig,
    *,
    output_scale: float = 0.01,
    n_profile: int = 4001,
    progress: Callable[[Progress], None] | None = None,
    on_checkpoint: Callable | None = None,
    resume_from: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """Train replicas of the bounce; returns the action per replica (from the profile, and from
    Derrick's 2T/3), phi(0), the profile on an r grid, the start's action and the training result.

    `output_scale` shrinks each network's last layer at initialisation, so every replica starts
    close to the wall guess (and far from the trivial solution) with its own small perturbation.
    """
    torch.set_num_threads(1)
    guess = wall_guess(potential)
    r_max = domain_end(potential, guess)
    model = EnsembleMLP(
        config.replicas,
        [1, *config.hidden, 1],
        list(config.activations),
        seed=config.seed,
        device=resolve_device(config.device),
        dtype=getattr(torch, config.dtype),
    )
    if resume_from is None:
        with torch.no_grad():
            weight, bias = model.layers()[-1]
            weight.mul_(output_scale)
            bias.mul_(output_scale)
    profile = BounceProfile(model, guess, r_max)
    loss = BounceLoss(profile, potential, config.n_collocation)
    stopping = StoppingConfig(
        threshold=math.inf, patience=config.patience or config.epochs, stagnation_epochs=None
    )
    result = train_ensemble(
        model,
        loss,
        config.epochs,
        optimiser=config.optimiser,
        stopping=stopping,
        validation_every=config.validation_every,
        progress=progress,
        checkpoint_every=None if on_checkpoint is None else max(config.validation_every, config.epochs // 10),
        on_checkpoint=on_checkpoint,
        resume_from=resume_from,
    )
    if config.polish:
        loss.polish()
        result.weights = model.to_arrays()
        with torch.no_grad():
            result.best_train, result.best_val = (
                loss.mean_square(x).cpu().numpy().astype(np.float64) for x in (loss.train, loss.validation)
            )
    r = np.linspace(0.0, r_max, n_profile + (n_profile + 1) % 2)
    with torch.no_grad():
        phi, dphi, _ = (
            t.cpu().numpy().astype(np.float64)
            for t in profile.jet(torch.as_tensor(r, dtype=model.dtype, device=model.device))
        )
    kinetic, potential_energy = action_terms(r, phi, dphi, potential)
    return {
        "action": kinetic + potential_energy,
        "action_derrick": 2 * kinetic / 3,
        "phi0": phi[:, 0],
        "radius": r,
        "profile": phi,
        "guess_action": guess.action,
        "r_max": r_max,
        "residual": result.best_train,
        "result": result,
    }


def cosmotransitions_action(potential: QuarticPotential) -> tuple[float, float]:
    """The reference: S3 from CosmoTransitions' overshoot/undershoot solver (a dev dependency),
    and phi(0) of its profile."""
    from cosmoTransitions import tunneling1D

    instanton = tunneling1D.SingleFieldInstanton(
        potential.true_vacuum, 0.0, potential.V, potential.dV, potential.d2V, alpha=2
    )
    profile = instanton.findProfile()
    return float(instanton.findAction(profile)), float(profile.Phi[0])
