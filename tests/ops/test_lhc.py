"""LHC ops end to end on real ROOT files: cuts, kinematics, histograms, recipes and bad input."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from engine.errors import RecipeError, RunError
from engine.graph import compile_recipe
from engine.ingest.root_files import ingest_root_files
from engine.jagged import align_events, to_awkward
from engine.ops.lhc import to_hist
from engine.runner import execute
from engine.testing import raise_if_computes
from tests.conftest import REPO, lake_files

uproot = pytest.importorskip("uproot")
testdata = pytest.importorskip("skhep_testdata")

DIMUON_CUT = "Q1 * Q2 < 0 and pt1 > 20 and pt2 > 20"


@pytest.fixture
def zmumu(lake):
    ingest_root_files(lake, [testdata.data_path("uproot-Zmumu.root")], "zmumu", "events", step_size=500)
    return lake


@pytest.fixture
def hzz(lake):
    ingest_root_files(lake, [testdata.data_path("uproot-HZZ.root")], "hzz", "events", step_size=500)
    return lake


def _zmumu_recipe(write_recipe, name: str, steps: str, outputs: str):
    """A recipe over the lhc catalog's zmumu entry; `steps` are YAML lines (step 1 on line 5)."""
    return write_recipe(
        f"version: 1\nname: {name}\nsources: {{events: {{catalog: lhc, entry: zmumu}}}}\n"
        f"steps:\n{steps}\noutputs: {outputs}\n"
    )


def _truth(path: str, branches: list[str]):
    with uproot.open(path) as handle:
        return handle["events"].arrays(branches, how="zip")


def test_dimuon_recipe_finds_the_z_peak(zmumu):
    with raise_if_computes():
        plan = compile_recipe(REPO / "recipes" / "lhc_dimuon.yaml", zmumu, REPO / "catalogs")
    summary = execute(plan, progress=False)
    histogram = zmumu.open("derived", "lhc-dimuon/mass")
    counts = histogram["counts"].values
    peak = histogram["mu12_mass"].values[np.argmax(counts)]
    assert 89 < peak < 93  # the Z: 91.19 GeV
    assert zmumu.fs.exists(summary.outputs[0].reports[0])
    # the same events and bins straight from ROOT with numpy (M is the file's own dimuon mass)
    t = _truth(testdata.data_path("uproot-Zmumu.root"), ["Q1", "Q2", "pt1", "pt2", "eta1", "eta2", "M"])
    keep = (
        (t.Q1 * t.Q2 < 0) & (t.pt1 > 20) & (t.pt2 > 20) & (abs(t.eta1) < 2.4) & (abs(t.eta2) < 2.4)
    ).to_numpy()
    expected, _ = np.histogram(t.M.to_numpy()[keep], np.linspace(60, 120, 61))
    assert int(histogram["selected_events"]) == keep.sum()
    assert np.abs(counts - expected).sum() <= 2  # the file's M is rounded; a bin edge may differ
    np.testing.assert_array_equal(histogram["variances"].values, counts)
    assert to_hist(histogram).sum().value == counts.sum()


