"""Amplitude regression as a recipe: calibration of the predicted sigma against the analytic truth
(pooled over seeds, bulk and tails of |M|^2 separately), precision, outputs, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.errors import RecipeError
from engine.graph import compile_recipe
from engine.kernels.amplitudes import (
    fit_amplitude,
    holdout_mask,
    precision_summary,
    predict_amplitude,
    sample_phase_space,
)
from engine.kernels.optim import OptimiserConfig
from engine.kernels.regression import RegressionConfig
from engine.kernels.replicas import training_masks
from engine.kernels.train import StoppingConfig
from engine.storage import Lake
from engine.testing import raise_if_computes
from tests.calibration import SeedBands, pooled, shipped_params
from tests.conftest import REPO

RECIPE = "amp_regression.yaml"
SMALL = {
    "n_points: 6000, chunk_points: 3000": "n_points: 1200, chunk_points: 600",
    "n_points: 20000, chunk_points: 10000": "n_points: 1000, chunk_points: 500",
    "replicas: 6": "replicas: 3",
    "hidden: [32, 32]": "hidden: [8, 8]",
    "epochs: 2000": "epochs: 200",
}


def recipe_text(**changes) -> str:
    text = (REPO / "recipes" / RECIPE).read_text()
    for old, new in {**SMALL, **changes}.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def seed_bands(
    seed: int, n_points: int, n_test: int, replicas: int, hidden, epochs: int, batch_size: int
) -> tuple[SeedBands, np.ndarray]:
    """One independent training sample and test sample: the ensemble's ln |M|^2 with mean +- sigma,
    as tests/calibration.py pools them (truth = ln |M|^2), and its relative-error percentiles."""
    features = shipped_params(RECIPE, "model")["features"]
    train = sample_phase_space(n_points, (60.0, 120.0), seed, 0)
    test = sample_phase_space(n_test, (60.0, 120.0), 1000 + seed, 0)
    x = np.stack([train[f] for f in features], -1)
    holdout = holdout_mask(n_points, 0.1, seed)
    n_fit = int((~holdout).sum())
    masks = training_masks(n_fit, np.zeros(n_fit, int), replicas, 0.8, seed)
    config = RegressionConfig(
        tuple(hidden),
        ("tanh",) * len(hidden) + ("linear",),
        epochs,
        OptimiserConfig(lr=3e-3, lr_final=1e-4),
        StoppingConfig(threshold=np.inf, patience=epochs, stagnation_epochs=None),
        100,
        seed,
        "cpu",
    )
    result, low, high, scale, k = fit_amplitude(
        x, train["msq"], masks, config, holdout=holdout, batch_size=batch_size
    )
    out = predict_amplitude(
        result.weights,
        result.architecture,
        np.stack([test[f] for f in features], -1),
        low,
        high,
        scale,
        sigma_scale=k,
    )
    mean, sigma, truth = out["log_mean"], out["sigma"], np.log(test["msq"])
    summary = precision_summary(mean, sigma, test["msq"])
    bulk = summary["bulk"]
    bands = [
        SeedBands(truth[m], (mean - sigma)[m], (mean + sigma)[m], mean[m], sigma[m], replicas, replicas)
        for m in (bulk, ~bulk)
    ]
    return bands, summary["relative_error_percentiles"]


def pooled_pulls(seeds, **settings):
    runs = []
    for seed in seeds:
        runs.append(seed_bands(seed, **settings))
        bulk, tails = runs[-1][0]
        print(
            f"seed {seed}: RMS pull bulk {np.sqrt(np.mean(bulk.pulls**2)):.3f} tails "
            f"{np.sqrt(np.mean(tails.pulls**2)):.3f}, relative error percentiles {runs[-1][1]}",
            flush=True,
        )
    return (
        pooled([r[0][0] for r in runs]),
        pooled([r[0][1] for r in runs]),
        np.mean([r[1] for r in runs], axis=0),
    )


def assert_width(result, tolerance: float) -> None:
    """Pooled RMS pull within +-tolerance of 1, and known to better than tolerance / 2."""
    assert 2 * result.rms_pull_error <= tolerance, f"too few seeds to resolve +-{tolerance}: {result}"
    assert abs(result.rms_pull - 1) <= tolerance, f"RMS pull not within 1 +- {tolerance}: {result}"


def test_quick_calibration_bulk_and_tails():
    """Small ensembles (4 x 16-16 networks, 600 steps, 1500 points) over 4 seeds, ~15 s. Measured:
    RMS pull bulk 0.976 +- 0.015, tails 1.21 +- 0.04 (pooled; errors from the seed scatter),
    relative error median 16%. So small a fit is still learning the Z peak and the dips, whose
    errors then outgrow their sigma; the bulk is calibrated already. Bounds: bulk 1 +- 0.1
    (the issue's), tails within [0.8, 1.5] (two-sided: overconfident by more than 1.5x or
    underconfident fails). The full-size fit holds 1 +- 0.1 in both (slow test below)."""
    bulk, tails, precision = pooled_pulls(
        range(1, 5), n_points=1500, n_test=2000, replicas=4, hidden=(16, 16), epochs=600, batch_size=128
    )
    print("quick:", bulk, tails, precision)
    assert_width(bulk, 0.1)
    assert 2 * tails.rms_pull_error <= 0.2 and 0.8 <= tails.rms_pull <= 1.5, tails
    assert precision[0] < 0.5  # the median relative error: the mean learned the amplitude


@pytest.mark.slow
@pytest.mark.long  # ~14 min at full size; test_quick_calibration_bulk_and_tails is the CI version
def test_full_calibration_bulk_and_tails_within_ten_percent():
    """The recipe's ensemble (6 x 32-32, 2000 steps, 6000 points) over 12 seeds, 5000 test points
    each: the issue's goal, pull width 1 +- 0.1 in the bulk and in the tails of |M|^2 (the tails'
    seed-to-seed scatter, ~0.15, needs about 12 seeds to resolve that bound)."""
    model = shipped_params(RECIPE, "model")
    bulk, tails, precision = pooled_pulls(
        range(1, 13),
        n_points=6000,
        n_test=5000,
        replicas=model["replicas"],
        hidden=model["hidden"],
        epochs=model["epochs"],
        batch_size=model["batch_size"],
    )
    print("full:", bulk, tails, "relative error percentiles (50, 90, 99):", precision)
    assert_width(bulk, 0.1)
    assert_width(tails, 0.1)


@pytest.fixture(scope="module")
def amp_lake(tmp_path_factory):
    folder = tmp_path_factory.mktemp("amp")
    recipe = folder / "amp.yaml"
    recipe.write_text(recipe_text())
    lake = Lake(str(folder / "lake"))
    engine.run(recipe, lake)
    return lake


def test_compiling_computes_nothing(lake, write_recipe):
    with raise_if_computes():
        plan = compile_recipe(write_recipe(recipe_text()), lake)
    assert plan.step("prediction").dataset["sigma"].shape == (1000,)


def test_recipe_publishes_model_predictions_and_calibration(amp_lake):
    model = amp_lake.open("models", "amp-regression/model").load()
    assert model["weight_2"].shape == (3, 8, 2) and float(model["sigma_scale"]) > 0
    prediction = amp_lake.open("derived", "amp-regression/prediction").load()
    np.testing.assert_allclose(
        prediction["sigma"] ** 2, prediction["sigma_aleatoric"] ** 2 + prediction["sigma_ensemble"] ** 2
    )
    np.testing.assert_allclose(
        prediction["pull"], (prediction["log_mean"] - np.log(prediction["msq"])) / prediction["sigma"]
    )
    calibration = amp_lake.open("derived", "amp-regression/calibration").load()
    assert int(calibration["points_bulk"]) == 900 and int(calibration["points_tails"]) == 100
    assert float(calibration["pulls_bulk"].sum()) == 900
    pulls, msq = prediction["pull"].values, prediction["msq"].values
    low, high = np.quantile(msq, [0.05, 0.95])
    bulk = (msq >= low) & (msq <= high)
    assert float(calibration["rms_pull_bulk"]) == pytest.approx(np.sqrt(np.mean(pulls[bulk] ** 2)))
    assert float(calibration["rms_pull_tails"]) == pytest.approx(np.sqrt(np.mean(pulls[~bulk] ** 2)))
    assert 0.3 < float(calibration["rms_pull_bulk"]) < 3  # 3 tiny networks, 200 steps: loosely calibrated
    png = amp_lake.path("reports/derived/amp-regression/calibration/pulls_bulk.png")
    assert amp_lake.fs.exists(png)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"sqrt_s_range: [60.0, 120.0], seed: 1": "sqrt_s_range: [120.0, 60.0], seed: 1"},
            "sqrt_s_range must be \\(low, high\\) GeV with 0 < low < high",
        ),
        ({"replicas: 3": "replicas: 1"}, "replicas"),
        (
            {"features: [sqrt_s, rho, cos_theta]": "features: [sqrts, cos_theta]"},
            "variable 'sqrts' is not in the data \\(did you mean 'sqrt_s'\\?\\)",
        ),
    ],
)
def test_bad_params_are_recipe_errors(lake, write_recipe, change, message):
    with pytest.raises(RecipeError, match=message):
        compile_recipe(write_recipe(recipe_text(**change)), lake)
