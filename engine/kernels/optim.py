"""Element-wise optimisers for stacked replica tensors, with per-replica masks and clipping.

Why our own instead of torch.optim: torch's Adam is element-wise too, but it keeps one step count
for the whole tensor and always applies its momentum. Replica training needs three things it
cannot give without reaching into its state:
- a frozen (early-stopped) replica must not move at all; with torch.optim a zero gradient still
  moves the weights through the stored momentum;
- a re-initialised (dead) replica must restart with zero moments and its own bias correction;
- gradient clipping must be per replica (a global norm couples replicas, which ruined NNPDF fits
  when they stacked replicas).
So every state here has a leading replica axis, the step count is a (R,) tensor, and each update
takes an `active` (R,) mask. The formulas follow torch.optim (Adam, NAdam with momentum decay as in
Keras/NNPDF, RMSprop), which the tests check for an always-active replica.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .mlp import lookup, without_grad

Tensor = torch.Tensor


@dataclass(frozen=True)
class OptimiserConfig:
    """Which optimiser and its settings; `clip_norm` clips each replica's gradient norm.

    `lr_final` makes the learning rate fall geometrically from `lr` at the first step to
    `lr_final` at the last: small minibatches then take large steps early and settle late,
    instead of ending on a noisy iterate (None keeps `lr` throughout).
    """

    name: str = "adam"
    lr: float = 1e-3
    lr_final: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    rho: float = 0.9
    momentum_decay: float = 4e-3
    clip_norm: float | None = None

    def __post_init__(self):
        lookup(OPTIMISERS, self.name, "optimiser")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lr_final is not None and not 0 < self.lr_final <= self.lr:
            raise ValueError(f"lr_final must be in (0, lr = {self.lr}], got {self.lr_final}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {self.clip_norm}")

    def lr_at(self, progress: float) -> float:
        """The learning rate a fraction `progress` (0 to 1) of the way through training."""
        if self.lr_final is None:
            return self.lr
        return self.lr * (self.lr_final / self.lr) ** progress


def _per_replica(v: Tensor, like: Tensor) -> Tensor:
    """View a (R,) vector so it broadcasts over a (R, ...) tensor."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def clip_per_replica(grads: Sequence[Tensor], max_norm: float) -> list[Tensor]:
    """Scale each replica's gradient (over all tensors) to norm <= max_norm; others untouched."""
    sq = sum(g.pow(2).flatten(1).sum(1) for g in grads)
    scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    return [g * _per_replica(scale, g) for g in grads]


class ReplicaOptimiser:
    """Base: state tensors shaped like the parameters, a (R,) step count, masked updates."""

    moment_names: tuple[str, ...] = ()

    def __init__(self, params: Sequence[Tensor], config: OptimiserConfig):
        self.params = list(params)
        self.config = config
        r = self.params[0].shape[0]
        if any(p.shape[0] != r for p in self.params):
            raise ValueError("every optimised tensor needs the same leading replica dimension")
        like = self.params[0]
        self.vectors = {"step": torch.zeros(r, dtype=like.dtype, device=like.device)}
        self.lr = config.lr
        self.moments = {n: [torch.zeros_like(p) for p in self.params] for n in self.moment_names}
        self._uniform_step: int | None = 0  # every replica's step count, while they agree
        # float32 only: its coefficients round to the same float32 values either way, where in
        # float64 torch's and Python's pow differ in the last bit now and then
        self._scalar_ok = like.dtype == torch.float32

    @without_grad
    def step(
        self, grads: Sequence[Tensor], active: Tensor, progress: float = 0.0, *, all_active: bool = False
    ) -> None:
        """One update of the replicas where `active` (R,) is true; the others stay bit-identical.

        `progress` (0 to 1, the fraction of training done) sets the learning rate's schedule.

        Gradients of inactive replicas are zeroed first (not multiplied by 0), so a NaN there
        cannot leak into their weights or moments.

        `all_active=True` is the caller's word (known on the host, no device sync) that every
        replica is active: while all replicas have taken the same number of steps, a float32
        Adam update then runs with scalar coefficients and no masks (`_update_all`: half the
        operations, what counts at small minibatches where each operation's fixed cost is most
        of the optimiser's time), bit-identical to the masked update.
        """
        self.lr = self.config.lr_at(progress)
        scalar = self._update_all is not None and self._scalar_ok
        if all_active and self._uniform_step is not None and scalar:
            self._uniform_step += 1
            self.vectors["step"].add_(1.0)
            self._update_all(list(grads), self._uniform_step)
            return
        if not all_active:
            self._uniform_step = None  # some replica may not have moved: counts may differ now
        elif self._uniform_step is not None:
            self._uniform_step += 1
        act = active.to(self.params[0].dtype)
        grads = [torch.where(_per_replica(active, g), g, 0.0) for g in grads]
        self.vectors["step"] += act
        self._update(grads, active, act)

    def _update(self, grads: list[Tensor], active: Tensor, act: Tensor) -> None:
        raise NotImplementedError

    # (grads, step count t of every replica) -> None: the unmasked update; None: none.
    _update_all: Callable[[list[Tensor], int], None] | None = None

    @torch.no_grad()
    def reset(self, mask: np.ndarray | Tensor) -> None:
        """Forget the state of the selected replicas (after their re-initialisation)."""
        mask = torch.as_tensor(np.asarray(mask, bool), device=self.params[0].device)
        self._uniform_step = None
        for name, v in self.vectors.items():
            v[mask] = 1.0 if name == "mu_product" else 0.0
        for tensors in self.moments.values():
            for t in tensors:
                t[mask] = 0.0

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {n: v.cpu().numpy().copy() for n, v in self.vectors.items()}
        for name, tensors in self.moments.items():
            out.update({f"{name}_{i}": t.cpu().numpy().copy() for i, t in enumerate(tensors)})
        return out

    @torch.no_grad()
    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        expected = set(self.state_arrays())
        if set(arrays) != expected:
            raise ValueError(
                f"optimiser state keys {sorted(arrays)} do not match {sorted(expected)} "
                f"(was it saved by another optimiser?)"
            )
        for n, v in self.vectors.items():
            v.copy_(torch.as_tensor(arrays[n]))
        steps = np.asarray(arrays["step"])
        uniform = steps.size and np.all(steps == steps.flat[0]) and float(steps.flat[0]).is_integer()
        self._uniform_step = int(steps.flat[0]) if uniform else None
        for name, tensors in self.moments.items():
            for i, t in enumerate(tensors):
                t.copy_(torch.as_tensor(arrays[f"{name}_{i}"]))