def test_jagged_cuts_and_kinematics_match_awkward(hzz, write_recipe):
    recipe = write_recipe("""
        version: 1
        name: hzz-muons
        sources: {events: {catalog: lhc, entry: hzz}}
        steps:
          - {id: muons, op: lhc.kinematics, inputs: {events: events},
             params: {prefix: mu, collection: Muon, carry: [Charge]}}
          - {id: pairs, op: lhc.select, inputs: {events: muons},
             params: {cut: "count(Muon) >= 2 and sum(Muon_Charge) == 0 and mu1_pt > 20"}}
          - id: mass
            op: lhc.histogram
            inputs: {events: pairs}
            params:
              axes: [{variable: mu12_mass, edges: [0, 40, 60, 80, 85, 90, 95, 100, 150]}]
              weight: EventWeight
        outputs:
          pairs: {}
          mass: {plots: [{variable: counts, kind: hist}]}
    """)
    execute(compile_recipe(recipe, hzz), progress=False)
    muons = _truth(
        testdata.data_path("uproot-HZZ.root"),
        ["Muon_Px", "Muon_Py", "Muon_Pz", "Muon_E", "Muon_Charge", "EventWeight"],
    )
    mu = muons.Muon[ak.argsort(np.hypot(muons.Muon.Px, muons.Muon.Py), axis=1, ascending=False)]
    pt1 = ak.fill_none(ak.firsts(np.hypot(mu.Px, mu.Py)), 0).to_numpy()
    keep = ((ak.num(mu) >= 2) & (ak.sum(mu.Charge, axis=1) == 0)).to_numpy() & (pt1 > 20)
    two = ak.pad_none(mu, 2)
    sums = {
        c: ak.to_numpy(ak.fill_none(two[c][:, 0] + two[c][:, 1], np.nan)).astype(np.float64)
        for c in ("Px", "Py", "Pz", "E")
    }
    mass = np.sqrt(sums["E"] ** 2 - sums["Px"] ** 2 - sums["Py"] ** 2 - sums["Pz"] ** 2)
    edges = [0, 40, 60, 80, 85, 90, 95, 100, 150]
    weights = muons.EventWeight.to_numpy().astype(np.float64)
    expected, _ = np.histogram(mass[keep], edges, weights=weights[keep])
    stored = hzz.open("derived", "hzz-muons/mass")
    np.testing.assert_allclose(stored["counts"].values, expected, rtol=1e-5)
    squares, _ = np.histogram(mass[keep], edges, weights=weights[keep] ** 2)
    np.testing.assert_allclose(stored["variances"].values, squares, rtol=1e-5)
    # the written selection keeps its collections readable, whatever chunks the writer chose
    pairs = hzz.open("derived", "hzz-muons/pairs")
    np.testing.assert_array_equal(pairs["selected"].values, keep)
    assert ak.array_equal(to_awkward(align_events(pairs), "Muon").Charge, muons.Muon.Charge)
    assert int(pairs["n_selected"]) == keep.sum()


def test_bad_cut_is_a_recipe_error_with_caret_and_line(zmumu, write_recipe):
    recipe = _zmumu_recipe(
        write_recipe,
        "bad-cut",
        """  - id: cut
    params: {cut: "Q1 * Q2 < 0 and ptt1 > 20"}
    op: lhc.select
    inputs: {events: events}""",
        "{cut: {}}",
    )
    before = lake_files(zmumu)
    with pytest.raises(RecipeError) as info:
        compile_recipe(recipe, zmumu)
    text = str(info.value)
    assert "recipe.yaml:5" in text and "unknown column 'ptt1' (did you mean 'pt1'" in text
    assert "    Q1 * Q2 < 0 and ptt1 > 20\n                    ^" in text
    assert lake_files(zmumu) == before


@pytest.mark.parametrize(
    "axis, message",
    [
        ("{variable: M, bins: 0, start: 0, stop: 1}", "expected bins > 0"),
        ("{variable: M, bins: 10, start: 5, stop: 5}", "expected start < stop"),
        ("{variable: M, edges: [0, 2, 1]}", "expected strictly increasing edges"),
        ("{variable: M, bins: 10, start: 0}", "needs 'bins', 'start' and 'stop'"),
        ("{variable: 'pt1 + pt2', bins: 10, start: 0, stop: 1}", "needs a 'name'"),
    ],
)
def test_invalid_axes_are_refused_at_validate_time(zmumu, write_recipe, axis, message):
    recipe = _zmumu_recipe(
        write_recipe,
        "bad-axes",
        f"""\
  - {{id: h, op: lhc.histogram, inputs: {{events: events}},
     params: {{axes: [{axis}]}}}}""",
        "{h: {}}",
    )
    with pytest.raises(RecipeError, match=message) as info:
        compile_recipe(recipe, zmumu)
    assert "params" in str(info.value) and "recipe.yaml:6" in str(info.value)


