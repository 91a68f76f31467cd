"""CaloFlow kernels: the torch-free weight layout matches zuko, preprocessing inverts exactly, and
weights round-trip through flat arrays."""

from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import calo_flow as cf
from engine.kernels.calo_synth import simulate_showers

torch = pytest.importorskip("torch")
pytest.importorskip("zuko")


@pytest.mark.parametrize(
    ("kinds", "coupling", "split"),
    [
        (("nsf", "maf"), False, "halves"),
        (("maf", "nsf"), False, "halves"),
        (("nsf", "nsf"), True, "halves"),
        (("nsf", "nsf"), True, "shuffled"),
        (("nsf", "maf"), False, "shuffled"),
    ],
)
def test_parameter_layout_matches_zuko(kinds, coupling, split):
    spec = cf.FlowSpec(
        3, 4, *kinds, transforms=2, hidden=(5, 6), bins=4, flow2_coupling=coupling, flow2_split=split
    )
    flows = cf.build_flows(spec)
    for name, flow in flows.items():
        assert [(n, tuple(p.shape)) for n, p in flow.named_parameters()] == cf.parameter_layout(spec, name)
        assert cf.flat_parameters(flow).size == cf.parameter_count(spec, name)


def test_shuffled_couplings_split_the_cells_differently_and_reproducibly():
    """Pairs of coupling transforms take complementary halves; the pairs' splits differ; and two
    builds (under different torch seeds) have the same masks, so stored weights stay valid."""
    spec = cf.FlowSpec(
        3, 36, "nsf", "nsf", transforms=4, hidden=(8,), flow2_coupling=True, flow2_split="shuffled"
    )
    builds = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        builds.append([t.order.numpy() for t in cf.build_flows(spec)["flow2"].transform.transforms])
    for a, b in zip(*builds, strict=True):
        np.testing.assert_array_equal(a, b)
    halves = builds[0]
    assert all(sorted(np.bincount(h)) == [54, 54] for h in halves)
    np.testing.assert_array_equal(halves[0], 1 - halves[1])
    np.testing.assert_array_equal(halves[2], 1 - halves[3])
    assert 10 < np.sum(halves[0] != halves[2]) < 98  # another split, not the same or its mirror


def test_apportion_hands_out_exactly_the_counts():
    """Whole numbers summing to each row's count, floor(s f) for one scale per row: from exact
    dequantised fractions it recovers the cells; ties and empty rows are shared out."""
    rng = np.random.default_rng(3)
    cells = rng.poisson(rng.exponential(3.0, (400, 1, 1)), (400, 3, 12)).astype(float)
    dequantised = cells + rng.uniform(size=cells.shape)
    np.testing.assert_array_equal(cf.apportion(dequantised, cells.sum(-1)), cells)
    fractions = rng.uniform(size=(400, 7)) * (rng.uniform(size=(400, 7)) < 0.4)
    counts = rng.integers(0, 60, 400)
    out = cf.apportion(fractions, counts)
    np.testing.assert_array_equal(out.sum(-1), counts)
    occupied = fractions.sum(-1) > 0
    assert np.all(out >= 0) and np.all(out[occupied][fractions[occupied] == 0] == 0)
    shared = counts[~occupied, None]  # no fractions: shared equally, the remainder to the first cells
    np.testing.assert_array_equal(out[~occupied], shared // 7 + (np.arange(7) < shared % 7))
    np.testing.assert_array_equal(
        cf.apportion(np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.2, 0.3, 0.5]]), np.array([3, 2, 10])),
        [[2, 1, 0], [1, 1, 0], [2, 3, 5]],
    )
    with pytest.raises(ValueError, match="counts"):
        cf.apportion(np.ones((2, 3)), np.ones(3))


@pytest.mark.parametrize("dequantisation", cf.DEQUANTISATIONS)
@pytest.mark.parametrize("layer_sums", cf.LAYER_SUMS)
@pytest.mark.parametrize("flow1_features", cf.FLOW1_FEATURES)
def test_preprocessing_round_trip_is_exact(flow1_features, layer_sums, dequantisation):
    """Dequantised features mapped back and requantised give the original cells exactly."""
    spec = cf.FlowSpec(
        3,
        9,
        quantum=0.01,
        flow1_features=flow1_features,
        layer_sums=layer_sums,
        dequantisation=dequantisation,
    )
    showers = simulate_showers(500, 1, n_side=3)
    x = cf.to_features(showers["energy"], showers["incident_energy"], spec, np.random.default_rng(0))
    back = cf.from_features(x[:, 1:4], x[:, 4:], np.exp(x[:, 0]), spec)
    np.testing.assert_allclose(back, showers["energy"], atol=1e-4)
    np.testing.assert_array_equal(np.round(back / 0.01), np.round(showers["energy"] / 0.01))


