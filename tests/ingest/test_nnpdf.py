"""`ingest nnpdf`: NNPDF commondata into the lake, the covariance built from its systematics."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import IngestError
from tests.conftest import lake_files

pytest.importorskip("nnpdf_data")

from engine.ingest.nnpdf import apply_cuts, ingest_nnpdf, read_commondata  # noqa: E402

SLAC_P = "SLAC_NC_NOTFIXED_P"  # 211 points, one ADD (UNCORR) and two MULT normalisations


@pytest.fixture(scope="module")
def slac():
    return read_commondata([SLAC_P])


def test_slac_proton_points_kinematics_and_uncertainties(slac):
    assert slac.sizes["point"] == 211
    assert slac.attrs["datasets"] == [f"{SLAC_P}_EM-F2"] and slac.attrs["variants"] == ["legacy"]
    assert slac.attrs["kinematics"] == ["x", "Q2", "y"]
    assert np.all(slac["target_index"] == 0) and np.all(slac["dataset_index"] == 0)
    x, q2 = slac["x"].values, slac["Q2"].values
    assert np.all(np.diff(x) >= 0)  # sorted by x, then Q2
    same_x = x[1:] == x[:-1]
    assert np.all(np.diff(q2)[same_x] >= 0)
    # the first published point (x = 0.07, Q2 = 0.59): F2 = 0.27808, stat 0.00695, UNCORR 0.00417
    first = int(np.flatnonzero((x == 0.07) & (q2 == 0.59))[0])
    assert slac["data"][first] == pytest.approx(0.27808)
    assert slac["stat"][first] == pytest.approx(0.00695)
    assert slac["sys_uncorrelated"][first] == pytest.approx(0.00417)
    assert slac["uncorrelated"][first] == pytest.approx(np.hypot(0.00695, 0.00417))
    assert slac["sys_multiplicative"].attrs["names"] == ["SLACNORM", "SLACRELNORM"]
    assert np.allclose(slac["sys_multiplicative"][first], [0.021, 0.0055])


def test_covariance_is_the_sum_of_its_parts_and_positive_definite(slac):
    d = slac["data"].values
    mult = slac["sys_multiplicative"].values * d[:, None]
    expected = np.diag(slac["stat"].values ** 2 + slac["sys_uncorrelated"].values ** 2) + mult @ mult.T
    cov = slac["covariance"].values
    assert np.allclose(cov, expected) and np.allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > 0


def test_cuts_keep_the_covariance_of_the_kept_points(slac):
    cut = apply_cuts(slac, 3.49, 12.5)
    x, q2 = cut["x"].values, cut["Q2"].values
    assert 0 < cut.sizes["point"] < 211 and cut.sizes["point_b"] == cut.sizes["point"]
    assert q2.min() > 3.49 and np.all(q2 * (1 - x) / x > 12.5)
    keep = slac["Q2"].values > 3.49
    assert cut.attrs["cuts"]["points_before"] == 211
    full = apply_cuts(slac, 3.49, None)
    assert np.allclose(full["covariance"].values, slac["covariance"].values[np.ix_(keep, keep)])
    with pytest.raises(IngestError, match="leave no data point"):
        apply_cuts(slac, 1e6, None)


def test_cuts_are_validphys_rule_to_the_letter(slac):
    """validphys cuts DIS at Q^2 > 3.49 and Q^2 (1 - x) / x > 12.5 (no m_p^2 in its W^2): it keeps
    33 of SLAC p's 211 points (vp-setupfit on this dataset); W^2 with m_p^2 kept 37."""
    x, q2 = slac["x"].values, slac["Q2"].values
    w2 = q2 * (1 - x) / x
    cut = apply_cuts(slac, 3.49, 12.5)
    assert cut.sizes["point"] == 33 == np.count_nonzero((q2 > 3.49) & (w2 > 12.5))
    between = (q2 > 3.49) & (w2 <= 12.5) & (w2 + 0.938272**2 > 12.5)
    assert np.count_nonzero(between) == 4
    assert not np.isin(cut["x"].values + 1j * cut["Q2"].values, x[between] + 1j * q2[between]).any()


