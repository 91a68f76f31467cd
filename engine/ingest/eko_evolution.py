"""`replicalake ingest eko-evolution NAME --like FK_ENTRY`: eko's evolution from Q0 to 10 TeV.

Stores raw/NAME: at every node (Q^2, nf) of the FK tables' scale lattice (kernels.pdf_theory.lattice:
each nf patch evenly in ln Q^2, thresholds in both patches, the top patch's step continued to
--q-max) the operator E(flavour_out, x_out, flavour, x_grid) with xf(x_out, Q) = sum E xf(x_grid, Q0),
alpha_s at the node, and the LHAPDF .info keys of the theory card. `pdf.evolve` contracts a fitted
set with it (pure numpy, no theory package at recipe run time) into an LHAPDF set.

Same evolution as the FK entry `--like`: its theory card, x grid and eko knots (provenance) name
the same eko operator cache (kernels.pdf_evolution.operator_card), so the nodes the FK tables used
are reused and the rest computed once (eko, in the theory interpreter as for `ingest nnpdf-fk`).
Output x: eko's knots (every stride-th fit-grid point, 26 on HERA's grid) are coarse for LHAPDF's
cubic interpolation, so the operator's output is evaluated on --n-x-out points (pdf_fk.x_grid from
the fit's x_min) by eko's own degree-4 ln x interpolation basis: the set carries exactly the PDF eko
represents, between the knots too.
"""

from __future__ import annotations

import dask
import numpy as np
import xarray as xr
from pydantic import Field

from ..errors import IngestError
from ..storage import PROVENANCE_KEY, Lake, content_token
from ..zarr_io import write_template
from .fk_theory import FIT_FLAVOURS, THEORY_PYTHON_ENV, X_GRID, _interpreter, run_theory_module, theory_cache
from .registry import EntryName, IngestParams, register_format
from .staging import staged_entry

NODE, X_OUT, FLAVOUR_OUT = "node", "x_out", "flavour_out"
KIND = "eko evolution operator"
TOP_PATCH_Q2 = 1e10  # GeV^2: the lattice's top patch ends here (kernels.pdf_theory.patches)


class EkoEvolutionParams(IngestParams):
    """eko evolution operators from an NNLO FK entry's Q0 to --q-max, for `pdf.evolve` (LHAPDF export)."""

    entry: EntryName = Field(alias="name")
    like: str = Field(
        description="the `ingest nnpdf-fk` entry (raw/NAME or NAME) whose theory card, x grid and eko "
        "knots the evolution uses"
    )
    q_max: float = Field(1e4, gt=2, le=float(np.sqrt(TOP_PATCH_Q2)), description="highest Q of the set (GeV)")
    n_x_out: int = Field(
        100, ge=8, le=400, description="x points of the set (pdf_fk.x_grid from the fit's x_min)"
    )
    theory_python: str | None = Field(
        None, description=f"interpreter with the `theory` extra (default ${THEORY_PYTHON_ENV}, else this one)"
    )
    jit: bool = Field(
        True, description="compile eko with numba for missing nodes; --no-jit: no compile, minutes a node"
    )


def lhapdf_info(theory: dict, nf_max: int, alpha_s_mz: float) -> dict:
    """The .info keys an evolved set takes from the theory card (AlphaS_Qs/Vals: pdf.evolve)."""
    return {
        "OrderQCD": int(theory["PTO"]),
        "AlphaS_OrderQCD": int(theory["PTO"]),
        "AlphaS_Type": "ipol",
        "AlphaS_MZ": float(alpha_s_mz),
        "MZ": float(theory["MZ"]),
        "MCharm": float(theory["mc"]),
        "MBottom": float(theory["mb"]),
        "MTop": float(theory["mt"]),
        "FlavorScheme": "variable",
        "NumFlavors": int(nf_max),
    }


def evolution_dataset(
    operator, q2, nf, alpha_s, x_out, grid, flavours_out, q0: float, info: dict
) -> xr.Dataset:
    """raw/NAME's layout: operator (node, flavour_out, x_out, flavour, x_grid); attrs q0_gev, kind,
    lhapdf_info and `nodes` (per node q2 in GeV^2, nf, alpha_s: attrs, not coords, since pdf.evolve
    lays out its subgrids from them while building, without computing); used by the ingest and
    by synthetic entries."""
    nodes = {"q2": np.asarray(q2, float).tolist(), "nf": np.asarray(nf, int).tolist(),
             "alpha_s": np.asarray(alpha_s, float).tolist()}
    return xr.Dataset(
        {
            "operator": (
                (NODE, FLAVOUR_OUT, X_OUT, "flavour", X_GRID),
                np.asarray(operator, float),
                {"long_name": "xf(x_out, Q) = sum over flavour, x_grid of operator * xf(x_grid, Q0)"},
            )
        },
        coords={
            NODE: np.arange(len(nodes["q2"])),
            FLAVOUR_OUT: list(flavours_out),
            X_OUT: np.asarray(x_out, float),
            "flavour": list(FIT_FLAVOURS),
            X_GRID: np.asarray(grid, float),
        },
        attrs={"kind": KIND, "q0_gev": float(q0), "lhapdf_info": info, "nodes": nodes},
    )


