"""NNLO DIS FK tables (engine/kernels/pdf_theory.py, `ingest nnpdf-fk`).

The numpy parts (nf patches, Q^2 nodes, operator interpolation, eko's x grid) and the ingest's
refusals run everywhere. The theory pipeline itself needs yadism, eko, pineko, pineappl and
nnpdf-data, which cannot share this project's environment (they pin rich<13): those tests run
the pipeline in the interpreter named by $REPLICALAKE_THEORY_PYTHON and skip cleanly without it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import IngestError
from engine.ingest.fk_theory import (
    THEORY_PYTHON_ENV,
    _interpreter,
    _join,
    antisymmetric_share,
    cc_lo_weights,
    check_beam_energy,
    dis_coverages,
    dis_observables,
    proton_beam_targets,
    read_dis_data,
)
from engine.ingest.nnpdf import read_commondata
from engine.kernels.pdf_fk import lagrange_weights, les_houches_toy, x_grid
from engine.kernels.pdf_theory import eko_grid, interpolated_operators, nf_of, patches, scale_nodes
from engine.storage import PROVENANCE_KEY

ROOT = Path(__file__).resolve().parents[2]
# NNPDF4.0's card 40000000: Q0 = 1.65 GeV above the charm threshold (nf0 = 4), bottom at 4.92 GeV
THEORY = {
    "Q0": 1.65,
    "mc": 1.51,
    "mb": 4.92,
    "mt": 172.5,
    "kcThr": 1.0,
    "kbThr": 1.0,
    "ktThr": 1.0,
    "MaxNfPdf": 5,
}


def theory_python() -> str:
    """The interpreter holding the theory extra, or skip."""
    python = os.environ.get(THEORY_PYTHON_ENV)
    if not python:
        pytest.skip(f"${THEORY_PYTHON_ENV} names no interpreter with the theory extra")
    try:
        return _interpreter(python)
    except IngestError as exc:
        pytest.skip(str(exc))


def test_patches_start_at_q0_and_split_at_matching_scales():
    assert patches(THEORY) == [(4, 1.65**2, 4.92**2), (5, 4.92**2, 1e10)]  # MaxNfPdf 5: no top
    q2 = np.array([2.7225, 24.2, 24.3, 1e4])
    assert nf_of(q2, THEORY).tolist() == [4, 4, 5, 5]
    with pytest.raises(ValueError, match="below Q0"):
        nf_of(np.array([2.0]), THEORY)


def test_nodes_depend_on_the_theory_only():
    """Nodes are a patch's grid (so any dataset reuses them), 5 per decade by default, up to
    the ones the data's scales use."""
    slac = scale_nodes(np.array([3.5, 8.0, 22.0]), THEORY, 5.0)
    other = scale_nodes(np.array([10.0]), THEORY, 5.0)
    assert list(slac) == [4] and np.array_equal(slac[4][: other[4].size], other[4]) and other[4].size == 5
    assert slac[4][0] == pytest.approx(1.65**2) and slac[4][-1] == pytest.approx(4.92**2)
    assert slac[4].size == int(np.ceil(np.log10(4.92**2 / 1.65**2) * 5)) + 1
    both = scale_nodes(np.array([5.0, 100.0]), THEORY, 5.0)
    assert list(both) == [4, 5] and both[5][0] == pytest.approx(4.92**2)
    whole = np.geomspace(4.92**2, 1e5, int(np.ceil(np.log10(1e5 / 4.92**2) * 5)) + 1)  # the patch to 1e5
    assert np.array_equal(both[5], whole[: both[5].size]) and both[5].size == 6  # 100 < 139.7: 2 above


def test_nodes_stop_where_the_interpolation_stops_using_them():
    """The nf = 5 nodes end after the last one the cubic window of the data's top scale uses:
    the interpolation weights at every scale are those of the whole patch's nodes."""
    whole = np.geomspace(4.92**2, 1e5, int(np.ceil(np.log10(1e5 / 4.92**2) * 5)) + 1)
    for top in (25.0, 58.15259926, 65.0, 260.0, 9e4):
        scales = np.geomspace(4.92**2 * 1.001, top, 40)
        kept = scale_nodes(scales, THEORY, 5.0)[5]
        assert np.array_equal(kept, whole[: kept.size]) and kept.size < whole.size or top > 5e4
        full = lagrange_weights(whole, scales)
        assert np.array_equal(full[:, kept.size :], np.zeros_like(full[:, kept.size :]))
        np.testing.assert_array_equal(lagrange_weights(kept, scales), full[:, : kept.size])
    assert scale_nodes(np.array([30.0, 65.0]), THEORY, 5.0)[5].size == 5  # NMC's Q^2 <= 65 GeV^2


