"""NNPDF-style PDF fit kernel: parametrisation, basis rotation, sum rules and positivity.

x f_b(x, Q0) = NN_b(x, ln x) x^(1 - alpha_b) (1 - x)^beta_b for each fitted evolution-basis
function b, all replicas stacked in one EnsembleMLP; predictions are FK tables contracted with the
rotated outputs on the table's x grid, so a training step costs one small network pass on the
grid, whatever the number of data points.

The fit basis is a subset of the evolution basis (Sigma, g, T3, T8) at Q0 below charm, or, with
valence, the sea basis (V, V3, ubar, dbar, g). Functions not fitted are fixed by stated
assumptions: T8 = Sigma (no strange sea: s + sbar = 0), T3, V, V3, V8 = 0 (charge symmetry q =
qbar) without valence, V8 = V with it (s - sbar = 0).
`check_basis` refuses a basis the data cannot determine. The basis, its rotation and its check are
numpy only and live in kernels.pdf_basis (validating and planning a fit imports no torch); they are
re-exported here.

The gluon, three ways. (1) LO F2 tables (no gluon column): no prediction depends on it; it keeps
the Les Houches shape x^-0.1 (1 - x)^5, normalised per replica by the momentum sum rule once after
training (on a fixed 2000-point grid). (2) A basis ending in g (`with_gluon`, what pdf.fit uses
on evolved tables, NNLO F2 from engine/ingest/fk_theory.py): the gluon is a fitted flavour, the
network's last output with its own preprocessing exponents per replica, x g = A_g NN_g x^(1 -
alpha_g) (1 - x)^beta_g, and A_g = (1 - int x Sigma) / int NN_g x^(1 - alpha_g) (1 - x)^beta_g
computed inside the loss at every step on a Gauss-Legendre rule (`sum_rule_quadrature`) and
differentiated through, as n3fit does; positivity then covers x g too. (3) Gluon-dependent
tables with a quark-only basis: the fixed shape of (1) normalised inside the loss the same way
(shape integral exact, a Beta function). In (2) and (3) the stored A_g is the same rule in
float64, so int x (Sigma + g) = 1 holds exactly on that rule (tested against a dense trapezoid to
1e-6).

Valence (a basis with V and V3, on tables that see q - qbar: pdf_basis.check_valence): x V = A_V
NN_V x^(1 - alpha_V) (1 - x)^beta_V and likewise V3, with A_V = 3 / int V dx and A_V3 = 1 / int V3
dx (int u - ubar = 2, int d - dbar = 1) computed inside the loss at every step like A_g, on the
same Gauss-Legendre rule (weights / x) plus the tail below its lower end x0 = 1e-9 in closed form,
x V(x0) / (1 - alpha) (the network frozen at its x0 value: V ~ x^-alpha with alpha up to 0.73
leaves ~2% of int V below 1e-9, which no finite grid ignores). `valence_normalisation` stores the
same rule in float64. Valence is fitted in the sea basis (V, V3, ubar, dbar: kernels.pdf_basis
says why), x ubar = softplus(NN_ubar) x^(1 - alpha) (1 - x)^beta and likewise x dbar, positive by
construction; positivity then also covers x u and x d one by one (NNPDF4.0's POSXUQ, POSXDQ), with
the same growing multiplier. The valence networks start at NN ~ 1, the preprocessing shape itself
(`ValenceMLP`): from the usual draw int V can start near or below zero, where A_V is singular,
and the fits stalled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import beta as beta_function

from .mlp import EnsembleMLP, resolve_device
from .optim import OptimiserConfig
from .pdf_basis import (  # noqa: F401 (re-exported: the basis, its check and rotation, without torch)
    EVOLUTION_BASIS,
    FIT_INPUT_TRANSFORM,
    FIT_OUTPUT_TRANSFORM,
    GLUON,
    GLUON_SHAPE_EXPONENTS,
    PREPROCESSING,
    ROTATION,
    VALENCE,
    VALENCE_SUM_RULES,
    check_basis,
    check_valence,
    draw_preprocessing,
    fit_architecture,
    fit_rotation,
    fit_sizes,
    fits_valence,
    positive_outputs,
    targets_of,
    with_gluon,
)
from .pdf_fk import FLAVOURS
from .train import Chi2Loss, Progress, StoppingConfig, TrainResult, train_with_config

POSITIVITY_TOLERANCE = 1e-6  # a replica passes positivity if its final penalty is below this


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
    preprocessing: str = "per_replica"  # or "shared": pdf_basis.draw_preprocessing says why


# the valence networks' outputs start at VALENCE_START plus VALENCE_SPREAD times the usual draw
VALENCE_START = 1.0
VALENCE_SPREAD = 0.1


class ValenceMLP(EnsembleMLP):
    """The fit's ensemble when V and V3 are fitted: their outputs NN_V, NN_V3 start at
    VALENCE_START + VALENCE_SPREAD x the usual draw (last layer's valence weights scaled, bias
    shifted), at the first draw and at every re-initialisation of a stagnant replica.

    Why: with A_V = 3 / int V the loss is singular where int NN_V x^-alpha (1 - x)^beta dx
    crosses zero and ill-conditioned near it (V = 3 NN_V ... / int: a small integral of a
    function of both signs). Glorot's draw gives NN of either sign, ~1 at small x where the
    tanh units saturate on ln x: int V started at -1.3 .. 0.3 (of 3) and 5 of 24 replicas of the
    CC toy closure reached a training chi2/n <= 3.4, 11 of 24 from this start (README, valence).
    Starting at the preprocessing shape itself (NN ~ 1, both integrals positive) the sum rules
    rescale a positive function, as the physics has it (u_v, d_v > 0).
    """

    def __init__(self, *args, valence_index: tuple[int, ...], **kwargs):
        self.valence_index = tuple(valence_index)  # _draw needs it inside EnsembleMLP.__init__
        super().__init__(*args, **kwargs)

    def _draw(self, replica_id: int, generation: int) -> np.ndarray:
        """The usual draw, valence outputs moved to VALENCE_START (EnsembleMLP draws through this
        at construction and at `reinitialise`, so both start alike)."""
        row = super()._draw(replica_id, generation)
        n_out, n_in = self.sizes[-1], self.sizes[-2]
        bias = row.size - n_out  # the flat row ends with the last layer's W^T (out, in), then b
        for i in self.valence_index:
            start = bias - n_out * n_in + i * n_in
            row[start : start + n_in] *= VALENCE_SPREAD
            row[bias + i] = VALENCE_START + VALENCE_SPREAD * row[bias + i]
        return row


def build_model(r: int, config: PdfFitConfig, device) -> EnsembleMLP:
    ids = np.arange(r)
    kind, valence = EnsembleMLP, {}
    if fits_valence(config.basis):
        kind, valence = ValenceMLP, {"valence_index": tuple(config.basis.index(v) for v in VALENCE)}
    return kind(
        r,
        fit_sizes(config.basis, config.hidden),
        list(config.activations),
        seed=config.seed,
        device=device,
        input_transform=FIT_INPUT_TRANSFORM,
        output_transform=FIT_OUTPUT_TRANSFORM,
        replica_params=draw_preprocessing(
            config.basis, ids, config.seed, shared=config.preprocessing == "shared"
        ),
        positive_outputs=positive_outputs(config.basis),
        **valence,
    )


def _plus_rotation(basis: tuple[str, ...]) -> np.ndarray:
    """(quark, fitted) matrix giving x q+ = x (q + qbar) for the quarks the fit makes non-zero,
    and x g when the gluon is fitted (NNPDF4.0 keeps the gluon positive too); with valence also
    x u and x d, which q = qbar kept positive with q+ (NNPDF4.0's POSXUQ, POSXDQ; x ubar, x dbar
    are the sea basis's own functions, positive by construction)."""
    rotation = fit_rotation(basis)
    quarks = [i for i, pid in enumerate(FLAVOURS) if 0 < pid < 21]
    plus = np.stack([rotation[i] + rotation[FLAVOURS.index(-FLAVOURS[i])] for i in quarks])
    if fits_valence(basis):
        plus = np.vstack([plus, rotation[[FLAVOURS.index(pid) for pid in (1, 2)]]])
    plus = plus[np.any(np.abs(plus) > 1e-12, axis=1)]
    return np.vstack([plus, rotation[FLAVOURS.index(21)]]) if GLUON in basis else plus


def gluon_enters(fk: np.ndarray) -> bool:
    """Whether FK tables (n, x, FLAVOURS) depend on the gluon (NNLO F2 does, LO F2 does not)."""
    return bool(np.any(np.asarray(fk)[..., FLAVOURS.index(21)]))


def sum_rule_quadrature(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for int_0^1 dx: n Gauss-Legendre nodes in ln x on [1e-9, 0.1] and n in x on
    [0.1, 1]. x f ~ x^(1 - alpha) with alpha <= 1.2 leaves < 1e-7 below 1e-9; both pieces are smooth
    in their variable but for (1 - x)^beta at x = 1, which Gauss-Legendre integrates to ~n^-(2 beta + 2).
    """
    t, w = np.polynomial.legendre.leggauss(n)
    low, high = np.log(1e-9), np.log(0.1)
    x_low = np.exp(low + (t + 1) * (high - low) / 2)
    w_low = w * (high - low) / 2 * x_low  # dx = x d(ln x)
    x_high = 0.1 + (t + 1) * 0.9 / 2
    return np.concatenate([x_low, x_high]), np.concatenate([w_low, w * 0.9 / 2])


VALENCE_TAIL_X = 1e-9  # sum_rule_quadrature's lower end: below it int V is taken in closed form


def valence_rule() -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for int_0^1 f dx from x f at the nodes: `sum_rule_quadrature` with weights
    / x, then VALENCE_TAIL_X (weight 0: the tail's term is `valence_integrals`')."""
    x, w = sum_rule_quadrature()
    return np.append(x, VALENCE_TAIL_X), np.append(w / x, 0.0)


def valence_integrals(on_nodes, alpha, weights):
    """int_0^1 f dx (R, k) from x f at the `valence_rule` nodes (R, nodes, k), the functions'
    small-x exponents alpha (R, k) and the rule's weights: the rule on [1e-9, 1] plus the tail
    x f(1e-9) / (1 - alpha) of x f ~ x^(1 - alpha) below (alpha < 1). numpy or torch alike."""
    return (on_nodes * weights[None, :, None]).sum(1) + on_nodes[:, -1] / (1 - alpha)


def gluon_shape_integral() -> float:
    """int_0^1 x^a (1 - x)^b dx of the fixed gluon shape, exactly: B(a + 1, b + 1)."""
    a, b = GLUON_SHAPE_EXPONENTS
    return float(beta_function(a + 1, b + 1))


def _gluon_shape(x: np.ndarray) -> np.ndarray:
    a, b = GLUON_SHAPE_EXPONENTS
    return x**a * (1 - x) ** b


def _momentum_weights(basis: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, (node, fitted) weights W) with sum W * fitted(node) = int x Sigma dx on the rule
    (a fitted g's column is zero: the gluon is what the quarks leave)."""
    x, w = sum_rule_quadrature()
    quark_sum = np.delete(fit_rotation(basis), FLAVOURS.index(21), axis=0).sum(0)
    return x, w[:, None] * quark_sum[None, :]


def check_gluon(basis: tuple[str, ...], fk: np.ndarray) -> bool:
    """Whether the basis fits the gluon; ValueError if it does on tables blind to the gluon."""
    if GLUON not in basis:
        return False
    if not gluon_enters(fk):
        raise ValueError(
            f"the fit basis {list(basis)} fits the gluon, but the FK tables do not "
            "depend on it (their gluon column is zero: LO F2); fit the quark basis"
        )
    return True


class PdfLoss:
    """Chi2Loss on FK predictions plus the growing positivity penalty, one network pass per step.

    The network runs once on the FK grid and the positivity grid together (and the sum-rule nodes
    when the tables depend on the gluon or the basis has valence: module docstring); the chi2 part
    goes through Chi2Loss (per-replica training/validation covariance), the penalty is added to
    the training loss only, so stopping judges the fit to the data.
    """

    def __init__(
        self,
        fk: np.ndarray,
        grid: np.ndarray,
        pseudodata,
        covariance,
        mask,
        config: PdfFitConfig,
        device,
        dtype,
    ):
        as_tensor = lambda a: torch.as_tensor(np.asarray(a, float), dtype=dtype, device=device)  # noqa: E731
        self.gluon = gluon_enters(fk)
        self.fitted_gluon = check_gluon(config.basis, fk)
        self.valence = fits_valence(config.basis)
        nodes = [grid, config.positivity.x]
        if self.gluon:  # the weights of int x Sigma on the sum-rule nodes
            sum_x, momentum = _momentum_weights(config.basis)
            nodes.append(sum_x)
            self.momentum = as_tensor(momentum)
        if self.valence:  # the number sum rules' nodes and weights, and where A_V, A_V3 go
            check_valence(fk)
            valence_x, weights = valence_rule()
            nodes.append(valence_x)
            self.valence_weights = as_tensor(weights)
            self.valence_index = [config.basis.index(v) for v in VALENCE]
            self.valence_columns = as_tensor(np.eye(len(config.basis))[self.valence_index])
            self.valence_numbers = as_tensor([VALENCE_SUM_RULES[v] for v in VALENCE])
            self.n_valence = len(valence_x)
        if self.fitted_gluon:  # int x g before normalisation: the rule's weights on NN_g
            self.gluon_weights = as_tensor(sum_rule_quadrature()[1])
            self.gluon_index = config.basis.index(GLUON)
            self.gluon_column = as_tensor(np.arange(len(config.basis)) == self.gluon_index)
        elif self.gluon:  # the fixed shape: F2 per unit A_g
            self.fk_gluon = as_tensor(fk[..., FLAVOURS.index(21)] @ _gluon_shape(np.asarray(grid, float)))
            self.shape_integral = gluon_shape_integral()
        self.x = as_tensor(np.concatenate(nodes))[:, None]
        self.n_grid = len(grid)
        self.n_positivity = len(config.positivity.x)
        # without a fitted g the gluon row of the rotation is zero: fk_gluon carries it
        self.fk = as_tensor(np.einsum("nxf,fb->nxb", fk, fit_rotation(config.basis)))
        self.plus = as_tensor(_plus_rotation(config.basis))
        self.positivity = config.positivity
        self.chi2 = Chi2Loss(self._predict, pseudodata, covariance, mask, device=device, dtype=dtype)
        self.epoch = 0  # set by train_ensemble: the penalty grows with it
        self._penalty = None

    def _normalisation(self, model: EnsembleMLP, rules):
        """(R, n_basis) factors: A_g on a fitted gluon's column, A_V and A_V3 on the valence
        columns, 1 elsewhere, from the outputs on the sum-rule nodes (None if none applies)."""
        shifts = []
        momentum_rule = rules[:, : rules.shape[1] - self.n_valence] if self.valence else rules
        if self.fitted_gluon:  # A_g on the gluon's column
            norm = (1.0 - torch.einsum("rxb,xb->r", momentum_rule, self.momentum)) / (
                momentum_rule[..., self.gluon_index] @ self.gluon_weights
            )
            shifts.append((norm - 1.0)[:, None] * self.gluon_column[None, :])
        if self.valence:  # A_V = 3 / int V, A_V3 = 1 / int V3
            on_nodes = rules[:, -self.n_valence :, self.valence_index]
            alpha = model.replica_params["alpha"][:, self.valence_index]
            norm = self.valence_numbers / valence_integrals(on_nodes, alpha, self.valence_weights)
            shifts.append((norm - 1.0) @ self.valence_columns)
        return 1.0 + sum(shifts) if shifts else None

    def _predict(self, model: EnsembleMLP):
        out = model(self.x)
        end = self.n_grid + self.n_positivity
        grid, pos = out[:, : self.n_grid], out[:, self.n_grid : end]
        scale = self._normalisation(model, out[:, end:])
        if scale is not None:
            grid, pos = grid * scale[:, None, :], pos * scale[:, None, :]
        self._penalty = F.elu(-torch.einsum("rpb,qb->rpq", pos, self.plus), alpha=1e-7).sum((1, 2))
        prediction = torch.einsum("nxb,rxb->rn", self.fk, grid)
        if not self.gluon or self.fitted_gluon:
            return prediction
        sums = out[:, end : end + self.momentum.shape[0]]  # the valence nodes follow
        norm = (1.0 - torch.einsum("rxb,xb->r", sums, self.momentum)) / self.shape_integral
        return prediction + norm[:, None] * self.fk_gluon[None, :]

    def penalty(self, model: EnsembleMLP) -> np.ndarray:
        """Final positivity penalty per replica (host copy)."""
        with torch.no_grad():
            self._predict(model)
        return self._penalty.double().cpu().numpy()

    def __call__(self, model: EnsembleMLP, validate: bool):
        train, val = self.chi2(model, validate)
        factor = self.positivity.factor(self.epoch)
        return train + factor * self._penalty, val


def fit_pdf(
    fk: np.ndarray,
    grid: np.ndarray,
    pseudodata: np.ndarray,
    train_mask: np.ndarray,
    covariance: np.ndarray,
    config: PdfFitConfig,
    *,
    progress: Callable[[Progress], None] | None = None,
    on_checkpoint: Callable[[dict[str, np.ndarray]], None] | None = None,
    resume_from: Mapping[str, np.ndarray] | None = None,
) -> tuple[TrainResult, np.ndarray]:
    """Train R replicas on pseudo-data (R, n) with FK (n, x, flavour); returns (result, penalty).

    penalty (R,) is each replica's positivity penalty with its final weights (pass: < 1e-6).
    """
    torch.set_num_threads(1)  # small nets on few cores: one thread per worker is fastest
    device = resolve_device(config.device)
    model = build_model(pseudodata.shape[0], config, device)
    loss = PdfLoss(fk, grid, pseudodata, covariance, train_mask, config, device, model.dtype)
    result = train_with_config(
        model, loss, config, progress=progress, on_checkpoint=on_checkpoint, resume_from=resume_from
    )
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


def momentum_gluon_normalisation(
    arrays: Mapping[str, np.ndarray], architecture: Mapping, basis: tuple[str, ...]
) -> np.ndarray:
    """A_g per replica as a gluon-dependent fit imposes it (PdfLoss): int x (Sigma + g) = 1 on
    `sum_rule_quadrature`, in float64; of the fitted NN_g when the basis has g, else of the shape."""
    x, momentum = _momentum_weights(basis)
    values = basis_on_grid(arrays, architecture, x)
    left = 1.0 - np.einsum("rxb,xb->r", values, momentum)
    if GLUON in basis:
        return left / (values[..., basis.index(GLUON)] @ sum_rule_quadrature()[1])
    return left / gluon_shape_integral()


def valence_normalisation(
    arrays: Mapping[str, np.ndarray], architecture: Mapping, basis: tuple[str, ...]
) -> np.ndarray:
    """A_V, A_V3 (R, 2) as the fit imposes them (PdfLoss): int V = 3, int V3 = 1 on
    `valence_rule` plus the closed-form tail, in float64."""
    x, weights = valence_rule()
    index = [basis.index(v) for v in VALENCE]
    on_nodes = basis_on_grid(arrays, architecture, x)[..., index]
    alpha = np.asarray(arrays["param_alpha"], float)[:, index]
    numbers = np.array([VALENCE_SUM_RULES[v] for v in VALENCE])
    return numbers / valence_integrals(on_nodes, alpha, weights)


def flavours_from_basis(
    basis_values: np.ndarray,
    x: np.ndarray,
    basis: tuple[str, ...],
    gluon_norm: np.ndarray,
    valence_norm: np.ndarray | None = None,
) -> np.ndarray:
    """x f (R, len(x), FLAVOURS) from fitted functions (R, len(x), n_basis) and A_g (R,): the
    fitted g times A_g when the basis has g, else A_g times the fixed shape; with valence, V and
    V3 times A_V, A_V3 (`valence_norm`, (R, 2)), so u != ubar."""
    if fits_valence(basis):
        basis_values = basis_values.copy()
        basis_values[..., [basis.index(v) for v in VALENCE]] *= valence_norm[:, None, :]
    xf = np.einsum("rxb,fb->rxf", basis_values, fit_rotation(basis))
    gluon = FLAVOURS.index(21)
    if GLUON in basis:
        xf[..., gluon] *= gluon_norm[:, None]
        return xf
    a, b = GLUON_SHAPE_EXPONENTS
    xf[..., gluon] = gluon_norm[:, None] * x**a * (1 - x) ** b
    return xf


def fk_predictions(
    fk: np.ndarray,
    arrays: Mapping[str, np.ndarray],
    architecture: Mapping,
    basis: tuple[str, ...],
    grid: np.ndarray,
) -> np.ndarray:
    """(R, n) predictions of a trained ensemble through FK tables (n, x, FLAVOURS), the gluon as
    the fit imposed it (none on LO tables, the sum-rule A_g on gluon-dependent ones), valence
    normalised by its number sum rules."""
    values = basis_on_grid(arrays, architecture, grid)
    norm = (
        momentum_gluon_normalisation(arrays, architecture, basis)
        if gluon_enters(fk)
        else np.zeros(values.shape[0])
    )
    valence = valence_normalisation(arrays, architecture, basis) if fits_valence(basis) else None
    return np.einsum("nxf,rxf->rn", fk, flavours_from_basis(values, grid, basis, norm, valence))


def gluon_normalisation(
    arrays: Mapping[str, np.ndarray], architecture: Mapping, basis: tuple[str, ...]
) -> np.ndarray:
    """A_g per replica from the momentum sum rule: int x (Sigma + g) = 1 on the fixed grid."""
    x = integration_grid()
    values = basis_on_grid(arrays, architecture, x)
    quarks = np.einsum("rxb,fb->rxf", values, fit_rotation(basis))[..., :-1].sum(-1, keepdims=True)
    a, b = GLUON_SHAPE_EXPONENTS
    shape = (x**a * (1 - x) ** b)[:, None]
    return (1.0 - momentum_integral(x, quarks)[:, 0]) / momentum_integral(x, shape)[0]
