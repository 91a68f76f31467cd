"""pdf.fit on FK tables that depend on the gluon (NNLO F2, `ingest nnpdf-fk`): the gluon as a
fitted flavour normalised by the momentum sum rule inside every step, the fixed-shape gluon it
replaces, a known truth where the data constrain the gluon, the Q0 label of the fitted set, LO
unchanged."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.integrate import quad

from engine.bounds import Params
from engine.errors import OpError
from engine.kernels.optim import OptimiserConfig
from engine.kernels.pdf_basis import fit_rotation
from engine.kernels.pdf_fit import (
    PdfFitConfig,
    PdfLoss,
    basis_on_grid,
    build_model,
    fit_pdf,
    fk_predictions,
    flavours_from_basis,
    gluon_enters,
    gluon_shape_integral,
    momentum_gluon_normalisation,
    sum_rule_quadrature,
    with_gluon,
)
from engine.kernels.pdf_fk import FLAVOURS, f2_fk_table, lagrange_weights, les_houches_toy, x_grid
from engine.kernels.replicas import training_masks
from engine.kernels.train import StoppingConfig
from engine.ops.ensembles import weight_names
from engine.ops.pdf_fit import FitParams, fit, fitted_set
from engine.registry import StepContext
from tests.calibration import BAND, SeedBands, assert_calibrated, expected_for_calibrated, pooled
from tests.recipe_inputs import synthetic_nnlo_tables

GLUON = FLAVOURS.index(21)


def gluon_convolution(x: np.ndarray, grid: np.ndarray, nodes: int = 48) -> np.ndarray:
    """(len(x), len(grid)) rows R with R @ xg(grid) = x (P_qg (x) g)(x) = int_x^1 dy (x / y^2)
    P_qg(x / y) [x g](y), P_qg(z) = (z^2 + (1 - z)^2) / 2: Gauss-Legendre in ln y, the gluon
    interpolated on the grid as the FK tables do (tested against direct quadrature below)."""
    t, w = np.polynomial.legendre.leggauss(nodes)
    rows = np.zeros((len(x), len(grid)))
    for i, xi in enumerate(x):
        y = np.exp(np.log(xi) * (1 - t) / 2)  # ln y from ln x to 0
        z = xi / y
        weight = w * -np.log(xi) / 2 * z * (z**2 + (1 - z) ** 2) / 2
        rows[i] = weight @ lagrange_weights(grid, np.minimum(y, 1.0))
    return rows


def evolved_toy_tables(x, log_q2, target, grid, alpha_s_over_2pi: float = 0.05) -> np.ndarray:
    """LO F2 plus the gluon's leading-log scaling violation: u, d, s and their antiquarks each gain
    ln(Q^2 / Q0^2) alpha_s / 2pi P_qg (x) g, so F2 (p and d alike) gains 4/3 of it. The gluon now
    enters through its Q^2 slope at x' >= x, as in real NNLO tables, not as one more copy of the
    quark columns: data at several Q^2 per x fix it where the slope is resolved (x <~ 0.3 here,
    where the term is 5-25% of F2 at ln Q^2 / Q0^2 = 0.5..2.5 against 2% errors)."""
    fk = f2_fk_table(x, target, grid)
    slope = alpha_s_over_2pi * 4 / 3 * np.asarray(log_q2, float)[:, None]
    fk[..., GLUON] = slope * gluon_convolution(x, grid)
    return fk


FITTED = with_gluon(("Sigma", "T3"))  # the basis pdf.fit uses on evolved tables
GLUON_CONSTRAINED = (0.01, 0.3)  # x range where the evolved toy's data fix the gluon


def _problem(replicas: int, seed: int, evolved: bool = False):
    """Toy-truth F2 on p and d through gluon-dependent tables, level-1 data and replicas on it,
    with one training/validation split for all replicas (as the shipped closure: README).
    evolved: 30 x in [0.01, 0.7] at 3 scales (`evolved_toy_tables`), else 30 x through
    `synthetic_nnlo_tables` (a gluon column proportional to the u column: F2 there fixes only
    a combination of the gluon and the quarks at each x)."""
    grid = x_grid()
    if evolved:
        x = np.geomspace(0.01, 0.7, 30).repeat(6)
        target = np.tile([0, 1], 90)
        fk = evolved_toy_tables(x, np.tile(np.repeat([0.5, 1.5, 2.5], 2), 30), target, grid)
    else:
        x = np.geomspace(0.01, 0.7, 30).repeat(2)
        target = np.tile([0, 1], 30)
        fk, _ = synthetic_nnlo_tables(x, target, grid)
    truth = np.einsum("nxf,xf->n", fk, les_houches_toy(grid))
    sigma = 0.02 * truth
    rng = np.random.default_rng([seed, 11])
    level1 = truth + sigma * rng.standard_normal(truth.size)
    pseudo = level1 + sigma * rng.standard_normal((replicas, truth.size))
    mask = training_masks(truth.size, target, replicas, 0.75, seed=seed, shared=True)
    return fk, grid, pseudo, mask, np.diag(sigma**2), truth


# A model linear in its parameters that spans the Les Houches toy's own shapes: x^a (1 - x)^b for
# Sigma and T3 (valence and sea powers) and for the gluon (around x^-0.1 (1 - x)^5)
LINEAR_QUARK_SHAPES = ((0.8, 3), (0.8, 4), (0.8, 5), (-0.1, 5), (-0.1, 6), (-0.1, 7), (-0.1, 8))
LINEAR_GLUON_SHAPES = ((-0.1, 4), (-0.1, 5), (-0.1, 6), (0.3, 5), (-0.3, 5))


def _linear_design(x: np.ndarray) -> np.ndarray:
    """(len(x), FLAVOURS, parameters): x f of the linear model per unit coefficient, through the
    fit's rotation of (Sigma, T3, g) with its assumptions (no strange sea, q = qbar)."""
    rotation = fit_rotation(FITTED)
    columns = []
    for b, shapes in enumerate((LINEAR_QUARK_SHAPES, LINEAR_QUARK_SHAPES, LINEAR_GLUON_SHAPES)):
        for a, power in shapes:
            columns.append(rotation[None, :, b] * (x**a * (1 - x) ** power)[:, None])
    return np.stack(columns, -1)