def test_empty_selection_is_an_error_and_nothing_is_published(zmumu, write_recipe):
    recipe = _zmumu_recipe(
        write_recipe,
        "empty",
        """\
  - {id: cut, op: lhc.select, inputs: {events: events}, params: {cut: "pt1 > 1e6"}}
  - {id: h, op: lhc.histogram, inputs: {events: cut},
     params: {axes: [{variable: M, bins: 10, start: 0, stop: 100}]}}""",
        "{cut: {}, h: {}}",
    )
    plan = compile_recipe(recipe, zmumu)
    with pytest.raises(RunError, match=r"the selection \(pt1 > 1e6\) kept none of the 2304 events"):
        execute(plan, progress=False)
    assert not zmumu.exists("derived", "empty/h") and not zmumu.exists("derived", "empty/cut")


def test_per_object_histogram_fills_every_muon_of_selected_events(hzz):
    from engine.ops.lhc import HistogramParams, SelectParams, histogram, select

    events = select(SelectParams(cut="NMuon >= 1 and MET_px > 0"), hzz.open("raw", "hzz"))
    params = HistogramParams(
        axes=[
            {"variable": "Muon_Px", "bins": 20, "start": -100, "stop": 100},
            {"variable": "Muon_Charge", "edges": [-2, 0, 2]},
        ],
        weight="EventWeight * 2",
    )
    result = histogram(params, events).compute()
    t = _truth(
        testdata.data_path("uproot-HZZ.root"), ["Muon_Px", "Muon_Charge", "NMuon", "MET_px", "EventWeight"]
    )
    keep = ((t.NMuon >= 1) & (t.MET_px > 0)).to_numpy()
    mu = t.Muon[keep]
    weights = ak.flatten(ak.broadcast_arrays(2.0 * t.EventWeight[keep], mu.Px)[0]).to_numpy()
    expected, _, _ = np.histogram2d(
        ak.flatten(mu.Px).to_numpy(),
        ak.flatten(mu.Charge).to_numpy(),
        [np.linspace(-100, 100, 21), [-2, 0, 2]],
        weights=weights,
    )
    np.testing.assert_allclose(result["counts"].values, expected, rtol=1e-5)
    assert int(result["selected_events"]) == keep.sum()


def test_cut_syntax_is_checked_with_the_params_before_any_source_opens(lake, write_recipe):
    recipe = _zmumu_recipe(
        write_recipe,
        "syntax",
        """\
  - {id: cut, op: lhc.select, inputs: {events: events}, params: {cut: "pt1 > 20 and"}}""",
        "{cut: {}}",
    )
    with pytest.raises(RecipeError, match="params") as info:
        compile_recipe(recipe, lake)  # raw/zmumu was never ingested: the params phase comes first
    assert "found the end of the expression" in str(info.value) and "recipe.yaml:5" in str(info.value)


def test_polar_objects_and_kept_columns(zmumu):
    from engine.errors import OpError
    from engine.ops.lhc import KinematicsParams, SelectParams, kinematics, select

    events = zmumu.open("raw", "zmumu")
    for i in (1, 2):  # the same muons in (pt, eta, phi, m), computed here with numpy
        px, py, pz, e = (events[f"{c}{i}"] for c in ("px", "py", "pz", "E"))
        events[f"ptc{i}"] = np.hypot(px, py)
        events[f"etac{i}"] = np.arcsinh(pz / events[f"ptc{i}"])
        events[f"phic{i}"] = np.arctan2(py, px)
        events[f"mc{i}"] = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0))
    polar = kinematics(
        KinematicsParams(
            prefix="p",
            objects=[
                {"pt": f"ptc{i}", "eta": f"etac{i}", "phi": f"phic{i}", "mass": f"mc{i}"} for i in (1, 2)
            ],
        ),
        events,
    )
    cartesian = kinematics(
        KinematicsParams(
            prefix="c",
            objects=[{"px": f"px{i}", "py": f"py{i}", "pz": f"pz{i}", "E": f"E{i}"} for i in (1, 2)],
        ),
        events,
    )
    np.testing.assert_allclose(polar["p12_mass"].values, cartesian["c12_mass"].values, rtol=1e-6)
    np.testing.assert_allclose(polar["p1_pt"].values, np.maximum(events.ptc1, events.ptc2).values, rtol=1e-12)
    kept = select(SelectParams(cut="pt1 > 20", columns=["pt1", "Type"]), events)
    assert {"pt1", "Type__counts", "selected"} <= set(kept.data_vars) and "pt2" not in kept
    with pytest.raises(OpError, match=r"no column or collection 'pt3' \(did you mean"):
        select(SelectParams(cut="pt1 > 20", columns=["pt3"]), events)
    with pytest.raises(OpError, match="already in the data"):
        kinematics(
            KinematicsParams(
                prefix="p", objects=[{"pt": "p1_pt", "eta": "eta1", "phi": "phi1", "mass": "mc1"}]
            ),
            polar,
        )


