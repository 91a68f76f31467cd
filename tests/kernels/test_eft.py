"""ML4EFT kernels: exact toy sampling, the positivity constraint, the loss optimum, likelihoods."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.kernels import eft
from engine.kernels.mlp import EnsembleMLP
from engine.kernels.optim import OptimiserConfig
from engine.kernels.train import StoppingConfig


@pytest.mark.parametrize("c", [{"c1": -1.0}, {"c1": 0.5}, {"c1": 3.0}, {"c1": 1.0, "c2": -2.0}])
def test_sm_expectation_of_the_ratio_is_the_cross_section(c):
    """E_SM[r(x, c)] = sigma(c) / sigma_SM: the sampler and the toy's r agree (DOMAIN.md check)."""
    x = eft.sample_toy(np.random.default_rng(7), 200_000, {})
    point = np.array([list(c.values())])
    r = eft.toy_ratio(x[:, 0], x[:, 1], point, list(c))[0]
    sigma = eft.toy_cross_section(point, list(c))[0]
    assert abs(r.mean() - sigma) < 4 * r.std() / np.sqrt(r.size)


def test_domain_toy_ratio_and_cross_sections():
    x1, x2 = np.array([0.5, 2.0]), np.array([-1.0, 0.3])
    c = 1.7
    expected = 1 + c * x1 / 2 + c**2 * x1**2 * (1 + x2**2) / 16
    np.testing.assert_allclose(eft.toy_ratio(x1, x2, np.array([[c]]), ["c1"])[0], expected)
    assert eft.toy_sigma(("c1",)) == 0.5 and eft.toy_sigma(("c1", "c1")) == 0.25


def test_eft_samples_follow_the_reweighted_sm():
    """Events drawn at c (and "SM + term" samples) have the moments of SM events weighted by r."""
    rng = np.random.default_rng(3)
    sm = eft.sample_toy(rng, 200_000, {})
    at_c = eft.sample_toy(rng, 200_000, {"c1": -0.8})
    weights = eft.toy_ratio(sm[:, 0], sm[:, 1], np.array([[-0.8]]), ["c1"])[0]
    for moment in (lambda x: x[:, 0], lambda x: x[:, 1] ** 2):
        expected = np.average(moment(sm), weights=weights)
        assert abs(moment(at_c).mean() - expected) < 0.02 * expected
    quad = eft.sample_toy_term(rng, 200_000, ("c1", "c1"), 2.0)
    w = 1 + 4 * sm[:, 0] ** 2 * (1 + sm[:, 1] ** 2) / 16
    assert abs(quad[:, 0].mean() - np.average(sm[:, 0], weights=w)) < 0.02 * quad[:, 0].mean()


def test_sampling_a_negative_cross_section_is_refused():
    with pytest.raises(ValueError, match="negative"):
        eft.sample_toy_term(np.random.default_rng(0), 10_000, ("c1",), -1.0)


def test_positivity_is_smooth_and_keeps_the_ratio_positive():
    """1 + s NN > 0 for any raw output, with a gradient on the 'dead' side too (unlike ReLU)."""
    raw = torch.tensor([[[-1e3], [-5.0], [0.0], [5.0]]], requires_grad=True)
    s = torch.tensor([2.0])
    nn = eft._eft_positivity(None, raw, {"c_scale": s})
    r = 1 + s.view(-1, 1, 1) * nn
    assert (r > 0).all() or torch.isclose(r[0, 0, 0], torch.tensor(0.0))
    assert torch.allclose(r[0, 3, 0], torch.tensor(11.0), rtol=1e-3)  # identity far inside
    r.sum().backward()
    assert (raw.grad[0, 1:] > 0).all()


def test_weighted_cross_entropy_learns_the_linear_term():
    """The loss optimum is 1 + c NN = dsigma_(SM+term) / dsigma_SM: a small batched fit gets close."""
    rows = 2
    sm = np.stack([eft.sample_toy(np.random.default_rng([1, r]), 8000, {}) for r in range(rows)])
    term = np.stack(
        [eft.sample_toy_term(np.random.default_rng([2, r]), 8000, ("c1",), 1.0) for r in range(rows)]
    )[None]
    config = eft.EftTrainConfig(
        (10, 10),
        ("tanh", "tanh", "linear"),
        600,
        None,
        OptimiserConfig(lr=0.02),
        StoppingConfig(threshold=1.0),
        seed=4,
    )
    result, low, high = eft.fit_eft(sm, term, 1.0, np.array([1.5]), np.array([1.0]), config)
    assert result.kept.all() and (result.best_val < 1).all()  # better than a constant classifier
    x = np.stack([np.linspace(0.2, 2.5, 30), np.zeros(30)], axis=-1)
    nn = eft.predict_terms(result.weights, result.architecture, x, low, high)
    np.testing.assert_allclose(np.median(nn, axis=0), x[:, 0] / 2, atol=0.12)