def linear_closure(truth_xf, seed: int = 0):
    """The evolved toy's closure for the linear model, exactly: constrained least squares on the
    training points of `_problem`'s split, int x (Sigma + g) = 1 as a linear constraint (the sum
    rule pdf.fit imposes). The estimator is affine in the data, theta = K d + c, so the replica
    method's band is the analytic one, F K C K^T F^T, and the replica mean's error splits exactly
    into the data's fluctuation (covered by that band) and the bias F theta(truth) - truth (not).
    Returns (F2 bias, F2 band std, int x g of the fit to the exact truth, int x g of the truth)."""
    fk, grid, _, mask, cov, _ = _problem(1, seed, evolved=True)
    mask = mask[0]
    truth = np.einsum("nxf,xf->n", fk, truth_xf(grid))
    design = np.einsum("nxf,xfp->np", fk, _linear_design(grid))
    nodes, weights = sum_rule_quadrature()
    on_rule = _linear_design(nodes)
    momentum = np.einsum("xfp,x->p", on_rule, weights)
    trained, inverse = design[mask], np.diag(1 / np.diag(cov)[mask])
    p = design.shape[1]
    kkt = np.zeros((p + 1, p + 1))
    kkt[:p, :p], kkt[:p, p], kkt[p, :p] = trained.T @ inverse @ trained, momentum, momentum
    solve = np.linalg.pinv(kkt, rcond=1e-13)
    gain, offset = solve[:p, :p] @ trained.T @ inverse, solve[:p, p]
    fitted = gain @ truth[mask] + offset
    band = design @ gain @ cov[np.ix_(mask, mask)] @ gain.T @ design.T
    gluon = lambda xf: xf[:, GLUON] @ weights  # noqa: E731
    return design @ fitted - truth, np.sqrt(np.diag(band)), gluon(on_rule @ fitted), gluon(truth_xf(nodes))


def strangeless_toy(x: np.ndarray) -> np.ndarray:
    """The Les Houches toy with s = sbar = 0 and their momentum given to the gluon (sum rule kept):
    a truth that obeys the fit's no-strange-sea assumption."""
    xf = les_houches_toy(x)
    nodes, weights = sum_rule_quadrature()
    toy = les_houches_toy(nodes)
    strange = [FLAVOURS.index(-3), FLAVOURS.index(3)]
    xf[:, GLUON] *= 1 + toy[:, strange].sum(1) @ weights / (toy[:, GLUON] @ weights)
    xf[:, strange] = 0.0
    return xf


