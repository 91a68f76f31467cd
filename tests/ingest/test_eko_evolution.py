"""`ingest eko-evolution` + pdf.evolve against eko's own evolved PDF (theory interpreter only).

Slow and skipped without $REPLICALAKE_THEORY_PYTHON (tests.ops.test_pdf_theory.theory_python):
eko runs with numba off on a tiny grid (7 x knots, 2 nodes a decade to 10 GeV). The default
suite's checks of pdf.evolve, the lattice and the operator's numpy side are tests/ops/test_pdf_evolve.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

from engine.catalog import publish_entry
from engine.errors import IngestError
from engine.ingest.eko_evolution import ingest_eko_evolution
from engine.ingest.lhapdf_format import pdfset_from_arrays
from engine.kernels.pdf_fk import FLAVOURS, les_houches_toy, x_grid
from engine.kernels.pdf_theory import eko_grid
from engine.ops.pdf_evolve import evolve
from engine.ops.pdf_grid import EvaluateParams, evaluate
from engine.storage import PROVENANCE_KEY, Lake
from engine.zarr_io import write_template
from tests.ops.test_pdf_theory import theory_python

ROOT = Path(__file__).resolve().parents[2]
GRID = x_grid(12, 1e-3)
STRIDE = 2
PER_DECADE = 2.0
# eko's operator configs as `ingest nnpdf-fk` writes them (pineko's operator card for card 40000000)
OPERATOR = {
    "configs": {"ev_op_iterations": 1, "ev_op_max_order": [10, 0], "evolution_method": "truncated",
                "interpolation_is_log": True, "interpolation_polynomial_degree": 4,
                "inversion_method": "expanded", "n_integration_cores": 1, "polarized": False,
                "scvar_method": None, "time_like": False},
    "debug": {"skip_non_singlet": False, "skip_singlet": False},
    "init": [1.65, 4],
    "xgrid": eko_grid(GRID, STRIDE).tolist(),
}
# In the theory interpreter: the card, and the cache's cards.json (node_operators at Q0 writes it,
# as `ingest nnpdf-fk` does), so the ingest finds the operator card of this theory and x grid.
PREPARE = """
import json, sys
from pathlib import Path
from engine.kernels import pdf_theory
cache, operator = Path(sys.argv[1]), json.loads(sys.argv[2])
theory = pdf_theory.theory_card(40000000, "ZM-VFNS")
pdf_theory.node_operators(theory, operator, {4: [float(theory["Q0"]) ** 2]}, cache, jit=False)
print(json.dumps(theory))
"""
# eko's own evolution of the Les Houches toy to Q^2 = argv[2] (nf argv[3]) at x argv[4]: x f
EKO_OWN = """
import json, sys, tempfile
from pathlib import Path
import numpy as np
import eko
from ekobox.apply import apply_pdf
from engine.kernels import pdf_theory
from engine.kernels.pdf_fk import FLAVOURS, les_houches_toy
theory, operator = json.loads(sys.argv[1]), json.loads(sys.argv[5])
q2, nf, x_out = float(sys.argv[2]), int(sys.argv[3]), np.array(json.loads(sys.argv[4]))
class Toy:
    def hasFlavor(self, pid):
        return pid in FLAVOURS
    def xfxQ2(self, pid, x, q2):
        return float(les_houches_toy(np.array([x]))[0, FLAVOURS.index(pid)])
with tempfile.TemporaryDirectory() as tmp:
    cards = pdf_theory._eko_cards(theory, operator, [(q2, nf)])
    eko.solve(*cards, Path(tmp) / "own.tar")
    with eko.EKO.read(Path(tmp) / "own.tar") as solved:
        pdfs, _ = apply_pdf(solved, Toy(), targetgrid=x_out)
