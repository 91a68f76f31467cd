"""The inputs each shipped recipe (recipes/*.yaml) reads, ingested small into a lake.

Why here: running a shipped recipe as shipped needs its catalog entries in the lake, and the
recipes' headers say how to ingest them at full size. These are the same ingests, small enough
for a test or a benchmark (tests/benchmarks/bench_memory_projection.py) to run every recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.storage import Lake

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# 64 x 64 pixels in the default 32 x 32-pixel chunks (8 MiB at 2048 channels): four chunks, so
# the chunk-proportional terms of a run are visible beside the process baseline.
EELS_SHAPE = (64, 64, 2048)
# eels_dielectric.yaml plots pixel (64, 64), so its wide-window image needs 65 pixels a side.
EELS_WIDE_SHAPE = (72, 72, 2048)
NNPDF_DIS = ["SLAC_NC_NOTFIXED_P", "SLAC_NC_NOTFIXED_D", "BCDMS_NC_NOTFIXED_P_EM-F2",
             "BCDMS_NC_NOTFIXED_D_EM-F2"]


def _eels_demo(lake: Lake) -> None:
    from engine.ingest.synthetic_eels import ingest_synthetic_eels

    ingest_synthetic_eels(lake, "eels_demo", EELS_SHAPE, seed=5, progress=False)


def _eels_wide(lake: Lake) -> None:
    from engine.ingest.synthetic_eels import ingest_synthetic_eels

    ingest_synthetic_eels(lake, "eels_wide", EELS_WIDE_SHAPE, seed=3, energy_range=(-5.0, 200.0),
                          progress=False)


def _ws2_specimen4(lake: Lake) -> None:
    from engine.ingest.eels_files import ingest_eels_files

    folder = SHARED_DATA / "eels" / "ws2_specimen4_lowloss"
    files = sorted(folder.glob("specimen_*.txt")) + sorted(folder.glob("vacuum_*.txt"))
    if not files:
        raise FileNotFoundError(f"no WS2 spectra in {folder}")
    ingest_eels_files(lake, files, "ws2_specimen4", progress=False)


def _zmumu(lake: Lake) -> None:
    import skhep_testdata

    from engine.ingest.root_files import ingest_root_files

    ingest_root_files(lake, [skhep_testdata.data_path("uproot-Zmumu.root")], "zmumu", "events",
                      step_size=500)


def _top_jets(lake: Lake) -> None:
    from engine.ingest.jet_tables import ingest_synthetic_jets

    ingest_synthetic_jets(lake, "top_jets", 5000, seed=11, progress=False)


def _calo(lake: Lake) -> None:
    from engine.ingest.synthetic_calo import ingest_synthetic_calo

    ingest_synthetic_calo(lake, "calo_showers", n_showers=2000, chunk=1000, progress=False)
    ingest_synthetic_calo(lake, "calo_reference", n_showers=1000, seed=1, progress=False)


def _dis_f2(lake: Lake) -> None:
    from engine.ingest.nnpdf import ingest_nnpdf

    ingest_nnpdf(lake, NNPDF_DIS, "dis_f2", q2_min=3.49, w2_min=12.5)


def synthetic_nnlo_tables(x, target, grid, gluon: float = 0.05, q0: float = 1.65):
    """fk(point, x_grid, flavour) shaped like `ingest nnpdf-fk`'s: LO F2 plus `gluon` x g at each
    point's x (a gluon column, as NNLO F2 has) and the input scale in attrs q0_gev."""
    from engine.kernels.pdf_fk import FLAVOURS, f2_fk_table

    fk = f2_fk_table(x, target, grid)
    fk[..., FLAVOURS.index(21)] = gluon * fk[..., FLAVOURS.index(2)] / (4 / 9)  # u column / e_u^2
    return fk, {"q0_gev": q0}


def _dis_f2_nnlo(lake: Lake) -> None:
    """raw/dis_f2_nnlo as `ingest nnpdf-fk` writes it, with synthetic tables: the real ones need
    the theory environment (README "PDF theory: NNLO FK tables") and minutes to build."""
    from engine.ingest.nnpdf import apply_cuts, read_commondata
    from engine.kernels.pdf_fk import FLAVOURS, x_grid
    from engine.testing import put_in_lake

    data = apply_cuts(read_commondata(NNPDF_DIS[:2]), 3.49, 12.5)
    grid = x_grid()
    fk, attrs = synthetic_nnlo_tables(data["x"].values, data["target_index"].values, grid)
    data = data.assign(fk=(("point", "x_grid", "flavour"), fk, attrs))
    put_in_lake(lake, "dis_f2_nnlo", data.assign_coords(x_grid=grid, flavour=list(FLAVOURS)))