def test_the_gluon_momentum_excess_is_the_strange_sea_the_fit_assumes_away():
    """Why the fitted int x g lands ~5% high on the toy: the fit sets s + sbar = 0 (T8 = Sigma), so
    p and d F2 fix Sigma' = u+ + d+ + 0.4 s+ (F2d = 5/18 (u+ + d+) + 1/9 s+), 0.6 int x s+ = 0.0164
    below the toy's Sigma, and the sum rule hands that to the gluon: +4.5% of the toy's 0.365.
    A linear model spanning the toy's shapes, fitted to the exact truth with the same sum rule,
    shows it exactly, and shows that F2 itself stays unbiased (the gluon's shape takes the excess
    where the data do not see it: max bias 0.14 of the F2 band, measured), so the assumption is
    not what made the NN's F2 band too narrow. A truth without strange sea: no excess, no bias."""
    nodes, weights = sum_rule_quadrature()
    toy = les_houches_toy(nodes)
    strange_momentum = toy[:, [FLAVOURS.index(-3), FLAVOURS.index(3)]].sum(1) @ weights
    bias, band, fitted, truth = linear_closure(les_houches_toy)
    assert truth == pytest.approx(toy_gluon_momentum(), rel=1e-6)
    assert fitted - truth == pytest.approx(0.6 * strange_momentum, rel=0.05)  # measured 0.0169 vs 0.0164
    assert np.max(np.abs(bias) / band) < 0.3
    bias, band, fitted, truth = linear_closure(strangeless_toy)
    assert fitted == pytest.approx(truth, rel=1e-6)
    assert np.max(np.abs(bias) / band) < 1e-3  # 2e-4: the rounding of an ill-conditioned solve


def toy_gluon_momentum() -> float:
    """int x g dx of the Les Houches toy: 1.7 B(0.9, 6)."""
    return 1.7 * gluon_shape_integral()


def test_the_toy_gluon_convolution_matches_direct_quadrature():
    grid = x_grid()
    toy_gluon = les_houches_toy(grid)[:, GLUON]
    for xi in (0.01, 0.1, 0.5):
        exact = quad(
            lambda z, x=xi: (z**2 + (1 - z) ** 2) / 2 * 1.7 * (x / z) ** -0.1 * (1 - x / z) ** 5,
            xi,
            1,
            limit=200,
        )[0]
        # measured 3e-6 relative at x = 0.01, 0.1 and 5e-5 at 0.5 (interpolation on the grid)
        assert gluon_convolution(np.array([xi]), grid) @ toy_gluon == pytest.approx(exact, rel=2e-4)


def _momentum(weights, architecture, basis, norm, x):
    xf = flavours_from_basis(basis_on_grid(weights, architecture, x), x, basis, norm)
    return np.trapezoid(xf.sum(-1), x, axis=1)


def _total_momentum(weights, architecture, basis, norm):
    """int x (Sigma + g) per replica: dense trapezoid on [1e-9, 1] plus the gluon below 1e-9 (the
    shape's x^0.9 / 0.9; a fitted g's x^(2 - alpha_g) / (2 - alpha_g) from its value at 1e-9)."""
    x = np.geomspace(1e-9, 1, 200_001)
    total = _momentum(weights, architecture, basis, norm, x)
    if "g" not in basis:
        return total + norm * 1e-9**0.9 / 0.9
    alpha = np.asarray(weights["param_alpha"], float)[:, basis.index("g")]
    edge = flavours_from_basis(basis_on_grid(weights, architecture, x[:1]), x[:1], basis, norm)[:, 0, GLUON]
    return total + edge * 1e-9 / (2 - alpha)


