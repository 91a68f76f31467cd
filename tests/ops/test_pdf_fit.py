"""PDF ops end to end: a small closure fit through the recipe engine, predictions, bad input."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

from engine.bounds import Params
from engine.errors import RecipeError, ReplicaLakeError
from engine.graph import compile_recipe
from engine.ops.pdf_fit import (
    ClosureParams,
    FitParams,
    GridParams,
    Level1Params,
    closure,
    fit,
    fitted_set,
    fk_tables,
    level1,
    predict,
    toy_truth,
)
from engine.ops.replicas import PseudodataParams, SummaryParams, pseudodata
from engine.ops.replicas import summary as replicas_summary
from engine.registry import StepContext
from engine.runner import execute
from engine.testing import put_in_lake, raise_if_computes
from tests.calibration import (
    BAND,
    SeedBands,
    assert_bias_variance,
    assert_calibrated,
    pooled,
    pooled_bias_variance,
    seed_bias_variance,
    shipped_params,
)

pytest.importorskip("nnpdf_data")

from engine.ingest.nnpdf import apply_cuts, read_commondata  # noqa: E402

PROTON_MASS2 = 0.938272**2  # GeV^2

REPO = Path(__file__).resolve().parents[2]
DATASETS = ["BCDMS_NC_NOTFIXED_P_EM-F2", "BCDMS_NC_NOTFIXED_D_EM-F2"]


@pytest.fixture(scope="module")
def bcdms():
    """BCDMS p and d kinematics (587 points) for the LO closure tests: the sample they were
    calibrated on, cut at W^2 = m_p^2 + Q^2 (1 - x) / x >= 12.5 (= validphys's Q^2 (1 - x) / x
    >= 12.5 - m_p^2). Under validphys's own cut (581 points) the 100-seed acceptance test fails
    DOMAIN's per-seed check on seed 102 (chi2/n of the central fit to its level-1 data 1.545,
    to the truth 0.37; every other seed <= 1.23): an open problem of the LO closure (README)."""
    return apply_cuts(read_commondata(DATASETS), 3.49, 12.5 - PROTON_MASS2)


@pytest.fixture
def dis_lake(lake, bcdms):
    put_in_lake(lake, "dis_f2", bcdms)
    return lake


def closure_recipe(write_recipe, replicas=8, epochs=600, seed=1, basis="[Sigma, T3]", extra=""):
    text = (REPO / "recipes" / "pdf_closure.yaml").read_text()
    for old, new in (("replicas: 100", f"replicas: {replicas}"), ("epochs: 2000", f"epochs: {epochs}"),
                     ("params: {seed: 1}", f"params: {{seed: {seed}}}"),
                     ("basis: [Sigma, T3]", f"basis: {basis}")):
        text = text.replace(old, new)
    text += extra
    return write_recipe(text, f"closure_{seed}.yaml")


def theory_recipe(write_recipe, name: str, steps: list[str], output: str):
    """A recipe on raw/dis_f2 with the given step lines, publishing `output` to derived/."""
    lines = ["version: 1", f"name: {name}", "sources:", "  dis: {catalog: lake, entry: raw/dis_f2}",
             "steps:", *(f"  - {step}" for step in steps), "outputs:", f"  {output}: {{zone: derived}}"]
    return write_recipe("\n".join(lines) + "\n", f"{name}.yaml")


def test_small_closure_fit_passes_the_checks_it_can_make_at_this_size(dis_lake, write_recipe, tmp_path):
    recipe = closure_recipe(write_recipe)
    with raise_if_computes():
        plan = compile_recipe(recipe, dis_lake, REPO / "catalogs")
    execute(plan, progress=False)
    closure = dis_lake.open("derived", "pdf-closure/closure").load()
    # 8 replicas, 600 epochs: the central fit already sits on the truth and the level-1 data
    assert float(closure.chi2_central_truth) < 0.5
    assert 0.5 <= float(closure.chi2_central_data) <= 1.5
    assert float(closure.kept_fraction) >= 0.5
    model = dis_lake.open("models", "pdf-closure/model")
    assert model.attrs["basis"] == ["Sigma", "T3"]
    assert model["param_alpha"].shape == (8, 2)
    alpha = model["param_alpha"].values
    assert np.all((alpha[:, 0] >= 1.05) & (alpha[:, 0] <= 1.2))  # Sigma's preprocessing range
    fitted = dis_lake.open("derived", "pdf-closure/fitted").load()
    assert fitted["xf_0"].dims == ("member", "flavour", "x_0", "q_0") and fitted.sizes["member"] == 9
    assert bool(fitted["kept"][0]) and fitted.attrs["lhapdf_info"]["NumMembers"] == 9
    xf = fitted["xf_0"].isel(q_0=0)
    kept = fitted["kept"].values[1:]
    assert np.allclose(xf.isel(member=0), xf.isel(member=slice(1, None))[kept].mean("member"))
    assert np.allclose(fitted["xf_0"].isel(q_0=0), fitted["xf_0"].isel(q_0=-1))  # no evolution
    assert np.allclose(xf.sel(flavour=3), 0) and np.allclose(xf.sel(flavour=2), xf.sel(flavour=-2))
    reports = Path(dis_lake.root) / "reports" / "derived" / "pdf-closure"
    for name in ("f2p_band", "f2d_band", "bcdms_p_bands"):
        assert (reports / name / "prediction.png").stat().st_size > 10_000
    view = dis_lake.open("derived", "pdf-closure/bcdms_p_bands")
    assert view.sizes["point"] == int(np.sum(view["dataset_index"] == 0)) and "point_b" not in view.dims
    assert np.all(view["data_high"] > view["data"]) and np.all(view["data_low"] < view["data"])
    exported_reads_back_with_parton(dis_lake, fitted, tmp_path)


def exported_reads_back_with_parton(lake, fitted, tmp_path):
    """The fitted set exports as LHAPDF and an independent reader returns its knot values."""
    parton = pytest.importorskip("parton")
    from engine.ingest.lhapdf import export_lhapdf

    setdir = export_lhapdf(lake, "pdf-closure/fitted", tmp_path / "sets")
    x = fitted["x_0"].values[5:45:8]
    q = float(fitted["q_0"].values[1])
    central = parton.mkPDF(setdir.name, 0, pdfdir=str(setdir.parent))
    for pid in (2, -1, 21):
        expected = fitted["xf_0"].sel(member=0, flavour=pid).isel(q_0=1).values[5:45:8]
        assert np.allclose(np.ravel(central.xfxQ(pid, x, q)), expected, rtol=1e-6, atol=1e-9)


def test_predict_of_the_truth_set_is_its_analytic_lo_f2(dis_lake, write_recipe):
    recipe = theory_recipe(write_recipe, "truth-f2", [
        "{id: theory, op: pdf.fk_tables, inputs: {data: dis}}", "{id: truth, op: pdf.toy_truth}",
        "{id: prediction, op: pdf.predict, inputs: {pdf: truth, theory: theory, truth: truth}}"],
        "prediction")
    execute(compile_recipe(recipe, dis_lake, REPO / "catalogs"), progress=False)
    out = dis_lake.open("derived", "truth-f2/prediction").load()
    from engine.kernels.pdf_fk import TARGETS, f2_charges, les_houches_toy

    x, target = out["x"].values, out["target_index"].values
    exact = np.array([les_houches_toy(np.array([v]))[0] @ f2_charges(TARGETS[t]) for v, t in zip(x, target)])
    assert out["prediction"].dims == ("replica", "point") and out.sizes["replica"] == 1
    assert np.allclose(out["prediction"][0], exact, rtol=3e-4)
    assert np.allclose(out["truth"], exact, rtol=3e-4)


@pytest.mark.parametrize("basis, message", [
    ("[Sigma, T3, T8]", "determine 2 combination(s) of PDFs, but the fit basis ['Sigma', 'T3', 'T8'] has 3"),
    ("[Sigma, V]", "V do(es) not enter LO F2"),
    ("[Sigma, Gluon]", "fit basis must list distinct names from Sigma, g, V"),
])
def test_a_basis_no_f2_data_can_constrain_is_a_recipe_error(dis_lake, write_recipe, basis, message):
    with pytest.raises(RecipeError) as info:
        compile_recipe(closure_recipe(write_recipe, basis=basis), dis_lake, REPO / "catalogs")
    text = str(info.value)
    assert message in text and "closure_1.yaml:" in text and "steps[4].params" in text


def test_proton_only_data_cannot_fix_t3_and_the_run_says_so(lake, bcdms, write_recipe):
    put_in_lake(lake, "dis_f2", bcdms.isel(point=bcdms["target_index"].values == 0,
                                           point_b=bcdms["target_index"].values == 0))
    recipe = closure_recipe(write_recipe, replicas=2, epochs=20)
    with pytest.raises(ReplicaLakeError) as info:
        execute(compile_recipe(recipe, lake, REPO / "catalogs"), progress=False)
    assert "step 'model': LO F2 data on proton determine 1 combination(s)" in str(info.value)
    assert not lake.exists("models", "pdf-closure/model")


def test_t0_covariance_takes_multiplicative_systematics_at_the_t0_predictions(dis_lake, write_recipe):
    recipe = theory_recipe(write_recipe, "t0", [
        "{id: experimental, op: pdf.fk_tables, inputs: {data: dis}}", "{id: toy, op: pdf.toy_truth}",
        "{id: theory, op: pdf.t0_covariance, inputs: {theory: experimental, pdf: toy}}"], "theory")
    execute(compile_recipe(recipe, dis_lake, REPO / "catalogs"), progress=False)
    out = dis_lake.open("derived", "t0/theory").load()
    t0 = out["t0_prediction"].values
    additive, mult = out["sys_additive"].values, out["sys_multiplicative"].values
    expected = (np.diag(out["uncorrelated"].values ** 2) + additive @ additive.T
                + (mult * t0[:, None]) @ (mult * t0[:, None]).T)
    assert np.allclose(out["covariance"].values, expected)
    d = out["data"].values
    at_t0, at_data = mult * t0[:, None], mult * d[:, None]
    at_data = expected - at_t0 @ at_t0.T + at_data @ at_data.T
    assert np.allclose(out["covariance_experimental"].values, at_data)
    assert not np.allclose(out["covariance"].values, out["covariance_experimental"].values)


def test_t0_covariance_scales_uncorrelated_multiplicative_uncertainties_with_t0():
    """NNPDF's t0 prescription: every MULT uncertainty at t0, the uncorrelated ones too; statistical
    and ADD ones stay absolute (validphys's t0 covariance to 1e-9 on HERA: README, n3fit)."""
    from engine.ops.pdf_fit import _t0_covariance

    data, t0 = np.array([1.0, 2.0, 4.0]), np.array([2.0, 1.0, 4.0])
    stat, relative = np.array([0.1, 0.2, 0.3]), np.array([0.05, 0.0, 0.1])
    additive, multiplicative = np.array([[0.01], [0.02], [0.0]]), np.array([[0.02], [0.02], [0.02]])
    uncorrelated = np.sqrt(stat**2 + (relative * data) ** 2)
    covariance = _t0_covariance(t0, data, uncorrelated, relative, additive, multiplicative)
    scaled = multiplicative * t0[:, None]
    expected = np.diag(stat**2 + (relative * t0) ** 2) + additive @ additive.T + scaled @ scaled.T
    assert np.allclose(covariance, expected, rtol=1e-14, atol=0)


def test_sets_and_tables_on_different_x_grids_are_refused(dis_lake, write_recipe):
    recipe = theory_recipe(write_recipe, "grid-mismatch", [
        "{id: theory, op: pdf.fk_tables, inputs: {data: dis}, params: {n_x: 40}}",
        "{id: truth, op: pdf.toy_truth}",
        "{id: prediction, op: pdf.predict, inputs: {pdf: truth, theory: theory}}"], "prediction")
    with pytest.raises(RecipeError, match="has x knots 50 in .* but the FK tables were built on 40"):
        compile_recipe(recipe, dis_lake, REPO / "catalogs")


def test_data_below_the_grid_is_refused_at_run_time(dis_lake, write_recipe):
    recipe = theory_recipe(write_recipe, "below-grid", [
        "{id: theory, op: pdf.fk_tables, inputs: {data: dis}, params: {x_min: 0.09}}"], "theory")
    with pytest.raises(ReplicaLakeError, match="kinematics outside the grid: data x spans 0.07"):
        execute(compile_recipe(recipe, dis_lake, REPO / "catalogs"), progress=False)


CALIBRATION_REPLICAS = 20


def recipe_params(step_id: str, **changes) -> dict:
    """The shipped PDF closure recipe's params for one step, with `changes` on top."""
    return shipped_params("pdf_closure.yaml", step_id, **changes)


def closure_fits(bcdms, seeds, folder):
    """The shipped closure's ops and settings over level-1 seeds, 20 replicas each.

    Each seed gets its own level-1 data (pdf.level1) and pseudo-data (replicas.pseudodata, seeded
    alike); the seeds' replicas are stacked and trained by one pdf.fit call, which changes nothing
    a replica sees (its training depends on its own data and id, and every seed has the same
    experimental covariance) except the pooled chi2-outlier cut. Smaller than the recipe only
    where that costs time, not calibration: BCDMS p and d, every third point (196 of 587, all 11
    x bins; the Cholesky solves grow as n^2) and 20 replicas (the finite-R expectations are
    computed). Returns each seed's bands of the PDF where the data constrain it (the
    combinations they measure, LO F2 of p and d at Q0, at the fit's x grid knots inside the
    data's x range), the pooled data-space sqrt(bias / variance), and each seed's pdf.closure
    estimators.
    """
    every_third = np.arange(0, bcdms.sizes["point"], 3)
    grid = GridParams(**recipe_params("theory"))
    theory = fk_tables(grid, bcdms.isel(point=every_third, point_b=every_third))
    truth = toy_truth(GridParams(**recipe_params("truth")))
    data = [level1(Level1Params(**recipe_params("level1", seed=seed)), theory, truth) for seed in seeds]
    replicas = [pseudodata(PseudodataParams(**recipe_params(
        "pseudodata", replicas=CALIBRATION_REPLICAS, seed=seed)), one) for seed, one in zip(seeds, data)]
    stacked = xr.concat([r[["pseudodata", "training_mask"]] for r in replicas], "replica")
    stacked = stacked.assign(covariance=replicas[0]["covariance"]).assign_coords(
        replica=np.arange(stacked.sizes["replica"]))
    model = fit(FitParams(**recipe_params("model", checkpoint_every=None)), stacked, theory,
                context=StepContext("model", "calibration", str(folder)))
    fitted = fitted_set(Params(), model)
    x = fitted["x_0"].values
    x = x[(x >= bcdms["x"].min().item()) & (x <= bcdms["x"].max().item())]
    knots = xr.Dataset(coords={"x": ("point", np.tile(x, 2)),
                               "target_index": ("point", np.repeat([0, 1], x.size))})
    curves = predict(Params(), fitted, fk_tables(grid, knots), truth)
    points = [predict(Params(), fitted, one, truth) for one in data]
    curves, *points = dask.compute(curves, *points)
    bands, bias, variance, estimators = [], [], [], []
    for i, point in enumerate(points):
        one = slice(i * CALIBRATION_REPLICAS, (i + 1) * CALIBRATION_REPLICAS)
        summary = replicas_summary(SummaryParams(**recipe_params("f2p_band")), curves.isel(replica=one))
        quantile = summary["prediction_quantile"]
        bands.append(SeedBands(curves["truth"].values, quantile.sel(quantile=BAND[0]).values,
                               quantile.sel(quantile=BAND[1]).values, summary["prediction_mean"].values,
                               summary["prediction_std"].values, int(summary["replicas_used"]),
                               CALIBRATION_REPLICAS))
        seed = point.isel(replica=one)
        kept = seed["prediction"].values[seed["kept"].values]
        b, v = seed_bias_variance(kept, seed["truth"].values, seed["covariance"].values)
        bias.append(b)
        variance.append(v)
        estimators.append(closure(ClosureParams(**recipe_params("closure")), seed).compute())
    return bands, pooled_bias_variance(bias, variance, CALIBRATION_REPLICAS), estimators


def assert_known_truth_checks(estimators):
    """DOMAIN.md 3's per-seed checks: the central fit sits on the truth and on its level-1 data."""
    for one in estimators:
        assert float(one.chi2_central_truth) < 0.5
        assert 0.5 <= float(one.chi2_central_data) <= 1.5


def test_closure_is_calibrated_over_20_level1_seeds(bcdms, tmp_path):
    """The slow test below at the size the default run affords (20 seeds, 46-73 s), with bounds ~2x
    this size's standard errors (coverage 0.066, RMS pull 0.095, sqrt(bias / variance) 0.053):
    resolving the default bounds takes ~100 seeds, since a seed's 38 PDF points share its one
    level-1 fluctuation (~2 independent points each). sqrt(bias / variance) still tells the
    methods apart here: 0.69 with a split and exponents per replica, 0.78 with exponents per
    replica alone (README, PDF fits).
    """
    bands, bias_variance, estimators = closure_fits(bcdms, range(1, 21), tmp_path)
    result = pooled(bands)
    print(result, bias_variance, sep="\n")
    assert_calibrated(result, coverage_tolerance=0.15, pull_tolerance=0.25)
    assert_bias_variance(bias_variance, tolerance=0.12)
    assert_known_truth_checks(estimators)


@pytest.mark.slow
def test_closure_bands_are_calibrated_over_level1_seeds(bcdms, tmp_path):
    """Pooled over 100 seeds: coverage, RMS pull, kept fraction and bias/variance at their
    calibrated values with the helper's default bounds. Numbers: the README's PDF table."""
    bands, bias_variance, estimators = closure_fits(bcdms, range(101, 201), tmp_path)
    result = pooled(bands)
    print(result, bias_variance, sep="\n")
    assert_calibrated(result)
    assert_bias_variance(bias_variance)
    assert_known_truth_checks(estimators)
