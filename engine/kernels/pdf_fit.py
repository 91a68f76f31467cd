"""NNPDF-style PDF fit kernel: parametrisation, basis rotation, sum rules and positivity.

x f_b(x, Q0) = NN_b(x, ln x) x^(1 - alpha_b) (1 - x)^beta_b for each fitted evolution-basis
function b, all replicas stacked in one EnsembleMLP; predictions are FK tables contracted with the
rotated outputs on the table's x grid, so a training step costs one small network pass on the
grid, whatever the number of data points.

The fit basis is a subset of the evolution basis (Sigma, g, V, V3, V8, T3, T8) at Q0 below charm.
Functions not fitted are fixed by stated assumptions: T8 = Sigma (no strange sea: s + sbar = 0),
T3, V, V3, V8 = 0 (charge symmetry q = qbar); the gluon is never fitted by the networks (it does
not enter LO F2): it keeps the Les Houches shape x^-0.1 (1 - x)^5, normalised per replica by the
momentum sum rule. `check_basis` refuses a basis the data cannot determine.

Sum rules: the momentum sum rule is the one this basis allows; it fixes only the gluon, which no
LO F2 prediction depends on, so it is applied once to the trained replicas (on a fixed 2000-point
integration grid) rather than at every step: the result is the same. Valence sum rules need V,
V3, V8, which F2 cannot see (they are refused as a fit basis), so they are not imposed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .mlp import EnsembleMLP, resolve_device
from .optim import OptimiserConfig
from .pdf_fk import FLAVOURS, TARGETS, f2_charges
from .train import Chi2Loss, Progress, StoppingConfig, TrainResult, train_with_config

EVOLUTION_BASIS = ("Sigma", "g", "V", "V3", "V8", "T3", "T8")
# (alpha range, beta range) per fittable function: x f ~ x^(1 - alpha) at small x, (1 - x)^beta
PREPROCESSING = {"Sigma": ((1.05, 1.2), (1.5, 3.5)), "T3": ((-0.5, 1.0), (1.5, 3.5)),
                 "T8": ((0.5, 1.1), (1.5, 4.0))}
GLUON_SHAPE_EXPONENTS = (-0.1, 5.0)  # x g ~ x^a (1 - x)^b, the Les Houches gluon's shape
POSITIVITY_TOLERANCE = 1e-6  # a replica passes positivity if its final penalty is below this


def _rotation() -> np.ndarray:
    """(flavour, basis) matrix: x f_flavour = sum_b R[f, b] x f_b (FLAVOURS, EVOLUTION_BASIS)."""
    # q+ = q + qbar and q- = q - qbar of u, d, s from the evolution basis
    plus = {"u": {"Sigma": 1 / 3, "T3": 1 / 2, "T8": 1 / 6}, "d": {"Sigma": 1 / 3, "T3": -1 / 2, "T8": 1 / 6},
            "s": {"Sigma": 1 / 3, "T8": -1 / 3}}
    minus = {"u": {"V": 1 / 3, "V3": 1 / 2, "V8": 1 / 6}, "d": {"V": 1 / 3, "V3": -1 / 2, "V8": 1 / 6},
             "s": {"V": 1 / 3, "V8": -1 / 3}}
    names = {1: "d", 2: "u", 3: "s"}
    rotation = np.zeros((len(FLAVOURS), len(EVOLUTION_BASIS)))
    for i, pid in enumerate(FLAVOURS):
        if pid == 21:
            rotation[i, EVOLUTION_BASIS.index("g")] = 1.0
            continue
        sign = 1.0 if pid > 0 else -1.0  # q = (q+ + q-) / 2, qbar = (q+ - q-) / 2
        for part, factor in ((plus, 0.5), (minus, 0.5 * sign)):
            for name, c in part[names[abs(pid)]].items():
                rotation[i, EVOLUTION_BASIS.index(name)] += factor * c
    return rotation


ROTATION = _rotation()


def fit_rotation(basis: tuple[str, ...]) -> np.ndarray:
    """(flavour, fitted) matrix with the assumptions for unfitted functions folded in."""
    effective = ROTATION.copy()
    if "T8" not in basis:  # T8 = Sigma: no strange sea
        effective[:, EVOLUTION_BASIS.index("Sigma")] += effective[:, EVOLUTION_BASIS.index("T8")]
    return effective[:, [EVOLUTION_BASIS.index(b) for b in basis]]


def check_basis(basis: tuple[str, ...], targets: tuple[str, ...]) -> None:
    """Raise ValueError unless LO F2 data on `targets` determine every fitted function.

    The data fix rank(M) combinations, M[t, b] = F2 charges of target t . rotation column b; each
    fitted function needs its own.
    """
    unknown = [b for b in basis if b not in EVOLUTION_BASIS]
    if unknown or not basis or len(set(basis)) != len(basis):
        raise ValueError(f"fit basis must list distinct names from {', '.join(EVOLUTION_BASIS)}; "
                         f"found {list(basis)}")
    matrix = np.stack([f2_charges(t) for t in targets]) @ fit_rotation(basis)
    blind = [b for b, column in zip(basis, matrix.T) if not np.any(np.abs(column) > 1e-12)]
    if blind:
        raise ValueError(f"{', '.join(blind)} do(es) not enter LO F2, so the data cannot constrain "
                         f"it; fit a basis from {', '.join(PREPROCESSING)}")
    rank = np.linalg.matrix_rank(matrix)
    if rank < len(basis):
        raise ValueError(f"LO F2 data on {', '.join(targets)} determine {rank} combination(s) of PDFs, "
                         f"but the fit basis {list(basis)} has {len(basis)} functions; fit "
                         f"{rank} of them (e.g. {list(_constrained(targets))})")


def _constrained(targets: tuple[str, ...]) -> tuple[str, ...]:
    """A basis F2 data on these targets determine: p and d fix Sigma and T3, one target Sigma."""
    return ("Sigma", "T3") if len(set(targets)) > 1 else ("Sigma",)


def targets_of(target_index: np.ndarray) -> tuple[str, ...]:
    return tuple(TARGETS[i] for i in sorted(set(np.asarray(target_index, int).tolist())))


def draw_preprocessing(basis: tuple[str, ...], replica_ids: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """alpha, beta (R, n_basis) drawn uniformly in each function's range, seeded per replica."""
    alpha = np.empty((len(replica_ids), len(basis)))
    beta = np.empty_like(alpha)
    for k, replica in enumerate(replica_ids):
        rng = np.random.default_rng([seed, int(replica), 7])
        for j, name in enumerate(basis):
            (a_low, a_high), (b_low, b_high) = PREPROCESSING[name]
            alpha[k, j], beta[k, j] = rng.uniform(a_low, a_high), rng.uniform(b_low, b_high)
    return {"alpha": alpha, "beta": beta}


