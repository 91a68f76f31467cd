"""Key numbers in the run summary (engine/key_numbers.py): statistics of marked variables,
NaN counts, spectra without a zero-loss peak, and the comparison with a synthetic truth."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import xarray as xr
from rich.console import Console

from engine import cli, registry
from engine.key_numbers import ATTR, describe, mark, summarize
from engine.op_examples import EXAMPLES, build
from engine.testing import put_in_lake, raise_if_computes
from tests.test_cli import replicalake

RECIPE = """\
version: 1
name: tiny-thickness
sources:
  image: {catalog: lake, entry: raw/holes}
steps:
  - id: aligned
    op: eels.align_zlp
    inputs: {image: image}
  - id: thickness
    op: eels.thickness
    inputs: {image: aligned}
outputs:
  thickness: {zone: derived}
"""
MISSING = [(0, 0), (3, 5), (7, 7)]  # pixels whose spectra are zeroed: no ZLP anywhere


@pytest.fixture
def holes_lake(lake, monkeypatch, capsys):
    """raw/holes: an 8 x 8 x 256 synthetic image (with its truth maps), three spectra zeroed."""
    code, _, err = replicalake(monkeypatch, capsys, "ingest", "synthetic-eels", "tiny",
                               "--shape", "8", "8", "256")
    assert code == 0, err
    image = lake.open("raw", "tiny").load()
    image.attrs.clear()  # the ingest's provenance; put_in_lake writes its own
    for y, x in MISSING:
        image["counts"][y, x] = 0
    put_in_lake(lake, "holes", image)
    return lake


def test_run_summary_prints_median_missing_zlp_and_truth(holes_lake, write_recipe, monkeypatch, capsys):
    recipe = write_recipe(RECIPE)
    code, out, _ = replicalake(monkeypatch, capsys, "run", recipe, "--no-progress")
    assert code == 0
    line = next(text for text in out.splitlines() if text.startswith("derived/tiny-thickness/thickness:"))
    assert re.search(r"t_over_lambda median 0\.\d+ \(16-84%: 0\.\d+-\d\.\d+\), 3 of 64 NaN", line)
    assert "vs truth windowed_log_ratio: median difference" in line
    assert "3 of 64 spectra without ZLP (NaN)" in line

    code, out, _ = replicalake(monkeypatch, capsys, "run", recipe, "--json")  # up to date: read again
    assert code == 0
    output, = json.loads(out)["outputs"]
    assert output["status"] == "up to date"
    numbers = {item["variable"]: item for item in output["key_numbers"]}
    t = numbers["t_over_lambda"]
    assert t["nan"] == 3 and t["size"] == 64 and t["p16"] < t["median"] < t["p84"]
    # log-ratio recovers the windowed truth: measured median |difference| 1.4e-4 at 8 x 8 x 256
    # (Poisson noise at 1e6 counts); 0.01 is far below the 0.1-1.9 spread of the map
    assert t["truth"]["variable"] == "windowed_log_ratio"
    assert abs(t["truth"]["median_difference"]) < 0.01 and abs(t["truth"]["median_ratio"] - 1) < 0.03
    assert numbers["zlp_found"]["statistic"] == "count_false" and numbers["zlp_found"]["count"] == 3


def test_key_numbers_on_a_terminal(holes_lake, write_recipe, monkeypatch, capsys):
    screen = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=screen, force_terminal=True, width=100))
    code, _, _ = replicalake(monkeypatch, capsys, "run", write_recipe(RECIPE), "--no-progress")
    drawn = " ".join(screen.getvalue().split())  # wrapped on a terminal
    assert code == 0 and "┃" in drawn and "3 of 64 spectra without ZLP (NaN)" in drawn
    assert "t_over_lambda median" in drawn


def test_summarize_statistics_of_a_hand_made_dataset():
    e_bg = xr.DataArray([[1.0, np.nan], [2.0, 3.0]], dims=("y", "x"), attrs={"units": "eV"})
    data = xr.Dataset({
        "e_bg": mark(e_bg, "median", truth="e_g"),
        "e_g": (("y", "x"), [[1.0, 1.0], [2.0, 2.0]]),
        "converged": mark(xr.DataArray([[True, False], [True, True]], dims=("y", "x")), "fraction_true"),
        "bounds": mark(xr.DataArray([-0.5, 0.7], dims="bound", attrs={"units": "TeV^-2"}), "value"),
        "big": mark(xr.DataArray(np.zeros(11), dims="n"), "median"),
        "plain": xr.DataArray([1.0], dims="one"),
    }).chunk(1)
    numbers = {item["variable"]: item for item in summarize(data, max_elements=10)}
    assert set(numbers) == {"e_bg", "converged", "bounds", "big"}
    e = numbers["e_bg"]
    assert e["median"] == 2.0 and e["nan"] == 1 and e["truth"]["median_difference"] == 0.0
    assert describe(e) == ("e_bg median 2 eV (16-84%: 1.32-2.68), 1 of 4 NaN, vs truth e_g: "
                           "median difference +0, median ratio 1")
    assert describe(numbers["converged"]) == "converged 75.0% (3 of 4)"
    assert describe(numbers["bounds"]) == "bounds = [-0.5, 0.7] TeV^-2"
    assert "over the 10 summarised" in describe(numbers["big"])
    with pytest.raises(ValueError, match="not among"):
        mark(xr.DataArray([1.0]), "mean")


def test_rejections_where_nothing_passed_are_reported_as_lower_limits():
    """1/eps_B of a replica whose cut let no background jet through is the number of background
    jets, a bound: the summary must not print it as a measured median."""
    rejection = mark(xr.DataArray([400.0, 2500.0, 2500.0], dims="replica"), "median",
                     lower_limit_at="n_background")
    data = xr.Dataset({"background_rejection": rejection, "n_background": ((), 2500)})
    (item,) = summarize(data)
    assert item["lower_limit"] == {"at": 2500.0, "count": 2}
    assert describe(item).endswith("2 of 3 at 2.5e+03 (the median is a lower limit: nothing passed)")
    measured = xr.Dataset({"background_rejection": rejection.copy(data=[400.0, 500.0, 600.0]),
                           "n_background": ((), 2500)})
    (item,) = summarize(measured)
    assert item["lower_limit"]["count"] == 0 and "lower limit" not in describe(item)


# -- the ops that mark their outputs (beyond EELS) ---------------------------------------------
def _run_op(name: str, **inputs) -> xr.Dataset:
    spec = registry.get_op(name)
    return spec.func(spec.params.model_validate({}), **inputs)


def _lines(dataset: xr.Dataset) -> list[str]:
    return [describe(item) for item in summarize(dataset)]


def _replicas() -> xr.Dataset:
    """Four replicas over three points, the last dropped: kept mean [1, 2, 3], std 1."""
    prediction = [[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0], [100.0, 100.0, 100.0]]
    return xr.Dataset({"prediction": (("replica", "point"), prediction),
                       "kept": ("replica", [True, True, True, False]),
                       "truth": ("point", [1.0, 2.0, 3.0])}).chunk({"point": 2})


def test_replica_summary_prints_band_kept_replicas_and_closure():
    lines = _lines(_run_op("replicas.summary", data=_replicas()))
    assert lines == ["prediction_mean median 2 (16-84%: 1.32-2.68), vs truth truth: "
                     "median difference +0, median ratio 1",
                     "prediction_std median 1 (16-84%: 1-1)",
                     "replicas_used = 3"]
    without_truth = _run_op("replicas.summary", data=_replicas().drop_vars("truth"))
    assert "truth" not in " ".join(_lines(without_truth))


def test_pdf_closure_prints_its_estimators():
    data = _replicas().assign(data=("point", [2.0, 2.0, 3.0]),
                              covariance=(("point", "point_b"), np.eye(3)))
    assert _lines(_run_op("pdf.closure", data=data)) == [
        "chi2_central_truth = 0", "chi2_central_data = 0.333", "rms_pull = 0", "kept_fraction = 0.75"]


MARKED = {  # op: its marked variables and their statistics (built from engine/op_examples.py)
    "replicas.summary": {"prediction_mean": "median", "prediction_std": "median", "replicas_used": "value"},
    "pdf.fit": {"kept": "fraction_true", "chi2_validation": "median", "positivity_ok": "count_false"},
    "pdf.closure": {"chi2_central_truth": "value", "chi2_central_data": "value", "rms_pull": "value",
                    "kept_fraction": "value"},
    "lhc.train_classifier": {"auc": "median", "background_rejection": "median", "mass_jsd": "median"},
    "lhc.anomaly_score": {"auc": "median", "background_rejection": "median"},
    "lhc.omnifold": {"final_mean": "median", "final_std": "median"},
    "lhc.eft_bounds": {"interval_nn": "value", "interval_exact": "value", "interval_binned": "value"},
}


@pytest.mark.parametrize("name", sorted(MARKED))
def test_ops_mark_their_key_numbers(name, tmp_path):
    with raise_if_computes():
        result, _ = build(EXAMPLES[name], str(tmp_path))
    marked = {k: v.attrs[ATTR] for k, v in result.data_vars.items() if ATTR in v.attrs}
    assert marked == MARKED[name]


def test_eft_bounds_print_interval_ends(tmp_path):
    result, _ = build(EXAMPLES["lhc.eft_bounds"], str(tmp_path))  # no training: a stored toy ensemble
    exact = next(line for line in _lines(result) if line.startswith("interval_exact"))
    assert re.fullmatch(r"interval_exact = \[-0\.\d+, 0\.\d+\]", exact)