def test_operator_interpolation_is_exact_for_cubics_in_ln_q2():
    """Cubic Lagrange in ln Q^2 reproduces an operator cubic in ln Q^2 to rounding, and stays in
    its own nf patch (a jump at the bottom threshold must not leak across)."""
    nodes = scale_nodes(np.array([3.0, 24.0, 9000.0]), THEORY, 5.0)  # the scales below are inside
    rng = np.random.default_rng(7)
    coefficients = {nf: rng.normal(size=(4, 2, 3)) for nf in nodes}

    def operator(q2, nf):
        t = np.log(q2)
        return sum(c * t**k for k, c in enumerate(coefficients[nf])) + 100.0 * (nf == 5)

    at_nodes = {(float(q), nf): operator(q, nf) for nf, values in nodes.items() for q in values}
    q2 = np.array([3.1, 7.7, 24.0, 24.5, 150.0, 9000.0])
    for value, got in zip(q2, interpolated_operators(q2, THEORY, nodes, at_nodes)):
        np.testing.assert_allclose(got, operator(value, nf_of(np.array([value]), THEORY)[0]), rtol=1e-10)


def test_eko_grid_keeps_every_kth_point_and_x_equal_one():
    grid = x_grid(50, 1e-3)
    coarse = eko_grid(grid, 4)
    assert coarse[0] == grid[0] and coarse[-1] == 1.0 and np.isin(coarse, grid).all()
    assert coarse.size == 14 and np.array_equal(eko_grid(grid, 1), grid)


def test_f2_and_hera_nc_observables_are_built():
    coverages = dis_coverages(
        ["SLAC_NC_NOTFIXED_P", "BCDMS_NC_NOTFIXED_D_EM-F2", "NMC_NC_NOTFIXED_P_EM-F2-HEPDATA"]
    )
    assert coverages == [("x", "Q2", "y"), ("x", "Q2", "y"), ("x", "Q2", "extra_0")]
    dis_coverages(["NMC_NC_NOTFIXED_D_EM-F2-HEPDATA", "BCDMS_NC_NOTFIXED_P_EM-F2-HEPDATA"])
    slac, ep, em, low = dis_observables(
        [
            "SLAC_NC_NOTFIXED_P",
            "HERA_NC_318GEV_EP-SIGMARED",
            "HERA_NC_318GEV_EM-SIGMARED",
            "HERA_NC_225GEV_EP-SIGMARED",
        ]
    )
    assert (slac.observable, slac.process, slac.sqrt_s, slac.proton_beam) == ("F2_total", "EM", None, False)
    assert (ep.observable, ep.process, ep.projectile, ep.sqrt_s) == (
        "XSHERANC_total",
        "NC",
        "positron",
        318.0,
    )
    assert (em.projectile, em.sqrt_s, low.projectile, low.sqrt_s) == ("electron", 318.0, "positron", 225.0)
    assert ep.block("proton") == {
        "target": "proton",
        "observable": "XSHERANC_total",
        "process": "NC",
        "projectile": "positron",
        "polarization": 0.0,
    }


def test_hera_cc_observables_are_built_per_projectile():
    """HERA I+II CC e+p and e-p: yadism's XSHERACC (W exchange) for the positron or electron
    beam named by the observable, at the set's beam energy, a proton target (y checked as NC's)."""
    names = ["HERA_CC_318GEV_EP-SIGMARED", "HERA_CC_318GEV_EM-SIGMARED"]
    ep, em = dis_observables(names)
    assert (ep.observable, ep.process, ep.projectile, ep.sqrt_s, ep.proton_beam) == (
        "XSHERACC_total",
        "CC",
        "positron",
        318.0,
        True,
    )
    assert (em.observable, em.process, em.projectile) == ("XSHERACC_total", "CC", "electron")
    data = proton_beam_targets(read_dis_data(names, None, dis_coverages(names)), [ep, em])
    assert data.attrs["dataset_points"] == [39, 42] and (data["target_index"].values == 0).all()
    check_beam_energy(data, [ep, em])
    with pytest.raises(IngestError, match=r"HERA_CC_318GEV_EM-SIGMARED: y differs .* sqrt\(s\) = 225"):
        check_beam_energy(data, [ep, dataclasses.replace(em, sqrt_s=225.0)])