def test_rows_train_as_they_would_alone():
    """Row k of the batched job is the network a lone job would train (init keyed by row id)."""
    model = EnsembleMLP(
        3,
        [2, 5, 1],
        ["tanh", "linear"],
        seed=2,
        output_transform="eft_positivity",
        replica_params={"c_scale": np.array([1.0, 2.0, 4.0])},
    )
    alone = EnsembleMLP.single(
        1,
        [2, 5, 1],
        ["tanh", "linear"],
        seed=2,
        output_transform="eft_positivity",
        replica_params={"c_scale": np.array([2.0])},
    )
    x = torch.randn(7, 2)
    torch.testing.assert_close(model(x)[1], alone(x)[0])


def test_unbinned_and_binned_likelihoods():
    products = eft.coefficient_products(np.array([[0.0], [1.0], [-3.0]]), ["c1"], [("c1",)])
    nn = np.array([[0.5, 1.0]])
    np.testing.assert_allclose(eft.sum_log_ratio(products, nn), [0.0, np.log(1.5 * 2.0), -np.inf])
    counts, expected = np.array([3, 0, 5]), np.array([[2.0, 1.0, 4.0], [3.0, 0.5, 5.0]])
    manual = (counts * np.log(expected) - expected).sum(axis=1)
    np.testing.assert_allclose(eft.binned_log_likelihood(counts, expected), manual)
    assert eft.binned_log_likelihood(np.array([1]), np.array([[0.0]]))[0] == -np.inf


def test_interval_ends_are_interpolated_and_nan_beyond_the_grid():
    grid = np.linspace(-2, 2, 401)
    q = (grid - 0.3) ** 2 / 0.25
    low, high = eft.interval(grid, q, 3.84)
    np.testing.assert_allclose([low, high], [0.3 - 0.98, 0.3 + 0.98], atol=1e-3)
    assert np.isnan(eft.interval(grid, q / 100, 3.84)).all()


def test_stuck_rows_are_reinitialised_by_the_replica_core():
    """A row that never beats the constant classifier (threshold unreachable here) and stagnates is
    re-initialised up to max_reinits times, then dropped: the replica core's reset on the EFT loss."""
    sm = eft.sample_toy(np.random.default_rng(1), 500, {})[None]
    term = eft.sample_toy_term(np.random.default_rng(2), 500, ("c1",), 1.0)[None, None]
    stopping = StoppingConfig(threshold=1e-3, stagnation_epochs=10, stagnation_tol=10.0, max_reinits=2)
    config = eft.EftTrainConfig((4,), ("tanh", "linear"), 100, None, OptimiserConfig(), stopping)
    result, _, _ = eft.fit_eft(sm, term, 1.0, np.array([1.5]), np.array([1.0]), config)
    assert result.n_reinit.tolist() == [2] and not result.kept[0]
    assert result.weights["generation"].tolist() == [2]


def _loss_and_model(activations=("tanh", "tanh", "linear"), batch=16, dtype=torch.float64):
    """A float64 WeightedCrossEntropy on 2 terms x 2 replicas of the toy, and its model."""
    rng = np.random.default_rng(11)
    sm = rng.normal(size=(4, 60, 2))
    term = rng.normal(0.3, 1.2, size=(4, 50, 2))
    config = eft.EftTrainConfig((6, 5), activations, 10, batch, OptimiserConfig(), StoppingConfig(), seed=3)
    model = EnsembleMLP(
        4,
        [2, 6, 5, 1],
        list(activations),
        seed=3,
        dtype=dtype,
        output_transform=eft.TERM_OUTPUT_TRANSFORM,
        replica_params={"c_scale": np.array([2.0, 2.0, -4.0, -4.0])},
    )
    loss = eft.WeightedCrossEntropy(
        sm, term, np.ones(4), np.array([1.5, 1.5, 0.7, 0.7]), config, model.device, dtype
    )
    return loss, model


