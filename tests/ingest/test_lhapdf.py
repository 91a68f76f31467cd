"""`ingest lhapdf` / `export lhapdf`: streamed into the lake in member blocks, out again exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import xarray as xr

from engine.catalog import load_catalog
from engine.ingest import lhapdf as ingest_module
from engine.ingest.lhapdf import chunk_shape, ingest_lhapdf
from engine.ingest.lhapdf_format import read_lhapdf_set
from engine.testing import put_in_lake
from tests.conftest import lake_files
from tests.test_cli import replicalake

TOY = Path(__file__).resolve().parents[1] / "data" / "lhapdf" / "LHToy"


def test_cli_ingest_then_export_round_trips_exactly(lake, tmp_path, monkeypatch, capsys):
    code, out, err = replicalake(monkeypatch, capsys, "ingest", "lhapdf", TOY, "toy", "--no-progress")
    assert code == 0, err
    assert "ingested raw/toy: 3 members x 7 flavours, 2 Q subgrids" in out
    assert "raw/toy" in load_catalog("lake", lake).entries
    stored = lake.open("raw", "toy")
    original = read_lhapdf_set(TOY)
    assert stored.attrs["replicalake"]["ingest"] == "lhapdf"
    xr.testing.assert_identical(stored.drop_attrs().load(), original.drop_attrs())
    assert stored.attrs["lhapdf_member_headers"] == original.attrs["lhapdf_member_headers"]

    code, out, err = replicalake(monkeypatch, capsys, "export", "lhapdf", "toy", tmp_path / "out")
    assert code == 0, err
    xr.testing.assert_identical(read_lhapdf_set(tmp_path / "out" / "toy"), original)


def test_members_are_written_in_blocks(lake, monkeypatch):
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 7 * 13 * 5 * 8)  # one member per chunk
    ingest_lhapdf(lake, TOY, "toy", progress=False, threads=2)
    stored = lake.open("raw", "toy")
    assert stored.xf_1.chunks[0] == (1, 1, 1)
    xr.testing.assert_identical(stored.drop_attrs().load(), read_lhapdf_set(TOY).drop_attrs())


def test_chunk_shape_splits_x_when_one_member_is_too_big(monkeypatch):
    assert chunk_shape(7, 13, 5) == (ingest_module.CHUNK_BYTES // (7 * 13 * 5 * 8), 13)
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 7 * 5 * 8 * 4)
    assert chunk_shape(7, 13, 5) == (1, 4)


def test_a_bad_member_file_fails_the_cli_and_leaves_nothing(lake, tmp_path, monkeypatch, capsys):
    setdir = Path(shutil.copytree(TOY, tmp_path / "LHToy"))
    lines = (setdir / "LHToy_0002.dat").read_text().splitlines()
    lines[30] = "1.0 2.0"
    (setdir / "LHToy_0002.dat").write_text("\n".join(lines) + "\n")
    code, _, err = replicalake(monkeypatch, capsys, "ingest", "lhapdf", setdir, "toy", "--no-progress")
    assert code == 1
    assert "LHToy_0002.dat:31: expected 7 columns (one per PDG id), found 2" in err.replace("\n", "")
    assert lake_files(lake) == set()


def test_missing_folder_and_unknown_export_name(lake, tmp_path, monkeypatch, capsys):
    code, _, err = replicalake(monkeypatch, capsys, "ingest", "lhapdf", tmp_path / "nope", "toy")
    assert code == 1 and "expected an LHAPDF set folder" in err
    code, _, err = replicalake(monkeypatch, capsys, "export", "lhapdf", "nope", tmp_path)
    assert code == 1 and "no PDF set 'nope' in raw/ or derived/" in err
    put_in_lake(lake, "ramp", xr.Dataset({"a": ("x", np.arange(3.0))}))
    code, _, err = replicalake(monkeypatch, capsys, "export", "lhapdf", "ramp", tmp_path)
    assert code == 1 and "raw/ramp is not a PDF set" in err


def test_export_finds_derived_sets_and_adds_the_replica_average(lake, tmp_path):
    put_in_lake(lake, "fit", read_lhapdf_set(TOY).isel(member=[1, 2]), zone="derived")
    setdir = ingest_module.export_lhapdf(lake, "fit", tmp_path)
    back = read_lhapdf_set(setdir)
    assert back.member.values.tolist() == [0, 1, 2]
    original = read_lhapdf_set(TOY)
    np.testing.assert_allclose(back.xf_0.sel(member=0), original.xf_0.isel(member=[1, 2]).mean("member"),
                               rtol=1e-8)