def test_other_observables_are_refused_with_the_reason():
    """Before any slow work, each refused dataset named with why (the default suite needs no
    theory packages for this)."""
    cases = {
        # NMC's sigma_red has its own definition (kinematics x, Q2, sqrt s): not HERA's XSHERANC
        "NMC_NC_NOTFIXED_P_EM-SIGMARED": r"\(observable EM-SIGMARED: neither EM F2 nor HERA",
        # NMC's d/p ratio ends in EM-F2 too: refused for its RATIO of two tables, not its name
        "NMC_NC_NOTFIXED_EM-F2": r"NMC_NC_NOTFIXED_EM-F2 \(theory operation RATIO of 2 FK",
        # neutrino CC on nuclei: neither yadism target here nor HERA's normalisation
        "CHORUS_CC_NOTFIXED_PB_NU-SIGMARED": r"\(charged current off HERA's e\+-p: a neutrino beam",
        "NUTEV_CC_NOTFIXED_FE_NB-SIGMARED": r"NB-SIGMARED \(charged current off HERA's",
        "HERA_NC_318GEV_EAVG_CHARM-SIGMARED": r"\(observable CHARM-SIGMARED: neither",
    }
    for name, reason in cases.items():
        with pytest.raises(IngestError, match=r"builds EM F2 .* HERA's inclusive NC and CC.*" + reason):
            dis_observables(["SLAC_NC_NOTFIXED_P_EM-F2", "HERA_CC_318GEV_EP-SIGMARED", name])
    with pytest.raises(IngestError, match="has observables EM-F2-HEPDATA, EM-SIGMARED|has observables"):
        dis_observables(["NMC_NC_NOTFIXED_P"])  # two observables: name one


def test_hera_points_are_proton_targets_at_their_beam_energy():
    """ingest nnpdf leaves HERA's target at -1 (no _P in its name): the FK ingest makes it a
    proton so pdf.fit sees it; y must be Q^2 / (x s) of the set's sqrt(s)."""
    names = ["SLAC_NC_NOTFIXED_D", "HERA_NC_225GEV_EP-SIGMARED"]
    observables = dis_observables(names)
    read = read_dis_data(names, None, dis_coverages(names))
    assert set(read["target_index"].values.tolist()) == {1, -1}
    data = proton_beam_targets(read, observables)
    hera = data["dataset_index"].values == 1
    assert (data["target_index"].values[hera] == 0).all() and (data["target_index"].values[~hera] == 1).all()
    check_beam_energy(data, observables)
    wrong = [dataclasses.replace(observables[1], sqrt_s=318.0)]  # 225 GeV data read as 318 GeV
    with pytest.raises(IngestError, match=r"HERA_NC_225GEV_EP-SIGMARED: y differs .* sqrt\(s\) = 318"):
        check_beam_energy(data, observables[:1] + wrong)


def test_the_antisymmetric_share_is_what_q_equal_qbar_drops():
    """A table with equal q and qbar columns (photon-exchange F2) loses nothing when q = qbar;
    one with an xF3-like q - qbar column loses exactly FK . (xf - xf_sym)."""
    grid = x_grid(12, 1e-2)
    toy = les_houches_toy(grid)
    rng = np.random.default_rng(11)
    pairs = rng.uniform(0.1, 1.0, size=(3, grid.size, 4))  # one column each: s, u, d pairs and g
    fk = pairs[:, :, [0, 1, 2, 2, 1, 0, 3]]  # FLAVOURS: sbar ubar dbar d u s g, q column = qbar's
    shares = antisymmetric_share(fk, grid, np.array([0, 0, 1]), 2)
    assert len(shares) == 2 and max(share["max"] for share in shares) < 1e-15  # zero up to rounding
    odd = fk.copy()
    odd[:, :, 4] += 0.3  # u's column only, like xF3's u - ubar
    valence = np.einsum("nx,x->n", np.full((3, grid.size), 0.3), (toy[:, 4] - toy[:, 1]) / 2)
    expected = np.abs(valence) / np.abs(np.einsum("nxf,xf->n", odd, toy))
    share = antisymmetric_share(odd, grid, np.zeros(3, int), 1)[0]
    assert share["max"] == pytest.approx(expected.max(), rel=1e-12) and share["median"] > 0