@dataclass(frozen=True)
class PositivityConfig:
    """Penalty lambda * sum elu(-x q+) on a positivity grid, lambda growing during training."""

    x: tuple[float, ...] = tuple(np.geomspace(5e-3, 0.9, 20).tolist())
    initial: float = 100.0
    growth: float = 1.3  # lambda multiplies by this every `every` epochs
    every: int = 100
    maximum: float = 1e4

    def factor(self, epoch: int) -> float:
        return min(self.maximum, self.initial * self.growth ** (epoch // self.every))


@dataclass(frozen=True)
class PdfFitConfig:
    basis: tuple[str, ...]
    hidden: tuple[int, ...] = (25, 20)
    activations: tuple[str, ...] = ("tanh", "tanh", "linear")
    epochs: int = 4000
    optimiser: OptimiserConfig = field(default_factory=lambda: OptimiserConfig(name="adam", lr=3e-3))
    stopping: StoppingConfig = field(default_factory=StoppingConfig)
    positivity: PositivityConfig = field(default_factory=PositivityConfig)
    validation_every: int = 10
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int | None = None


def build_model(r: int, config: PdfFitConfig, device) -> EnsembleMLP:
    ids = np.arange(r)
    return EnsembleMLP(r, [2, *config.hidden, len(config.basis)], list(config.activations),
                       seed=config.seed, device=device, input_transform="x_logx",
                       output_transform="pdf_preprocessing",
                       replica_params=draw_preprocessing(config.basis, ids, config.seed))


def _plus_rotation(basis: tuple[str, ...]) -> np.ndarray:
    """(quark, fitted) matrix giving x q+ = x (q + qbar) for the quarks the fit makes non-zero."""
    rotation = fit_rotation(basis)
    quarks = [i for i, pid in enumerate(FLAVOURS) if 0 < pid < 21]
    plus = np.stack([rotation[i] + rotation[FLAVOURS.index(-FLAVOURS[i])] for i in quarks])
    return plus[np.any(np.abs(plus) > 1e-12, axis=1)]


class PdfLoss:
    """Chi2Loss on FK predictions plus the growing positivity penalty, one network pass per step.

    The network runs once on the FK grid and the positivity grid together; the chi2 part goes
    through Chi2Loss (per-replica training/validation covariance), the penalty is added to the
    training loss only, so stopping judges the fit to the data.
    """

    def __init__(self, fk: np.ndarray, grid: np.ndarray, pseudodata, covariance, mask,
                 config: PdfFitConfig, device, dtype):
        if np.any(fk[..., FLAVOURS.index(21)]):
            raise ValueError("the FK tables depend on the gluon, which this fit does not parametrise")
        as_tensor = lambda a: torch.as_tensor(np.asarray(a, float), dtype=dtype, device=device)  # noqa: E731
        self.x = as_tensor(np.concatenate([grid, config.positivity.x]))[:, None]
        self.n_grid = len(grid)
        self.fk = as_tensor(np.einsum("nxf,fb->nxb", fk, fit_rotation(config.basis)))
        self.plus = as_tensor(_plus_rotation(config.basis))
        self.positivity = config.positivity
        self.chi2 = Chi2Loss(self._predict, pseudodata, covariance, mask, device=device, dtype=dtype)
        self.epoch = 0  # set by train_ensemble: the penalty grows with it
        self._penalty = None

    def _predict(self, model: EnsembleMLP):
        out = model(self.x)
        grid, pos = out[:, : self.n_grid], out[:, self.n_grid :]
        self._penalty = F.elu(-torch.einsum("rpb,qb->rpq", pos, self.plus), alpha=1e-7).sum((1, 2))
        return torch.einsum("nxb,rxb->rn", self.fk, grid)

    def penalty(self, model: EnsembleMLP) -> np.ndarray:
        """Final positivity penalty per replica (host copy)."""
        with torch.no_grad():
            self._predict(model)
        return self._penalty.double().cpu().numpy()

    def __call__(self, model: EnsembleMLP, validate: bool):
        train, val = self.chi2(model, validate)
        factor = self.positivity.factor(self.epoch)
        return train + factor * self._penalty, val


def fit_pdf(fk: np.ndarray, grid: np.ndarray, pseudodata: np.ndarray, train_mask: np.ndarray,
            covariance: np.ndarray, config: PdfFitConfig, *,
            progress: Callable[[Progress], None] | None = None,
            on_checkpoint: Callable[[dict[str, np.ndarray]], None] | None = None,
            resume_from: Mapping[str, np.ndarray] | None = None) -> tuple[TrainResult, np.ndarray]:
    """Train R replicas on pseudo-data (R, n) with FK (n, x, flavour); returns (result, penalty).

    penalty (R,) is each replica's positivity penalty with its final weights (pass: < 1e-6).
    """
    torch.set_num_threads(1)  # small nets on few cores: one thread per worker is fastest
    device = resolve_device(config.device)
    model = build_model(pseudodata.shape[0], config, device)
    loss = PdfLoss(fk, grid, pseudodata, covariance, train_mask, config, device, model.dtype)
    result = train_with_config(model, loss, config, progress=progress, on_checkpoint=on_checkpoint,
                               resume_from=resume_from)
    return result, loss.penalty(model)


def basis_on_grid(arrays: Mapping[str, np.ndarray], architecture: Mapping, x: np.ndarray) -> np.ndarray:
    """(R, len(x), n_basis) fitted functions of a stored ensemble at x (numpy)."""
    torch.set_num_threads(1)
    model = EnsembleMLP.from_arrays(arrays, architecture, dtype=torch.float64)
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(x, float)[:, None])).numpy()