def test_uncorrelated_multiplicative_part_is_kept_relative(slac):
    """HERA's uncorrelated systematics are partly MULT: their relative size is stored apart so a t0
    covariance can scale them with t0 (SLAC's single UNCORR is ADD: zero there)."""
    assert np.all(slac["sys_uncorrelated_multiplicative"].values == 0)
    hera = read_commondata(["HERA_CC_318GEV_EP-SIGMARED"])
    relative, data = hera["sys_uncorrelated_multiplicative"].values, hera["data"].values
    assert relative.max() > 0.01
    assert np.all((relative * data) ** 2 <= hera["sys_uncorrelated"].values ** 2 * (1 + 1e-12))


def test_ingest_publishes_raw_entry_and_cli_reports_it(lake):
    args = ["ingest", "nnpdf", SLAC_P, "slac", "--q2-min", "3.49", "--lake", lake.root]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stored = lake.open("raw", "slac")
    assert stored.sizes["point"] < 211 and stored.attrs["cuts"]["q2_min"] == 3.49
    assert stored.attrs["replicalake"]["ingest"] == "nnpdf"
    assert "ingested raw/slac" in result.output


@pytest.mark.parametrize("names, message", [
    (["SLAC_NC_NOTFIXD_P"], "unknown NNPDF dataset 'SLAC_NC_NOTFIXD_P' (did you mean 'SLAC_NC_NOTFIXED_P'"),
    (["BCDMS_NC_NOTFIXED_P"], "has observables EM-F2, EM-F2-HEPDATA: name one"),
    (["SLAC_NC_NOTFIXED_P_EM-F3"], "has no observable 'EM-F3' (did you mean 'EM-F2'?)"),
    ([SLAC_P, f"{SLAC_P}_EM-F2"], "named twice"),
])
def test_bad_dataset_names_are_clear_errors_and_write_nothing(lake, names, message):
    with pytest.raises(IngestError) as info:
        ingest_nnpdf(lake, names, "bad")
    assert message in str(info.value)
    assert lake_files(lake) == set()


def test_unknown_variant_and_cli_exit_code(lake):
    with pytest.raises(IngestError, match="has no variant 'nope'; variants: legacy, legacy_dw"):
        ingest_nnpdf(lake, [SLAC_P], "bad", variant="nope")
    import sys

    from engine.cli import main

    argv = sys.argv
    sys.argv = ["replicalake", "ingest", "nnpdf", "SLAC_NC_NOTFIXD_P", "bad", "--lake", lake.root]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    assert exit_info.value.code == 1
    assert lake_files(lake) == set()


def test_parts_given_to_replicas_pseudodata_rebuild_the_covariance():
    """uncorrelated + sys_additive + sys_multiplicative (at the data) = the stored covariance."""
    bcdms = read_commondata(["BCDMS_NC_NOTFIXED_D_EM-F2"])
    d = bcdms["data"].values
    add, mult = bcdms["sys_additive"].values, bcdms["sys_multiplicative"].values * d[:, None]
    assert add.shape[1] == 3 and "BCDMSNORM" in bcdms["sys_multiplicative"].attrs["names"]
    rebuilt = np.diag(bcdms["uncorrelated"].values ** 2) + add @ add.T + mult @ mult.T
    assert np.allclose(rebuilt, bcdms["covariance"].values, rtol=1e-12, atol=1e-15)


def test_longest_set_name_wins_and_non_dis_columns_are_read_by_name():
    from engine.ingest.nnpdf import commondata_root, resolve_name

    resolved = resolve_name("NMC_NC_NOTFIXED_P_EM-SIGMARED", commondata_root())
    assert (resolved.setname, resolved.observable) == ("NMC_NC_NOTFIXED_P", "EM-SIGMARED")
    # CMS Z rapidities: 132 points, 132 ADD columns, 'stat' after the systematics in nnpdf-data's table
    cms = read_commondata(["CMS_Z0_7TEV_DIMUON"])
    assert cms.attrs["kinematics"] == ["y", "m_Z2", "sqrts"] and np.all(cms["target_index"] == -1)
    assert cms.sizes["sys_add"] == 132 and np.all(cms["stat"] == 0)  # published inside the ADD columns
    assert np.linalg.eigvalsh(cms["covariance"].values).min() > 0