def test_charged_current_reports_its_valence_share():
    """CC at LO on grid points: the reported q - qbar part is the valence term the q = qbar basis
    drops, |u_v - (1 - y)^2 d_v| / 2 for e-p and |(1 - y)^2 d_v - u_v| / 2 for e+p (over sigma_red)."""
    grid = x_grid(12, 1e-2)
    x, y = grid[[3, 7, 10]], np.array([0.1, 0.4, 0.7])
    toy = les_houches_toy(x)
    uv, dv = toy[:, 4] - toy[:, 1], toy[:, 3] - toy[:, 2]  # FLAVOURS: sbar ubar dbar d u s g
    for projectile in ("electron", "positron"):
        weights = cc_lo_weights(projectile, y)
        fk = lagrange_weights(grid, x)[:, :, None] * weights[:, None, :]
        sigma = np.einsum("nf,nf->n", weights, toy)
        shares = antisymmetric_share(fk, grid, np.array([0, 0, 1]), 2)
        expected = np.abs(uv - (1 - y) ** 2 * dv) / 2 / sigma
        assert shares[1]["max"] == pytest.approx(expected[2], rel=1e-10)
        assert shares[0]["max"] == pytest.approx(expected[:2].max(), rel=1e-10)


def test_datasets_with_other_kinematics_join_with_their_covariance():
    """SLAC (x, Q2, y) and NMC's HEPDATA F2 (x, Q2) in one entry; joining the parts of one
    read reproduces read_commondata exactly (shared systematics stay correlated)."""
    slac = ["SLAC_NC_NOTFIXED_P", "SLAC_NC_NOTFIXED_D"]
    whole = read_commondata(slac)
    joined = _join([read_commondata(slac[:1]), read_commondata(slac[1:])])
    for name in ("data", "dataset_index", "covariance", "x", "Q2", "y", "target_index"):
        np.testing.assert_allclose(joined[name].values, whole[name].values, rtol=1e-14, atol=0)
    assert joined.attrs["datasets"] == whole.attrs["datasets"]
    names = slac[:1] + ["NMC_NC_NOTFIXED_P_EM-F2-HEPDATA"]
    mixed = read_dis_data(names, None, dis_coverages(names))
    n = whole.attrs["dataset_points"][0]
    nmc = read_commondata(names[1:])
    assert mixed.attrs["datasets"] == ["SLAC_NC_NOTFIXED_P_EM-F2", "NMC_NC_NOTFIXED_P_EM-F2-HEPDATA"]
    assert mixed.attrs["dataset_points"] == [n, 158] and list(np.bincount(mixed["dataset_index"].values)) == [
        n,
        158,
    ]
    np.testing.assert_allclose(mixed["covariance"].values[n:, n:], nmc["covariance"].values, rtol=1e-14)
    assert not mixed["covariance"].values[:n, n:].any()
    assert np.isnan(mixed["y"].values[n:]).all() and np.isfinite(mixed["y"].values[:n]).all()


def test_an_interpreter_without_the_theory_extra_is_named(tmp_path):
    with pytest.raises(IngestError, match=r"no interpreter at"):
        _interpreter(str(tmp_path / "python"))
    missing = subprocess.run([sys.executable, "-c", "import yadism"], capture_output=True).returncode
    if missing:  # this environment (the project's) lacks the theory packages: the error says where
        with pytest.raises(IngestError, match=r"lacks them.*--theory-python.*REPLICALAKE_THEORY_PYTHON"):
            _interpreter(sys.executable)


