"""LHAPDF lhagrid1 reader/writer: layout, exact round trips, independent readers, bad files.

The fixture tests/data/lhapdf/LHToy was written by make_toy_set.py with plain string formatting
(not our writer) from the Les Houches toy; sets written by our writer are read back by
`lhapdf_management` (exact grid values) and `parton` (its own spline, so within tolerance).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from engine.errors import IngestError
from engine.ingest.lhapdf_format import (
    LhapdfFormatError,
    pdfset_from_arrays,
    read_lhapdf_set,
    write_lhapdf_set,
)
from tests.data.lhapdf.make_toy_set import FLAVOURS, Q_KNOTS, SCALES, X_KNOTS, toy_xf

TOY = Path(__file__).resolve().parents[1] / "data" / "lhapdf" / "LHToy"


@pytest.fixture
def toy_copy(tmp_path) -> Path:
    """A writable copy of the toy set, for breaking it."""
    return Path(shutil.copytree(TOY, tmp_path / "LHToy"))


def test_layout_and_values_at_knots():
    pdf = read_lhapdf_set(TOY)
    assert pdf.xf_0.dims == ("member", "flavour", "x_0", "q_0")
    assert pdf.xf_1.dims == ("member", "flavour", "x_1", "q_1")
    assert pdf.flavour.values.tolist() == FLAVOURS and pdf.member.values.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(pdf.q_1.values, Q_KNOTS[1])
    # the set was written with a numpy whose geomspace differs from some later ones in the last
    # bit (numpy 2.4: 3 of 13 knots); the reader's exactness is what the round trip below
    # checks, printed values included
    np.testing.assert_allclose(pdf.x_0.values, X_KNOTS, rtol=4e-16, atol=0)
    assert pdf.xf_0.dtype == np.float64
    assert pdf.attrs["lhapdf_info"]["ErrorType"] == "replicas"
    assert pdf.attrs["lhapdf_member_headers"]["1"]["PdfType"] == "replica"
    assert pdf.attrs["lhapdf_value_digits"] == 8
    for k, q_knots in enumerate(Q_KNOTS):
        for m, scale in enumerate(SCALES):
            for f, pid in enumerate(FLAVOURS):
                truth = scale * toy_xf(pid, np.array(X_KNOTS)[:, None], np.array(q_knots)[None, :])
                np.testing.assert_allclose(pdf[f"xf_{k}"].values[m, f], truth, rtol=6e-9, atol=1e-300)


def test_round_trip_is_exact_and_keeps_the_printed_values(tmp_path):
    pdf = read_lhapdf_set(TOY)
    written = write_lhapdf_set(pdf, tmp_path, "Again")
    xr.testing.assert_identical(read_lhapdf_set(written), pdf)
    for member in range(3):
        original = (TOY / f"LHToy_{member:04d}.dat").read_text().splitlines()
        again = (written / f"Again_{member:04d}.dat").read_text().splitlines()
        rows = [i for i, line in enumerate(original) if re.match(r"^\d\.\d{8}e", line)]
        assert rows and [original[i] for i in rows] == [again[i] for i in rows]


def test_digits_of_the_file_are_kept(tmp_path):
    pdf = read_lhapdf_set(TOY)
    finer = pdf.copy()
    finer.attrs = {**pdf.attrs, "lhapdf_value_digits": 12}
    fine = read_lhapdf_set(write_lhapdf_set(finer, tmp_path, "Fine"))
    assert fine.attrs["lhapdf_value_digits"] == 12
    again = write_lhapdf_set(fine, tmp_path / "again", "Fine")
    assert (again / "Fine_0001.dat").read_text() == (tmp_path / "Fine" / "Fine_0001.dat").read_text()


def _replica_fit(n_replicas=4, seed=0):
    """A fitted-looking set from arrays: members 1..R, no central member, gluon given as 0."""
    rng = np.random.default_rng(seed)
    xs = [np.geomspace(1e-4, 1, 9), np.geomspace(1e-4, 1, 9)]
    qs = [np.array([1.5, 2.5, 4.0, 4.75]), np.array([4.75, 20.0, 100.0, 500.0, 1e4])]
    values = [np.stack([np.stack([toy_xf(pid, x[:, None], q[None, :]) * rng.uniform(0.9, 1.1)
                                  for pid in (-1, 1, 2, 21)]) for _ in range(n_replicas)])
              for x, q in zip(xs, qs, strict=True)]
    info = {"SetDesc": "a fit", "ErrorType": "replicas", "OrderQCD": 0}
    return pdfset_from_arrays(xs, qs, [-1, 1, 2, 0], values, info, members=range(1, n_replicas + 1))


def test_writer_adds_the_replica_average_as_member_0_and_lhapdf_management_reads_it(tmp_path):
    from lhapdf_management.pdfsets import PDF

    fit = _replica_fit()
    assert fit.flavour.values.tolist() == [-1, 1, 2, 21]
    setdir = write_lhapdf_set(fit, tmp_path, "Fit")
    other = PDF(setdir)
    assert other.info["NumMembers"] == 5 and other.info["Flavors"] == [-1, 1, 2, 21]
    assert other.info["XMin"] == 1e-4 and other.info["QMax"] == 1e4
    for member in range(5):
        grids = other.get_member_grids(member)
        assert len(grids) == 2
        for k, grid in enumerate(grids):
            ours = fit[f"xf_{k}"]
            expected = ours.mean("member") if member == 0 else ours.sel(member=member)
            np.testing.assert_array_equal(grid.x, fit[f"x_{k}"].values)
            np.testing.assert_allclose(grid.q2, fit[f"q_{k}"].values ** 2, rtol=1e-15)
            rows = expected.transpose("x_" + str(k), "q_" + str(k), "flavour").values.reshape(-1, 4)
            np.testing.assert_allclose(grid.grid, rows, rtol=5e-9)
    assert "PdfType: central" in (setdir / "Fit_0000.dat").read_text()
    assert "PdfType: replica" in (setdir / "Fit_0003.dat").read_text()


def test_replicas_dropped_by_post_fit_selection_are_not_exported(tmp_path):
    fit = _replica_fit()
    kept = np.array([True, False, True, True])  # replica 2 failed selection
    setdir = write_lhapdf_set(fit.assign(kept=("member", kept)), tmp_path, "Fit")
    back = read_lhapdf_set(setdir)
    assert back.attrs["lhapdf_info"]["NumMembers"] == 4 and back.sizes["member"] == 4
    survivors = fit["xf_0"].sel(member=fit.member.values[kept])
    np.testing.assert_allclose(back["xf_0"].isel(member=slice(1, None)), survivors, rtol=5e-9)
    np.testing.assert_allclose(back["xf_0"].isel(member=0), survivors.mean("member"), rtol=5e-9)


def test_parton_reads_our_set_between_knots(tmp_path):
    import parton

    pdf = read_lhapdf_set(TOY)
    write_lhapdf_set(pdf, tmp_path, "Out")
    member = parton.PDF("Out", 1, pdfdir=str(tmp_path))
    knot_x, knot_q = np.array(X_KNOTS[2:9]), np.array([2.0, 10.0, 100.0])
    on_knots = member.xfxQ(21, knot_x, knot_q)  # (x, Q) grid
    truth = 1.02 * toy_xf(21, knot_x[:, None], knot_q[None, :])
    np.testing.assert_allclose(on_knots, truth, rtol=1e-7)
    between = np.sqrt(knot_x[:-1] * knot_x[1:])
    np.testing.assert_allclose(member.xfxQ(2, between, knot_q),
                               1.02 * toy_xf(2, between[:, None], knot_q[None, :]), rtol=0.05)


def test_a_set_without_central_member_that_is_not_mc_is_refused(tmp_path):
    fit = _replica_fit()
    fit.attrs["lhapdf_info"]["ErrorType"] = "hessian"
    with pytest.raises(IngestError, match="no member 0 and ErrorType is 'hessian'"):
        write_lhapdf_set(fit, tmp_path, "Fit")


def test_constructor_checks_shapes_and_subgrid_continuity():
    xs, qs = [np.geomspace(1e-3, 1, 5)], [np.array([2.0, 3.0, 5.0])]
    with pytest.raises(IngestError, match=r"expected values of shape .* = \(1, 2, 5, 3\), "
                       r"found \(1, 2, 3, 5\)"):
        pdfset_from_arrays(xs, qs, [1, 2], [np.ones((1, 2, 3, 5))], {})
    with pytest.raises(IngestError, match="first Q knot to be the last of subgrid 0"):
        pdfset_from_arrays(xs * 2, [qs[0], np.array([6.0, 9.0])], [1, 2],
                           [np.ones((1, 2, 5, 3)), np.ones((1, 2, 5, 2))], {})


# -- bad files ------------------------------------------------------------------------------------
def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def _edit_line(path: Path, line: int, new: str | None) -> None:
    lines = path.read_text().splitlines()
    if new is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new
    path.write_text("\n".join(lines) + "\n")


def _break_info_yaml(setdir):
    _edit(setdir / "LHToy.info", "NumMembers: 3", "NumMembers: 3: 4")


def _no_format(setdir):
    _edit(setdir / "LHToy.info", "Format: lhagrid1\n", "")


def _wrong_format(setdir):
    _edit(setdir / "LHToy.info", "Format: lhagrid1", "Format: lhagrid2")


def _no_flavors(setdir):
    _edit(setdir / "LHToy.info", "Flavors: [-3, -2, -1, 1, 2, 3, 21]\n", "")


def _extra_column(setdir):
    _edit_line(setdir / "LHToy_0001.dat", 10, "1.0 " * 8)


def _bad_number(setdir):
    _edit_line(setdir / "LHToy_0002.dat", 12, "1.0 2.0 3.0 x4 5.0 6.0 7.0")


def _decreasing_x(setdir):
    lines = (setdir / "LHToy_0000.dat").read_text().splitlines()
    knots = lines[3].split()
    knots[4], knots[5] = knots[5], knots[4]
    _edit_line(setdir / "LHToy_0000.dat", 4, " ".join(knots))


def _missing_block(setdir):
    lines = (setdir / "LHToy_0002.dat").read_text().splitlines()
    cut = [i for i, line in enumerate(lines) if line == "---"][1]
    (setdir / "LHToy_0002.dat").write_text("\n".join(lines[:cut + 1]) + "\n")


def _missing_row(setdir):
    _edit_line(setdir / "LHToy_0001.dat", 20, None)


def _too_few_members(setdir):
    (setdir / "LHToy_0002.dat").unlink()


def _too_many_members(setdir):
    _edit(setdir / "LHToy.info", "NumMembers: 3", "NumMembers: 2")


def _flavours_disagree(setdir):
    _edit(setdir / "LHToy.info", "Flavors: [-3, -2, -1, 1, 2, 3, 21]", "Flavors: [-3, -2, -1, 1, 2, 4, 21]")


def _other_knots_in_a_member(setdir):
    _edit_line(setdir / "LHToy_0001.dat", 5, "1.4142135623730951 2.0 3.5 4.75")


BAD_FILES = [
    (_break_info_yaml, r"LHToy\.info:5: not valid YAML"),
    (_no_format, r"LHToy\.info: expected 'Format: lhagrid1', the key is missing"),
    (_wrong_format, r"LHToy\.info:3: expected 'Format: lhagrid1', found 'lhagrid2'"),
    (_no_flavors, r"LHToy\.info: expected 'Flavors: \[PDG ids\]' .* the key is missing"),
    (_extra_column, r"LHToy_0001\.dat:10: expected 7 columns \(one per PDG id\), found 8"),
    (_bad_number, r"LHToy_0002\.dat:12: expected numbers, found '1.0 2.0 3.0 x4"),
    (_decreasing_x, r"LHToy_0000\.dat:4: expected at least 2 strictly increasing x knots, found .* "
                    r"followed by"),
    (_missing_block, r"LHToy_0002\.dat:\d+: expected 2 subgrid blocks like member 0, found 1"),
    (_missing_row, r"LHToy_0001\.dat:7: expected 13 x knots \* 4 Q knots = 52 rows of values before '---', "
                   r"found 51"),
    (_too_few_members, r"LHToy\.info: NumMembers is 3, so expected LHToy_0000\.dat \.\. LHToy_0002\.dat; "
                       r"found 2 member files, missing LHToy_0002\.dat"),
    (_too_many_members, r"NumMembers is 2, so expected .* found 3 member files"),
    (_flavours_disagree, r"LHToy_0000\.dat: expected the PDG ids declared in Flavors "
                         r"\[-3, -2, -1, 1, 2, 4, 21\]"),
    (_other_knots_in_a_member, r"LHToy_0001\.dat:5: expected the Q knots of member 0 in subgrid 0"),
]


@pytest.mark.parametrize(("breaker", "message"), BAD_FILES, ids=[b.__name__.strip("_") for b, _ in BAD_FILES])
def test_bad_files_name_file_and_line(toy_copy, breaker, message):
    breaker(toy_copy)
    with pytest.raises(LhapdfFormatError, match=message):
        read_lhapdf_set(toy_copy)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(LhapdfFormatError, match="expected an LHAPDF set folder, found no such folder"):
        read_lhapdf_set(tmp_path / "Nope")
