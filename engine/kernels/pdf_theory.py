"""NNLO DIS FK tables from NNPDF's theory pipeline: yadism grid -> eko operators -> pineko FK.

Observables: EM F2 (fixed-target F2: SLAC, BCDMS, NMC) and HERA's inclusive neutral- and
charged-current reduced cross sections (yadism's XSHERANC: F2 - y^2/Y+ FL -+ Y-/Y+ xF3 with photon
and Z exchange; XSHERACC: (Y+ W2 - y^2 WL -+ Y- xW3) / 4, W exchange, which is HERA's
sigma_red^CC = 2 pi x / G_F^2 ((M_W^2 + Q^2) / M_W^2)^2 d2sigma/dx dQ^2, at LO x (ubar + (1-y)^2 d)
for e+p; for the block's projectile, y from the data), each block of a request naming its own.

Why a separate interpreter: yadism 0.13 and pineko 0.6 pin rich<13, while prefect 3.8 (through
pydocket and cyclopts), typer 0.29 and import-linter need rich>=13, so the theory packages cannot
share the project's environment. This module therefore imports nothing of the engine but
`kernels.pdf_fk` (numpy only) and runs as `python -m engine.kernels.pdf_theory REQUEST.json` in an
environment holding the `theory` extra (yadism, eko, pineko, pineappl, nnpdf-data); the ingest
(engine/ingest/fk_theory.py) writes the request, runs it and reads the arrays it leaves (.npy).

The physics choices, all recorded in the result's provenance:
- Theory card from nnpdf-data by id (40000000: NNPDF4.0 NNLO, Q0 = 1.65 GeV, nf0 = 4) with its
  flavour scheme overridden (default ZM-VFNS: one massless yadism grid per dataset; FONLL-C needs
  ~7 grids and `pineko.fonll`).
- eko operators are computed at fixed nodes, evenly spaced in ln Q^2 over each nf patch (so they do
  not depend on the dataset and are cached once per theory and x grid), then interpolated to every
  data scale by cubic Lagrange in ln Q^2 inside its patch; BCDMS alone has 337 distinct scales at
  ~40 CPU-s each, the nodes cost a handful. `check_scales` evolves some scales directly and
  reports the interpolation error of the resulting FK table.
- The FK table is taken in the flavour basis at Q0 on the fit's x grid (eko's input grid), and
  the fit's 7 flavours (sbar, ubar, dbar, d, u, s, g) are kept: charm, bottom and top at Q0 are set
  to zero (no fitted charm), and the weight the data give to the dropped charm columns is reported.
  Its q and qbar columns are kept apart: equal for photon-exchange F2, not for the Z exchange's
  xF3 in HERA's NC cross section nor for W exchange (CC); the ingest reports that q - qbar part.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .pdf_fk import FLAVOURS, lagrange_weights

THEORY_MODULES = ("yadism", "eko", "pineko", "pineappl", "nnpdf_data")
THEORY_DISTRIBUTIONS = ("yadism", "eko", "pineko", "pineappl", "nnpdf-data", "numba")
F2 = "F2_total"  # yadism's observable names; F2 alone does not depend on y
FK_NAME = "fk.npy"
RESULT_NAME = "result.json"
PINEAPPL_FK = "fk.pineappl.lz4"  # pineko's FK table of the last combination, in the work folder

Progress = Callable[[str, float], None]


def _say(stage: str, seconds: float) -> None:
    print(f"[theory] {stage} ({seconds:.1f} s)", file=sys.stderr, flush=True)


def versions() -> dict[str, str]:
    from importlib import metadata

    return {name: metadata.version(name) for name in THEORY_DISTRIBUTIONS}


def card_key(*parts) -> str:
    """A content hash of JSON-able parts (cards, grids, versions): the cache key of a product."""
    text = json.dumps(parts, sort_keys=True, default=lambda v: np.asarray(v).tolist())
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def theory_card(theory_id: int, fns: str) -> dict:
    """nnpdf-data's theory card `theory_id` (defaults filled in) with FNS set to `fns`."""
    import nnpdf_data
    from nnpdf_data.theorydbutils import TheoryNotFoundInDatabase, fetch_theory

    folder = Path(nnpdf_data.__file__).parent / "theory_cards"
    try:
        card = dict(fetch_theory(folder, theory_id))
    except TheoryNotFoundInDatabase:
        raise ValueError(
            f"nnpdf-data {nnpdf_data.__version__} ships no theory card {theory_id} (cards under {folder})"
        ) from None
    card["FNS"] = fns
    kept = {k: v for k, v in card.items() if v is not None}
    return dict(kept, ModSV=card.get("ModSV"))  # pineko reads ModSV even when unset