SCRIPT = """
import json, sys, numpy as np, pineappl
from pathlib import Path
from engine.kernels import pdf_theory as pt
from engine.kernels.pdf_fk import FLAVOURS, les_houches_toy, x_grid
cache, work, case = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
theory = pt.theory_card(40000000, "ZM-VFNS")
xg = x_grid(20, case["x_min"])
x, q2, y = (np.array(case[k], float) for k in ("x", "Q2", "y"))
grid, _ = pt.yadism_grid(theory, pt.observables_card(x, q2, y, case["block"], xg), cache)
scales = pt.evolution_scales(grid, theory)
ocard = pt.operator_card(grid, theory, xg, work)
identity = np.einsum("ab,ij->aibj", np.eye(14), np.eye(xg.size))
fk, _ = pt.fit_flavours(pt.fk_from_operators(grid, theory, ocard, scales, [identity] * scales.size, work))
new_theory, _ = pt._eko_cards(theory, ocard, [(scales[0], 4)])
from eko.couplings import Couplings, couplings_mod_ev
from eko.io.types import EvolutionMethod
heavy = new_theory.heavy
sc = Couplings(new_theory.couplings, new_theory.order, couplings_mod_ev(EvolutionMethod("truncated")),
               masses=[m.value**2 for m in heavy.masses], hqm_scheme=heavy.masses_scheme,
               thresholds_ratios=(np.array(heavy.matching_ratios) ** 2).tolist())
def toy(pid, xx, qq):
    return float(les_houches_toy(np.array([xx]))[0, FLAVOURS.index(pid)]) if pid in FLAVOURS else 0.0
def alphas(qq):  # in the nf patch of the scale, as the FK's operators are
    return 4 * np.pi * sc.a_s(qq, nf_to=int(pt.nf_of(np.array([qq]), theory)[0]))
mask = pineappl.boc.Order.create_mask(grid.orders(), 3, 0, True)
conv = pineappl.convolutions.Conv(pineappl.convolutions.ConvType(False, False), 2212)
reference = grid.convolve(pdg_convs=[conv], xfxs=[toy], alphas=alphas, order_mask=mask)
xf = les_houches_toy(xg)
odd = (xf - xf[:, [FLAVOURS.index(-f if f != 21 else f) for f in FLAVOURS]]) / 2  # (q - qbar) / 2
fk_xf = np.einsum("nxf,xf->n", fk, xf)
share = np.abs(np.einsum("nxf,xf->n", fk, odd)) / fk_xf  # the q - qbar part of the observable
print(json.dumps({"fk": fk_xf.tolist(), "grid": list(reference), "q_minus_qbar": share.tolist()}))
"""
F2_BLOCK = {
    "observable": "F2_total",
    "process": "EM",
    "projectile": "electron",
    "target": "proton",
    "polarization": 0.0,
}
# HERA I+II NC e+p at sqrt(s) = 318 GeV (HERA_NC_318GEV_EP-SIGMARED points, y = Q^2 / (x s)): the
# reduced cross section adds F_L and, with Z exchange, xF3 (q - qbar), large at Q^2 = 5000
HERA_BLOCK = {
    "observable": "XSHERANC_total",
    "process": "NC",
    "projectile": "positron",
    "target": "proton",
    "polarization": 0.0,
}
IDENTITY_CASES = {
    "slac_f2": {
        "x_min": 1e-2,
        "x": [0.05, 0.2, 0.45],
        "Q2": [4.0, 8.0, 15.0],
        "y": [0.0] * 3,
        "block": F2_BLOCK,
        "range": (0.2, 0.6),
        "q_minus_qbar": [1e-12] * 3,  # photon exchange: q and qbar columns equal
    },  # F2 of the toy at these x: ~0.3-0.4
    "hera_nc_ep": {
        "x_min": 1e-3,
        "x": [0.002, 0.032, 0.08],
        "Q2": [3.5, 35.0, 5000.0],
        "y": [3.5 / (0.002 * 318.0**2), 35.0 / (0.032 * 318.0**2), 5000.0 / (0.08 * 318.0**2)],
        "block": HERA_BLOCK,
        "range": (0.3, 1.2),
        "q_minus_qbar": [1e-4, 1e-3, 0.5],  # the Z's xF3: measured 5e-7, 2e-5, 0.23 (e+: negative)
    },  # the data there: 0.57, 0.52, ~0.45-0.6
    **{
        f"hera_cc_{beam}": {
            "x_min": 1e-3,
            "x": [0.013, 0.08, 0.4],
            "Q2": [300.0, 1500.0, 8000.0],
            "y": [300.0 / (0.013 * 318.0**2), 1500.0 / (0.08 * 318.0**2), 8000.0 / (0.4 * 318.0**2)],
            "block": dict(HERA_BLOCK, observable="XSHERACC_total", process="CC", projectile=projectile),
            "range": (0.02, 1.5),
            "q_minus_qbar": bounds,  # W exchange: measured e+p 0.095, 0.35, 1.44; e-p 0.080, 0.21, 0.37
        }
        for beam, projectile, bounds in (
            ("ep", "positron", [0.2, 0.6, 2.0]),  # q = qbar replaces ubar by (u + ubar) / 2 at x = 0.4
            ("em", "electron", [0.2, 0.4, 0.6]),
        )
    },
}


