"""eko evolution operators from Q0 to every node of the scale lattice, for an evolved LHAPDF set.

Runs, like engine.kernels.pdf_theory, in the interpreter holding the theory packages
(`python -m engine.kernels.pdf_evolution REQUEST.json`, written by engine/ingest/eko_evolution.py):
it reuses the FK tables' eko operators (same theory card, same eko x knots, same cache key), so
the set an LHAPDF user reads is evolved exactly as the fit's FK tables evolve the PDF.

What it leaves (.npy + result.json): at each node (Q^2, nf) of pdf_theory.lattice from Q0^2 to
q2_max, the operator E(flavour_out, x_out, flavour, x_grid) with xf(x_out, Q) = sum E xf(x_grid, Q0):
- input: the fit's x grid and flavours; only eko's knots (every stride-th point) carry weight,
  as in the FK tables;
- output: an LHAPDF x grid x_out (pdf_fk.x_grid of n_x_out points from the fit's x_min), each
  value eko's own degree-4 ln x interpolation between its knots (the output-grid rotation of
  eko.io.manipulate.xgrid_reshape), so the set carries the evolved PDF eko represents, on knots
  dense enough for LHAPDF's cubic interpolation;
- eko acts on f = xf / x: E = x_out * R eko / x_knot;
- alpha_s(Q) at each node and at M_Z from eko's couplings (the card's alpha_s(Qref), order,
  thresholds).
Numpy helpers (xf_operator, lhapdf_flavours) import no theory package, so tests use them anywhere.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from . import pdf_theory
from .pdf_fk import FLAVOURS

OPERATOR_NAME = "evolution.npy"
RESULT_NAME = "result.json"
EKO_PIDS = (22, -6, -5, -4, -3, -2, -1, 21, 1, 2, 3, 4, 5, 6)  # eko.basis_rotation.flavor_basis_pids


def lhapdf_flavours(nf_max: int) -> list[int]:
    """The PDG ids an LHAPDF set with nf_max active flavours lists: -nf..-1, 1..nf, 21."""
    return [*range(-nf_max, 0), *range(1, nf_max + 1), 21]


def xf_operator(
    op: np.ndarray, knots: np.ndarray, rotation: np.ndarray, x_out: np.ndarray, grid: np.ndarray, out_pids
) -> np.ndarray:
    """(flavour_out, x_out, FLAVOURS, grid) acting on xf from eko's (14, knots, 14, knots) acting on f.

    rotation (x_out, knots) interpolates eko's output knots to x_out; the input knots must be
    points of `grid` (the fit's grid), whose other columns get zero weight.
    """
    columns = np.searchsorted(grid, knots)
    if not np.allclose(grid[np.clip(columns, 0, grid.size - 1)], knots, rtol=1e-12):
        raise ValueError(f"eko's x knots {knots.tolist()} are not points of the fit's grid")
    rows = [EKO_PIDS.index(p) for p in out_pids]
    cols = [EKO_PIDS.index(p) for p in FLAVOURS]
    picked = op[np.ix_(rows, range(knots.size), cols, range(knots.size))]
    on_xf = np.einsum("ik,akbj->aibj", x_out[:, None] * rotation, picked / knots)
    out = np.zeros((len(out_pids), x_out.size, len(FLAVOURS), grid.size))
    out[..., columns] = on_xf
    return out


def operator_card(cache: Path, theory: dict, knots: np.ndarray) -> tuple[str, dict]:
    """(key, operator card without mugrid) of the FK tables' eko cache for this theory and knots:
    written by node_operators when `ingest nnpdf-fk` built them, so both evolve alike."""
    from .pdf_theory import card_key, versions

    for cards in sorted((cache / "eko").glob("*/cards.json")):
        saved = json.loads(cards.read_text())
        xgrid = np.asarray(saved["operator"]["xgrid"], float)
        same = _as_json(saved["theory"]) == _as_json(theory)
        if same and xgrid.shape == knots.shape and np.allclose(xgrid, knots, rtol=1e-12):
            key = card_key(theory, saved["operator"], versions()["eko"])
            if key == cards.parent.name:
                return key, saved["operator"]
    raise ValueError(
        f"no eko operator cache under {cache / 'eko'} for this theory card and {knots.size} x knots "
        f"from {knots[0]:.4g}: the FK entry was built in another lake (ingest nnpdf-fk here first)"
    )


def _as_json(card: dict) -> dict:
    return json.loads(json.dumps(card, default=str))


def alpha_s(theory: dict, ocard: dict, mugrid: list[tuple[float, int]]) -> np.ndarray:
    """alpha_s at each (Q^2, nf) from eko's couplings, as ekobox.info_file writes AlphaS_Vals."""
    from eko.runner.commons import couplings

    new_theory, new_operator = pdf_theory._eko_cards(theory, ocard, mugrid)
    running = couplings(new_theory, new_operator)
    return np.array([4 * np.pi * running.a_s(q2, nf_to=nf) for q2, nf in mugrid])


def output_rotation(knots: np.ndarray, x_out: np.ndarray, ocard: dict) -> np.ndarray:
    """(x_out, knots): eko's interpolation basis at x_out (xgrid_compute_rotation's matrix)."""
    from eko.interpolation import InterpolatorDispatcher, XGrid

    configs = ocard["configs"]
    basis = InterpolatorDispatcher(
        XGrid(knots, log=bool(configs["interpolation_is_log"])),
        int(configs["interpolation_polynomial_degree"]),
        mode_N=False,
    )
    return np.asarray(basis.get_interpolation(x_out), float)


def build(request: dict) -> dict:
    """Operators at every lattice node up to q2_max (cache or eko), saved for the ingest."""
    cache = Path(request["cache"])
    theory = request["theory"]
    grid, knots, x_out = (np.asarray(request[k], float) for k in ("xgrid", "eko_x", "x_out"))
    key, ocard = operator_card(cache, theory, knots)
    nodes = pdf_theory.lattice(theory, float(request["nodes_per_decade"]), float(request["q2_max"]))
    start = time.perf_counter()
    at_nodes = pdf_theory.node_operators(theory, dict(ocard), nodes, cache, jit=bool(request["jit"]))
    loaded = time.perf_counter() - start
    mugrid = [(float(q2), int(nf)) for nf, values in sorted(nodes.items()) for q2 in values]
    out_pids = lhapdf_flavours(max(nodes))
    mz2 = float(theory["MZ"]) ** 2
    at_mz = (mz2, int(pdf_theory.nf_of(np.array([mz2]), theory)[0]))
    rotation = output_rotation(knots, x_out, ocard)
    operator = np.stack([xf_operator(at_nodes[n], knots, rotation, x_out, grid, out_pids) for n in mugrid])
    np.save(Path(request["output"]) / OPERATOR_NAME, operator, allow_pickle=False)
    pdf_theory._say(f"evolution: {len(mugrid)} nodes on {x_out.size} x", time.perf_counter() - start)
    result = {
        "q2": [q2 for q2, _ in mugrid],
        "nf": [nf for _, nf in mugrid],
        "alpha_s": alpha_s(theory, ocard, mugrid).tolist(),
        "alpha_s_mz": float(alpha_s(theory, ocard, [at_mz])[0]),
        "flavours_out": out_pids,
        "eko_key": key,
        "operator_card": ocard,
        "versions": pdf_theory.versions(),
        "timings_s": {"operators": loaded, "total": time.perf_counter() - start},
    }
    (Path(request["output"]) / RESULT_NAME).write_text(json.dumps(result, indent=1, default=str))
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m engine.kernels.pdf_evolution REQUEST.json", file=sys.stderr)
        return 2
    build(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