@pytest.mark.parametrize(
    ("n_sm", "n_eft", "batch"), [(60, 50, 16), (60, 60, 16), (60, 50, None), (60, 50, 64)]
)
def test_a_steps_events_are_slices_of_each_parts_pass_shuffle(n_sm, n_eft, batch):
    """Step k's events: the k-th minibatch of each part's shuffle of its pass (keyed by seed, part
    and pass), SM first, whether the parts are laid side by side per pass (equal batches per pass)
    or concatenated per step; a part no larger than the batch is taken whole."""
    rng = np.random.default_rng(5)
    sm, term = rng.normal(size=(3, n_sm, 2)), rng.normal(size=(3, n_eft, 2))
    config = eft.EftTrainConfig(
        (4,), ("tanh", "linear"), 10, batch, OptimiserConfig(), StoppingConfig(), seed=7
    )
    loss = eft.WeightedCrossEntropy(
        sm, term, np.ones(3), np.full(3, 1.5), config, torch.device("cpu"), torch.float64
    )
    parts = []
    for part, sample in enumerate((sm, term)):
        n = len(sample[0]) - max(1, int(len(sample[0]) * 0.2))
        parts.append((part, np.asarray(sample[:, :n]).transpose(0, 2, 1)))
    for epoch in (0, 1, 2, 5, 3, 9):
        loss.epoch = epoch
        events, n = loss._events()
        expected = []
        for part, data in parts:
            size = data.shape[2]
            if batch is None or batch >= size:
                expected.append(data)
                continue
            per_pass = size // batch
            order = np.random.default_rng([7, part, epoch // per_pass]).permutation(size)
            expected.append(data[..., order][..., (epoch % per_pass) * batch :][..., :batch])
        assert n == expected[0].shape[2]
        np.testing.assert_array_equal(events.numpy(), np.concatenate(expected, 2))


@pytest.mark.parametrize("batch", [16, None])
def test_hand_written_gradient_equals_autograds(batch):
    """value_and_grad (no autograd graph: hand-written layers, closed-form loss derivative) gives
    __call__'s losses and autograd's gradient of them, minibatches and the full batch alike."""
    loss, model = _loss_and_model(batch=batch)
    for epoch in (0, 5):  # a later step draws other minibatches
        loss.epoch = epoch
        train, val, (grad,) = loss.value_and_grad(model, True)
        ref_train, ref_val = loss(model, True)
        (expected,) = torch.autograd.grad(ref_train.sum(), model.flat)
        torch.testing.assert_close(train, ref_train.detach(), rtol=1e-13, atol=0)
        torch.testing.assert_close(val, ref_val, rtol=1e-13, atol=0)
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-15)
    assert loss.value_and_grad(model, False)[1] is None


def test_closed_form_loss_derivative_passes_gradcheck_and_the_clamp():
    """The loss's derivative by hand against autograd and finite differences (float64), over raw
    outputs from deep in the clamped region (r < 1e-30: zero gradient, as autograd's clamp, for
    an SM and an SM+term event) to past softplus's linear threshold."""
    raw = torch.tensor([[-80.0, -3.0, -0.4, 0.0, 0.7, 4.0, 30.0, -80.0]], dtype=torch.float64)
    n_sm = 4
    sign = torch.tensor([[1.0] * n_sm + [-1.0] * 4], dtype=torch.float64)
    weight = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)[None]
    for s in (2.0, -0.5):
        scale = torch.tensor([[s]], dtype=torch.float64)
        signed = weight * sign
        value, d = eft._signed_softplus_derivative(raw.clone(), scale, n_sm, sign, weight, signed, True)
        x = raw.clone().requires_grad_()
        loss = eft._signed_softplus(x, scale, sign, weight)
        (expected,) = torch.autograd.grad(loss.sum(), x)
        torch.testing.assert_close(value, loss.detach(), rtol=1e-14, atol=0)
        torch.testing.assert_close(d, expected, rtol=1e-12, atol=1e-300)
        assert (d[0, 0] == 0) == (s > 0) and (d[0, -1] == 0) == (s > 0)  # s = 2: softplus(-159)
        rest = slice(1, -1)  # finite differences off the clamp

        def value_of(r, scale=scale, rest=rest):
            return eft._signed_softplus(r, scale, sign[:, rest], weight[:, rest])

        assert torch.autograd.gradcheck(value_of, (raw[:, rest].clone().requires_grad_(),))


def test_autograd_takes_over_where_the_hand_written_gradient_cannot():
    """Activations without a hand-written backward: value_and_grad declines, training still runs."""
    loss, model = _loss_and_model(activations=("elu", "tanh", "linear"))
    assert loss.value_and_grad(model, False) is None
    sm = eft.sample_toy(np.random.default_rng(1), 300, {})[None]
    term = eft.sample_toy_term(np.random.default_rng(2), 300, ("c1",), 1.0)[None, None]
    config = eft.EftTrainConfig((4,), ("elu", "linear"), 20, 64, OptimiserConfig(), StoppingConfig())
    result, _, _ = eft.fit_eft(sm, term, 1.0, np.array([1.5]), np.array([1.0]), config)
    assert np.isfinite(result.history.train).all() and result.epochs_run == 20