@pytest.mark.parametrize("basis", [("Sigma", "T3"), with_gluon(("Sigma", "T3"))], ids=["shape", "fitted"])
def test_the_gluon_is_normalised_by_the_momentum_sum_rule_inside_the_loss(basis):
    fk, grid, pseudo, mask, cov, _ = _problem(3, seed=0, evolved=True)
    lo = fk.copy()
    lo[..., GLUON] = 0.0
    assert gluon_enters(fk) and not gluon_enters(lo)
    config = PdfFitConfig(basis, seed=2)
    model = build_model(3, config, "cpu")
    loss = PdfLoss(fk, grid, pseudo, cov, mask, config, model.device, model.dtype)
    arrays, architecture = model.to_arrays(), model.architecture()
    norm = momentum_gluon_normalisation(arrays, architecture, config.basis)
    # total momentum 1 against a dense trapezoid, every replica
    assert np.allclose(_total_momentum(arrays, architecture, basis, norm), 1.0, atol=1e-6)
    # the rule's shape integral is exact, and the rule integrates the shape itself to 1e-7
    nodes, weights = sum_rule_quadrature()
    assert (nodes**-0.1 * (1 - nodes) ** 5) @ weights == pytest.approx(gluon_shape_integral(), abs=1e-7)
    # the loss predicts what the stored set predicts (float32 vs float64)
    with torch.no_grad():
        predicted = loss._predict(model).double().numpy()
    assert np.allclose(predicted, fk_predictions(fk, arrays, architecture, basis, grid), rtol=1e-4)
    # and the gluon term moves with the quarks: more Sigma, less gluon
    with torch.no_grad():
        base = loss._predict(model)
        model.flat[:, -len(basis)] += 0.5  # Sigma's last bias
        assert torch.all(loss._predict(model) != base)


def test_lo_tables_keep_the_fit_without_sum_rule_nodes_and_refuse_a_fitted_gluon():
    fk, grid, pseudo, mask, cov, _ = _problem(2, seed=0)
    fk[..., GLUON] = 0.0
    config = PdfFitConfig(("Sigma", "T3"))
    model = build_model(2, config, "cpu")
    loss = PdfLoss(fk, grid, pseudo, cov, mask, config, model.device, model.dtype)
    assert not loss.gluon and loss.x.shape[0] == grid.size + len(config.positivity.x)
    with pytest.raises(ValueError, match="fits the gluon, but the FK tables do not depend on it"):
        fit_pdf(fk, grid, pseudo, mask, cov, PdfFitConfig(with_gluon(("Sigma", "T3")), epochs=2))


def bands_and_gluon(
    seeds,
    replicas: int,
    epochs: int,
    basis=FITTED,
    evolved=True,
    lr: float = 3e-3,
    preprocessing="shared",
    patience: int | None = 200,
):
    """Per seed (level-1 data, replicas and initialisation): the kept replicas' F2 band at the
    data points and their gluon band at the grid's x in GLUON_CONSTRAINED, against the truth, and
    the kept replicas' gluon momentum fraction int x g (pooled). The fit is the shipped closure's
    method: one split and one draw of the quarks' preprocessing exponents for all replicas, the
    gluon's own per replica (kernels.pdf_basis.draw_preprocessing; README, PDF theory). With every
    exponent per replica (one split) the F2 band was ~1.7x too wide (RMS pull 0.66 for a
    calibrated 1.107 at 16 replicas, 8 seeds, 4000 epochs with a 200-epoch patience): the spread
    then carries the scatter between fits with different exponents, which the replica mean
    averages away."""
    bands, gluon_bands, momentum = [], [], []
    grid = x_grid()
    low_x, high_x = GLUON_CONSTRAINED
    where = (grid >= low_x) & (grid <= high_x)
    toy_gluon = les_houches_toy(grid)[where, GLUON]
    for seed in seeds:
        fk, grid, pseudo, mask, cov, truth = _problem(replicas, seed, evolved)
        config = PdfFitConfig(
            basis,
            epochs=epochs,
            seed=seed,
            preprocessing=preprocessing,
            stopping=StoppingConfig(threshold=5.0, patience=patience),
            optimiser=OptimiserConfig(name="adam", lr=lr),
        )
        result, penalty = fit_pdf(fk, grid, pseudo, mask, cov, config)
        kept = result.kept  # post-fit selection (positivity needs longer fits than this)
        assert kept.sum() >= replicas - 3 and penalty.shape == (replicas,)
        norm = momentum_gluon_normalisation(result.weights, result.architecture, basis)
        xf = flavours_from_basis(basis_on_grid(result.weights, result.architecture, grid), grid, basis, norm)
        for values, exact, out in (
            (np.einsum("nxf,rxf->rn", fk, xf), truth, bands),
            (xf[:, where, GLUON], toy_gluon, gluon_bands),
        ):
            chosen = values[kept]
            low, high = np.quantile(chosen, BAND, axis=0)
            out.append(
                SeedBands(exact, low, high, chosen.mean(0), chosen.std(0, ddof=1), int(kept.sum()), replicas)
            )
        x, w = sum_rule_quadrature()
        on_rule = flavours_from_basis(basis_on_grid(result.weights, result.architecture, x), x, basis, norm)
        momentum.append(on_rule[kept][..., GLUON] @ w)
    return bands, gluon_bands, np.concatenate(momentum)