def momentum_integral(x: np.ndarray, xf: np.ndarray) -> np.ndarray:
    """int_0^1 x f dx by the trapezoid rule over the last-but-one axis (x), x from ~0 to 1."""
    return np.trapezoid(xf, x, axis=-2)


def integration_grid(n: int = 2000) -> np.ndarray:
    """Fixed grid for sum rules: log-spaced from 1e-9 (x f ~ x^-0.2 leaves < 1e-7 below) to 1."""
    return np.concatenate([np.geomspace(1e-9, 0.1, n // 2, endpoint=False), np.linspace(0.1, 1, n // 2)])


def flavours_from_basis(basis_values: np.ndarray, x: np.ndarray, basis: tuple[str, ...],
                        gluon_norm: np.ndarray) -> np.ndarray:
    """x f (R, len(x), FLAVOURS) from fitted functions (R, len(x), n_basis) and A_g (R,)."""
    xf = np.einsum("rxb,fb->rxf", basis_values, fit_rotation(basis))
    a, b = GLUON_SHAPE_EXPONENTS
    xf[..., FLAVOURS.index(21)] = gluon_norm[:, None] * x**a * (1 - x) ** b
    return xf


def gluon_normalisation(arrays: Mapping[str, np.ndarray], architecture: Mapping,
                        basis: tuple[str, ...]) -> np.ndarray:
    """A_g per replica from the momentum sum rule: int x (Sigma + g) = 1 on the fixed grid."""
    x = integration_grid()
    values = basis_on_grid(arrays, architecture, x)
    quarks = np.einsum("rxb,fb->rxf", values, fit_rotation(basis))[..., :-1].sum(-1, keepdims=True)
    a, b = GLUON_SHAPE_EXPONENTS
    shape = (x**a * (1 - x) ** b)[:, None]
    return (1.0 - momentum_integral(x, quarks)[:, 0]) / momentum_integral(x, shape)[0]