def _dis_f2_nmc_nnlo(lake: Lake) -> None:
    """raw/dis_f2_nmc_nnlo (SLAC p + NMC p and d, F2) as `ingest nnpdf-fk` joins them, synthetic tables."""
    from engine.ingest.fk_theory import dis_coverages, read_dis_data
    from engine.ingest.nnpdf import apply_cuts
    from engine.kernels.pdf_fk import FLAVOURS, x_grid
    from engine.testing import put_in_lake

    names = ["SLAC_NC_NOTFIXED_P", "NMC_NC_NOTFIXED_P_EM-F2-HEPDATA", "NMC_NC_NOTFIXED_D_EM-F2-HEPDATA"]
    data = apply_cuts(read_dis_data(names, None, dis_coverages(names)), 3.49, 12.5)
    grid = x_grid()
    fk, attrs = synthetic_nnlo_tables(data["x"].values, data["target_index"].values, grid)
    data = data.assign(fk=(("point", "x_grid", "flavour"), fk, attrs))
    put_in_lake(lake, "dis_f2_nmc_nnlo", data.assign_coords(x_grid=grid, flavour=list(FLAVOURS)))


def _dis_hera_nnlo(lake: Lake) -> None:
    """raw/dis_hera_nnlo (SLAC p, d + HERA NC e+p 318, 225 GeV below m_b^2) as `ingest nnpdf-fk`
    reads them (HERA points made proton targets), with synthetic tables on its grid from 4e-5."""
    from engine.ingest.fk_theory import (
        _below,
        dis_coverages,
        dis_observables,
        proton_beam_targets,
        read_dis_data,
    )
    from engine.ingest.nnpdf import apply_cuts
    from engine.kernels.pdf_fk import FLAVOURS, x_grid
    from engine.testing import put_in_lake

    names = ["SLAC_NC_NOTFIXED_P", "SLAC_NC_NOTFIXED_D",
             "HERA_NC_318GEV_EP-SIGMARED", "HERA_NC_225GEV_EP-SIGMARED"]
    read = proton_beam_targets(read_dis_data(names, None, dis_coverages(names)), dis_observables(names))
    data = _below(apply_cuts(read, 3.49, 12.5), 24.2)
    grid = x_grid(50, 4e-5)
    fk, attrs = synthetic_nnlo_tables(data["x"].values, data["target_index"].values, grid)
    data = data.assign(fk=(("point", "x_grid", "flavour"), fk, attrs))
    put_in_lake(lake, "dis_hera_nnlo", data.assign_coords(x_grid=grid, flavour=list(FLAVOURS)))


def _dis_with_charged_current(lake: Lake, names: list[str], entry: str, q2_max: float | None) -> None:
    """raw/`entry` (DIS datasets with HERA CC among them) as `ingest nnpdf-fk` reads them, with
    synthetic tables: F2's on F2 and NC, LO charged current (x (ubar + (1 - y)^2 (d + s)) for e+p,
    x (u + (1 - y)^2 (dbar + sbar)) for e-p) on CC, whose q and qbar columns differ, so a valence
    basis sees V and V3."""
    from engine.ingest.fk_theory import (
        _below,
        cc_lo_weights,
        dis_coverages,
        dis_observables,
        proton_beam_targets,
        read_dis_data,
    )
    from engine.ingest.nnpdf import apply_cuts
    from engine.kernels.pdf_fk import FLAVOURS, lagrange_weights, x_grid
    from engine.testing import put_in_lake

    observables = dis_observables(names)
    read = proton_beam_targets(read_dis_data(names, None, dis_coverages(names)), observables)
    data = apply_cuts(read, 3.49, 12.5)
    data = data if q2_max is None else _below(data, q2_max)
    grid = x_grid(50, 4e-5)
    x, y, block = (data[k].values for k in ("x", "y", "dataset_index"))
    fk, attrs = synthetic_nnlo_tables(x, data["target_index"].values, grid)
    by_name = {o.dataset: o for o in observables}
    for index, name in enumerate(data.attrs["datasets"]):
        rows = block == index
        if by_name[name].process == "CC":
            weights = cc_lo_weights(by_name[name].projectile, y[rows])
            fk[rows] = lagrange_weights(grid, x[rows])[:, :, None] * weights[:, None, :]
    data = data.assign(fk=(("point", "x_grid", "flavour"), fk, attrs))
    put_in_lake(lake, entry, data.assign_coords(x_grid=grid, flavour=list(FLAVOURS)))


