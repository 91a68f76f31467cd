"""`replicalake ingest nnpdf-fk`: NNPDF DIS data with NNLO FK tables from yadism + eko + pineko.

Writes raw/NAME like `ingest nnpdf` (data, uncertainties, covariance after NNPDF's DIS cuts) plus
fk(point, x_grid, flavour): F2 at each point = sum fk * xf(Q0) with xf the PDF at the theory's Q0
on the fit's x grid (pdf.fit reads it as it reads pdf.fk_tables' LO tables). The theory card,
package versions, timings and the operator-interpolation checks go in the provenance.

The theory packages pin rich<13, which this project's environment cannot hold (prefect, typer and
import-linter need rich>=13), so the pipeline runs in another interpreter: `--theory-python`,
else $REPLICALAKE_THEORY_PYTHON, else this one (engine/kernels/pdf_theory.py). Its products are
cached in the lake under .cache/theory (yadism grids, eko operators per node, numba's compiled
code), keyed by their cards: the first run compiles eko (tens of minutes), later ones reuse it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import deque
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


class NnpdfFkParams(NnpdfParams):
    """NNPDF DIS F2 data with NNLO FK tables (yadism + eko + pineko) into raw/NAME."""

    q2_min: float | None = Field(
        3.49, ge=0, description="keep points with Q^2 >= this (GeV^2; NNPDF's DIS cut)"
    )
    w2_min: float | None = Field(
        12.5, ge=0, description="keep points with W^2 >= this (GeV^2; NNPDF's DIS cut)"
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
        "interpolates (degree 4 in ln x) between them: cost per scale ~ 1/k^2",
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


def _f2_only(names: list[str]) -> list[tuple[str, ...]]:
    """Refuse datasets the pipeline cannot build, before any slow work; returns their kinematics.

    The worker books yadism's F2_total for photon exchange (EM) on a proton or isoscalar target at
    each point and pdf.fit contracts one FK table per point linearly with the PDF. So a dataset is
    built when its observable is EM F2 (`EM-F2`, or a re-implementation of it such as
    `EM-F2-HEPDATA`: NMC's F2 p and d), its process is neutral-current DIS and its theory is one
    operand (FK tables whose points concatenate, e.g. BCDMS's beam energies), no operation.
    Refused: reduced cross sections (`EM-SIGMARED`, HERA: F_L and y enter), charm F2
    (`EM-F2C`), charged current, and ratios (`NMC_NC_NOTFIXED_EM-F2`, d/p: RATIO of two tables,
    not linear in the PDF), each with the reason.
    """
    from nnpdf_data.commondataparser import parse_new_metadata

    from .nnpdf import commondata_root, resolve_name

    root = commondata_root()
    refused, coverages = [], []
    for name in names:
        resolved = resolve_name(name, root)
        meta = parse_new_metadata(root / resolved.setname / "metadata.yaml", resolved.observable)
        coverages.append(tuple(meta.kinematic_coverage))
        operation = str(meta.theory.operation or "null").lower()
        operands = len(meta.theory.FK_tables)  # each a list of tables whose points concatenate
        if resolved.observable.split("-")[:2] != F2_SUFFIX.split("-"):
            refused.append(f"{resolved.full} (observable {resolved.observable}: not EM F2)")
        elif not str(meta.process_type).startswith("DIS_NC"):
            refused.append(f"{resolved.full} (process {meta.process_type}: not neutral-current DIS)")
        elif operation != "null" or operands != 1:
            refused.append(
                f"{resolved.full} (theory operation {meta.theory.operation} of {operands} FK tables: "
                "not linear in the PDF)"
            )
    if refused:
        raise IngestError(
            f"ingest nnpdf-fk builds F2 tables (EM F2 observables, e.g. ..._{F2_SUFFIX} or "
            f"..._{F2_SUFFIX}-HEPDATA, no operation on FK tables); found {'; '.join(refused)}: "
            "reduced cross sections (NMC sigma_red, HERA) need yadism's XS observables, "
            "ratios a non-linear fit; neither is built here"
        )
    return coverages


def read_f2_data(names: list[str], variant: str | None, coverages: list[tuple[str, ...]]):
    """read_commondata of the datasets, also when their third kinematic differs (SLAC and BCDMS
    F2 carry y, NMC's HEPDATA F2 none): read_commondata per kinematics, joined over `point`
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


def run_pipeline(python: str, request: dict) -> tuple[np.ndarray, dict]:
    """Run engine.kernels.pdf_theory in `python` on `request`; returns (fk, result)."""
    root = Path(__file__).resolve().parents[2]  # the folder holding the engine package
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        request = dict(request, output=tmp)
        file = Path(tmp) / "request.json"
        file.write_text(json.dumps(request))
        with subprocess.Popen(
            [python, "-m", "engine.kernels.pdf_theory", str(file)],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ) as job:
            tail: deque[str] = deque(maxlen=15)
            progress = []
            for line in job.stderr:  # the stages as they finish (yadism, eko nodes, FK tables)
                tail.append(line.rstrip())
                if line.startswith("[theory]"):
                    progress.append(line.strip())
                    print(line.rstrip(), file=sys.stderr, flush=True)
        if job.returncode:
            raise IngestError(
                f"the theory pipeline failed in {python} (exit {job.returncode}):\n" + "\n".join(tail)
            )
        fk = np.load(Path(tmp) / "fk.npy", allow_pickle=False)
        result = json.loads((Path(tmp) / "result.json").read_text())
    result["log"] = progress
    return fk, result


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

    from ..kernels.pdf_fk import x_grid

    lake.new_entry_path("raw", entry)  # refuse a bad entry name before the slow work
    coverages = _f2_only(names)
    python = _interpreter(theory_python)
    dataset = _below(apply_cuts(read_f2_data(names, variant, coverages), q2_min, w2_min), q2_max)
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
    block_targets = [
        YADISM_TARGETS[int(targets[blocks == b][0])] for b in range(len(dataset.attrs["datasets"]))
    ]
    request = {
        "theory_id": theory_id,
        "fns": fns,
        "xgrid": grid.tolist(),
        "x": x.tolist(),
        "Q2": q2.tolist(),
        "y": y.tolist(),
        "blocks": blocks.tolist(),
        "targets": block_targets,
        "nodes_per_decade": nodes_per_decade,
        "check_scales": list(check_scales or []),
        "cache": str(theory_cache(lake)),
        "eko_stride": eko_stride,
        "jit": jit,
    }
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
                "long_name": "NNLO F2 FK table: F2 = sum over x_grid, flavour of fk * xf(Q0)",
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
