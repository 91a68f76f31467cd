"""`replicalake ingest nnpdf-fk`: NNPDF DIS data with NNLO FK tables from yadism + eko + pineko.

Writes raw/NAME like `ingest nnpdf` (data, uncertainties, covariance after NNPDF's DIS cuts) plus
fk(point, x_grid, flavour): the observable at each point (EM F2, or HERA's inclusive NC or CC
reduced cross section) = sum fk * xf(Q0) with xf the PDF at the theory's Q0 on the fit's x grid (pdf.fit
reads it as it reads pdf.fk_tables' LO tables). The theory card, package versions, timings, the
operator-interpolation checks and each dataset's observable go in the provenance.

The theory packages pin rich<13, which this project's environment cannot hold (prefect, typer and
import-linter need rich>=13), so the pipeline runs in another interpreter: `--theory-python`,
else $REPLICALAKE_THEORY_PYTHON, else this one (engine/kernels/pdf_theory.py). Its products are
cached in the lake under .cache/theory (yadism grids, eko operators per node, numba's compiled
code), keyed by their cards: the first run compiles eko (tens of minutes), later ones reuse it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import dask
import numpy as np
import xarray as xr
from pydantic import Field

from ..errors import IngestError
from ..storage import PROVENANCE_KEY, Lake, content_token
from ..zarr_io import write_template
from .nnpdf import NnpdfParams, apply_cuts, read_commondata
from .registry import register_format
from .staging import staged_entry

THEORY_PYTHON_ENV = "REPLICALAKE_THEORY_PYTHON"
NNPDF40_NNLO = 40000000
F2_SUFFIX = "EM-F2"
YADISM_TARGETS = ("proton", "isoscalar")  # target_index 0, 1 (ingest nnpdf): deuteron = isoscalar
X_GRID, POINT = "x_grid", "point"
FIT_FLAVOURS = (-3, -2, -1, 1, 2, 3, 21)  # = kernels.pdf_fk.FLAVOURS (kernels load lazily)
# HERA I+II inclusive NC and CC (nnpdf-data HERA_NC_<sqrt s>GEV, HERA_CC_<sqrt s>GEV; e+p or e-p):
# yadism's XSHERANC (photon + Z) and XSHERACC (W; 1/4 (Y+ F2 - y^2 FL -+ Y- xF3) = HERA's sigma_red^CC)
HERA = re.compile(r"HERA_(NC|CC)_(\d+)GEV")
HERA_OBSERVABLES = {"NC": "XSHERANC_total", "CC": "XSHERACC_total"}
HERA_PROJECTILES = {"EP-SIGMARED": "positron", "EM-SIGMARED": "electron"}
Y_TOLERANCE = 0.01  # relative: the data's y against Q^2 / (x s) of the set's sqrt(s)


@dataclass(frozen=True)
class Observable:
    """What yadism computes for one dataset (kernels.pdf_theory.observables_card's block).

    sqrt_s is the set's beam energy (HERA; None for F2, which does not depend on y);
    proton_beam marks sets whose target ingest nnpdf cannot name (HERA_NC_318GEV: -1).
    process is yadism's prDIS: EM (photon exchange), NC (photon + Z) or CC (W exchange).
    """

    dataset: str
    coverage: tuple[str, ...]
    observable: str = "F2_total"
    process: str = "EM"
    projectile: str = "electron"
    polarization: float = 0.0
    sqrt_s: float | None = None
    proton_beam: bool = False

    def block(self, target: str) -> dict:
        """The request's block for the theory worker."""
        keys = ("observable", "process", "projectile", "polarization")
        return {"target": target, **{k: getattr(self, k) for k in keys}}


class NnpdfFkParams(NnpdfParams):
    """NNPDF DIS data (F2, HERA NC and CC sigma_red) with NNLO FK tables (yadism, eko, pineko): raw/NAME."""

    q2_min: float | None = Field(
        3.49, ge=0, description="keep points with Q^2 > this (GeV^2; NNPDF's DIS cut)"
    )
    w2_min: float | None = Field(
        12.5, ge=0, description="keep points with W^2 = Q^2 (1 - x) / x > this (GeV^2; NNPDF's DIS cut)"
    )
    theory_id: int = Field(
        NNPDF40_NNLO,
        ge=0,
        le=99_999_999,
        alias="theory",
        description="nnpdf-data theory card (40000000: NNPDF4.0 NNLO)",
    )
    fns: Literal["ZM-VFNS"] = Field(
        "ZM-VFNS",
        description="flavour scheme replacing the card's "
        "(FONLL needs several grids per dataset: not built here)",
    )
    q2_max: float | None = Field(
        None,
        gt=0,
        description="keep points with Q^2 < this (GeV^2; e.g. 24.2 = m_b^2: one nf patch of nodes)",
    )
    x_min: float = Field(1e-3, gt=0, lt=0.1, description="smallest x of the fit's grid")
    n_x: int = Field(50, ge=8, le=200, description="points of the fit's x grid")
    nodes_per_decade: float = Field(
        5.0,
        ge=2,
        le=40,
        description="eko operators per decade of Q^2, interpolated (cubic in ln Q^2) to the data's scales",
    )
    check_scales: list[float] = Field(
        [],
        description="Q^2 values (GeV^2) where eko also runs directly, "
        "to report the interpolation error in the provenance",
    )
    theory_python: str | None = Field(
        None, description=f"interpreter with the `theory` extra (default ${THEORY_PYTHON_ENV}, else this one)"
    )
    eko_stride: int = Field(
        1,
        ge=1,
        le=10,
        description="eko runs on every k-th point of the x grid and "
        "interpolates (degree 4 in ln x) between them: cost per scale ~ 1/k^2; keep the kept "
        "knots <~ 0.3 decades apart (HERA's grid from 4e-5: 2; at 4, 0.54 decades, HERA moved 3-9%)",
    )
    jit: bool = Field(
        True,
        description="compile eko with numba (~45 CPU-min once, cached in the lake, then "
        "~40 s a scale); --no-jit: no compile, but minutes a scale",
    )


def theory_cache(lake: Lake) -> Path:
    """Where grids, operators and numba's code live: in the lake when it is local."""
    if lake.is_local:
        return Path(lake.path(".cache", "theory"))
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "replicalake" / "theory"


def _interpreter(explicit: str | None) -> str:
    python = explicit or os.environ.get(THEORY_PYTHON_ENV) or sys.executable
    if not Path(python).is_file():
        raise IngestError(f"--theory-python / ${THEORY_PYTHON_ENV}: no interpreter at {python!r}")
    probe = subprocess.run(
        [python, "-c", "import yadism, eko, pineko, pineappl, nnpdf_data"], capture_output=True, text=True
    )
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise IngestError(
            f"ingest nnpdf-fk runs yadism, eko, pineko, pineappl and nnpdf-data in "
            f"{python}, which lacks them ({last}); install the `theory` extra in a "
            f"separate environment (it needs rich<13) and name it with --theory-python "
            f"or ${THEORY_PYTHON_ENV}"
        )
    return python


NEUTRINO_CC = (
    "charged current off HERA's e+-p: a neutrino beam on a nuclear target (Fe, Pb), neither the "
    "proton nor the deuteron yadism's targets here are, with its own cross-section normalisation"
)


def _refusal(resolved, meta) -> str | None:
    """Why the pipeline cannot build a dataset (None: it can), decided from nnpdf-data's metadata.

    pdf.fit contracts one FK table per point linearly with the PDF: the theory must be one operand
    (FK tables whose points concatenate, e.g. BCDMS's beam energies) with no operation (NMC's d/p
    `NMC_NC_NOTFIXED_EM-F2` is a RATIO). Charged current is built for HERA's e+-p only (its q and
    qbar columns differ: the fit needs valence, V and V3, to see them); neutrino CC (CHORUS Pb,
    NuTeV Fe) is refused, as are heavy-quark reduced cross sections (`HERA_NC_318GEV_EAVG`),
    charm F2 and NMC's sigma_red (its own definition, kinematics x, Q2, sqrt s).
    """
    operation = str(meta.theory.operation or "null").lower()
    operands = len(meta.theory.FK_tables)  # each a list of tables whose points concatenate
    process = str(meta.process_type)
    hera = HERA.fullmatch(resolved.setname)
    if process.startswith("DIS_CC") and hera is None:
        return f"{resolved.full} ({NEUTRINO_CC})"
    if not process.startswith(("DIS_NC", "DIS_CC")):
        return f"{resolved.full} (process {process}: not inclusive NC or CC DIS)"
    if operation != "null" or operands != 1:
        return (
            f"{resolved.full} (theory operation {meta.theory.operation} of {operands} FK tables: "
            "not linear in the PDF)"
        )
    f2 = resolved.observable.split("-")[:2] == F2_SUFFIX.split("-")
    if not f2 and not (hera and resolved.observable in HERA_PROJECTILES):
        return (
            f"{resolved.full} (observable {resolved.observable}: neither EM F2 nor HERA's inclusive "
            "NC or CC reduced cross section)"
        )
    return None


def _observable(resolved, meta) -> Observable:
    """The yadism observable of a dataset _refusal lets through."""
    coverage = tuple(meta.kinematic_coverage)
    hera = HERA.fullmatch(resolved.setname)
    if hera is None:
        return Observable(resolved.full, coverage)
    current = hera.group(1)
    return Observable(
        resolved.full,
        coverage,
        observable=HERA_OBSERVABLES[current],
        process=current,
        projectile=HERA_PROJECTILES[resolved.observable],
        sqrt_s=float(hera.group(2)),
        proton_beam=True,
    )


def dis_observables(names: list[str]) -> list[Observable]:
    """Each dataset's observable, refusing those the pipeline cannot build before any slow work.

    Built: EM F2 (`EM-F2`, or a re-implementation such as NMC's `EM-F2-HEPDATA`; yadism's F2_total,
    photon exchange, proton or isoscalar target) and HERA I+II inclusive NC and CC reduced cross
    sections (`HERA_NC_<sqrt s>GEV_EP-SIGMARED` / `_EM-SIGMARED`: yadism's XSHERANC_total with
    photon and Z exchange; `HERA_CC_<sqrt s>GEV_...`: XSHERACC_total, W exchange; for the positron
    or electron beam, unpolarised as the combined data are, y from the data). Everything else is
    refused with the reason (_refusal).
    """
    from nnpdf_data.commondataparser import parse_new_metadata

    from .nnpdf import commondata_root, resolve_name

    root = commondata_root()
    refused, observables = [], []
    for name in names:
        resolved = resolve_name(name, root)
        meta = parse_new_metadata(root / resolved.setname / "metadata.yaml", resolved.observable)
        reason = _refusal(resolved, meta)
        if reason:
            refused.append(reason)
        else:
            observables.append(_observable(resolved, meta))
    if refused:
        raise IngestError(
            f"ingest nnpdf-fk builds EM F2 (..._{F2_SUFFIX}, ..._{F2_SUFFIX}-HEPDATA) and HERA's "
            f"inclusive NC and CC reduced cross sections (HERA_NC_<sqrt s>GEV_EP-SIGMARED, "
            f"_EM-SIGMARED; HERA_CC_<sqrt s>GEV_...), "
            f"no operation on FK tables; found {'; '.join(refused)}"
        )
    return observables


def dis_coverages(names: list[str]) -> list[tuple[str, ...]]:
    """The datasets' kinematic coverages for read_dis_data, refusing as dis_observables does
    (tests/recipe_inputs.py builds the recipes' synthetic entries with it)."""
    return [o.coverage for o in dis_observables(names)]


# HERA's sigma_red^CC at LO: W+ (e+p) sees ubar and, weighed by (1 - y)^2, d and s; W- (e-p) u and
# (1 - y)^2 (dbar + sbar) (charm at Q0 is zero here)
CC_LO_FLAVOURS = {"positron": ((-2,), (1, 3)), "electron": ((2,), (-1, -3))}


def cc_lo_weights(projectile: str, y: np.ndarray) -> np.ndarray:
    """(points, FIT_FLAVOURS) weights of x f in HERA's CC reduced cross section at LO: the
    normalisation yadism's XSHERACC is held to (tests) and the synthetic CC tables of the recipes'
    small inputs (tests/recipe_inputs.py)."""
    y = np.asarray(y, float)
    plain, helicity = CC_LO_FLAVOURS[projectile]
    weights = np.zeros((y.size, len(FIT_FLAVOURS)))
    weights[:, [FIT_FLAVOURS.index(f) for f in plain]] = 1.0
    weights[:, [FIT_FLAVOURS.index(f) for f in helicity]] = ((1 - y) ** 2)[:, None]
    return weights


def proton_beam_targets(dataset, observables: list[Observable]):
    """target_index 0 (proton) on the points of sets ingest nnpdf leaves at -1 but whose hadron is
    a proton (HERA), so pdf.fit and the FK blocks see their target."""
    by_name = {o.dataset: o for o in observables}
    proton = [by_name[name].proton_beam for name in dataset.attrs["datasets"]]
    targets = np.where(np.asarray(proton)[dataset["dataset_index"].values], 0, dataset["target_index"].values)
    return dataset.assign_coords(target_index=(POINT, targets))


def check_beam_energy(dataset, observables: list[Observable]) -> None:
    """A cross section's y must be the set's: y = Q^2 / (x s) (to 1%; HERA's data carry y to
    ~0.1% of it), since yadism weighs F_L and xF3 by it."""
    by_name = {o.dataset: o for o in observables}
    for index, name in enumerate(dataset.attrs["datasets"]):
        sqrt_s = by_name[name].sqrt_s
        rows = dataset["dataset_index"].values == index
        if sqrt_s is None or not rows.any():
            continue
        x, q2, y = (dataset[k].values[rows] for k in ("x", "Q2", "y"))
        off = np.abs(y * x * sqrt_s**2 / q2 - 1).max()
        if not off < Y_TOLERANCE:
            raise IngestError(f"{name}: y differs from Q^2 / (x s) at sqrt(s) = {sqrt_s} GeV by {off:.2%}")


def read_dis_data(names: list[str], variant: str | None, coverages: list[tuple[str, ...]]):
    """read_commondata of the datasets, also when their third kinematic differs (SLAC, BCDMS F2
    and HERA carry y, NMC's HEPDATA F2 none): read_commondata per kinematics, joined over `point`
    (a kinematic a dataset lacks is NaN there; systematics shared by name stay correlated
    across the parts, and the covariance is rebuilt as read_commondata builds it)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, coverage in zip(names, coverages):
        groups.setdefault(coverage, []).append(name)
    parts = [read_commondata(group, variant) for group in groups.values()]
    return parts[0] if len(parts) == 1 else _join(parts)


def _join(parts: list) -> xr.Dataset:
    sizes = [p.sizes[POINT] for p in parts]
    starts = np.cumsum([0, *sizes])
    offsets = np.cumsum([0] + [len(p.attrs["datasets"]) for p in parts])

    def along(name: str) -> np.ndarray:
        return np.concatenate([p[name].values for p in parts])

    def columns(name: str) -> tuple[np.ndarray, list[str]]:
        keys = list(dict.fromkeys(k for p in parts for k in p[name].attrs["names"]))
        out = np.zeros((starts[-1], len(keys)))
        for p, start in zip(parts, starts):
            out[start : start + p.sizes[POINT], [keys.index(k) for k in p[name].attrs["names"]]] = p[
                name
            ].values
        return out, keys

    kinematics = list(dict.fromkeys(k for p in parts for k in p.attrs["kinematics"]))
    coords = {
        k: (
            POINT,
            np.concatenate(
                [p[k].values if k in p.coords else np.full(p.sizes[POINT], np.nan) for p in parts]
            ),
        )
        for k in kinematics
    }
    coords["target_index"] = (POINT, along("target_index"))
    (add, add_keys), (mult, mult_keys) = columns("sys_additive"), columns("sys_multiplicative")
    central, uncorrelated = along("data"), along("uncorrelated")
    absolute_mult = mult * central[:, None]
    first = parts[0]
    values = {
        "data": central,
        "dataset_index": np.concatenate([p["dataset_index"].values + o for p, o in zip(parts, offsets)]),
        "stat": along("stat"),
        "sys_uncorrelated": along("sys_uncorrelated"),
        "sys_uncorrelated_multiplicative": along("sys_uncorrelated_multiplicative"),
        "uncorrelated": uncorrelated,
        "sys_additive": add,
        "sys_multiplicative": mult,
        "covariance": np.diag(uncorrelated**2) + add @ add.T + absolute_mult @ absolute_mult.T,
    }
    names = {"sys_additive": add_keys, "sys_multiplicative": mult_keys}
    variables = {
        k: (first[k].dims, v, {**first[k].attrs, **({"names": names[k]} if k in names else {})})
        for k, v in values.items()
    }
    attrs = dict(first.attrs, kinematics=kinematics)
    for key in ("datasets", "variants", "dataset_points"):
        attrs[key] = [v for p in parts for v in p.attrs[key]]
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _below(dataset, q2_max: float | None):
    """The points with Q^2 < q2_max (all when None), covariance and per-dataset counts cut alike."""
    if q2_max is None:
        return dataset
    keep = dataset["Q2"].values < q2_max
    if not keep.any():
        raise IngestError(
            f"--q2-max {q2_max} leaves no data point (lowest Q^2 {dataset['Q2'].values.min():.4g})"
        )
    cut = dataset.isel(point=keep, point_b=keep)
    counts = np.bincount(dataset["dataset_index"].values[keep], minlength=len(dataset.attrs["datasets"]))
    cut.attrs["dataset_points"] = counts.tolist()
    cut.attrs["cuts"] = {**dataset.attrs.get("cuts", {}), "q2_max": q2_max}
    return cut


def antisymmetric_share(fk: np.ndarray, grid: np.ndarray, blocks: np.ndarray, n_blocks: int) -> list[dict]:
    """Per dataset, the part of the observable carried by q - qbar, for the Les Houches toy
    (valence u_v, d_v): |FK . (xf - xf_sym)| / |FK . xf| (median and max over points), xf_sym
    with q = qbar = (q + qbar) / 2 as pdf.fit's basis has it (its rotation gives q and qbar the
    same column, so the fit sees FK_q + FK_qbar only). Photon-exchange F2: zero; HERA's NC cross
    section: the Z exchange's xF3, growing with Q^2 / (Q^2 + M_Z^2); HERA's CC: W exchange sees
    ubar + (1 - y)^2 d (e+p) or u + (1 - y)^2 dbar (e-p), an O(1) share at every Q^2."""
    from ..kernels.pdf_fk import FLAVOURS, les_houches_toy

    xf = les_houches_toy(grid)
    mirror = [FLAVOURS.index(-f if f != 21 else f) for f in FLAVOURS]
    full = np.einsum("nxf,xf->n", fk, xf)
    part = np.abs(np.einsum("nxf,xf->n", fk, (xf - xf[:, mirror]) / 2)) / np.abs(full)
    return [
        {"median": float(np.median(part[blocks == b])), "max": float(part[blocks == b].max())}
        for b in range(n_blocks)
    ]


def run_theory_module(python: str, module: str, request: dict, array: str,
                      env: dict | None = None) -> tuple[np.ndarray, dict]:
    """Run `python -m module REQUEST.json` (a kernel of the theory environment) on `request`;
    returns (the .npy `array` it leaves, its result.json with the progress lines under "log").

    The child's [theory] lines pass through as they come (eko nodes take minutes each without
    numba); on failure the error carries the tail of its stderr."""
    root = Path(__file__).resolve().parents[2]  # the folder holding the engine package
    env = dict(os.environ, **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "request.json"
        file.write_text(json.dumps(dict(request, output=tmp)))
        with subprocess.Popen(
            [python, "-m", module, str(file)],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ) as job:
            tail: deque[str] = deque(maxlen=15)
            progress = []
            for line in job.stderr:
                tail.append(line.rstrip())
                if line.startswith("[theory]"):
                    progress.append(line.strip())
                    print(line.rstrip(), file=sys.stderr, flush=True)
        if job.returncode:
            raise IngestError(
                f"{module} failed in {python} (exit {job.returncode}):\n" + "\n".join(tail)
            )
        values = np.load(Path(tmp) / array, allow_pickle=False)
        result = json.loads((Path(tmp) / "result.json").read_text())
    result["log"] = progress
    return values, result


def run_pipeline(python: str, request: dict) -> tuple[np.ndarray, dict]:
    """Run engine.kernels.pdf_theory in `python` on `request`; returns (fk, result)."""
    return run_theory_module(python, "engine.kernels.pdf_theory", request, "fk.npy")


def fk_request(
    lake: Lake,
    names: list[str],
    variant: str | None,
    q2_min: float | None,
    w2_min: float | None,
    theory_id: int,
    fns: str,
    q2_max: float | None,
    x_min: float,
    n_x: int,
    nodes_per_decade: float,
) -> tuple[xr.Dataset, list[Observable], np.ndarray, dict]:
    """The cut datasets, their observables, the fit's x grid and the theory worker's request.

    The same request from the same arguments hits the worker's caches (yadism grids, eko nodes),
    so a second caller (the n3fit side-by-side) gets the ingest's tables in seconds.
    """
    from ..kernels.pdf_fk import x_grid

    observables = dis_observables(names)
    read = read_dis_data(names, variant, [o.coverage for o in observables])
    dataset = _below(apply_cuts(proton_beam_targets(read, observables), q2_min, w2_min), q2_max)
    empty = [n for n, count in zip(dataset.attrs["datasets"], dataset.attrs["dataset_points"]) if not count]
    if empty:
        raise IngestError(f"no point of {', '.join(empty)} passes the cuts: leave it out")
    check_beam_energy(dataset, observables)
    grid = x_grid(n_x, x_min)
    x, q2 = dataset["x"].values, dataset["Q2"].values
    if x.min() < grid[0]:
        raise IngestError(f"data reach x = {x.min():.3g}, below the grid's x_min = {x_min}: lower --x-min")
    # F2 does not depend on y (the observables card carries it): 0 where a dataset has none
    y = np.nan_to_num(dataset["y"].values) if "y" in dataset.coords else np.zeros_like(x)
    targets = dataset["target_index"].values
    if np.any((targets < 0) | (targets >= len(YADISM_TARGETS))):
        raise IngestError("nnpdf-fk builds proton and deuteron targets only; some datasets have another")
    blocks = dataset["dataset_index"].values
    by_name = {o.dataset: o for o in observables}
    in_entry = [by_name[name] for name in dataset.attrs["datasets"]]
    request = {
        "theory_id": theory_id,
        "fns": fns,
        "xgrid": grid.tolist(),
        "x": x.tolist(),
        "Q2": q2.tolist(),
        "y": y.tolist(),
        "blocks": blocks.tolist(),
        "observables": [
            o.block(YADISM_TARGETS[int(targets[blocks == b][0])]) for b, o in enumerate(in_entry)
        ],
        "nodes_per_decade": nodes_per_decade,
        "cache": str(theory_cache(lake)),
    }
    return dataset, in_entry, grid, request


@register_format("nnpdf-fk", NnpdfFkParams, positional=("datasets", "name"))
def ingest_nnpdf_fk(
    lake: Lake,
    names: list[str],
    entry: str,
    variant: str | None = None,
    q2_min: float | None = 3.49,
    w2_min: float | None = 12.5,
    theory_id: int = NNPDF40_NNLO,
    fns: str = "ZM-VFNS",
    q2_max: float | None = None,
    x_min: float = 1e-3,
    n_x: int = 50,
    nodes_per_decade: float = 5.0,
    check_scales: list[float] | None = None,
    theory_python: str | None = None,
    eko_stride: int = 1,
    jit: bool = True,
) -> str:
    """Cut the datasets, build their FK tables, publish raw/ENTRY; returns a description."""
    import nnpdf_data

    lake.new_entry_path("raw", entry)  # refuse a bad entry name before the slow work
    python = _interpreter(theory_python)
    dataset, in_entry, grid, request = fk_request(
        lake, names, variant, q2_min, w2_min, theory_id, fns, q2_max, x_min, n_x, nodes_per_decade
    )
    request.update(check_scales=list(check_scales or []), eko_stride=eko_stride, jit=jit)
    fk, result = run_pipeline(python, request)
    version = getattr(nnpdf_data, "__version__", "unknown")
    token = content_token(
        "nnpdf-fk",
        version,
        dataset.attrs["datasets"],
        dataset.attrs["variants"],
        q2_min,
        w2_min,
        q2_max,
        result["theory_card"],
        result["versions"],
        grid.tolist(),
        nodes_per_decade,
        eko_stride,
    )
    dataset = dataset.assign(
        fk=(
            (POINT, X_GRID, "flavour"),
            fk,
            {
                "long_name": "NNLO DIS FK table: observable (F2, HERA NC or CC sigma_red) = "
                "sum over x_grid, flavour of fk * xf(Q0)",
                "q0_gev": float(result["theory_card"]["Q0"]),
            },
        )
    ).assign_coords({X_GRID: grid, "flavour": list(FIT_FLAVOURS)})
    dataset.attrs[PROVENANCE_KEY] = {
        "token": token,
        "ingest": "nnpdf-fk",
        "nnpdf_data_version": version,
        "theory_id": theory_id,
        "fns": fns,
        "theory": json.loads(json.dumps(result, default=str)),
        "observables": [asdict(o) for o in in_entry],
        "antisymmetric_share": antisymmetric_share(fk, grid, dataset["dataset_index"].values, len(in_entry)),
    }
    with staged_entry(lake, "raw", entry) as stage:
        options = None if lake.is_local else lake.storage_options
        dask.compute(
            *write_template(dataset.chunk(), lake.url(stage.path), options, merge_small_chunks=False)
        )
        stage.publish(f"NNPDF DIS data with NNLO FK tables (theory {theory_id}, {fns})", {"token": token})
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in result["timings_s"].items())
    return (
        f"{dataset.sizes[POINT]} points, FK ({n_x} x, {len(FIT_FLAVOURS)} flavours) from theory "
        f"{theory_id} ({fns}); {timings}"
    )