def test_triangular_noise_vanishes_at_whole_quanta():
    """The triangular dequantisation is the mean of two uniforms: in [0, 1), mean 1/2, variance
    1/24 (uniform: 1/12), density 4u near 0 (the uniform's is 1): in 200k draws the fraction below
    0.05 is 2 x 0.05^2 = 0.005 (uniform 0.05), within 5 binomial errors either side."""
    spec = cf.FlowSpec(2, 4, dequantisation="triangular")
    u = cf.cell_noise(np.random.default_rng(4), (200_000,), spec)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 24 / u.size)
    assert abs(u.var() - 1 / 24) < 0.002
    for tail in (u < 0.05, u > 0.95):
        assert abs(tail.mean() - 0.005) < 5 * np.sqrt(0.005 / u.size)
    uniform = cf.cell_noise(np.random.default_rng(4), (200_000,), cf.FlowSpec(2, 4))
    assert abs((uniform < 0.05).mean() - 0.05) < 5 * np.sqrt(0.05 / u.size)
    with pytest.raises(ValueError, match="dequantisation must be one of"):
        cf.FlowSpec(2, 4, dequantisation="gaussian")


def test_weights_round_trip_and_training_is_reproducible():
    spec = cf.FlowSpec(2, 4, transforms=1, hidden=(8,), quantum=0.01)
    showers = simulate_showers(300, 2, n_layers=2, n_side=2)
    mean, std = cf.scaling_from_moments(
        cf.feature_moments(showers["energy"], showers["incident_energy"], spec)
    )
    step = cf.TrainStep(epoch=0, lr=1e-2, batch_size=64, validation_fraction=0.2, seed=5)
    states = [
        cf.train_chunk(
            cf.initial_state(spec, 5), showers["energy"], showers["incident_energy"], 0, spec, mean, std, step
        )
        for _ in range(2)
    ]
    np.testing.assert_array_equal(states[0]["flow2_weights"], states[1]["flow2_weights"])
    assert not np.array_equal(states[0]["flow2_weights"], cf.initial_state(spec, 5)["flow2_weights"])
    flows = cf.load_flows(states[0], spec)
    np.testing.assert_array_equal(cf.flat_parameters(flows["flow1"]), states[0]["flow1_weights"])
    history = cf.history(states[0], 1)
    assert np.isfinite(history["val_nll_flow1"]).all() and np.isfinite(history["train_nll_flow2"]).all()
    a = cf.sample_showers(flows, showers["incident_energy"][:50], spec, mean, std, seed=1)
    b = cf.sample_showers(flows, showers["incident_energy"][:50], spec, mean, std, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (50, 2, 4) and (a >= 0).all()


def test_stored_weights_of_another_architecture_are_refused():
    spec = cf.FlowSpec(2, 4, transforms=1, hidden=(8,))
    with pytest.raises(ValueError, match="do not fit the flow"):
        cf.load_flows({"flow1_weights": np.zeros(3), "flow2_weights": np.zeros(3)}, spec)
    with pytest.raises(ValueError, match="flow kind must be one of"):
        cf.FlowSpec(2, 4, flow1_kind="realnvp")
    with pytest.raises(ValueError, match="layer_sums must be one of"):
        cf.FlowSpec(2, 4, layer_sums="rounded")
    options = ("layer_sums", "flow2_split", "dequantisation")
    stored = {k: v for k, v in spec.to_dict().items() if k not in options}
    legacy = cf.FlowSpec.from_dict(stored)  # a model stored before these options: what it was trained as
    assert (legacy.layer_sums, legacy.flow2_split, legacy.dequantisation) == ("cells", "halves", "uniform")
    with pytest.raises(ValueError, match=r"shape \(shower, layer, cell\) = \(2, 2, 4\)"):
        cf.to_features(np.zeros((2, 3, 4)), np.ones(2), spec, None)
