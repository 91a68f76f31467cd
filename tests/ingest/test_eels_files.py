"""`ingest eels`: real DM3/DM4, EMSA, hspy and text spectra into the lake's (y, x, energy) layout.

Known truths come from the real files in ../shared/data/eels (skipped when absent) and from
small files written here with RosettaSciIO's and HyperSpy's own writers. Every bad input must
fail with a message naming the file and what was expected, and leave nothing in the lake.
"""

from __future__ import annotations

import dask.array as da
import h5py
import numpy as np
import pytest

from engine.catalog import load_catalog
from engine.errors import IngestError
from engine.ingest.eels_files import ingest_eels_files
from engine.ingest.eels_formats import open_spectra
from tests.conftest import lake_files
from tests.test_cli import replicalake

EELS = "eels"
WS2 = "ws2_specimen4_lowloss"


AXIS = {"energy_start": -1.0, "dispersion": 0.5}  # a text file's stated energy axis


def ingest(lake, files, name="entry", **kwargs):
    return ingest_eels_files(lake, files, name, progress=False, **kwargs)


def write_hspy(path, data, axes_units, metadata=None):
    """A .hspy file written by HyperSpy itself; the last axis is the signal axis."""
    import hyperspy.api as hs

    signal = hs.signals.Signal1D(data) if axes_units[-1] == "eV" else hs.signals.Signal2D(data)
    for axis, units in zip(signal.axes_manager._axes, axes_units, strict=True):
        axis.units = units
    energy = signal.axes_manager.signal_axes[0]
    if axes_units[-1] == "eV":
        energy.offset, energy.scale, energy.name = -2.0, 0.05, "Energy loss"
    for key, value in (metadata or {}).items():
        signal.metadata.set_item(key, value)
    signal.save(path, overwrite=True)
    return path


def write_msa(path, counts, offset, scale, metadata=None):
    from rsciio.msa import file_writer

    metadata = metadata or {"Signal": {"signal_type": "EELS"}}
    axis = {"name": "Energy loss", "size": counts.size, "offset": offset, "scale": scale,
            "units": "eV", "navigate": False}
    file_writer(str(path), {"data": counts, "axes": [axis], "metadata": metadata,
                            "original_metadata": {}})
    return path


# -- known truths from the real files --------------------------------------------------------
def test_dm4_spectrum_image_is_rsciio_data_transposed(lake, shared_data):
    from rsciio.digitalmicrograph import file_reader

    path = shared_data / EELS / "EELS_SI.dm4"
    summary = ingest(lake, [path], "si", chunks=(1, 2))
    dataset = lake.open("raw", "si")
    counts = dataset["counts"]
    assert counts.dims == ("y", "x", "energy") and counts.shape == (2, 2, 2048)
    assert counts.dtype == np.float32 and counts.chunks == ((1, 1), (2,), (2048,))
    truth = file_reader(str(path))[0]["data"]  # eager read: (energy, y, x)
    np.testing.assert_array_equal(counts.values, truth.transpose(1, 2, 0))
    np.testing.assert_array_equal(dataset["energy"].values, 300.0 + np.arange(2048))
    assert dataset["energy"].attrs["units"] == "eV"
    assert dataset.attrs["beam_energy_kev"] == 200.0
    assert dataset.attrs["collection_angle_mrad"] == 62.0
    assert dataset.attrs["dispersion_ev"] == 1.0
    assert dataset.attrs["original_files"] == ["EELS_SI.dm4"]
    assert dataset.attrs["nonfinite_values"] == 0
    assert "raw/si" in load_catalog("lake", lake).entries
    assert not any(p.startswith(".tmp/") for p in lake_files(lake))
    assert "2x2 spectra x 2048 channels, 300 .. 2347 eV" in summary


def test_dm_reader_is_lazy_with_one_read_per_pixel_block(shared_data):
    """The energy-first file is viewed (y, x, energy) lazily, one dask chunk per block we copy."""
    with open_spectra([shared_data / EELS / "EELS_SI.dm4"], "digitalmicrograph", (1, 2)) as spectra:
        assert isinstance(spectra.counts, da.Array)
        assert spectra.counts.chunks == ((1, 1), (2,), (2048,))


