"""HDF5 jet tables in the top-tagging layout: both layouts, exact copies, bad layouts refused."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import IngestError
from engine.ingest.jet_tables import ingest_jet_table, ingest_synthetic_jets, write_reference_table
from engine.kernels.jets_synth import COLUMNS, simulate_jets
from tests.conftest import lake_files


def test_reference_table_round_trips_exactly(lake, tmp_path):
    path = write_reference_table(tmp_path / "jets.h5", 250, seed=3, n_constituents=20, block_rows=100)
    with h5py.File(path) as f:  # the pandas fixed-format layout
        assert f["table/block0_items"][:4].tolist() == [b"E_0", b"PX_0", b"PY_0", b"PZ_0"]
        assert f["table/block0_values"].shape == (250, 80)
    ingest_jet_table(lake, path, "jets", block_rows=64, progress=False)
    stored = lake.open("raw", "jets")
    assert stored["E"].dims == ("jet", "constituent") and stored["E"].shape == (250, 20)
    assert stored["E"].chunks == ((64, 64, 64, 58), (20,))
    blocks = [simulate_jets(n, 3, block, n_constituents=20) for block, n in enumerate((100, 100, 50))]
    expected = {k: np.concatenate([b[k] for b in blocks]) for k in (*COLUMNS, "label")}
    for column in COLUMNS:
        np.testing.assert_array_equal(stored[column].values, expected[column])
    np.testing.assert_array_equal(stored["label"].values, expected["label"])


def plain_table(path, n=30, n_const=3, drop=(), label="is_signal_new", bad=None):
    """A table with one 1-D dataset per column."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for column in COLUMNS:
            for i in range(n_const):
                name = f"{column}_{i}"
                if name not in drop:
                    f[name] = rng.uniform(size=n) if name != bad else rng.uniform(size=(n, 2))
        if label:
            f[label] = rng.integers(0, 2, n)
    return path


def test_plain_column_layout_and_constituent_cut(lake, tmp_path):
    path = plain_table(tmp_path / "plain.h5")
    ingest_jet_table(lake, path, "plain", constituents=2, progress=False)
    stored = lake.open("raw", "plain")
    with h5py.File(path) as f:
        np.testing.assert_array_equal(stored["PY"].values[:, 1], f["PY_1"][:].astype(np.float32))
        np.testing.assert_array_equal(stored["label"].values, f["is_signal_new"][:])
    assert stored.sizes["constituent"] == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"drop": ("PX_1",)}, r"plain.h5: column 'PX_1' is missing \(did you mean 'PZ_1' or 'PY_1'"),
    ({"label": "signal"}, r"column 'is_signal_new' is missing \(did you mean"),
    ({"bad": "E_2"}, r"column 'E_2' must be 1-D \(one value per jet\), found shape \(30, 2\)"),
])
def test_bad_layouts_name_the_file_and_column(lake, tmp_path, kwargs, message):
    path = plain_table(tmp_path / "plain.h5", **kwargs)
    with pytest.raises(IngestError, match=message):
        ingest_jet_table(lake, path, "bad", progress=False)
    assert not lake.exists("raw", "bad") and not [f for f in lake_files(lake) if "bad" in f]


def test_labels_must_be_zero_or_one_and_nothing_is_left_behind(lake, tmp_path):
    path = plain_table(tmp_path / "plain.h5", label=None)
    with h5py.File(path, "a") as f:
        f["is_signal_new"] = np.full(30, 2)
    with pytest.raises(IngestError, match=r"'is_signal_new' must hold 0 .* or 1 .*; found 2 in rows 0-29"):
        ingest_jet_table(lake, path, "bad", progress=False)
    assert not lake.exists("raw", "bad")


def test_not_hdf5_and_unequal_columns(lake, tmp_path):
    text = tmp_path / "jets.h5"
    text.write_text("E_0,PX_0\n")
    with pytest.raises(IngestError, match="jets.h5: not a readable HDF5 file"):
        ingest_jet_table(lake, text, "bad", progress=False)
    path = plain_table(tmp_path / "plain.h5")
    with h5py.File(path, "a") as f:
        del f["PZ_0"]
        f["PZ_0"] = np.zeros(29)
    with pytest.raises(IngestError, match="has 30 rows but others have 29"):
        ingest_jet_table(lake, path, "bad", progress=False)


def test_cli_synthetic_jets_and_errors(lake, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "synthetic-jets", "sj", "--jets", "120", "--constituents", "10",
                                 "--lake", lake.root, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert lake.open("raw", "sj")["E"].shape == (120, 10)
    result = runner.invoke(app, ["ingest", "jets", str(tmp_path / "missing.h5"), "x", "--lake", lake.root])
    assert result.exit_code != 0 and "missing.h5: no such file" in str(result.exception)


def test_synthetic_jets_refuse_bad_requests(lake):
    with pytest.raises(IngestError, match="--jets must be positive, found 0"):
        ingest_synthetic_jets(lake, "none", 0, progress=False)
    assert not lake.exists("raw", "none")


@pytest.mark.parametrize("layout", ["fixed", "table"])
def test_files_written_by_pandas_read_back_exactly(lake, tmp_path, layout):
    """The reference files are pandas HDF5 frames; pandas itself (with PyTables) writes them here,
    extra columns (truth four-momentum, ttv) and all, so the reader is checked against the real
    writer rather than our own idea of its layout."""
    pytest.importorskip("tables")
    pd = pytest.importorskip("pandas")
    jets = simulate_jets(40, seed=2, n_constituents=5)
    frame = pd.DataFrame({f"{c}_{i}": jets[c][:, i] for i in range(5) for c in COLUMNS})
    frame["truthE"] = np.float32(600.0)
    frame["ttv"] = np.int64(0)
    frame["is_signal_new"] = jets["label"].astype(np.int64)
    path = tmp_path / f"{layout}.h5"
    frame.to_hdf(path, key="table", format=layout)
    ingest_jet_table(lake, path, layout, progress=False)
    stored = lake.open("raw", layout)
    for column in COLUMNS:
        np.testing.assert_array_equal(stored[column].values, jets[column])
    np.testing.assert_array_equal(stored["label"].values, jets["label"])