def _rms(bands: list[SeedBands]) -> float:
    return float(np.sqrt(np.mean(np.concatenate([b.pulls for b in bands]) ** 2)))


def test_a_fitted_gluon_follows_the_known_truth_where_the_data_constrain_it():
    """Pooled over 3 seeds, 8 replicas, 1000 epochs at lr 0.01 on the evolved toy (25 s alone,
    ~70 s on 2 busy cores): the F2 band around the truth, the gluon band around the toy's gluon at
    the grid's x in [0.01, 0.3], and the gluon's momentum fraction. Measured: F2 RMS pull 1.32,
    gluon RMS pull 0.95 (a calibrated 8-replica ensemble: 1.255, tests/calibration.py), int x g
    1.056 of the truth's. The fixed-shape gluon this replaces scored a gluon RMS pull of 8.8 on
    these seeds (its A_g 5% high at every x, nothing to follow the data with), and one exponent
    draw for the gluon too 2.3, so the gluon bound (0.6, 3.5) catches both and a band ~2x too
    wide; the 10% calibration is the slow tests'. int x g is 1 - int x Sigma whatever the gluon's
    form: 5% high with either gluon (1.054 with the fixed shape on these seeds), since the fit's
    Sigma lacks 0.6 of the toy's strange momentum (test_the_gluon_momentum_excess_is_...)."""
    bands, gluon_bands, momentum = bands_and_gluon(range(3), replicas=8, epochs=1000, lr=0.01)
    assert abs(_rms(bands) - expected_for_calibrated(8)[1]) < 0.5, _rms(bands)
    assert 0.6 < _rms(gluon_bands) < 3.5, _rms(gluon_bands)
    x = np.geomspace(1e-9, 1, 200_001)
    assert np.trapezoid(les_houches_toy(x)[:, GLUON], x) == pytest.approx(toy_gluon_momentum(), rel=1e-4)
    assert 0.95 < np.median(momentum) / toy_gluon_momentum() < 1.12, np.median(momentum)


@lru_cache(maxsize=1)
def _eight_seed_closure():
    """The slow closure, run once for both slow tests: 8 seeds, 16 replicas on the evolved toy,
    8000 epochs with NNPDF's patience (10% of the epochs, StoppingConfig's default), so that the
    replicas reach their validation minimum (test_the_f2_band_is_calibrated_pooled_over_eight_seeds
    says why 4000 epochs with a 200-epoch patience did not); 629-716 s on 2 busy cores (load 13-17)."""
    return bands_and_gluon(range(8), replicas=16, epochs=8000, patience=None)


@pytest.mark.slow
def test_the_gluon_band_is_calibrated_pooled_over_eight_seeds():
    """The gluon at the grid's 18 x in [0.01, 0.3] (144 points in all): measured coverage 0.604
    +- 0.064 and RMS pull 1.056 +- 0.147 where a calibrated 16-replica ensemble gives 0.607 and
    1.107 (0.667 +- 0.087 and 1.010 +- 0.174 at 4000 epochs, patience 200). There, one draw of
    the gluon's exponents for all replicas gave 1.63 +- 0.25 (too narrow: the functional form is
    part of its error, kernels.pdf_basis.draw_preprocessing); every exponent per replica 0.93 +-
    0.12. The tolerances are the smallest that 8 seeds resolve at 144 points (two standard
    errors: 0.17 and 0.35); int x g measured 1.048 of the truth's (the strange sea the fit sets
    to zero: test_the_gluon_momentum_excess_is_the_strange_sea_the_fit_assumes_away)."""
    _, gluon_bands, momentum = _eight_seed_closure()
    result = pooled(gluon_bands)
    print("gluon", result, "int x g / truth", np.median(momentum) / toy_gluon_momentum())
    assert_calibrated(result, coverage_tolerance=0.18, pull_tolerance=0.35)
    assert 0.95 < np.median(momentum) / toy_gluon_momentum() < 1.1


