"""PDF fit kernel: basis rotation, the constrainable-basis check, sum rules, positivity, a fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.kernels.pdf_fit import (
    EVOLUTION_BASIS,
    ROTATION,
    PdfFitConfig,
    PdfLoss,
    build_model,
    check_basis,
    fit_pdf,
    fit_rotation,
    flavours_from_basis,
    gluon_normalisation,
    integration_grid,
    momentum_integral,
)
from engine.kernels.pdf_fk import FLAVOURS, f2_fk_table, les_houches_toy, x_grid
from engine.kernels.train import StoppingConfig


def test_rotation_is_invertible_and_maps_the_toy_back_to_its_flavours():
    x = np.geomspace(1e-3, 0.9, 30)
    xf = les_houches_toy(x)
    basis = np.linalg.solve(ROTATION, xf.T).T  # evolution basis of the toy
    assert np.allclose(basis @ ROTATION.T, xf)
    sigma = basis[:, EVOLUTION_BASIS.index("Sigma")]
    assert np.allclose(sigma, xf[:, [i for i, p in enumerate(FLAVOURS) if p != 21]].sum(1))
    valence = basis[:, EVOLUTION_BASIS.index("V")]
    assert np.allclose(valence, 5.1072 * x**0.8 * (1 - x) ** 3 + 3.06432 * x**0.8 * (1 - x) ** 4)


def test_unfitted_t8_means_no_strange_sea_and_charge_symmetry():
    rotation = fit_rotation(("Sigma", "T3"))
    xf = np.array([[1.2, 0.4]]) @ rotation.T  # Sigma = 1.2, T3 = 0.4
    flavour = dict(zip(FLAVOURS, xf[0]))
    assert flavour[3] == flavour[-3] == 0
    assert flavour[2] == flavour[-2] == pytest.approx((1.2 + 0.4) / 4)  # u+ = (Sigma + T3) / 2
    assert flavour[1] == flavour[-1] == pytest.approx((1.2 - 0.4) / 4)


def test_bases_the_data_cannot_constrain_are_refused_with_reasons():
    check_basis(("Sigma", "T3"), ("proton", "deuteron"))
    check_basis(("Sigma",), ("proton",))
    with pytest.raises(ValueError, match="V do\\(es\\) not enter LO F2"):
        check_basis(("Sigma", "V"), ("proton", "deuteron"))
    with pytest.raises(ValueError, match="g do\\(es\\) not enter"):
        check_basis(("g",), ("proton",))
    # a trailing g is the fitted gluon of evolved tables (the trainer checks the tables see it)
    check_basis(("Sigma", "T3", "g"), ("proton", "deuteron"))
    with pytest.raises(ValueError, match="g do\\(es\\) not enter"):
        check_basis(("g", "Sigma"), ("proton",))
    with pytest.raises(ValueError, match="determine 2 combination.*has 3 functions"):
        check_basis(("Sigma", "T3", "T8"), ("proton", "deuteron"))
    with pytest.raises(ValueError, match="proton determine 1 combination.*fit 1 of them .*'Sigma'"):
        check_basis(("Sigma", "T3"), ("proton",))
    with pytest.raises(ValueError, match="distinct names"):
        check_basis(("Sigma", "Sigma"), ("proton",))
    with pytest.raises(ValueError, match="distinct names"):
        check_basis(("sigma",), ("proton",))


def test_momentum_sum_rule_fixes_the_gluon_so_total_momentum_is_one():
    config = PdfFitConfig(("Sigma", "T3"), seed=4)
    model = build_model(3, config, "cpu")
    arrays, architecture = model.to_arrays(), model.architecture()
    norm = gluon_normalisation(arrays, architecture, config.basis)
    x = integration_grid()
    from engine.kernels.pdf_fit import basis_on_grid

    xf = flavours_from_basis(basis_on_grid(arrays, architecture, x), x, config.basis, norm)
    total = momentum_integral(x, xf.sum(-1, keepdims=True))[:, 0]
    assert np.allclose(total, 1.0, atol=1e-9)
    assert momentum_integral(x, les_houches_toy(x)[None]).sum() == pytest.approx(1.0, abs=2e-3)


def test_shared_preprocessing_gives_every_replica_the_draw_of_replica_0():
    per_replica = build_model(4, PdfFitConfig(("Sigma", "T3"), seed=5), "cpu").to_arrays()
    shared = build_model(4, PdfFitConfig(("Sigma", "T3"), seed=5, preprocessing="shared"), "cpu").to_arrays()
    for name in ("param_alpha", "param_beta"):
        assert len(np.unique(per_replica[name][:, 0])) == 4
        assert np.array_equal(shared[name], np.broadcast_to(per_replica[name][:1], shared[name].shape))
    # a fitted gluon keeps its own draw per replica (the quarks share replica 0's): pdf_basis says why
    per_replica = build_model(4, PdfFitConfig(("Sigma", "T3", "g"), seed=5), "cpu").to_arrays()
    shared = build_model(
        4, PdfFitConfig(("Sigma", "T3", "g"), seed=5, preprocessing="shared"), "cpu"
    ).to_arrays()
    for name in ("param_alpha", "param_beta"):
        assert np.array_equal(shared[name][:, 2], per_replica[name][:, 2])
        assert len(np.unique(shared[name][:, 2])) == 4
        assert np.array_equal(shared[name][:, :2], np.broadcast_to(per_replica[name][:1, :2], (4, 2)))


def _f2_problem(r: int, seed: int = 0):
    grid = x_grid()
    x = np.linspace(0.07, 0.75, 40).repeat(2)
    targets = np.tile([0, 1], 40)
    fk = f2_fk_table(x, targets, grid)
    exact = np.einsum("nxf,xf->n", fk, les_houches_toy(grid))
    sigma = 0.02 * exact
    rng = np.random.default_rng(seed)
    pseudo = exact + sigma * rng.standard_normal((r, exact.size))
    mask = np.zeros((r, exact.size), bool)
    for k in range(r):
        mask[k, rng.permutation(exact.size)[:60]] = True
    return fk, grid, pseudo, mask, np.diag(sigma**2), exact


def test_positivity_penalty_is_zero_for_positive_quarks_and_grows_for_negative_ones():
    fk, grid, pseudo, mask, cov, _ = _f2_problem(2)
    config = PdfFitConfig(("Sigma", "T3"))
    model = build_model(2, config, "cpu")
    loss = PdfLoss(fk, grid, pseudo, cov, mask, config, model.device, model.dtype)
    with torch.no_grad():
        model.flat.zero_()
        model.flat[:, -2] = 1.0  # last bias: Sigma output 1, T3 output 0 -> u+ = d+ > 0
    assert np.all(loss.penalty(model) < 1e-6)
    with torch.no_grad():
        model.flat[1, -2] = -1.0  # replica 1: Sigma < 0
    penalty = loss.penalty(model)
    assert penalty[0] < 1e-6 < penalty[1]
    assert config.positivity.factor(1000) > config.positivity.factor(0)


def test_positivity_covers_a_fitted_gluon_after_its_sum_rule_normalisation():
    fk, grid, pseudo, mask, cov, _ = _f2_problem(2)
    fk[..., FLAVOURS.index(21)] = 0.05 * fk[..., FLAVOURS.index(2)]  # tables that see the gluon
    config = PdfFitConfig(("Sigma", "T3", "g"))
    model = build_model(2, config, "cpu")
    loss = PdfLoss(fk, grid, pseudo, cov, mask, config, model.device, model.dtype)
    assert loss.plus.shape[0] == 3  # u+, d+ and g
    with torch.no_grad():
        model.flat.zero_()
        model.flat[:, -3] = 0.5  # last biases: Sigma 0.5 (int x Sigma < 1), T3 0, g 1
        model.flat[:, -1] = 1.0
    assert np.all(loss.penalty(model) < 1e-6)  # A_g > 0 and NN_g > 0: x g > 0
    with torch.no_grad():
        model.flat[1, -3] = 5.0  # replica 1: int x Sigma > 1, so A_g < 0 and x g < 0
    penalty = loss.penalty(model)
    assert penalty[0] < 1e-6 < penalty[1]


def test_a_small_fit_reproduces_exact_f2_within_the_errors():
    fk, grid, pseudo, mask, cov, exact = _f2_problem(4)
    config = PdfFitConfig(
        ("Sigma", "T3"), epochs=1500, stopping=StoppingConfig(threshold=5.0, patience=300), seed=1
    )
    result, penalty = fit_pdf(fk, grid, pseudo, mask, cov, config)
    assert result.kept.sum() >= 3
    assert np.all(result.best_val[result.kept] < 2.0)  # chi2/n of the validation points
    from engine.kernels.pdf_fit import basis_on_grid

    values = basis_on_grid(result.weights, result.architecture, grid)
    xf = flavours_from_basis(values, grid, config.basis, np.ones(4))
    central = np.einsum("nxf,rxf->rn", fk, xf)[result.kept].mean(0)
    chi2_truth = np.mean(((central - exact) / np.sqrt(np.diag(cov))) ** 2)
    assert chi2_truth < 0.5
    assert penalty.shape == (4,)