def test_dm3_single_spectrum_becomes_one_pixel(lake, shared_data):
    ingest(lake, [shared_data / EELS / "test-EELS_spectrum.dm3"], "spectrum")
    dataset = lake.open("raw", "spectrum")
    assert dataset["counts"].shape == (1, 1, 2048)
    np.testing.assert_array_equal(dataset["energy"].values, -100.0 + 0.5 * np.arange(2048))
    assert dataset.attrs["beam_energy_kev"] == 200.0
    assert "collection_angle_mrad" not in dataset.attrs  # the file says 0 mrad: not entered


def test_ws2_text_files_become_one_line_in_the_order_given(lake, shared_data):
    folder = shared_data / EELS / WS2
    files = [folder / "vacuum_17.txt", folder / "specimen_14.txt", folder / "specimen_15.txt"]
    ingest(lake, files, "ws2")
    dataset = lake.open("raw", "ws2")
    assert dataset["counts"].shape == (1, 3, 1981)
    for x, path in enumerate(files):
        np.testing.assert_allclose(dataset["counts"][0, x].values, np.loadtxt(path), rtol=1e-7)
    energy = dataset["energy"].values
    np.testing.assert_allclose(energy, -4.054 + 0.025 * np.arange(1981), atol=1e-12)
    assert dataset.attrs["dispersion_ev"] == 0.025
    assert dataset.attrs["original_files"] == [p.name for p in files]
    assert abs(energy[np.argmax(dataset["counts"][0, 0].values)]) < 0.1  # the ZLP sits at 0 eV


# -- formats written here --------------------------------------------------------------------
def test_msa_spectrum_with_metadata(lake, tmp_path):
    counts = np.linspace(1.0, 2.0, 50, dtype=np.float32)
    metadata = {"General": {"title": "low loss"}, "Signal": {"signal_type": "EELS"},
                "Acquisition_instrument": {"TEM": {"beam_energy": 300.0, "Detector": {
                    "EELS": {"collection_angle": 12.5}}}}}
    ingest(lake, [write_msa(tmp_path / "s.msa", counts, -1.0, 0.1, metadata)])
    dataset = lake.open("raw", "entry")
    assert dataset["counts"].shape == (1, 1, 50)
    np.testing.assert_allclose(dataset["counts"].values[0, 0], counts, rtol=1e-6)
    np.testing.assert_allclose(dataset["energy"].values, -1.0 + 0.1 * np.arange(50))
    assert dataset.attrs["beam_energy_kev"] == 300.0
    assert dataset.attrs["collection_angle_mrad"] == 12.5
    assert dataset.attrs["title"] == "low loss"


def test_hspy_image_in_blocks_and_file_closed_after(lake, tmp_path):
    data = np.random.default_rng(0).random((5, 7, 40)).astype(np.float32)
    path = write_hspy(tmp_path / "si.hspy", data, ["nm", "nm", "eV"],
                      {"Acquisition_instrument.TEM.beam_energy": 200.0})
    ingest(lake, [path], chunks=(2, 3))
    dataset = lake.open("raw", "entry")
    assert dataset["counts"].chunks == ((2, 2, 1), (3, 3, 1), (40,))
    np.testing.assert_array_equal(dataset["counts"].values, data)
    np.testing.assert_allclose(dataset["energy"].values, -2.0 + 0.05 * np.arange(40))
    assert dataset.attrs["beam_energy_kev"] == 200.0
    h5py.File(path, "r+").close()  # fails if the lazy read left the file open


def test_hspy_line_scan_becomes_one_row(lake, tmp_path):
    data = np.arange(6 * 30, dtype=np.float32).reshape(6, 30)
    ingest(lake, [write_hspy(tmp_path / "line.hspy", data, ["nm", "eV"])])
    counts = lake.open("raw", "entry")["counts"]
    assert counts.shape == (1, 6, 30)
    np.testing.assert_array_equal(counts.values[0], data)


def test_text_axis_options_and_lines_of_one_file(lake, tmp_path):
    (tmp_path / "two.txt").write_text("1\t2\t3\t\n\n4\t5\t6\t\n")
    ingest(lake, [tmp_path / "two.txt"], energy_start=10.0, dispersion=0.5)
    dataset = lake.open("raw", "entry")
    np.testing.assert_array_equal(dataset["counts"].values, [[[1, 2, 3], [4, 5, 6]]])
    np.testing.assert_array_equal(dataset["energy"].values, [10.0, 10.5, 11.0])