def observables_card(x, q2, y, block: dict, xgrid) -> dict:
    """yadism's observable card for one block at the points (x, Q^2, y): block names the
    observable (F2_total, XSHERANC_total or XSHERACC_total), process (EM, NC, CC), projectile,
    target, polarisation."""
    return {
        "PolarizationDIS": float(block["polarization"]),
        "ProjectileDIS": block["projectile"],
        "PropagatorCorrection": 0.0,
        "TargetDIS": block["target"],
        "prDIS": block["process"],
        "NCPositivityCharge": None,
        "interpolation_is_log": True,
        "interpolation_polynomial_degree": 4,
        "interpolation_xgrid": [float(v) for v in xgrid],
        "observables": {
            block["observable"]: [{"x": float(a), "Q2": float(b), "y": float(c)} for a, b, c in zip(x, q2, y)]
        },
    }


def distinct_points(x, q2, y, observable: str):
    """(kinematics (k, 3), first index, inverse) of the points yadism books as distinct bins.

    yadism books points repeated in (x, Q^2) on the first copy; F2 depends on (x, Q^2) only
    (BCDMS measures some at several beam energies, i.e. several y): one bin each. A cross section
    depends on y too, so (x, Q^2, y) must be distinct there.
    """
    third = np.zeros_like(x) if observable == F2 else y
    kinematics, first, inverse = np.unique(
        np.stack([x, q2, third], axis=1), axis=0, return_index=True, return_inverse=True
    )
    return kinematics, first, inverse.ravel()


def yadism_grid(theory: dict, observables: dict, cache: Path, say: Progress = _say):
    """The PineAPPL grid of the card's observable (cached by both cards and yadism's version)."""
    import pineappl

    path = cache / "grids" / f"{card_key(theory, observables, versions()['yadism'])}.pineappl.lz4"
    if not path.exists():
        import yadism
        from yadbox.export import dump_pineappl_to_file

        start = time.perf_counter()
        output = yadism.run_yadism(copy.deepcopy(theory), copy.deepcopy(observables))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        ((name, points),) = observables["observables"].items()
        dump_pineappl_to_file(output, str(partial), name)
        partial.replace(path)
        say(f"yadism: {len(points)} points of {name}", time.perf_counter() - start)
    grid = pineappl.grid.Grid.read(str(path))
    grid.optimize()
    return grid, path


def _order_limits(theory: dict) -> tuple[int, int]:
    """(max_as, max_al) of the grid's orders for the theory's PTO (pineko: NNPDF -> PineAPPL)."""
    return 1 + int(theory["PTO"]), 1 + int(theory["QED"])


def evolution_scales(grid, theory: dict) -> np.ndarray:
    """The factorisation scales mu_F^2 (GeV^2) the grid needs operators at."""
    import pineappl

    mask = pineappl.boc.Order.create_mask(grid.orders(), *_order_limits(theory), True)
    return np.asarray(grid.evolve_info(mask).fac1, float)


def patches(theory: dict) -> list[tuple[int, float, float]]:
    """(nf, lowest, highest Q^2) of each nf patch from Q0 upwards (ZM-VFNS matching at k m_q);
    the patch of MaxNfPdf flavours runs to 1e10 GeV^2 (no threshold above it)."""
    q0 = float(theory["Q0"]) ** 2
    top = int(theory.get("MaxNfPdf", 6))
    edges = [(float(theory[f"k{q}Thr"]) * float(theory[f"m{q}"])) ** 2 for q in "cbt"][: top - 3]
    nf0 = 3 + sum(q0 >= e for e in edges)
    bounds = [q0] + [e for e in edges[nf0 - 3 :]] + [1e10]
    return list(zip(range(nf0, top + 1), bounds[:-1], bounds[1:]))


LATTICE_Q2 = 1e5  # GeV^2: the top patch's node step is set by (per_decade) nodes up to here