def _dis_hera_cc_nnlo(lake: Lake) -> None:
    """raw/dis_hera_cc_nnlo: SLAC p, d + HERA 318 GeV NC and CC, e+p and e-p, Q^2 < 2e4."""
    names = ["SLAC_NC_NOTFIXED_P", "SLAC_NC_NOTFIXED_D", "HERA_NC_318GEV_EP-SIGMARED",
             "HERA_NC_318GEV_EM-SIGMARED", "HERA_CC_318GEV_EP-SIGMARED", "HERA_CC_318GEV_EM-SIGMARED"]
    _dis_with_charged_current(lake, names, "dis_hera_cc_nnlo", 2e4)


def _dis_global_nnlo(lake: Lake) -> None:
    """raw/dis_global_nnlo: SLAC, BCDMS, NMC F2 (p, d), HERA NC e+p at 4 energies and e-p, CC."""
    names = ["SLAC_NC_NOTFIXED_P", "SLAC_NC_NOTFIXED_D", "BCDMS_NC_NOTFIXED_P_EM-F2",
             "BCDMS_NC_NOTFIXED_D_EM-F2", "NMC_NC_NOTFIXED_P_EM-F2-HEPDATA",
             "NMC_NC_NOTFIXED_D_EM-F2-HEPDATA",
             "HERA_NC_318GEV_EP-SIGMARED", "HERA_NC_318GEV_EM-SIGMARED", "HERA_NC_300GEV_EP-SIGMARED",
             "HERA_NC_251GEV_EP-SIGMARED", "HERA_NC_225GEV_EP-SIGMARED", "HERA_CC_318GEV_EP-SIGMARED",
             "HERA_CC_318GEV_EM-SIGMARED"]
    _dis_with_charged_current(lake, names, "dis_global_nnlo", None)


def _dis_hera_nnlo_evolution(lake: Lake) -> None:
    """raw/dis_hera_nnlo_evolution as `ingest eko-evolution` lays it out on dis_hera_nnlo's grid,
    with a synthetic operator (identity): the real one needs the theory environment."""
    from engine.ingest.eko_evolution import synthetic_evolution
    from engine.kernels.pdf_fk import x_grid
    from engine.testing import put_in_lake

    evolution = synthetic_evolution(x_grid(50, 4e-5), 1.65).chunk({"node": 1})
    put_in_lake(lake, "dis_hera_nnlo_evolution", evolution)


# recipe file stem -> the ingests it needs (recipes that generate their own data need none)
INPUTS: dict[str, list[Callable[[Lake], None]]] = {
    "amp_regression": [],
    "calo_flow": [_calo],
    "eels_bandgap": [_eels_demo],
    "eels_dielectric": [_eels_wide],
    "eels_thickness": [_eels_demo],
    "eels_ws2_spectra": [_ws2_specimen4],
    "hyperopt_eels_zlp": [_eels_demo],
    "hyperopt_omnifold": [],
    "hyperopt_solve": [],
    "lhc_dimuon": [_zmumu],
    "lhc_eft_toy": [],
    "lhc_omnifold": [],
    "lhc_decorrelated_tagging": [_top_jets],
    "lhc_top_tagging": [_top_jets],
    "pdf_closure": [_dis_f2],
    "pdf_compress": [_dis_f2],
    "pdf_dis_fit": [_dis_f2],
    "pdf_theory_fit": [_dis_f2_nnlo],
    "pdf_theory_fit_nmc": [_dis_f2_nmc_nnlo],
    "pdf_theory_fit_hera": [_dis_hera_nnlo, _dis_hera_nnlo_evolution],
    "pdf_theory_fit_hera_cc": [_dis_hera_cc_nnlo],
    "pdf_theory_fit_dis_global": [_dis_global_nnlo],
    "replicas_closure_1d": [],
    "replicas_hyperopt": [],
    "solve_equations": [],
}


def prepare_inputs(recipe: Path, lake: Lake) -> None:
    """Ingest, small, everything the shipped recipe `recipe` reads into `lake`."""
    if recipe.stem not in INPUTS:
        raise KeyError(f"no inputs known for recipe {recipe.name}; add its ingests to INPUTS in {__file__}")
    for ingest in INPUTS[recipe.stem]:
        ingest(lake)