SYNTHETIC_CARD = {"PTO": 2, "MZ": 91.1876, "mc": 1.51, "mb": 4.92, "mt": 172.5}  # NNPDF4.0's values


def synthetic_evolution(grid, q0: float, edges=(4.92, 100.0), per_patch: int = 3, scale=None) -> xr.Dataset:
    """An evolution entry checkable by hand (op examples, tests, recipe inputs): nf patches from
    q0 through `edges` (GeV), `per_patch` nodes each, x_out = grid, and at node n xf(Q_n) =
    scale[n] * xf(Q0) flavour by flavour (identity by default; charm, bottom zero)."""
    from ..kernels.pdf_evolution import lhapdf_flavours

    bounds = [q0, *edges]
    q = [np.geomspace(lo, hi, per_patch) for lo, hi in zip(bounds[:-1], bounds[1:])]
    nf = np.concatenate([np.full(per_patch, 4 + k) for k in range(len(q))])
    q2 = np.concatenate(q) ** 2
    scale = np.ones(q2.size) if scale is None else np.asarray(scale, float)
    out = lhapdf_flavours(int(nf.max()))
    rows = np.array([[float(o == f) for f in FIT_FLAVOURS] for o in out])
    operator = np.einsum("n,ab,xy->naxby", scale, rows, np.eye(len(grid)))
    alpha_s = 0.118 * np.log(91.1876**2 / 0.09) / np.log(q2 / 0.09)  # one-loop-like running
    info = lhapdf_info(SYNTHETIC_CARD, int(nf.max()), 0.118)
    return evolution_dataset(operator, q2, nf, alpha_s, grid, grid, out, q0, info)


def _entry_name(like: str) -> str:
    return like.removeprefix("raw/")


def _run(python: str, request: dict) -> tuple[np.ndarray, dict]:
    """kernels.pdf_evolution in `python` on `request`; returns (operator, result); numba is off
    in the child unless the request asks for jit."""
    from ..kernels.pdf_evolution import OPERATOR_NAME

    env = {} if request["jit"] else {"NUMBA_DISABLE_JIT": "1"}
    return run_theory_module(python, "engine.kernels.pdf_evolution", request, OPERATOR_NAME, env)


@register_format("eko-evolution", EkoEvolutionParams, positional=("name",))
def ingest_eko_evolution(
    lake: Lake,
    entry: str,
    like: str,
    q_max: float = 1e4,
    n_x_out: int = 100,
    theory_python: str | None = None,
    jit: bool = True,
) -> str:
    """Operators at the lattice nodes from the FK entry's Q0 to q_max, published as raw/ENTRY."""
    from ..kernels.pdf_fk import x_grid

    lake.new_entry_path("raw", entry)
    source = _entry_name(like)
    if not lake.exists("raw", source):
        raise IngestError(f"--like: no entry raw/{source} in the lake (an `ingest nnpdf-fk` entry)")
    theory = (lake.provenance("raw", source) or {}).get("theory") or {}
    if "theory_card" not in theory or "eko_x" not in theory:
        raise IngestError(f"--like: raw/{source} is no `ingest nnpdf-fk` entry (no theory card in its "
                          "provenance)")
    grid = lake.open("raw", source)[X_GRID].values
    x_out = x_grid(n_x_out, float(grid[0]))
    request = {
        "theory": theory["theory_card"],
        "xgrid": grid.tolist(),
        "eko_x": theory["eko_x"],
        "x_out": x_out.tolist(),
        "q2_max": q_max**2,
        "nodes_per_decade": theory["nodes_per_decade"],
        "cache": str(theory_cache(lake)),
        "jit": jit,
    }
    operator, result = _run(_interpreter(theory_python), request)
    card = theory["theory_card"]
    info = lhapdf_info(card, max(result["nf"]), result["alpha_s_mz"])
    dataset = evolution_dataset(
        operator, result["q2"], result["nf"], result["alpha_s"], x_out, grid, result["flavours_out"],
        float(card["Q0"]), info,
    )
    token = content_token("eko-evolution", card, result["versions"], result["eko_key"], grid.tolist(),
                          x_out.tolist(), result["q2"])
    dataset.attrs[PROVENANCE_KEY] = {
        "token": token,
        "ingest": "eko-evolution",
        "like": f"raw/{source}",
        "theory_card": card,
        "operator_card": result["operator_card"],
        "eko_key": result["eko_key"],
        "versions": result["versions"],
        "eko_x": theory["eko_x"],
        "timings_s": result["timings_s"],
    }
    with staged_entry(lake, "raw", entry) as stage:
        options = None if lake.is_local else lake.storage_options
        chunked = dataset.chunk({NODE: 1})
        dask.compute(*write_template(chunked, lake.url(stage.path), options, merge_small_chunks=False))
        stage.publish(f"eko evolution operators like raw/{source} to Q = {q_max:g} GeV", {"token": token})
    patches = ", ".join(f"nf={n}: {result['nf'].count(n)} nodes" for n in sorted(set(result["nf"])))
    return (f"{len(result['q2'])} nodes ({patches}) to Q = {np.sqrt(result['q2'][-1]):.5g} GeV, "
            f"{x_out.size} x out; {result['timings_s']['total']:.0f} s")