def test_token_follows_content_not_file_name(lake, tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text("1 2 3\n")
    (tmp_path / "c.txt").write_text("1 2 4\n")
    for name in "abc":
        ingest(lake, [tmp_path / f"{name}.txt"], name, **AXIS)
    assert lake.token("raw", "a") == lake.token("raw", "b") != lake.token("raw", "c")


def test_allow_nonfinite_keeps_and_counts_them(lake, tmp_path):
    (tmp_path / "bad.txt").write_text("1 nan 3 inf\n")
    summary = ingest(lake, [tmp_path / "bad.txt"], allow_nonfinite=True, **AXIS)
    dataset = lake.open("raw", "entry")
    assert dataset.attrs["nonfinite_values"] == 2 and "2 non-finite values kept" in summary
    assert np.isnan(dataset["counts"].values[0, 0, 1])


# -- bad input: a clear message, and nothing left in the lake ---------------------------------
@pytest.mark.parametrize(("files", "kwargs", "message"), [
    ({"x.xyz": "1 2 3"}, {}, r"x\.xyz: unknown format '\.xyz'; expected one of \.dm3"),
    ({"x.dm4": "not a DM file"}, {}, r"x\.dm4: expected a readable DigitalMicrograph DM3/DM4 "
                                     r"file, but its reader failed"),
    ({"x.hspy": "not HDF5"}, {}, r"x\.hspy: expected a readable HyperSpy \.hspy file"),
    ({"x.txt": ""}, {}, r"x\.txt: expected one line of tab-separated counts per spectrum, "
                        r"found no values \(empty file\)"),
    ({"x.txt": "1\t2\t3\n4\t5\n"}, {}, r"x\.txt:2: expected 3 values per row \(as in .*x\.txt:1\), "
                                       "found 2"),
    ({"a.txt": "1 2 3", "b.txt": "1 2 3 4"}, {}, r"b\.txt:1: expected 3 values per row \(as in "
                                                 r".*a\.txt:1\), found 4"),
    ({"x.txt": "1 2 three"}, {}, r"x\.txt:1: column 3: expected a number, found 'three'"),
    ({"x.txt": "1\n2\n3\n"}, {}, r"x\.txt: expected one line .* found 1 value per row"),
    ({"x.txt": "1 nan 3 inf -inf"}, {}, r"x\.txt: expected finite counts, found 3 non-finite "
                                        r"values \(NaN or inf\) among 5; pass --allow-nonfinite"),
    ({"x.txt": "1 2 3"}, {"dispersion": 0.0, "energy_start": 1.0},
     r"x\.txt: expected an increasing energy axis .* found start 1.0 eV, dispersion 0.0"),
    ({"x.txt": "1 2 3"}, {"dispersion": 0.1}, r"x\.txt: --dispersion was given without --energy-start; "
                                              "plain-text spectra need both"),
    ({"x.txt": "1 2 3"}, {}, r"x\.txt: plain-text spectra carry no energy axis; pass --energy-start "
                             r"\(eV of the first channel\) and --dispersion \(eV per channel\)\. "
                             r"Without them only EELSfitter's WS2 specimen-4 spectra are accepted "
                             r"\(1981 channels, --energy-start -4\.054 --dispersion 0\.025\); "
                             "found 3 channels"),
    ({"x.txt": "1 2 3"}, {"chunks": (0, 4)}, "--chunks must be two positive integers"),
    ({"x.txt": b"\xff\xfe\x00binary"}, {}, r"x\.txt: expected plain text .* found binary data"),
    ({"a.msa": "", "b.msa": ""}, {}, "several files combine into one entry only as plain-text"),
])
def test_bad_files_are_refused_and_leave_nothing(lake, tmp_path, files, kwargs, message):
    paths = []
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        paths.append(path)
    with pytest.raises(IngestError, match=message):
        ingest(lake, paths, **kwargs)
    assert lake_files(lake) == set()


def test_image_without_energy_axis_is_refused(lake, tmp_path):
    path = write_hspy(tmp_path / "image.hspy", np.zeros((4, 5), np.float32), ["nm", "nm"])
    with pytest.raises(IngestError, match=r"image\.hspy: expected one spectrum signal with exactly "
                                          r"one energy axis in eV, found 0 among 1 signal\(s\) "
                                          r"with axes \(.*\[nm\] x4, .*\[nm\] x5\)"):
        ingest(lake, [path])
    assert lake_files(lake) == set()


@pytest.mark.parametrize(("shape", "dtype", "non_uniform", "message"), [
    ((2, 2, 3, 10), np.float32, False, r"expected a spectrum, line scan or spectral image \(at "
                                       r"most 2 spatial axes besides energy\), found axes"),
    ((2, 10), np.complex64, False, r"expected real-valued counts, found dtype complex64"),
    ((2, 10), np.float32, True, r"expected a uniform energy axis \(offset \+ scale\), found a "
                                "non-uniform axis"),
])
def test_unusable_spectra_are_refused(lake, tmp_path, shape, dtype, non_uniform, message):
    path = write_hspy(tmp_path / "odd.hspy", np.ones(shape, dtype), ["nm"] * (len(shape) - 1) + ["eV"])
    if non_uniform:
        import hyperspy.api as hs

        signal = hs.load(path)
        signal.axes_manager.signal_axes[0].convert_to_non_uniform_axis()
        signal.save(path, overwrite=True)
    with pytest.raises(IngestError, match=r"odd\.hspy: " + message):
        ingest(lake, [path])
    assert lake_files(lake) == set()


def test_failed_block_read_names_the_pixels():
    """A lazy read that fails mid-copy (file cut or changed under us) says where."""
    import dask
    import zarr

    from engine.ingest.eels_files import _copy_blocks

    def unreadable():
        raise OSError("mmap length is greater than file size")

    counts = da.from_delayed(dask.delayed(unreadable)(), shape=(2, 2, 4), dtype=np.float32)
    target = zarr.zeros(shape=(2, 2, 4), chunks=(2, 2, 4), dtype=np.float32)
    with pytest.raises(IngestError, match=r"si\.dm4: expected pixels y 0:2, x 0:2 to be readable, "
                                          r"but reading failed \(OSError: mmap length"):
        _copy_blocks(counts, target, (2, 2), "si.dm4", progress=False, threads=1)


def test_truncated_dm4_is_refused(lake, shared_data, tmp_path):
    whole = (shared_data / EELS / "EELS_SI.dm4").read_bytes()
    cut = tmp_path / "cut.dm4"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IngestError, match=r"cut\.dm4: expected a readable DigitalMicrograph "
                                          r"DM3/DM4 file, .* is it truncated"):
        ingest(lake, [cut])
    assert lake_files(lake) == set()


