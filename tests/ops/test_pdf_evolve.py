"""pdf.evolve on evolution entries checkable by hand, the LHAPDF export of its result, the lattice
of eko nodes it is evolved on, and the numpy side of kernels.pdf_evolution (no theory package)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import OpError
from engine.ingest.eko_evolution import SYNTHETIC_CARD, synthetic_evolution
from engine.ingest.lhapdf_format import pdfset_from_arrays, read_lhapdf_set, write_lhapdf_set
from engine.kernels import pdf_theory
from engine.kernels.pdf_evolution import EKO_PIDS, lhapdf_flavours, xf_operator
from engine.kernels.pdf_fk import FLAVOURS, x_grid
from engine.ops.pdf_evolve import evolve

Q0 = 1.65
GRID = x_grid(12, 1e-3)
CARD = {"Q0": Q0, "mc": 1.51, "mb": 4.92, "mt": 172.5, "kcThr": 1.0, "kbThr": 1.0, "ktThr": 1.0,
        "MaxNfPdf": 5}
SCALE = 1.0 + 0.1 * np.arange(6)  # node n multiplies every flavour by 1 + n / 10


def fitted_like(grid=GRID, q0: float = Q0, members: int = 3):
    """A set shaped like pdf.fitted_set's: members, the fit's 7 flavours, 4 Q knots from q0."""
    rng = np.random.default_rng(7)
    xf = rng.uniform(0.1, 1.0, (members, len(FLAVOURS), grid.size))
    q = np.geomspace(q0, 100.0, 4)
    info = {"SetDesc": "Replica fit, PDF at Q0 = 1.65 GeV repeated in Q (not evolved)", "NumMembers": members,
            "ErrorType": "replicas", "OrderQCD": 0, "FitBasis": ["Sigma", "T3"]}
    pdf = pdfset_from_arrays([grid], [q], FLAVOURS, [np.repeat(xf[..., None], q.size, -1)], info)
    return pdf.assign(kept=("member", [True, True, False][:members])), xf


def test_evolve_applies_the_operator_node_by_node_in_one_subgrid_per_patch():
    pdf, xf = fitted_like()
    out = evolve(None, pdf, synthetic_evolution(GRID, Q0, scale=SCALE)).compute()
    q = [np.geomspace(Q0, 4.92, 3), np.geomspace(4.92, 100.0, 3)]
    for k in (0, 1):
        np.testing.assert_allclose(out[f"q_{k}"].values, q[k], rtol=1e-15)
    assert out["q_0"].values[-1] == out["q_1"].values[0]  # threshold: last knot of one, first of next
    assert out["flavour"].values.tolist() == lhapdf_flavours(5)
    for k in (0, 1):
        values = out[f"xf_{k}"].sel(flavour=list(FLAVOURS)).transpose("member", "flavour", f"x_{k}", f"q_{k}")
        np.testing.assert_allclose(values.values, xf[..., None] * SCALE[3 * k : 3 * k + 3], rtol=1e-14)
        assert not out[f"xf_{k}"].sel(flavour=[-5, -4, 4, 5]).values.any()  # the synthetic map has no charm
    assert out["kept"].values.tolist() == [True, True, False]


def test_evolved_info_has_the_grid_the_card_and_alpha_s_at_every_knot():
    pdf, _ = fitted_like()
    evolution = synthetic_evolution(GRID, Q0)
    info = evolve(None, pdf, evolution).attrs["lhapdf_info"]
    q2 = np.asarray(evolution.attrs["nodes"]["q2"])
    grid_keys = (info["QMin"], info["QMax"], info["XMin"], info["XMax"])
    assert grid_keys == pytest.approx((Q0, 100.0, GRID[0], 1.0))
    assert info["Flavors"] == lhapdf_flavours(5) and info["NumFlavors"] == 5
    assert info["AlphaS_Qs"] == np.sqrt(q2).tolist() and info["AlphaS_Qs"][2] == info["AlphaS_Qs"][3]
    assert info["AlphaS_Vals"] == evolution.attrs["nodes"]["alpha_s"]
    assert (info["MZ"], info["MBottom"], info["OrderQCD"], info["AlphaS_OrderQCD"]) == (
        SYNTHETIC_CARD["MZ"], SYNTHETIC_CARD["mb"], 2, 2)
    assert info["FitBasis"] == ["Sigma", "T3"] and info["NumMembers"] == 3
    assert "not evolved" not in info["SetDesc"] and "evolved at NNLO with eko" in info["SetDesc"]


def test_evolved_set_round_trips_through_lhapdf_files(tmp_path):
    pdf, _ = fitted_like()
    out = evolve(None, pdf, synthetic_evolution(GRID, Q0, scale=SCALE)).compute()
    back = read_lhapdf_set(write_lhapdf_set(out, tmp_path, "evolved"))
    assert back.sizes["member"] == 2  # the replica `kept` flags False is left out
    for k in (0, 1):
        np.testing.assert_allclose(back[f"xf_{k}"].values, out[f"xf_{k}"].isel(member=[0, 1]).values,
                                   rtol=1e-8)
        assert back[f"q_{k}"].values.tolist() == out[f"q_{k}"].values.tolist()
    assert back.attrs["lhapdf_info"]["AlphaS_Vals"] == out.attrs["lhapdf_info"]["AlphaS_Vals"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda pdf, ev: (fitted_like(x_grid(14, 1e-3))[0], ev), "14 x knots .* x grid 12"),
        (lambda pdf, ev: (fitted_like(q0=1.5)[0], ev), "starts at Q = 1.5 GeV, the evolution at Q0 = 1.65"),
        (lambda pdf, ev: (pdf.sel(flavour=[1, 2, 21]), ev), r"lacks flavours \[-3, -2, -1, 3\]"),
        (lambda pdf, ev: (pdf, ev.assign_attrs(kind="other")), "not an `ingest eko-evolution` entry"),
        (lambda pdf, ev: (ev, ev), "not a PDF set"),
    ],
)
def test_evolve_refuses_a_set_the_operator_does_not_start_from(change, message):
    pdf, evolution = change(fitted_like()[0], synthetic_evolution(GRID, Q0))
    with pytest.raises(OpError, match=message):
        evolve(None, pdf, evolution)


def test_lattice_continues_the_top_patch_with_the_step_of_the_nodes_to_1e5():
    nodes = pdf_theory.lattice(CARD, 5.0, 1e8)
    lo = 4.92**2
    assert sorted(nodes) == [4, 5]
    np.testing.assert_array_equal(nodes[4], np.geomspace(Q0**2, lo, 6))  # bounded patch: as before
    step = np.log(1e5 / lo) / 19  # 20 nodes from m_b^2 to 1e5 at 5 per decade
    np.testing.assert_allclose(np.diff(np.log(nodes[5])), step, rtol=1e-12)
    assert nodes[5][-2] < 1e8 <= nodes[5][-1] and nodes[5].size == 36
    # the nodes up to 1e5 name the cache files the geomspace lattice named (node_operators' names)
    assert [f"{q:.12e}" for q in nodes[5][:20]] == [f"{q:.12e}" for q in np.geomspace(lo, 1e5, 20)]


def test_scale_nodes_are_the_lattice_cut_after_the_data():
    q2 = np.array([3.0, 20.0, 65.0])
    nodes = pdf_theory.scale_nodes(q2, CARD, 5.0)
    lattice = pdf_theory.lattice(CARD, 5.0, 1e5)
    np.testing.assert_array_equal(nodes[4], lattice[4])
    np.testing.assert_array_equal(nodes[5], lattice[5][:5])  # 65 GeV^2: 4 knots around it
    high = pdf_theory.scale_nodes(np.array([30.0, 5e5]), CARD, 5.0)[5]  # above 1e5: the same step on
    np.testing.assert_array_equal(high, pdf_theory.lattice(CARD, 5.0, 5e5)[5][: high.size])
    assert high[-2] < 5e5 <= high[-1]  # the lattice ends at the first node at or above the data


def test_xf_operator_acts_on_xf_at_the_knots_and_interpolates_the_output():
    grid = x_grid(12, 1e-3)
    knots = grid[::2]
    rng = np.random.default_rng(3)
    op = rng.normal(size=(14, knots.size, 14, knots.size))  # eko: f(x_i, Q) = op f(x_j, Q0)
    rotation = rng.normal(size=(5, knots.size))
    x_out = np.geomspace(2e-3, 0.9, 5)
    out_pids = lhapdf_flavours(4)
    xf0 = rng.uniform(size=(len(FLAVOURS), grid.size))
    e = xf_operator(op, knots, rotation, x_out, grid, out_pids)
    f0 = np.zeros((14, knots.size))
    f0[[EKO_PIDS.index(p) for p in FLAVOURS]] = xf0[:, ::2] / knots
    expected = x_out * (rotation @ np.einsum("akbj,bj->ak", op, f0).T).T
    np.testing.assert_allclose(np.einsum("aibj,bj->ai", e, xf0),
                               expected[[EKO_PIDS.index(p) for p in out_pids]], rtol=1e-12)
    assert not e[..., 1::2].any()  # fit-grid points between eko's knots carry no weight
    with pytest.raises(ValueError, match="not points of the fit's grid"):
        xf_operator(op, knots * 1.01, rotation, x_out, grid, out_pids)