def test_ingest_stores_float_columns_uncompressed_and_integers_compressed(zmumu):
    """Momenta barely compress and are read by every analysis; charges compress many times over."""
    import zarr

    group = zarr.open_group(zmumu.url(zmumu.entry_path("raw", "zmumu")), mode="r")
    assert group["px1"].dtype.kind == "f" and group["px1"].compressors == ()
    assert group["Q1"].dtype.kind == "i" and len(group["Q1"].compressors) == 1
    events = zmumu.open("raw", "zmumu")
    with uproot.open(testdata.data_path("uproot-Zmumu.root")) as handle:
        for name in ("px1", "E2", "Q1"):
            np.testing.assert_array_equal(events[name].values, handle["events"][name].array(library="np"))


def test_chunk_tasks_fuse_and_a_cut_without_columns_runs(zmumu):
    """One fused task per chunk reads and cuts; a constant cut still knows each chunk's length."""
    from engine.ops.lhc import SelectParams, select

    events = zmumu.open("raw", "zmumu")
    out = select(SelectParams(cut="Q1 * Q2 < 0 and pt1 > 20"), events)
    assert out["selected"].data.numblocks == (5,)  # 2304 events in chunks of 500
    t = _truth(testdata.data_path("uproot-Zmumu.root"), ["Q1", "Q2", "pt1"])
    np.testing.assert_array_equal(out["selected"].values, ((t.Q1 * t.Q2 < 0) & (t.pt1 > 20)).to_numpy())
    constant = select(SelectParams(cut="1 < 2"), events)
    assert int(constant["n_selected"].values) == 2304


def test_fast_pseudorapidity_is_as_accurate_as_arcsinh_on_real_muons_and_edges():
    """The log-based eta the kinematics use: within 2 ulp of the exact value on every real muon
    (np.arcsinh is within ~1.9), over more than one block, and the same as np.arcsinh at the edges."""
    from engine.kernels.lhc_kinematics import BLOCK, pseudorapidity

    if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps:
        pytest.skip("needs an extended long double for the exact reference")
    with uproot.open(testdata.data_path("uproot-Zmumu.root")) as handle:
        muons = handle["events"].arrays(["px1", "py1", "pz1", "px2", "py2", "pz2"], library="np")
    pz = np.tile(np.concatenate([muons["pz1"], muons["pz2"]]), 4)  # 18432 muons: two blocks
    pt = np.tile(np.concatenate([np.hypot(muons[f"px{i}"], muons[f"py{i}"]) for i in (1, 2)]), 4)
    assert len(pz) > BLOCK
    exact = np.arcsinh(pz.astype(np.longdouble) / pt.astype(np.longdouble))
    ulps = np.abs((pseudorapidity(pz, pt) - exact) / np.spacing(np.abs(exact).astype(np.float64)))
    assert ulps.max() <= 2.0
    edges = np.array([0.0, -0.0, 5e-324, 1e-300, -1e-8, 0.5, 1e17, 1e200, -1e300, np.inf, -np.inf, np.nan])
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(pseudorapidity(edges, np.ones_like(edges)), np.arcsinh(edges), rtol=4e-16)
        at_zero_pt = pseudorapidity(np.array([2.0, -2.0, 0.0]), 0.0)
    np.testing.assert_array_equal(at_zero_pt, [np.inf, -np.inf, np.nan])
    assert np.signbit(pseudorapidity(-0.0, 1.0))