def lattice(theory: dict, per_decade: float, q2_max: float, q2_ref: float = LATTICE_Q2) -> dict:
    """{nf: node Q^2 array} over every patch from Q0^2 up to the first node at or above q2_max.

    A threshold-bounded patch gets geomspace(lo, hi, count), count from per_decade and its width.
    The top patch has no upper edge, so its nodes are lo * exp(k * step) with the step that
    geomspace(lo, q2_ref, count) has (up to q2_ref exactly geomspace's values, as before): one
    lattice whatever q2_max is, so operators cached for the data (up to 1e5) are reused by an
    evolution to 10 TeV and vice versa.
    """
    nodes = {}
    for nf, lo, hi in patches(theory):
        if lo >= q2_max and nodes:
            break
        if hi < 1e10:  # bounded by the next threshold
            nodes[nf] = np.geomspace(lo, hi, _node_count(lo, hi, per_decade))
            continue
        if q2_ref <= lo:
            raise ValueError(f"lattice reference {q2_ref:.4g} GeV^2 lies below the top patch ({lo:.4g})")
        count = _node_count(lo, q2_ref, per_decade)
        step = np.log(q2_ref / lo) / (count - 1)
        last = max(3, int(np.ceil(np.log(max(q2_max, lo) / lo) / step - 1e-9)))
        above = lo * np.exp(step * np.arange(count, last + 1))  # empty up to q2_ref
        nodes[nf] = np.concatenate([np.geomspace(lo, q2_ref, count)[: last + 1], above])
    return nodes


def _node_count(lo: float, hi: float, per_decade: float) -> int:
    return max(4, int(np.ceil(np.log10(hi / lo) * per_decade)) + 1)


def scale_nodes(q2: np.ndarray, theory: dict, per_decade: float, q2_max: float = LATTICE_Q2):
    """{nf: node Q^2 array}: the lattice's nodes (evenly spaced in ln Q^2 per patch, patch edges
    included, the top patch's step set by q2_max) of each patch the data touch, so the nodes
    depend on the theory alone.

    Each patch keeps its nodes up to the last one that the cubic interpolation of the data's
    highest scale in it uses (interpolated_operators: 4 knots around each scale), so data at
    Q^2 <= 65 GeV^2 need 5 nf = 5 nodes, not the 20 up to 1e5: the same operators at every scale
    as with the whole patch's nodes; a dataset reaching higher adds the next ones to the cache.
    """
    grids = lattice(theory, per_decade, max(q2_max, float(q2.max())), q2_ref=q2_max)
    nodes = {}
    for nf, lo, hi in patches(theory):
        inside = (q2 >= lo) & (q2 < hi)
        if not inside.any():
            continue
        grid = grids[nf]
        used = max(4, int(np.searchsorted(grid, float(q2[inside].max()))) + 2)  # lagrange_weights' window
        nodes[nf] = grid[:used]
    return nodes


def nf_of(q2: np.ndarray, theory: dict) -> np.ndarray:
    out = np.zeros(q2.size, int)
    for nf, lo, hi in patches(theory):
        out[(q2 >= lo) & (q2 < hi)] = nf
    if (out == 0).any():
        raise ValueError(f"scales {q2[out == 0]} lie below Q0^2 = {float(theory['Q0']) ** 2:.4g} GeV^2")
    return out


def eko_grid(xgrid, stride: int) -> np.ndarray:
    """eko's x grid: every `stride`-th point of the fit's grid and its last (x = 1), so the FK
    table lands on fit-grid points (the others get zero weight; eko's degree-4 interpolation in
    ln x between the kept points stands for them). Cost per scale grows as its size squared."""
    xgrid = np.asarray(xgrid, float)
    keep = np.unique(np.append(np.arange(0, xgrid.size, stride), xgrid.size - 1))
    return xgrid[keep]


def operator_card(grid, theory: dict, xgrid, workdir: Path) -> dict:
    """pineko's operator card for the grid and theory, on the fit's x grid (mugrid set later)."""
    import yaml
    from pineko.evolve import write_operator_card

    write_operator_card(grid, workdir / "opcard.yaml", theory, 4, True)
    card = yaml.safe_load((workdir / "opcard.yaml").read_text())
    card["xgrid"] = [float(v) for v in xgrid]
    return card