def test_energy_options_only_for_text(lake, tmp_path):
    path = write_msa(tmp_path / "s.msa", np.ones(10, np.float32), 0.0, 1.0)
    with pytest.raises(IngestError, match=r"s\.msa: --energy-start/--dispersion apply to "
                                          "plain-text spectra only"):
        ingest(lake, [path], energy_start=1.0)
    assert lake_files(lake) == set()


def test_missing_file_or_folder_is_named(lake, tmp_path):
    with pytest.raises(IngestError, match=r"nope\.dm4: no such file"):
        ingest(lake, [tmp_path / "nope.dm4"])
    (tmp_path / "folder.dm4").mkdir()
    with pytest.raises(IngestError, match=r"folder\.dm4: expected a file, found a folder"):
        ingest(lake, [tmp_path / "folder.dm4"])


# -- the command -----------------------------------------------------------------------------
def test_cli_ingests_text_and_exits_1_on_bad_input(lake, tmp_path, monkeypatch, capsys):
    (tmp_path / "a.txt").write_text("1\t2\t3\t\n")
    (tmp_path / "b.txt").write_text("4\t5\t6\t\n")
    code, out, _ = replicalake(monkeypatch, capsys, "ingest", "eels", tmp_path / "a.txt",
                               tmp_path / "b.txt", "pair", "--energy-start", "-1",
                               "--dispersion", "0.5", "--no-progress")
    assert code == 0 and "ingested raw/pair: 1x2 spectra x 3 channels, -1 .. 0 eV" in out
    assert lake.open("raw", "pair")["counts"].shape == (1, 2, 3)
    before = lake_files(lake)
    (tmp_path / "nan.txt").write_text("1\tnan\t3\t\n")
    code, _, err = replicalake(monkeypatch, capsys, "ingest", "eels", tmp_path / "nan.txt", "bad",
                               "--no-progress")
    assert code == 1 and "expected finite counts, found 1 non-finite" in err.replace("\n", "")
    assert lake_files(lake) == before


