"""Valence in the PDF fit's basis: V and V3 fitted in the sea basis (with x ubar, x dbar positive by
construction) on tables that see q - qbar (charged current), normalised by the number sum rules at
every step, refused on tables blind to q - qbar, stored per replica (`valence_norm`) so the fitted
set has u != ubar, and a calibrated closure on a charged-current toy."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest
import torch
import xarray as xr

from engine.bounds import Params
from engine.errors import OpError
from engine.kernels.optim import OptimiserConfig
from engine.kernels.pdf_basis import VALENCE, check_basis, fit_rotation
from engine.kernels.pdf_fit import (
    VALENCE_TAIL_X,
    PdfFitConfig,
    PdfLoss,
    basis_on_grid,
    build_model,
    fit_pdf,
    fk_predictions,
    flavours_from_basis,
    valence_normalisation,
)
from engine.kernels.pdf_fk import FLAVOURS, f2_fk_table, lagrange_weights, les_houches_toy, x_grid
from engine.kernels.replicas import training_masks
from engine.kernels.train import StoppingConfig
from engine.ops.ensembles import weight_names
from engine.ops.pdf_fit import FitParams, fit, fitted_set
from engine.registry import StepContext
from tests.calibration import BAND, SeedBands, assert_calibrated, expected_for_calibrated, pooled
from tests.ops.test_pdf_nnlo_fit import _data

BASIS = ("V", "V3", "ubar", "dbar")  # the sea basis: kernels.pdf_basis
COLUMN = {pid: FLAVOURS.index(pid) for pid in FLAVOURS}
# W exchange at LO below charm, Cabibbo mixing ignored: e+ p sees ubar and d, e- p sees u and dbar
CHARGED_CURRENT = {"e+p": (-2, 1), "e-p": (2, -1)}
X_RANGE = (1e-3, 0.7)  # the toy data's x: from the grid's lower end (see `_problem`)
VALENCE_SEEN = (2e-3, 0.6)  # x range where the toy's CC data fix u - ubar and d - dbar
ERROR = 0.05  # relative data errors of the toy


def cc_toy_tables(x: np.ndarray, y: np.ndarray, lepton: str, grid: np.ndarray) -> np.ndarray:
    """FK (n, grid, FLAVOURS) of LO charged-current DIS on protons, per unit normalisation:
    e+ p: x ubar + (1 - y)^2 x d; e- p: x u + (1 - y)^2 x dbar (brief's CC-like observables)."""
    quark, other = CHARGED_CURRENT[lepton]
    fk = np.zeros((len(x), len(grid), len(FLAVOURS)))
    weights = lagrange_weights(grid, x)
    fk[..., COLUMN[quark]] = weights
    fk[..., COLUMN[other]] = weights * ((1 - np.asarray(y)) ** 2)[:, None]
    return fk


def strangeless_toy(x: np.ndarray) -> np.ndarray:
    """The Les Houches toy without strange sea (the fit's T8 = Sigma, V8 = V assumptions hold)."""
    xf = les_houches_toy(x)
    xf[:, [COLUMN[-3], COLUMN[3]]] = 0.0
    return xf


def _problem(replicas: int, seed: int, channels=("e+p", "e-p"), ys=(0.3, 0.7)):
    """Toy truth on 20 x in [0.01, 0.7]: F2 on p and d plus CC on p per channel and y, 2% errors,
    level-1 data and replicas, one training/validation split for all replicas (as the shipped
    closure). No gluon column: LO tables."""
    grid = x_grid()
    x = np.geomspace(X_RANGE[0], X_RANGE[1], 20)
    tables = [f2_fk_table(np.repeat(x, 2), np.tile([0, 1], x.size), grid)]
    tables += [cc_toy_tables(x, np.full(x.size, y), lepton, grid) for lepton in channels for y in ys]
    fk = np.concatenate(tables)
    groups = np.repeat(np.arange(len(tables)), [len(t) for t in tables])
    truth = np.einsum("nxf,xf->n", fk, strangeless_toy(grid))
    sigma = ERROR * truth
    rng = np.random.default_rng([seed, 13])
    level1 = truth + sigma * rng.standard_normal(truth.size)
    pseudo = level1 + sigma * rng.standard_normal((replicas, truth.size))
    mask = training_masks(truth.size, groups, replicas, 0.75, seed=seed, shared=True)
    return fk, grid, pseudo, mask, np.diag(sigma**2), truth, level1


def evolution_values(xf: np.ndarray) -> dict[str, np.ndarray]:
    """Sigma, T3, T8, V, V3, g of flavours (x, FLAVOURS), from their definitions (not ROTATION)."""
    plus = {q: xf[:, COLUMN[q]] + xf[:, COLUMN[-q]] for q in (1, 2, 3)}
    minus = {q: xf[:, COLUMN[q]] - xf[:, COLUMN[-q]] for q in (1, 2, 3)}
    return {
        "Sigma": plus[1] + plus[2] + plus[3],
        "T3": plus[2] - plus[1],
        "T8": plus[2] + plus[1] - 2 * plus[3],
        "V": minus[1] + minus[2] + minus[3],
        "V3": minus[2] - minus[1],
        "g": xf[:, COLUMN[21]],
    }


def test_flavours_and_the_basis_with_valence_rotate_both_ways():
    """The toy has s = sbar (V8 = V holds): flavours -> (Sigma, T3, T8, V, V3, g) by definition ->
    flavours through fit_rotation, and back by solving the rotation."""
    basis = ("Sigma", "T3", "T8", "V", "V3", "g")
    x = np.geomspace(1e-4, 0.95, 40)
    toy = les_houches_toy(x)
    values = np.stack([evolution_values(toy)[b] for b in basis], -1)
    rotation = fit_rotation(basis)
    assert np.allclose(values @ rotation.T, toy, rtol=1e-12, atol=1e-14)
    solved = np.linalg.lstsq(rotation, toy.T, rcond=None)[0].T
    assert np.allclose(solved, values, rtol=1e-10, atol=1e-12)
    # the valence functions alone: u - ubar = (V + V3) / 2, d - dbar = (V - V3) / 2, s = sbar
    valence = fit_rotation(("V", "V3"))
    assert valence[COLUMN[2]] - valence[COLUMN[-2]] == pytest.approx([0.5, 0.5])
    assert valence[COLUMN[1]] - valence[COLUMN[-1]] == pytest.approx([0.5, -0.5])
    assert np.allclose(valence[[COLUMN[3], COLUMN[-3]]], 0.0)


def test_the_sea_basis_rotates_to_flavours_and_keeps_the_antiquarks_positive():
    """(V, V3, ubar, dbar, g) of the toy (s = sbar = 0) -> flavours through fit_rotation; a freshly
    drawn ensemble's x ubar, x dbar are positive everywhere (softplus of outputs that take both
    signs), also read back from the stored arrays, and positivity keeps penalties on x u, x d."""
    basis = (*BASIS, "g")
    x = np.geomspace(1e-5, 0.95, 40)
    toy = strangeless_toy(x)
    functions = {**evolution_values(toy), "ubar": toy[:, COLUMN[-2]], "dbar": toy[:, COLUMN[-1]]}
    fitted = np.stack([functions[b] for b in basis], -1)
    assert np.allclose(fitted @ fit_rotation(basis).T, toy, rtol=1e-12, atol=1e-14)
    model = build_model(8, PdfFitConfig(basis, seed=4), "cpu")
    arrays, architecture = model.to_arrays(), model.architecture()
    assert architecture["positive_outputs"] == [2, 3]
    with torch.no_grad():
        raw = model.raw(torch.as_tensor(x[:, None], dtype=model.dtype))
    assert (raw[..., 2:4] < 0).any()
    assert np.all(basis_on_grid(arrays, architecture, x)[..., 2:4] > 0)


def test_tables_blind_to_q_minus_qbar_refuse_valence():
    grid = x_grid()
    x = np.geomspace(0.01, 0.7, 10)
    lo = f2_fk_table(np.repeat(x, 2), np.tile([0, 1], 10), grid)
    with pytest.raises(ValueError, match=r"V, V3 do\(es\) not enter these FK tables .*round-off"):
        check_basis(BASIS, ("proton", "deuteron"), lo)
    # a q - qbar difference at round-off (1e-15 relative, as NNLO SLAC F2 rows) is still blind
    noisy = lo.copy()
    noisy[..., COLUMN[2]] *= 1 + 1e-15
    with pytest.raises(ValueError, match="do\\(es\\) not enter these FK tables"):
        check_basis(BASIS, ("proton", "deuteron"), noisy)
    # without tables: LO F2 sees q + qbar only
    with pytest.raises(ValueError, match="V, V3 are fixed only by data that see q - qbar"):
        check_basis(BASIS, ("proton", "deuteron"))
    # e+ p at one y sees one combination of u - ubar and d - dbar only
    one_y = np.concatenate([lo, cc_toy_tables(x, np.full(10, 0.5), "e+p", grid)])
    with pytest.raises(ValueError, match="one combination of V and V3"):
        check_basis(BASIS, ("proton", "deuteron"), one_y)
    fk, grid, pseudo, mask, cov, _, _ = _problem(2, 0)
    check_basis(BASIS, ("proton", "deuteron"), fk)
    with pytest.raises(ValueError, match="do\\(es\\) not enter these FK tables"):
        fit_pdf(lo, grid, pseudo[:, :20], mask[:, :20], cov[:20, :20], PdfFitConfig(BASIS, epochs=2))


def _integrals(weights, architecture, basis, norm) -> np.ndarray:
    """int V, int V3 (R, 2) of the normalised fit: u - ubar and d - dbar on a dense trapezoid on
    [1e-9, 1], plus each function's tail below 1e-9 (x f ~ x^(1 - alpha), network frozen there)."""
    x = np.geomspace(VALENCE_TAIL_X, 1, 200_001)
    values = basis_on_grid(weights, architecture, x)
    xf = flavours_from_basis(values, x, basis, np.zeros(values.shape[0]), norm)
    minus = {q: np.trapezoid((xf[..., COLUMN[q]] - xf[..., COLUMN[-q]]) / x, x, axis=1) for q in (1, 2)}
    index = [basis.index(v) for v in VALENCE]
    alpha = np.asarray(weights["param_alpha"], float)[:, index]
    tails = values[:, 0, index] * norm / (1 - alpha)
    return np.stack([minus[2] + minus[1] + tails[:, 0], minus[2] - minus[1] + tails[:, 1]], -1)


def test_the_number_sum_rules_hold_inside_the_loss_and_in_the_stored_normalisation():
    fk, grid, pseudo, mask, cov, _, _ = _problem(4, 0)
    config = PdfFitConfig(BASIS, seed=3)
    model = build_model(4, config, "cpu")
    loss = PdfLoss(fk, grid, pseudo, cov, mask, config, model.device, model.dtype)
    arrays, architecture = model.to_arrays(), model.architecture()
    norm = valence_normalisation(arrays, architecture, BASIS)
    assert len(np.unique(arrays["param_alpha"][:, 0])) == 4  # V's exponents drawn per replica
    # int (u - ubar) = 2, int (d - dbar) = 1 against a dense trapezoid, every replica
    integrals = _integrals(arrays, architecture, BASIS, norm)
    assert np.allclose(integrals, [3.0, 1.0], atol=1e-6), integrals - [3.0, 1.0]
    # the loss predicts what the stored normalisation predicts (float32 against float64)
    with torch.no_grad():
        predicted = loss._predict(model).double().numpy()
    assert np.allclose(predicted, fk_predictions(fk, arrays, architecture, BASIS, grid), rtol=1e-4)
    # positivity covers u and d one by one, beside u+ and d+ (ubar, dbar: positive by construction)
    assert loss.plus.shape[0] == 2 + 2


def _theory(fk, grid, targets):
    return xr.Dataset(
        {"fk": (("point", "x_grid", "flavour"), fk), "target_index": ("point", targets)},
        coords={"x_grid": grid, "flavour": list(FLAVOURS)},
    )


def test_the_op_stores_the_valence_normalisation_and_the_set_has_u_apart_from_ubar(tmp_path):
    fk, grid, pseudo, mask, cov, _, _ = _problem(3, 1)
    targets = np.r_[np.tile([0, 1], 20), np.zeros(fk.shape[0] - 40, int)]
    params = FitParams(basis=list(BASIS), epochs=600, seed=1, stopping={"threshold": 1e3, "patience": 600})
    context = StepContext("model", "cc", str(tmp_path))
    model = fit(params, _data(pseudo, mask, cov), _theory(fk, grid, targets), context).compute()
    assert tuple(model.attrs["basis"]) == BASIS and list(model["valence"].values) == list(VALENCE)
    norm = model["valence_norm"].values
    weights = {n: model[n].values for n in weight_names(model)}
    architecture = json.loads(model.attrs["architecture"])
    assert np.allclose(_integrals(weights, architecture, BASIS, norm), [3.0, 1.0], atol=1e-6)
    # 600 epochs do not reach positivity of ubar, dbar at large x (penalty ~1e-4): member 0 needs
    # one passing replica, and the members themselves are what this test checks
    pdf = fitted_set(Params(), model.assign(positivity_ok=model["positivity_ok"] | True)).compute()
    xf = pdf["xf_0"].isel(q_0=0, member=slice(1, None)).transpose("member", "x_0", "flavour").values
    values = basis_on_grid(weights, architecture, grid)
    expected = flavours_from_basis(values, grid, BASIS, model["gluon_norm"].values, norm)
    assert np.allclose(xf, expected)
    assert np.max(np.abs(xf[..., COLUMN[2]] - xf[..., COLUMN[-2]])) > 0.1  # u != ubar
    # LO F2 alone cannot fix the valence: a run-time error naming the tables
    lo = fk[:40]
    with pytest.raises(OpError, match="V, V3 do\\(es\\) not enter these FK tables"):
        data = _data(pseudo[:, :40], mask[:, :40], cov[:40, :40])
        fit(params, data, _theory(lo, grid, targets[:40]), context).compute()


def test_a_valence_basis_is_checked_against_the_tables_at_run_time_not_before():
    FitParams(basis=list(BASIS))  # the tables decide (above)
    with pytest.raises(ValueError, match="V do\\(es\\) not enter LO F2.*V and V3 in the sea basis"):
        FitParams(basis=["Sigma", "T3", "V"])
    # beside Sigma and T3 (the evolution basis) valence is refused: the antiquarks' positivity
    # penalties biased V there (kernels.pdf_basis); so is a partial sea basis
    for basis in (["Sigma", "T3", "V", "V3"], ["V", "V3", "ubar"], ["Sigma", "T3", "ubar", "dbar"]):
        with pytest.raises(ValueError, match="valence is fitted in the sea basis V, V3, ubar, dbar"):
            FitParams(basis=basis)


def valence_bands(seeds, replicas: int, epochs: int, lr: float, patience: int | None, threshold: float):
    """Per seed: the kept replicas' V and V3 bands at the grid's x in VALENCE_SEEN against the
    truth, and chi2/n of the replica mean against the level-1 data. The shipped closure's method
    (one split, one draw of the quark exponents for all replicas; V draws its own)."""
    grid = x_grid()
    where = (grid >= VALENCE_SEEN[0]) & (grid <= VALENCE_SEEN[1])
    exact = evolution_values(strangeless_toy(grid))
    bands, chi2 = {v: [] for v in VALENCE}, []
    for seed in seeds:
        fk, grid, pseudo, mask, cov, _, level1 = _problem(replicas, seed)
        config = PdfFitConfig(
            BASIS,
            epochs=epochs,
            seed=seed,
            preprocessing="shared",
            stopping=StoppingConfig(threshold=threshold, patience=patience),
            optimiser=OptimiserConfig(name="adam", lr=lr),
        )
        result, _ = fit_pdf(fk, grid, pseudo, mask, cov, config)
        kept = result.kept
        assert kept.sum() >= replicas // 2, result.summary()
        norm = valence_normalisation(result.weights, result.architecture, BASIS)
        values = basis_on_grid(result.weights, result.architecture, grid)
        xf = flavours_from_basis(values, grid, BASIS, np.zeros(replicas), norm)[kept]
        prediction = np.einsum("nxf,rxf->rn", fk, xf).mean(0)
        chi2.append(float(np.mean((prediction - level1) ** 2 / np.diag(cov))))
        fitted = evolution_values(xf.reshape(-1, len(FLAVOURS)))
        for name in VALENCE:
            chosen = fitted[name].reshape(int(kept.sum()), len(grid))[:, where]
            low, high = np.quantile(chosen, BAND, axis=0)
            band = SeedBands(exact[name][where], low, high, chosen.mean(0), chosen.std(0, ddof=1),
                             int(kept.sum()), replicas)
            bands[name].append(band)
    return bands, np.array(chi2)


def _rms(bands: list[SeedBands]) -> float:
    return float(np.sqrt(np.mean(np.concatenate([b.pulls for b in bands]) ** 2)))


# What it took (3 seeds x 8 replicas, 1500 epochs at lr 0.01; README, valence): with the networks'
# usual draw int V started at -1.3 .. 0.3 (A_V = 3 / int V singular at 0) and 5 of 24 replicas
# reached a training chi2/n <= 3.4; starting NN_V, NN_V3 near 1 (pdf_fit.ValenceMLP) made it 11 of
# 24, but the band missed the truth (V's RMS pull 14) while V's small-x exponents excluded the toy's
# 0.2; with V's range holding it and V, V3's exponents drawn per replica (pdf_basis), RMS pulls 1.4
# and 0.6. Early stopping at NNPDF's 10% patience froze replicas 150 epochs after they first
# dipped below the threshold (stopping epochs 170-190 of 1500): the chi2/n of the replica mean was
# 2.1, 6.0, 1.7; trained for all epochs 1.38, 1.41, 1.36 at 2000 epochs.
def test_a_valence_fit_follows_the_known_truth_on_charged_current_toy_data():
    """3 seeds, 8 replicas, 2000 epochs at lr 0.01 on the CC toy, no early stopping (~12 s alone):
    chi2/n of the replica mean to the level-1 data near 1, and the V, V3 bands at the grid's x in
    VALENCE_SEEN around the truth (RMS pull within 1 of a calibrated ensemble's)."""
    bands, chi2 = valence_bands(range(3), replicas=8, epochs=2000, lr=0.01, patience=2000, threshold=50.0)
    print("chi2/n", chi2, {v: _rms(b) for v, b in bands.items()})
    assert np.all((chi2 > 0.5) & (chi2 < 1.5)), chi2
    for name in VALENCE:
        assert abs(_rms(bands[name]) - expected_for_calibrated(8)[1]) < 1.0, (name, _rms(bands[name]))


def test_the_valence_networks_start_at_the_preprocessing_shape_also_when_reinitialised():
    """NN_V, NN_V3 start within 1 +- 0.5 on the fit's grid (both integrals positive, A_V, A_V3 away
    from the singularity at int = 0), at the first draw and after a stagnant replica's re-draw;
    the other outputs are the usual draw."""
    config = PdfFitConfig(BASIS, seed=2)
    model = build_model(6, config, "cpu")
    usual = build_model(6, PdfFitConfig(("Sigma", "T3"), seed=2), "cpu")
    x = torch.as_tensor(x_grid()[:-1, None], dtype=model.dtype)  # x < 1: the shape vanishes at 1
    for _ in range(2):
        params = model.replica_params
        with torch.no_grad():  # NN = x f / (x^(1 - alpha) (1 - x)^beta)
            outputs = model(x) / (x.pow(1 - params["alpha"][:, None]) * (1 - x).pow(params["beta"][:, None]))
        outputs = outputs[..., [BASIS.index(v) for v in VALENCE]].numpy()
        assert np.all(np.abs(outputs - 1.0) < 0.5), np.abs(outputs - 1.0).max()
        assert np.all(valence_normalisation(model.to_arrays(), model.architecture(), BASIS) > 0)
        model.reinitialise(np.ones(6, bool))
        usual.reinitialise(np.ones(6, bool))
    hidden = model.flat[:, : -(20 + 1) * len(BASIS)]  # all but the last layer: the usual draw
    assert torch.equal(hidden, usual.flat[:, : hidden.shape[1]])


@lru_cache(maxsize=1)
def _pooled_closure():
    """The slow closure, once for both slow tests: 24 seeds, 16 replicas, 8000 epochs at lr 3e-3,
    NNPDF's patience (10% of the epochs), as the gluon's (tests/ops/test_pdf_nnlo_fit.py). 24
    seeds, not 8: one seed's points share its level-1 fluctuation, so the pooled coverage's
    standard error was ~0.10 at 8 seeds and 0.071-0.077 at 16, too loose for a tolerance of 0.15
    (tests/calibration.py asks for two standard errors within it)."""
    return valence_bands(range(24), replicas=16, epochs=8000, lr=3e-3, patience=None, threshold=5.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", VALENCE)
def test_the_valence_band_is_calibrated_pooled_over_24_seeds(name):
    """V or V3 at the grid's x in VALENCE_SEEN, pooled over 24 seeds: coverage and RMS pull two-sided
    around a calibrated 16-replica ensemble's (tests/calibration.py), every replica kept.

    The sea basis (kernels.pdf_basis), V's exponents drawn per replica and V3's shared
    (draw_preprocessing says why). Measured (394 s wall at load ~2.5 on 2 cores): V coverage 0.494
    +- 0.059, RMS pull 1.277 +- 0.110; V3 0.636 +- 0.065, 0.907 +- 0.114 (calibrated 0.607, 1.107);
    384 of 384 replicas kept, chi2/n of the replica mean to the level-1 data 0.78-1.27 per seed.
    Per 8 seeds, the same settings through this module's valence_bands: seeds 0-7 V coverage 0.582
    +- 0.099, RMS pull 1.120 +- 0.188, V3 0.629 +- 0.091, 0.891 +- 0.199; seeds 8-15 (not used to
    choose the method) V 0.471 +- 0.105, 1.302 +- 0.205, V3 0.561 +- 0.129, 0.852 +- 0.130
    (calibrated 0.607, 1.107).

    Before, in the evolution basis (Sigma, T3, V, V3; x u, x ubar, x d, x dbar kept positive by
    penalties), this failed: V coverage 0.286 +- 0.090, RMS pull 1.313 +- 0.107, V3 0.954, 0.407,
    chi2/n 1.32-4.13. The x ubar, x dbar penalties on a truth at that boundary (the toy's ubar / u
    is 2.6% at x = 0.3, 0.04% at 0.7, against 5% errors) pushed down every replica whose V
    fluctuated up at large x, and int V = 3 moved what V lost to small x (V / truth 2.05 at x =
    2e-3, 0.72 at 0.5, seed 0); without them the bias went but replicas whose ubar drifted
    negative at large x missed the threshold (kept 0.81-0.86). Tried there and not enough: the
    rows at x <= 0.6 or 0.3 only, u- >= 0 and d- >= 0 instead, NNPDF's iterated exponents,
    trainable exponents, V > 0 by a softplus. Fitting x ubar, x dbar themselves, positive by
    construction, removed both: the antiquarks cannot go negative, and V is not tied to them.
    In the sea basis the sea's large-x exponent range mattered (8 seeds, V's coverage / RMS pull):
    (1 - x)^[4, 9] 0.496 / 1.309, [6, 10] 0.875 / 0.669, [5, 9] (the shipped range, the counting
    rule's 7 +- 2) 0.582 / 1.120."""
    bands, chi2 = _pooled_closure()
    result = pooled(bands[name])
    print(name, result, "chi2/n", chi2)
    assert_calibrated(result, coverage_tolerance=0.15, pull_tolerance=0.3)