def _eko_cards(theory: dict, ocard: dict, mugrid):
    import eko

    legacy = dict(theory, Qedref=theory["Qref"], MaxNfAs=theory["MaxNfPdf"])  # pineko does the same
    ocard = dict(ocard, mugrid=[(float(np.sqrt(q2)), int(nf)) for q2, nf in mugrid])
    return eko.io.runcards.Legacy(legacy, ocard).new_theory, eko.io.runcards.OperatorCard.from_dict(ocard)


def node_operators(
    theory: dict, ocard: dict, nodes: dict, cache: Path, say: Progress = _say, jit: bool = True
) -> dict:
    """{(q2, nf): operator (14, x, 14, x) in the flavour basis} at the nodes, from the cache or eko.

    Cached per node as .npy under cache/eko/KEY/ (KEY: theory card, operator configs, x grid and
    eko version), so other datasets and reruns reuse them; missing nodes are solved in one eko
    run (it shares evolution segments between scales). jit=False solves them in a child process
    with numba off: no compile (~45 CPU-min the first time), but each scale costs far more.
    """
    base = {k: v for k, v in ocard.items() if k not in ("mugrid", "eko_version")}
    key = card_key(theory, base, versions()["eko"])
    folder = cache / "eko" / key
    wanted = [(float(q2), int(nf)) for nf, values in sorted(nodes.items()) for q2 in values]

    def file(q2, nf):
        return folder / f"{q2:.12e}_nf{nf}.npy"

    missing = [p for p in wanted if not file(*p).exists()]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cards.json").write_text(
            json.dumps({"theory": theory, "operator": base, "versions": versions()}, indent=1, default=str)
        )
        start = time.perf_counter()
        files = [str(file(*p)) for p in missing]
        if jit:
            solve_nodes(theory, base, missing, files, folder)
        else:
            import subprocess

            job = folder / f"nodes-{os.getpid()}.json"
            job.write_text(json.dumps({"theory": theory, "operator": base, "nodes": missing, "files": files}))
            subprocess.run(
                [sys.executable, "-m", "engine.kernels.pdf_theory", "--solve-nodes", str(job)],
                check=True,
                env=dict(os.environ, NUMBA_DISABLE_JIT="1"),
            )
            job.unlink()
        say(f"eko: {len(missing)} operator nodes{'' if jit else ' (numba off)'}", time.perf_counter() - start)
    return {p: np.load(file(*p), allow_pickle=False) for p in wanted}


def solve_nodes(theory: dict, ocard: dict, nodes: list, files: list[str], folder: Path) -> None:
    """eko at the nodes [(q2, nf)], each operator saved to its file (.npy, flavour basis)."""
    import eko

    new_theory, new_operator = _eko_cards(theory, ocard, nodes)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        target = Path(tmp) / "nodes.tar"
        eko.solve(new_theory, new_operator, target)
        with eko.EKO.read(target) as solved:
            for (q2, nf), op in solved.items():
                index = min(
                    range(len(nodes)), key=lambda i: abs(np.log(nodes[i][0] / q2)) + 10 * (nodes[i][1] != nf)
                )
                partial = Path(files[index]).with_suffix(".part.npy")
                np.save(partial, np.asarray(op.operator), allow_pickle=False)
                partial.replace(files[index])


def interpolated_operators(q2: np.ndarray, theory: dict, nodes: dict, operators: dict) -> list[np.ndarray]:
    """The operator at each scale: cubic Lagrange in ln Q^2 over its own patch's nodes."""
    nfs = nf_of(q2, theory)
    out = []
    for value, nf in zip(q2, nfs):
        knots = nodes[nf]
        weights = lagrange_weights(knots, np.array([np.clip(value, knots[0], knots[-1])]))[0]
        out.append(sum(w * operators[(float(k), int(nf))] for w, k in zip(weights, knots) if w != 0.0))
    return out