@pytest.mark.slow
def test_the_f2_band_is_calibrated_pooled_over_eight_seeds():
    """F2 at the 180 points of each seed, same fits as the gluon's; measured coverage 0.656 +-
    0.035, RMS pull 0.963 +- 0.056 (calibrated 0.607, 1.107), band width 1.036 of the linear fit's.

    Why it was ~1.2x too narrow (RMS pull 1.347 +- 0.159 at 4000 epochs, patience 200): the
    replicas stopped before their validation minimum, and an unconverged fit's error is shared by
    every replica (one split, one draw of the quark exponents), so the band does not carry it. The
    band itself was right: its median width, 0.65% of F2, is the exact linear fit's
    (`linear_closure`, 0.649%), and the excess pulls sat at x ~ 0.02-0.1. The validation chi2
    rises for a while at epochs ~500-700 while the training chi2 falls; a 200-epoch patience froze
    15 of seed 0's 16 replicas there (median best epoch 510, chi2(mean, truth)/n 0.57 against
    0.15 when trained on), and with no early stop half the replicas still improved at epoch 4000.
    The seeds whose one draw put alpha_T3 near -0.5 (x T3 ~ x^1.5; the truth's ~ x^0.8), 2, 5 and
    6, had RMS pulls 1.4-2.0 at 4000 epochs: the networks had not yet undone the exponents. Same
    seeds, mean +- std bands (diagnostic, not this test's quantiles): patience 10% at 4000 epochs
    1.27 +- 0.17, no early stop at 4000 1.19 +- 0.11, 8000 epochs with 10% patience 0.96 +- 0.06
    (seed 5: 2.03 -> 1.04). Not the cause: positivity (off, seed 5 scores 1.97 against 1.66 on), the strange
    sea the fit sets to zero (the linear fit's F2 stays unbiased, test above). The coverage
    bound is the LO closure's at 20 seeds (tests/ops/test_pdf_fit.py): 8 seeds resolve it only to
    +-0.05. The previous toy (a gluon column proportional to the u column) was calibrated at 4000
    epochs: coverage 0.581 +- 0.050, RMS pull 1.097 +- 0.064."""
    bands, _, _ = _eight_seed_closure()
    result = pooled(bands)
    # the replica band against the exact linear fit's analytic band on the same split and errors
    width = np.median(np.concatenate([b.std for b in bands]))
    linear = np.median(np.concatenate([linear_closure(les_houches_toy, seed)[1] for seed in range(8)]))
    print("F2", result, "band width / linear fit's", width / linear)
    assert_calibrated(result, coverage_tolerance=0.15)
    assert 0.8 < width / linear < 1.25, width / linear