def cc_lo(spec: dict) -> np.ndarray:
    """HERA's sigma_red^CC of the toy at LO: x (ubar + (1 - y)^2 (d + s)) for e+p, x (u + (1 - y)^2
    (dbar + sbar)) for e-p; yadism's grid must match it up to its NNLO coefficient functions."""
    weights = cc_lo_weights(spec["block"]["projectile"], np.array(spec["y"]))
    return np.einsum("nf,nf->n", weights, les_houches_toy(np.array(spec["x"])))


@pytest.mark.slow  # yadism's fixed cost (~30-100 s on our CPU) even for 3 points
@pytest.mark.parametrize("case", sorted(IDENTITY_CASES))
def test_fk_assembly_matches_the_grid_with_identity_evolution(tmp_path, case):
    """With unit operators the FK table is the yadism grid itself at Q0: FK . xf must equal
    PineAPPL's own convolution of the grid with the toy PDF held fixed in Q (measured: 4.5e-12
    relative on SLAC p's 37 points), which checks pineko's combination, the evolution-to-flavour
    rotation, the xf vs f convention and the x placement, everything but eko's numbers. For
    HERA's reduced cross section it also checks F_L and the Z exchange's xF3, whose q and qbar
    columns differ (the toy has valence quarks), and a point in the nf = 5 patch."""
    python = theory_python()
    (tmp_path / "work").mkdir()
    spec = IDENTITY_CASES[case]
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    done = subprocess.run(
        [python, "-c", SCRIPT, str(tmp_path), str(tmp_path / "work"), json.dumps(spec)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(result["fk"], result["grid"], rtol=1e-9)
    low, high = spec["range"]
    assert low < min(result["grid"]) and max(result["grid"]) < high
    assert np.all(np.array(result["q_minus_qbar"]) < spec["q_minus_qbar"])
    if spec["block"]["process"] == "NC":  # Z exchange booked: xF3 is a tenth or more at 5000 GeV^2
        assert result["q_minus_qbar"][-1] > 0.1
    if spec["block"]["process"] == "CC":  # HERA's normalisation (1/4 of yadism's W2, WL, xW3 sum)
        np.testing.assert_allclose(result["grid"], cc_lo(spec), rtol=0.15)
        assert min(result["q_minus_qbar"]) > 0.05  # W exchange: q and qbar enter apart at every Q^2


@pytest.mark.slow  # eko: ~45 CPU-min of numba compile the first time (cached in the lake), then ~40 s a node
def test_ingest_builds_an_nnlo_table_for_slac(lake):
    """One real table: SLAC proton F2 at NNLO (theory 40000000, ZM-VFNS). The toy PDF's NNLO F2
    must sit near the data (the toy was fitted to such data) and the interpolation in Q^2 must
    match a direct eko run at a data scale."""
    from engine.ingest.fk_theory import ingest_nnpdf_fk
    from engine.kernels.pdf_fk import les_houches_toy

    python = theory_python()
    ingest_nnpdf_fk(
        lake,
        ["SLAC_NC_NOTFIXED_P_EM-F2"],
        "slac_nnlo",
        theory_python=python,
        check_scales=[8.0],
        eko_stride=int(os.environ.get("REPLICALAKE_THEORY_EKO_STRIDE", "1")),
        jit=os.environ.get("REPLICALAKE_THEORY_JIT", "1") == "1",
    )
    entry = lake.open("raw", "slac_nnlo").load()
    assert entry.sizes["point"] == 37 and entry["fk"].dims == ("point", "x_grid", "flavour")
    predicted = np.einsum("nxf,xf->n", entry["fk"].values, les_houches_toy(entry["x_grid"].values))
    ratio = predicted / entry["data"].values
    assert 0.7 < np.median(ratio) < 1.3
    provenance = entry.attrs[PROVENANCE_KEY]["theory"]
    assert provenance["theory_card"]["ID"] == 40000000 and provenance["theory_card"]["FNS"] == "ZM-VFNS"
    assert provenance["interpolation_checks"][0]["max_relative_difference"] < 1e-3