def fk_from_operators(
    grid, theory: dict, ocard: dict, q2: np.ndarray, ops: list[np.ndarray], workdir: Path, target_x=None
) -> np.ndarray:
    """pineko's combination of the grid with operators at its scales: FK (bin, x, 14 flavours).

    The operators go into a fresh EKO file (eko's own layout and cards), which pineko evolves the
    grid with exactly as `pineko fk` does; the FK table is then rotated from the evolution basis
    to the flavour basis (eko.basis_rotation) at eko's input x nodes, placed on `target_x` (the
    fit's grid, of which eko's grid is a subset; default eko's grid itself).
    """
    target_x = np.asarray(ocard["xgrid"] if target_x is None else target_x, float)
    import eko
    import pineappl
    from eko import basis_rotation as br
    from eko.io.struct import EKO, Operator
    from pineko import evolve
    from pineko import theory_card as pineko_theory_card

    new_theory, new_operator = _eko_cards(theory, ocard, list(zip(q2, nf_of(q2, theory))))
    path = workdir / f"combined-{os.getpid()}-{time.monotonic_ns()}.tar"
    with EKO.create(path) as builder:
        combined = builder.load_cards(new_theory, new_operator).build()
        for (scale, nf), op in zip(zip(q2, nf_of(q2, theory)), ops):
            combined[(float(scale), int(nf))] = Operator(operator=op)
    max_as = _order_limits(theory)[0]  # max_al 0: QCD only, as `pineko fk`
    fk_path = workdir / PINEAPPL_FK
    with eko.EKO.edit(path) as operators:
        _, fktable, _ = evolve.evolve_grid(
            grid,
            [operators],
            str(fk_path),
            max_as,
            0,
            xir=float(theory["XIR"]),
            xif=float(theory["XIF"]),
            xia=1.0,
            theory_meta=theory,
            assumptions=pineko_theory_card.construct_assumptions(theory),
        )
    path.unlink(missing_ok=True)
    table = np.asarray(fktable.table())  # (bins, channels, x): one convolution (DIS)
    channels = [int(pids[0]) for pids in fktable.channels()]  # FK channels: one pid each
    pid_basis = fktable.pid_basis
    rotation = br.rotate_flavor_to_evolution if pid_basis == pineappl.pids.PidBasis.Evol else np.eye(14)
    source = (
        list(br.evol_basis_pids) if pid_basis == pineappl.pids.PidBasis.Evol else list(br.flavor_basis_pids)
    )
    rows = np.stack([rotation[source.index(pid)] for pid in channels])  # (channels, 14 flavours)
    fk_x = np.asarray(fktable.x_grid(), float)
    # PineAPPL weights multiply f = xf / x (checked against Grid.convolve): divide for xf
    dense = np.einsum("ncx,cf->nxf", table / fk_x, rows)
    full = np.zeros((dense.shape[0], target_x.size, 14))
    index = np.searchsorted(target_x, fk_x)
    index = np.clip(index, 0, target_x.size - 1)
    if not np.allclose(target_x[index], fk_x, rtol=1e-9):
        raise ValueError(f"the FK table's x nodes {fk_x} are not points of the fit's grid")
    full[:, index, :] = dense
    return full


def fit_flavours(fk14: np.ndarray) -> tuple[np.ndarray, float]:
    """FK over the fit's FLAVOURS (heavy quarks at Q0 set to zero) and the weight of the dropped
    columns: max over points of sum |FK| on c, b, t at Q0 / sum |FK| (F2's sensitivity to an
    intrinsic heavy quark at Q0, not a contribution: with them zero it contributes nothing)."""
    from eko import basis_rotation as br

    pids = list(br.flavor_basis_pids)
    kept = [pids.index(f) for f in FLAVOURS]
    dropped = [i for i in range(len(pids)) if i not in kept]
    total = np.abs(fk14).sum(axis=(1, 2))
    share = np.abs(fk14[:, :, dropped]).sum(axis=(1, 2)) / np.where(total > 0, total, 1.0)
    return fk14[:, :, kept], float(share.max())


