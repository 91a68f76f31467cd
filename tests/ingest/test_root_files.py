"""`replicalake ingest root`: ROOT trees streamed into raw/ with exact jagged round trips."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import IngestError
from engine.ingest.root_files import ingest_root_files
from engine.jagged import collections, to_awkward
from tests.conftest import lake_files

uproot = pytest.importorskip("uproot")


def _write_root(path, n: int, seed: int) -> dict:
    """A ROOT file with a flat float, a flat int and a jagged muon collection; returns its data."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, n)
    total = int(counts.sum())
    data = {"met": rng.exponential(30, n).astype(np.float32), "run": np.arange(n, dtype=np.int32),
            "Muon": ak.zip({"pt": ak.unflatten(rng.exponential(20, total).astype(np.float32), counts),
                            "charge": ak.unflatten(rng.choice([-1, 1], total).astype(np.int32), counts)})}
    with uproot.recreate(path) as handle:
        handle.mktree("Events", {"met": np.float32, "run": np.int32,
                                 "Muon": ak.type(data["Muon"]).content})  # type: ignore[attr-defined]
        handle["Events"].extend(data)
    return data


@pytest.fixture
def root_files(tmp_path):
    files = [tmp_path / "a.root", tmp_path / "b.root"]
    return files, [_write_root(f, n, seed) for f, n, seed in zip(files, (250, 130), (1, 2), strict=True)]


def test_two_files_round_trip_exactly_in_fixed_chunks(lake, root_files):
    files, data = root_files
    summary = ingest_root_files(lake, files, "sample", "Events", step_size=100)
    assert "380 events" in summary
    dataset = lake.open("raw", "sample")
    assert dataset["met"].chunks[0] == (100, 100, 100, 80)  # regrouped across the file boundary
    np.testing.assert_array_equal(dataset["met"].values, np.concatenate([d["met"] for d in data]))
    assert dataset["run"].dtype == np.int32
    assert set(collections(dataset)) == {"Muon"}
    muons = to_awkward(dataset, "Muon")
    expected = ak.concatenate([d["Muon"] for d in data])
    assert ak.array_equal(muons, expected)
    assert str(muons.type.content) == str(expected.type.content)
    assert "raw/sample" in lake.fs.cat_file(lake.path("catalog.yaml")).decode()


def test_branch_selection_keeps_only_those(lake, root_files):
    files, _ = root_files
    ingest_root_files(lake, files[:1], "met", "Events", branches=["met"], step_size=64)
    assert list(lake.open("raw", "met").data_vars) == ["met"]


def test_unknown_tree_and_branch_name_the_file_and_suggest(lake, root_files):
    files, _ = root_files
    with pytest.raises(IngestError, match=r"a\.root: no tree 'Event' \(did you mean 'Events'\?\)"):
        ingest_root_files(lake, files, "x", "Event")
    with pytest.raises(IngestError, match=r"has no branch 'Muon_ptt' \(did you mean 'Muon_pt'"):
        ingest_root_files(lake, files, "x", "Events", branches=["Muon_ptt"])
    assert lake_files(lake) <= {"catalog.yaml"}  # nothing half-written


def test_cli_errors_exit_non_zero(lake, root_files, tmp_path):
    files, _ = root_files
    not_root = tmp_path / "c.root"
    not_root.write_text("not a ROOT file")
    result = CliRunner().invoke(app, ["ingest", "root", str(not_root), "x", "--tree", "Events"])
    assert result.exit_code != 0 and isinstance(result.exception, IngestError)
    assert not lake.exists("raw", "x")


def test_real_hzz_and_zmumu_round_trip(lake):
    testdata = pytest.importorskip("skhep_testdata")
    hzz = testdata.data_path("uproot-HZZ.root")
    ingest_root_files(lake, [hzz], "hzz", "events", step_size=500)
    dataset = lake.open("raw", "hzz")
    assert set(collections(dataset)) == {"Jet", "Muon", "Electron", "Photon"}
    with uproot.open(hzz) as handle:
        truth = handle["events"].arrays(["Muon_Px", "Muon_Charge", "NMuon"], how="zip")
    muons = to_awkward(dataset, "Muon")
    assert ak.array_equal(muons.Px, truth.Muon.Px) and ak.array_equal(muons.Charge, truth.Muon.Charge)
    np.testing.assert_array_equal(dataset["NMuon"].values, ak.num(muons))
    ingest_root_files(lake, [testdata.data_path("uproot-Zmumu.root")], "zmumu", "events")
    zmumu = lake.open("raw", "zmumu")
    assert to_awkward(zmumu, "Type").to_list()[:2] == ["GT", "TT"]
    assert zmumu.sizes["event"] == 2304


def test_cli_ingests_chosen_branches(lake, root_files):
    files, data = root_files
    result = CliRunner().invoke(app, ["ingest", "root", *map(str, files), "picked", "--tree", "Events",
                                      "--branches", "met", "--branches", "Muon_pt", "--step-size", "64"])
    assert result.exit_code == 0, result.output
    dataset = lake.open("raw", "picked")
    assert set(collections(dataset)) == {"Muon"} and "run" not in dataset
    assert dataset["met"].chunks[0][0] == 64
    expected = ak.concatenate([d["Muon"].pt for d in data])
    assert ak.array_equal(to_awkward(dataset, "Muon").pt, expected)