(values,) = pdfs.values()
print(json.dumps({str(pid): (x_out * np.asarray(values[pid])).tolist() for pid in values}))
"""


def _theory_run(python: str, script: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_DISABLE_JIT="1")
    done = subprocess.run([python, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _fk_like_entry(lake: Lake, theory: dict) -> None:
    """raw/fk: an entry with what `ingest nnpdf-fk` leaves that the evolution reads (x grid, provenance)."""
    dataset = xr.Dataset({"fk": (("point", "x_grid", "flavour"), np.zeros((1, GRID.size, len(FLAVOURS))))},
                         coords={"x_grid": GRID, "flavour": list(FLAVOURS)})
    dataset.attrs[PROVENANCE_KEY] = {"token": "tiny-fk", "ingest": "nnpdf-fk", "theory": {
        "theory_card": theory, "eko_x": OPERATOR["xgrid"], "nodes_per_decade": PER_DECADE}}
    tmp = lake.new_tmp_path("fk")
    dask.compute(*write_template(dataset.chunk(), lake.url(tmp), merge_small_chunks=False))
    publish_entry(lake, tmp, "raw", "fk", description="tiny FK-like entry")


@pytest.mark.slow  # eko without numba on 7 knots: ~8 nodes, minutes on a shared CPU
def test_evolved_toy_matches_ekos_own_evolution(tmp_path):
    python = theory_python()
    lake = Lake(str(tmp_path / "lake"))
    cache = Path(lake.path(".cache", "theory"))
    theory = json.loads(_theory_run(python, PREPARE, str(cache), json.dumps(OPERATOR)))
    _fk_like_entry(lake, theory)
    x_out = x_grid(20, GRID[0])
    ingest_eko_evolution(lake, "evolution", "raw/fk", q_max=10.0, n_x_out=20, theory_python=python,
                         jit=False)
    evolution = lake.open("raw", "evolution")
    nodes = evolution.attrs["nodes"]
    assert sorted(set(nodes["nf"])) == [4, 5] and nodes["q2"][-1] >= 100.0
    toy = les_houches_toy(GRID).T[None]
    q = np.geomspace(1.65, 100.0, 4)
    pdf = pdfset_from_arrays([GRID], [q], FLAVOURS, [np.repeat(toy[..., None], 4, -1)], {"SetDesc": "toy"})
    out = evolve(None, pdf, evolution).compute()
    q2, nf = nodes["q2"][-1], nodes["nf"][-1]
    own = json.loads(_theory_run(python, EKO_OWN, json.dumps(theory), str(q2), str(nf),
                                 json.dumps(x_out.tolist()), json.dumps(OPERATOR)))
    top = out["xf_1"].isel(member=0, q_1=-1)
    for pid in [*FLAVOURS, 4, -4, 5]:
        np.testing.assert_allclose(top.sel(flavour=pid).values, own[str(pid)], rtol=1e-9, atol=1e-12)
    assert top.sel(flavour=4).values.max() > 0.01  # charm is generated by the evolution


def integral(x: np.ndarray, g: np.ndarray) -> float:
    """int_0^1 g dx: trapezoid from the first knot plus the power-law tail below it (g ~ x^a from
    the first two knots), the part of the sum rules that flows below the grid as Q grows."""
    power = np.log(g[1] / g[0]) / np.log(x[1] / x[0])
    return float(np.trapezoid(g, x) + x[0] * g[0] / (1 + power))


def sum_rules(pdf, q: float, x_min: float, n: int = 2000) -> np.ndarray:
    """(momentum, u valence number, d valence number) of member 0 at Q, the set interpolated as
    LHAPDF does (pdf.evaluate) on n log + n linear points from x_min."""
    x = np.concatenate([np.geomspace(x_min, 0.1, n, endpoint=False), np.linspace(0.1, 1, n)])
    points = xr.Dataset({"x": ("point", x), "q": ("point", np.full(x.size, q))})
    xf = evaluate(EvaluateParams(), pdf, points)["xf"].isel(member=0).compute()
    valence = [(xf.sel(flavour=f) - xf.sel(flavour=-f)).values / x for f in (2, 1)]
    return np.array([integral(x, g) for g in (xf.sum("flavour").values, *valence)])


@pytest.mark.slow  # reads the real evolution entry of the README's theory lake
def test_real_evolution_keeps_the_sum_rules():
    """On HERA's grid (raw/dis_hera_nnlo_evolution of $REPLICALAKE_THEORY_LAKE) the toy's valence
    numbers at every node are those at Q0 to 1e-3 (measured 2e-4 at 18 GeV), its momentum to 1e-2:
    the momentum that flows below x = 4e-5 at high Q is only estimated (power-law tail)."""
    root = os.environ.get("REPLICALAKE_THEORY_LAKE")
    if not root or not Lake(root).exists("raw", "dis_hera_nnlo_evolution"):
        pytest.skip("$REPLICALAKE_THEORY_LAKE names no lake with raw/dis_hera_nnlo_evolution")
    evolution = Lake(root).open("raw", "dis_hera_nnlo_evolution")
    grid = evolution["x_grid"].values
    toy = les_houches_toy(grid).T[None]
    q = np.geomspace(evolution.attrs["q0_gev"], 100.0, 4)
    pdf = pdfset_from_arrays([grid], [q], FLAVOURS, [np.repeat(toy[..., None], 4, -1)], {"SetDesc": "toy"})
    out = evolve(None, pdf, evolution).compute()
    knots = np.concatenate([out["q_0"].values, out["q_1"].values[1:]])
    at_q0 = sum_rules(out, knots[0], grid[0])
    np.testing.assert_allclose(at_q0[1:], [2.0, 1.0], rtol=1e-4)  # the toy's u_v, d_v
    for value in knots[1::2]:
        ratio = sum_rules(out, value, grid[0]) / at_q0
        np.testing.assert_allclose(ratio[1:], 1.0, atol=1e-3)
        assert ratio[0] == pytest.approx(1.0, abs=1e-2)


def test_refuses_an_entry_that_is_no_fk_entry(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(IngestError, match="no entry raw/missing"):
        ingest_eko_evolution(lake, "evolution", "missing")