def build(request: dict, progress: Progress = _say) -> dict:
    """Run the pipeline for a request (see engine/ingest/fk_theory.py); returns its result."""
    cache = Path(request["cache"])
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache / "numba"))  # before numba loads (eko, yadism)
    jit = bool(request.get("jit", True))
    theory = theory_card(int(request["theory_id"]), request["fns"])
    xgrid = np.asarray(request["xgrid"], float)
    x, q2, y = (np.asarray(request[k], float) for k in ("x", "Q2", "y"))
    blocks = np.asarray(request["blocks"], int)  # per point: index of its block (observables_card)
    specs = request["observables"]
    fk = np.zeros((x.size, xgrid.size, len(FLAVOURS)))
    timings, dropped, checks = {}, 0.0, []
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        for block, spec in enumerate(specs):
            rows = np.flatnonzero(blocks == block)
            kinematics, first, inverse = distinct_points(x[rows], q2[rows], y[rows], spec["observable"])
            start = time.perf_counter()
            card = observables_card(*kinematics[:, :2].T, y[rows][first], spec, xgrid)
            grid, _ = yadism_grid(theory, card, cache, progress)
            timings[f"yadism_{block}"] = time.perf_counter() - start
            scales = evolution_scales(grid, theory)
            ocard = operator_card(grid, theory, eko_grid(xgrid, int(request.get("eko_stride", 1))), work)
            nodes = scale_nodes(scales, theory, float(request["nodes_per_decade"]))
            start = time.perf_counter()
            at_nodes = node_operators(theory, ocard, nodes, cache, progress, jit)
            timings[f"eko_{block}"] = time.perf_counter() - start
            start = time.perf_counter()
            table = fk_from_operators(
                grid,
                theory,
                ocard,
                scales,
                interpolated_operators(scales, theory, nodes, at_nodes),
                work,
                xgrid,
            )
            timings[f"combine_{block}"] = time.perf_counter() - start
            if request.get("pineappl_dir"):  # pineko's own table, one bin per distinct point
                kept_as = Path(request["pineappl_dir"]) / f"block_{block}.pineappl.lz4"
                shutil.copyfile(work / PINEAPPL_FK, kept_as)
            progress(f"FK table {block} ({spec['target']}): {rows.size} points", timings[f"combine_{block}"])
            if table.shape[0] != len(kinematics):
                raise ValueError(f"the grid has {table.shape[0]} bins for {len(kinematics)} distinct points")
            table = table[inverse]
            kept, share = fit_flavours(table)
            fk[rows], dropped = kept, max(dropped, share)
            for scale in np.asarray(request.get("check_scales", []), float):
                checks.append(
                    _check_interpolation(
                        grid,
                        theory,
                        ocard,
                        scales,
                        nodes,
                        at_nodes,
                        q2[rows],
                        scale,
                        table,
                        cache,
                        work,
                        jit,
                        xgrid,
                        inverse,
                    )
                )
    out = Path(request["output"])
    np.save(out / FK_NAME, fk, allow_pickle=False)
    result = {
        "theory_card": theory,
        "versions": versions(),
        "timings_s": timings,
        "heavy_q0_weight": dropped,
        "interpolation_checks": checks,
        "nodes_per_decade": float(request["nodes_per_decade"]),
        "jit": jit,
        "eko_x": eko_grid(xgrid, int(request.get("eko_stride", 1))).tolist(),
    }
    (out / RESULT_NAME).write_text(json.dumps(result, indent=1, default=str))
    return result


def _check_interpolation(
    grid, theory, ocard, scales, nodes, at_nodes, point_q2, scale, table, cache, work, jit, xgrid, inverse
) -> dict:
    """Interpolation error at the grid scale nearest `scale`: max |FK_interp - FK_direct| / max |FK|
    over that scale's points, with eko run directly at it."""
    row = int(np.argmin(np.abs(np.log(scales / scale))))
    nearest = float(scales[row])
    nf = int(nf_of(np.array([nearest]), theory)[0])
    direct = node_operators(theory, ocard, {nf: np.array([nearest])}, cache, jit=jit)[(nearest, nf)]
    ops = interpolated_operators(scales, theory, nodes, at_nodes)
    ops[row] = direct
    exact = fk_from_operators(grid, theory, ocard, scales, ops, work, xgrid)[inverse]  # bins -> points
    points = np.flatnonzero(np.isclose(point_q2, nearest, rtol=1e-9))
    diff = np.abs(exact[points] - table[points]).max() / np.abs(exact[points]).max()
    return {"q2": nearest, "nf": nf, "points": int(points.size), "max_relative_difference": float(diff)}


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--solve-nodes":
        job = json.loads(Path(argv[1]).read_text())
        solve_nodes(
            job["theory"],
            job["operator"],
            [tuple(n) for n in job["nodes"]],
            job["files"],
            Path(argv[1]).parent,
        )
        return 0
    if len(argv) != 1:
        print("usage: python -m engine.kernels.pdf_theory REQUEST.json", file=sys.stderr)
        return 2
    build(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
