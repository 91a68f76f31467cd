"""pdf.fit on FK tables that depend on the gluon (NNLO F2, `ingest nnpdf-fk`): the momentum sum
rule inside every step, a synthetic known truth, the Q0 label of the fitted set, LO unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

from engine.bounds import Params
from engine.kernels.pdf_fit import (
    PdfFitConfig,
    PdfLoss,
    basis_on_grid,
    build_model,
    fit_pdf,
    flavours_from_basis,
    gluon_enters,
    gluon_shape_integral,
    momentum_gluon_normalisation,
    sum_rule_quadrature,
)
from engine.kernels.pdf_fk import FLAVOURS, les_houches_toy, x_grid
from engine.kernels.replicas import training_masks
from engine.kernels.train import StoppingConfig
from engine.ops.ensembles import weight_names
from engine.ops.pdf_fit import FitParams, fit, fitted_set
from engine.registry import StepContext
from tests.calibration import BAND, SeedBands, assert_calibrated, expected_for_calibrated, pooled
from tests.recipe_inputs import synthetic_nnlo_tables

GLUON = FLAVOURS.index(21)


def _problem(replicas: int, seed: int):
    """Toy-truth F2 on p and d through gluon-dependent tables, level-1 data and replicas on it,
    with one training/validation split for all replicas (as the shipped closure: README)."""
    grid = x_grid()
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


def _predictions(result, config, fk, grid):
    """F2 per replica from the stored weights and the stored A_g (what pdf.fitted_set writes)."""
    norm = momentum_gluon_normalisation(result.weights, result.architecture, config.basis)
    xf = flavours_from_basis(
        basis_on_grid(result.weights, result.architecture, grid), grid, config.basis, norm
    )
    return np.einsum("nxf,rxf->rn", fk, xf), norm


def _momentum(weights, architecture, basis, norm, x):
    xf = flavours_from_basis(basis_on_grid(weights, architecture, x), x, basis, norm)
    return np.trapezoid(xf.sum(-1), x, axis=1)


def test_the_gluon_is_normalised_by_the_momentum_sum_rule_inside_the_loss():
    fk, grid, pseudo, mask, cov, _ = _problem(3, seed=0)
    lo = fk.copy()
    lo[..., GLUON] = 0.0
    assert gluon_enters(fk) and not gluon_enters(lo)
    config = PdfFitConfig(("Sigma", "T3"), seed=2)
    model = build_model(3, config, "cpu")
    loss = PdfLoss(fk, grid, pseudo, cov, mask, config, model.device, model.dtype)
    arrays, architecture = model.to_arrays(), model.architecture()
    norm = momentum_gluon_normalisation(arrays, architecture, config.basis)
    # total momentum 1: dense trapezoid on [1e-9, 1] plus the gluon's analytic piece below 1e-9
    x = np.geomspace(1e-9, 1, 200_001)
    below = norm * 1e-9**0.9 / 0.9
    assert np.allclose(_momentum(arrays, architecture, config.basis, norm, x) + below, 1.0, atol=1e-6)
    # the rule's shape integral is exact, and the rule integrates the shape itself to 1e-7
    nodes, weights = sum_rule_quadrature()
    assert (nodes**-0.1 * (1 - nodes) ** 5) @ weights == pytest.approx(gluon_shape_integral(), abs=1e-7)
    # the loss predicts what the stored set predicts (float32 vs float64)
    with torch.no_grad():
        predicted = loss._predict(model).double().numpy()
    xf = flavours_from_basis(basis_on_grid(arrays, architecture, grid), grid, config.basis, norm)
    assert np.allclose(predicted, np.einsum("nxf,rxf->rn", fk, xf), rtol=1e-4)
    # and the gluon term moves with the quarks: more Sigma, less gluon
    with torch.no_grad():
        base = loss._predict(model)
        model.flat[:, -2] += 0.5  # Sigma's last bias
        assert torch.all(loss._predict(model) != base)


def test_lo_tables_keep_the_fit_without_sum_rule_nodes():
    fk, grid, pseudo, mask, cov, _ = _problem(2, seed=0)
    fk[..., GLUON] = 0.0
    config = PdfFitConfig(("Sigma", "T3"))
    model = build_model(2, config, "cpu")
    loss = PdfLoss(fk, grid, pseudo, cov, mask, config, model.device, model.dtype)
    assert not loss.gluon and loss.x.shape[0] == grid.size + len(config.positivity.x)


def bands_and_gluon(seeds, replicas: int, epochs: int) -> tuple[list[SeedBands], np.ndarray]:
    """Per seed (level-1 data, replicas and initialisation): the kept replicas' F2 band at the
    data points against the truth, and the kept replicas' sum-rule A_g (pooled). The fit is the
    shipped closure's method: one split and one draw of the preprocessing exponents for all
    replicas (README, PDF fits). With a split and exponents per replica the band was ~1.75x too
    wide (RMS pull 0.72 for a calibrated 1.255 at 8 replicas, 8 seeds, 1000 or 4000 epochs alike):
    the spread then carries the scatter between fits to different subsets and exponents, which
    the replica mean averages away."""
    bands, gluon = [], []
    for seed in seeds:
        fk, grid, pseudo, mask, cov, truth = _problem(replicas, seed)
        config = PdfFitConfig(
            ("Sigma", "T3"),
            epochs=epochs,
            seed=seed,
            preprocessing="shared",
            stopping=StoppingConfig(threshold=5.0, patience=200),
        )
        result, penalty = fit_pdf(fk, grid, pseudo, mask, cov, config)
        predictions, norm = _predictions(result, config, fk, grid)
        kept = result.kept  # post-fit selection (positivity needs longer fits than this)
        assert kept.sum() >= replicas - 3 and penalty.shape == (replicas,)
        f2 = predictions[kept]
        low, high = np.quantile(f2, BAND, axis=0)
        bands.append(SeedBands(truth, low, high, f2.mean(0), f2.std(0, ddof=1), int(kept.sum()), replicas))
        gluon.append(norm[kept])
    return bands, np.concatenate(gluon)


def test_a_fit_on_gluon_dependent_tables_recovers_the_known_truth():
    """Pooled over 3 seeds, 8 replicas, 1000 epochs: the replica band around the truth's F2 and
    the sum-rule gluon on the truth's A_g. RMS pull measured 1.44 (per seed 1.26, 1.26, 1.74) where
    a calibrated 8-replica ensemble gives 1.255 (tests/calibration.py); the pooled figure's sd at
    3 seeds is ~0.18, so the +-0.4 bound catches a broken fit or the ~1.75x too wide band of a
    split and exponents per replica (0.77 on these seeds), not a 10% miscalibration: that is the
    slow test below. A_g: measured 1.79 for 1.70 (1.80 over 8 seeds; every seed high: the sum
    rule gives the gluon what Sigma's unconstrained extrapolation below the data's x = 0.01 leaves)."""
    bands, gluon = bands_and_gluon(range(3), replicas=8, epochs=1000)
    rms = float(np.sqrt(np.mean(np.concatenate([b.pulls for b in bands]) ** 2)))
    assert abs(rms - expected_for_calibrated(8)[1]) < 0.4, rms
    x = np.geomspace(1e-9, 1, 200_001)
    toy = les_houches_toy(x)
    truth_norm = (1 - np.trapezoid(np.delete(toy, GLUON, -1).sum(-1), x)) / gluon_shape_integral()
    assert truth_norm == pytest.approx(1.7, abs=0.01)  # the toy's own A_g, its sum rule to 2e-3
    assert 0.9 < np.mean(gluon) / truth_norm < 1.1, np.mean(gluon)


@pytest.mark.slow
def test_the_band_is_calibrated_pooled_over_eight_seeds():
    """8 seeds x 60 points, 16 replicas, 4000 epochs (~95 s): measured coverage 0.581 +- 0.050
    (calibrated 0.607) and RMS pull 1.097 +- 0.064 (calibrated 1.107), every replica kept. At
    1000 epochs the replicas are not yet converged (many stop at the last epoch): 0.531 and 1.256.
    The coverage bound is the LO closure's at 20 seeds (tests/ops/test_pdf_fit.py): 8 seeds
    resolve it only to +-0.05."""
    bands, _ = bands_and_gluon(range(8), replicas=16, epochs=4000)
    result = pooled(bands)
    print(result)
    assert_calibrated(result, coverage_tolerance=0.15)


def test_the_op_stores_the_sum_rule_gluon_and_the_tables_q0(tmp_path):
    fk, grid, pseudo, mask, cov, _ = _problem(3, seed=1)
    n = fk.shape[0]
    theory = xr.Dataset(
        {
            "fk": (("point", "x_grid", "flavour"), fk, {"q0_gev": 1.65}),
            "target_index": ("point", np.tile([0, 1], n // 2)),
        },
        coords={"x_grid": grid, "flavour": list(FLAVOURS)},
    )
    data = xr.Dataset(
        {
            "pseudodata": (("replica", "point"), pseudo),
            "training_mask": (("replica", "point"), mask),
            "covariance": (("point", "point_b"), cov),
        }
    )
    params = FitParams(epochs=600, seed=1, stopping={"threshold": 10.0, "patience": 200})
    model = fit(params, data, theory, StepContext("model", "nnlo", str(tmp_path))).compute()
    assert model.attrs["q0_gev"] == 1.65
    pdf = fitted_set(Params(), model).compute()
    assert pdf["q_0"].values[0] == pytest.approx(1.65)
    assert "Q0 = 1.65 GeV" in pdf.attrs["lhapdf_info"]["SetDesc"]
    xf = pdf["xf_0"].isel(q_0=0, member=slice(1, None)).transpose("member", "x_0", "flavour").values
    assert np.allclose(xf[..., GLUON], model["gluon_norm"].values[:, None] * grid**-0.1 * (1 - grid) ** 5)
    # the stored A_g is the sum rule's: total momentum of every replica 1 to 1e-6
    x = np.geomspace(1e-9, 1, 200_001)
    weights = {n: model[n].values for n in weight_names(model)}
    architecture = json.loads(model.attrs["architecture"])
    norm = model["gluon_norm"].values
    total = _momentum(weights, architecture, ("Sigma", "T3"), norm, x) + norm * 1e-9**0.9 / 0.9
    assert np.allclose(total, 1.0, atol=1e-6)