def _theory(fk, grid, attrs):
    n = fk.shape[0]
    return xr.Dataset(
        {
            "fk": (("point", "x_grid", "flavour"), fk, attrs),
            "target_index": ("point", np.tile([0, 1], n // 2)),
        },
        coords={"x_grid": grid, "flavour": list(FLAVOURS)},
    )


def _data(pseudo, mask, cov):
    return xr.Dataset(
        {
            "pseudodata": (("replica", "point"), pseudo),
            "training_mask": (("replica", "point"), mask),
            "covariance": (("point", "point_b"), cov),
        }
    )


@pytest.mark.parametrize("gluon", ["auto", "shape"])
def test_the_op_stores_the_sum_rule_gluon_and_the_tables_q0(tmp_path, gluon):
    fk, grid, pseudo, mask, cov, _ = _problem(3, seed=1, evolved=True)
    params = FitParams(epochs=600, seed=1, stopping={"threshold": 10.0, "patience": 200}, gluon=gluon)
    context = StepContext("model", "nnlo", str(tmp_path))
    model = fit(params, _data(pseudo, mask, cov), _theory(fk, grid, {"q0_gev": 1.65}), context).compute()
    assert model.attrs["q0_gev"] == 1.65
    basis = ("Sigma", "T3", "g") if gluon == "auto" else ("Sigma", "T3")
    assert tuple(model.attrs["basis"]) == basis and model["param_alpha"].shape == (3, len(basis))
    pdf = fitted_set(Params(), model).compute()
    assert pdf["q_0"].values[0] == pytest.approx(1.65)
    assert "Q0 = 1.65 GeV" in pdf.attrs["lhapdf_info"]["SetDesc"]
    xf = pdf["xf_0"].isel(q_0=0, member=slice(1, None)).transpose("member", "x_0", "flavour").values
    weights = {n: model[n].values for n in weight_names(model)}
    architecture = json.loads(model.attrs["architecture"])
    norm = model["gluon_norm"].values
    if gluon == "auto":  # the fitted g, with its own exponents, times the sum rule's A_g
        fitted_g = basis_on_grid(weights, architecture, grid)[..., 2]
        assert np.allclose(xf[..., GLUON], norm[:, None] * fitted_g)
        assert len(np.unique(model["param_alpha"].values[:, 2])) == 3  # drawn per replica
    else:
        assert np.allclose(xf[..., GLUON], norm[:, None] * grid**-0.1 * (1 - grid) ** 5)
    # the stored A_g is the sum rule's: total momentum of every replica 1 to 1e-6
    assert np.allclose(_total_momentum(weights, architecture, basis, norm), 1.0, atol=1e-6)


def test_gluon_settings_the_tables_cannot_honour_are_errors(tmp_path):
    fk, grid, pseudo, mask, cov, _ = _problem(2, seed=1, evolved=True)
    context = StepContext("model", "nnlo", str(tmp_path))
    params = FitParams(epochs=5, seed=1)
    # gluon-dependent tables that state no Q0: auto cannot tell what they are
    with pytest.raises(
        OpError, match="depend on the gluon but state no input scale .*gluon: fitted, or shape"
    ):
        fit(params, _data(pseudo, mask, cov), _theory(fk, grid, {}), context).compute()
    lo = fk.copy()
    lo[..., GLUON] = 0.0
    with pytest.raises(OpError, match="fits the gluon, but the FK tables do not depend on it"):
        fit(
            params.model_copy(update={"gluon": "fitted"}),
            _data(pseudo, mask, cov),
            _theory(lo, grid, {}),
            context,
        ).compute()
    with pytest.raises(ValueError, match="basis lists the quark functions only.*param gluon"):
        FitParams(basis=["Sigma", "T3", "g"])


def test_a_hyperopt_fold_predicts_held_out_points_with_the_fitted_gluon():
    """replicas.hyperopt's pdf.fit fold (kernels.kfold.pdf_fold) on gluon-dependent tables: the
    held-out predictions carry the gluon the fit imposed. One seed, 4 replicas, 800 epochs on the
    evolved toy, every third point held out (~3 s): held-out chi2/n of the replica mean against
    the truth measured 0.28; dropping the gluon's term from the same tables gives 8.6 against
    the truth itself, which the old fold (quark flavours only) inherited."""
    from engine.kernels.kfold import held_out_chi2, pdf_fold

    fk, grid, pseudo, _, cov, truth = _problem(4, 0, evolved=True)
    held = np.zeros(truth.size, bool)
    held[::3] = True
    mask = training_masks(int((~held).sum()), np.tile([0, 1], 90)[~held], 4, 0.75, seed=0, shared=True)
    config = PdfFitConfig(
        with_gluon(("Sigma", "T3")),
        epochs=800,
        seed=0,
        preprocessing="shared",
        stopping=StoppingConfig(threshold=5.0, patience=200),
        optimiser=OptimiserConfig(name="adam", lr=0.01),
    )
    fold = pdf_fold(fk, grid, pseudo, mask, cov, held, config, tolerance=1e-6)
    every = np.ones(fold.prediction.shape[0], bool)
    chi2 = held_out_chi2(fold.prediction, every, truth[held], cov[np.ix_(held, held)])
    assert 0.05 < chi2 < 1.5, chi2
    without_gluon = fk[held].copy()
    without_gluon[..., GLUON] = 0
    quarks_only = np.einsum("nxf,xf->n", without_gluon, les_houches_toy(grid))
    assert np.mean((quarks_only - truth[held]) ** 2 / np.diag(cov)[held]) > 3.0