class Adam(ReplicaOptimiser):
    moment_names = ("m", "v")

    def _update(self, grads, active, act):
        c = self.config
        b1, b2 = c.betas
        # the coefficients in float64, as _update_all's Python floats: the same rounded values
        t = self.vectors["step"].clamp(min=1).double()
        step_size = torch.where(active, self.lr / (1 - b1**t), 0.0).to(act.dtype)
        root_bc2 = (1 - b2**t).sqrt().to(act.dtype)
        for p, g, m, v in zip(self.params, grads, self.moments["m"], self.moments["v"]):
            m.lerp_(g, _per_replica((1 - b1) * act, g))
            v.lerp_(g * g, _per_replica((1 - b2) * act, g))
            denom = v.sqrt().div_(_per_replica(root_bc2, v)).add_(c.eps)
            p.addcdiv_(_per_replica(-step_size, p) * m, denom)

    def _update_all(self, grads, t):
        """_update with every replica active at step t: the same operations, scalar
        coefficients, so a replica's trajectory is bit-identical whichever update runs.

        p + (-s m) / denom in one addcdiv_, the denominator in place: 7 passes and 2 fresh
        buffers per tensor instead of 9 and 5 (the same roundings: -s m is exact negation of
        s m, and p + (-x) is p - x)."""
        c = self.config
        b1, b2 = c.betas
        step_size = self.lr / (1 - b1**t)
        root_bc2 = math.sqrt(1 - b2**t)
        for p, g, m, v in zip(self.params, grads, self.moments["m"], self.moments["v"]):
            m.lerp_(g, 1 - b1)
            v.lerp_(g * g, 1 - b2)
            denom = v.sqrt().div_(root_bc2).add_(c.eps)
            p.addcdiv_(m, denom, value=-step_size)


class NAdam(Adam):
    """Adam with Nesterov momentum and Dozat's schedule (as torch.optim.NAdam and Keras Nadam)."""

    _update_all = None  # the masked update only (its momentum product is per replica)

    def __init__(self, params, config):
        super().__init__(params, config)
        self.vectors["mu_product"] = torch.ones_like(self.vectors["step"])

    def _update(self, grads, active, act):
        c = self.config
        b1, b2 = c.betas
        t = self.vectors["step"].clamp(min=1)
        mu = b1 * (1 - 0.5 * 0.96 ** (t * c.momentum_decay))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * c.momentum_decay))
        prod = self.vectors["mu_product"]
        prod.copy_(torch.where(active, prod * mu, prod))
        coef_g = torch.where(active, self.lr * (1 - mu) / (1 - prod), 0.0)
        coef_m = torch.where(active, self.lr * mu_next / (1 - prod * mu_next), 0.0)
        root_bc2 = (1 - b2**t).sqrt()
        for p, g, m, v in zip(self.params, grads, self.moments["m"], self.moments["v"]):
            m.lerp_(g, _per_replica((1 - b1) * act, g))
            v.lerp_(g * g, _per_replica((1 - b2) * act, g))
            denom = v.sqrt() / _per_replica(root_bc2, v) + c.eps
            p.sub_((_per_replica(coef_g, p) * g + _per_replica(coef_m, p) * m) / denom)


class RMSprop(ReplicaOptimiser):
    moment_names = ("v",)

    def _update(self, grads, active, act):
        c = self.config
        lr = self.lr * act
        for p, g, v in zip(self.params, grads, self.moments["v"]):
            v.lerp_(g * g, _per_replica((1 - c.rho) * act, g))
            p.sub_(_per_replica(lr, p) * g / (v.sqrt() + c.eps))


OPTIMISERS: dict[str, type[ReplicaOptimiser]] = {"adam": Adam, "nadam": NAdam, "rmsprop": RMSprop}


def make_optimiser(params: Sequence[Tensor], config: OptimiserConfig) -> ReplicaOptimiser:
    return OPTIMISERS[config.name](params, config)