# -- spatial calibration and the text energy axis (issue 18) -----------------------------------
def test_dm4_pixel_size_becomes_nm_coordinates_beside_the_pixel_indices(lake, shared_data):
    """EELS_SI.dm4 calibrates y and x at 0.0019920736 um per pixel: 1.992 nm, as coordinates
    `y_nm`/`x_nm` (pixel indices stay the index, so recipes still pick pixels by number)."""
    summary = ingest(lake, [shared_data / EELS / "EELS_SI.dm4"], "si")
    dataset = lake.open("raw", "si")
    step = 0.0019920736085623503 * 1e3
    for dim in ("y", "x"):
        np.testing.assert_array_equal(dataset[dim].values, [0, 1])
        np.testing.assert_allclose(dataset[f"{dim}_nm"].values, [0.0, step], rtol=1e-12)
        assert dataset[f"{dim}_nm"].dims == (dim,) and dataset[f"{dim}_nm"].attrs["units"] == "nm"
        assert dataset.attrs[f"pixel_size_{dim}_nm"] == pytest.approx(step, rel=1e-12)
    assert "x 1.992 nm/pixel" in summary
    assert dataset.attrs["energy_axis"] == "from the file: 300 eV + 1 eV/channel"


@pytest.mark.parametrize(("units", "scale", "expected_nm"), [
    ("µm", 0.25, 250.0), ("nm", 0.5, 0.5), ("Å", 2.0, 0.2), ("<undefined>", 1.0, None), ("1/nm", 0.1, None)])
def test_hspy_spatial_units_are_converted_to_nm_or_left_in_pixels(lake, tmp_path, units, scale, expected_nm):
    import hyperspy.api as hs

    signal = hs.signals.Signal1D(np.ones((3, 4, 20), np.float32))
    for axis in signal.axes_manager.navigation_axes:
        axis.units, axis.scale, axis.offset = units, scale, 1.0
    energy = signal.axes_manager.signal_axes[0]
    energy.units, energy.scale, energy.offset = "eV", 0.1, -1.0
    signal.save(tmp_path / "si.hspy", overwrite=True)
    ingest(lake, [tmp_path / "si.hspy"])
    dataset = lake.open("raw", "entry")
    if expected_nm is None:
        assert "x_nm" not in dataset.coords and "pixel_size_x_nm" not in dataset.attrs
        return
    factor = expected_nm / scale
    np.testing.assert_allclose(dataset["x_nm"].values, factor * (1.0 + scale * np.arange(4)))
    np.testing.assert_allclose(dataset["y_nm"].values, factor * (1.0 + scale * np.arange(3)))
    assert dataset.attrs["pixel_size_x_nm"] == pytest.approx(expected_nm)


def test_calibrated_maps_are_drawn_in_nm(lake, tmp_path):
    import hyperspy.api as hs

    from engine.recipe import Plot
    from engine.reports import render

    signal = hs.signals.Signal1D(np.ones((3, 4, 20), np.float32))
    for axis in signal.axes_manager.navigation_axes:
        axis.units, axis.scale = "nm", 2.5
    signal.axes_manager.signal_axes[0].units = "eV"
    signal.save(tmp_path / "si.hspy", overwrite=True)
    ingest(lake, [tmp_path / "si.hspy"])
    total = lake.open("raw", "entry")["counts"].sum("energy").to_dataset(name="total")
    axes = render(total, Plot(variable="total"), "raw/entry").axes[0]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("x position [nm]", "y position [nm]")
    assert axes.get_xlim() == pytest.approx((-1.25, 8.75))


def test_ws2_text_axis_is_assumed_only_for_the_ws2_spectra_and_says_so(lake, shared_data, tmp_path):
    folder = shared_data / EELS / WS2
    summary = ingest(lake, [folder / "vacuum_17.txt"], "vacuum")
    note = lake.open("raw", "vacuum").attrs["energy_axis"]
    assert note.startswith("assumed: EELSfitter's WS2 specimen-4 axis "
                           "(--energy-start -4.054 --dispersion 0.025)")
    assert "zero-loss peak at" in note and note in summary
    # the same number of channels with the peak elsewhere is not those spectra: refused
    shifted = np.roll(np.loadtxt(folder / "vacuum_17.txt"), 400)
    (tmp_path / "other.txt").write_text("\t".join(f"{v:g}" for v in shifted) + "\n")
    with pytest.raises(IngestError, match=r"other\.txt: plain-text spectra carry no energy axis; .* found "
                                          r"1981 channels, but their highest mean count is at 9\.9\d* eV"):
        ingest(lake, [tmp_path / "other.txt"], "other")
    assert not lake.exists("raw", "other")
    ingest(lake, [tmp_path / "other.txt"], "other", energy_start=-14.05, dispersion=0.025)
    assert lake.open("raw", "other").attrs["energy_axis"] == "given: --energy-start -14.05 --dispersion 0.025"
