"""n3fit's inputs for the points, FK tables and cuts of a lake entry built by `ingest nnpdf-fk`.

n3fit (NNPDF's fitting code, through validphys) reads datasets from commondata folders and FK
tables from a theory folder. To run it on exactly what our fit sees, this writes:
- `theories/theory_<ID>/fastkernel/RL_<table>.pineappl.lz4`: pineko's own FK tables, made by the
  same theory worker call as the entry (its caches make it seconds) and checked equal to the
  entry's `fk` before anything is written;
- `commondata/RL_<SET>/`: each dataset cut to the entry's points, copied value for value from
  nnpdf-data's files (central values, kinematics, every uncertainty with its definition), in the
  FK tables' bin order (yadism books one bin per distinct point, sorted by its kinematics);
- the theory card `<ID>.yaml` (nnpdf-data's card of the entry's theory with the entry's flavour
  scheme, and IC 0: our tables set charm at Q0 to zero), which validphys only finds inside
  nnpdf-data's own `theory_cards` folder of the n3fit environment;
- `lhapdf/RL_toy_t0/`: the t0 set, the Les Houches toy of our recipes' `pdf.toy_truth` on the
  entry's x grid (values repeated in Q: n3fit convolves t0 at the FK tables' Q0 only), so both fits
  build the same t0 covariance (`LHAPDF_DATA_PATH`);
- `nnprofile.yaml` pointing validphys at these folders (`NNPDF_PROFILE_PATH`).

Datasets are renamed RL_... so that nothing of NNPDF's own (remote FK tables, per-dataset filter
rules) is picked up by mistake; validphys's internal DIS cuts still run and must keep every point.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import yaml

from engine.ingest.fk_theory import _interpreter, fk_request, run_pipeline
from engine.ingest.lhapdf_format import write_lhapdf_set
from engine.ingest.nnpdf import commondata_root, load_dataset, resolve_name
from engine.kernels.pdf_theory import distinct_points, eko_grid
from engine.ops.pdf_fit import GridParams, toy_truth
from engine.storage import PROVENANCE_KEY, Lake

PREFIX = "RL_"
T0_SET = "RL_toy_t0"


def entry_request(lake: Lake, entry: str):
    """The entry's dataset and the theory worker request that rebuilds its FK tables."""
    stored = lake.open("raw", entry).load()
    provenance = stored.attrs[PROVENANCE_KEY]
    cuts, theory = stored.attrs["cuts"], provenance["theory"]
    grid = stored["x_grid"].values
    dataset, _, grid_again, request = fk_request(
        lake,
        list(stored.attrs["datasets"]),
        None,
        cuts["q2_min"],
        cuts["w2_min"],
        provenance["theory_id"],
        provenance["fns"],
        cuts.get("q2_max"),
        float(grid[0]),
        grid.size,
        float(theory["nodes_per_decade"]),
    )
    if not np.allclose(grid_again, grid, rtol=1e-12) or not np.array_equal(
        dataset["x"].values, stored["x"].values
    ):
        raise RuntimeError(f"{entry}: the cuts recorded in the entry no longer select its points")
    eko_x = np.asarray(theory["eko_x"])
    stride = next(s for s in range(1, grid.size) if np.array_equal(eko_grid(grid, s), eko_x))
    request.update(eko_stride=stride, jit=bool(theory["jit"]), check_scales=[])
    return stored, request


def bin_order(stored) -> list[np.ndarray]:
    """Per dataset, the entry's point indices in the order of the FK table's bins."""
    x, q2 = stored["x"].values, stored["Q2"].values
    y = np.nan_to_num(stored["y"].values)
    blocks = stored["dataset_index"].values
    orders = []
    for block, observable in enumerate(stored.attrs[PROVENANCE_KEY]["observables"]):
        rows = np.flatnonzero(blocks == block)
        kinematics, first, _ = distinct_points(x[rows], q2[rows], y[rows], observable["observable"])
        if len(kinematics) != rows.size:
            raise RuntimeError(
                f"{observable['dataset']}: points repeat in (x, Q2): one FK bin serves several"
            )
        orders.append(rows[first])
    return orders


def fk_tables(stored, request: dict, python: str, folder: Path) -> list[Path]:
    """pineko's FK table per dataset (block_<k>.pineappl.lz4), checked against the entry's `fk`."""
    folder.mkdir(parents=True, exist_ok=True)
    fk, _ = run_pipeline(python, {**request, "pineappl_dir": str(folder)})
    difference = np.abs(fk - stored["fk"].values).max() / np.abs(stored["fk"].values).max()
    if difference > 1e-12:
        raise RuntimeError(f"rebuilt FK tables differ from the entry's by {difference:.2e}")
    return [folder / f"block_{k}.pineappl.lz4" for k in range(len(stored.attrs["datasets"]))]


def _original_index(table, coverage, x, q2, y) -> np.ndarray:
    """Row of nnpdf-data's table (published order) of each of our points, by its kinematics."""
    kin = {name: table[f"kin{i + 1}"].to_numpy(float) for i, name in enumerate(coverage)}
    found = []
    for a, b, c in zip(x, q2, y):
        match = np.isclose(kin["x"], a, rtol=1e-12) & np.isclose(kin["Q2"], b, rtol=1e-12)
        if "y" in kin and c:
            match &= np.isclose(kin["y"], c, rtol=1e-12)
        hits = np.flatnonzero(match)
        if hits.size != 1:
            raise RuntimeError(f"point x={a}, Q2={b}, y={c} matches {hits.size} published points")
        found.append(int(hits[0]))
    return np.array(found)


def _subset(path: Path, key: str, index: np.ndarray) -> dict:
    content = yaml.safe_load(path.read_text())
    content[key] = [content[key][i] for i in index]
    return content


def table_name(dataset: str) -> str:
    return PREFIX + dataset.replace("-", "_")


def commondata(stored, orders: list[np.ndarray], folder: Path) -> list[str]:
    """RL_<SET>/ folders with the entry's points of each dataset; returns the datasets' new names."""
    root = commondata_root()
    x, q2 = stored["x"].values, stored["Q2"].values
    y = np.nan_to_num(stored["y"].values)
    by_set: dict[str, list] = {}
    names = []
    for name, variant, order in zip(stored.attrs["datasets"], stored.attrs["variants"], orders):
        resolved = resolve_name(name, root)
        data, coverage, used = load_dataset(resolved, root, None if variant == "None" else variant)
        index = _original_index(data.commondata_table, list(coverage), x[order], q2[order], y[order])
        source = root / resolved.setname
        metadata = yaml.safe_load((source / "metadata.yaml").read_text())
        observable = next(
            o for o in metadata["implemented_observables"] if o["observable_name"] == resolved.observable
        )
        chosen = observable.get("variants", {}).get(used, {}) if used else {}
        files = {**observable, **{k: v for k, v in chosen.items() if k != "experiment"}}
        if chosen.get("experiment"):  # legacy variants name the experiment of the whole set
            metadata["nnpdf_metadata"]["experiment"] = chosen["experiment"]
        target = folder / (PREFIX + resolved.setname)
        target.mkdir(parents=True, exist_ok=True)
        tag = resolved.observable
        out = {"data_central": f"data_{tag}.yaml", "kinematics": f"kinematics_{tag}.yaml"}
        _dump(target / out["data_central"], _subset(source / files["data_central"], "data_central", index))
        _dump(target / out["kinematics"], _subset(source / observable["kinematics"]["file"], "bins", index))
        uncertainties = []
        for k, unc in enumerate(files["data_uncertainties"]):
            uncertainties.append(f"uncertainties_{tag}_{k}.yaml")
            _dump(target / uncertainties[-1], _subset(source / unc, "bins", index))
        copy = {k: v for k, v in observable.items() if k not in ("variants", "ported_from")}
        copy.update(ndata=int(index.size), data_central=out["data_central"], data_uncertainties=uncertainties)
        copy["kinematics"] = {**observable["kinematics"], "file": out["kinematics"]}
        copy["theory"] = {**files["theory"], "FK_tables": [[table_name(name)]]}
        by_set.setdefault(resolved.setname, [metadata, []])[1].append(copy)
        names.append(PREFIX + name)
    for setname, (metadata, observables) in by_set.items():
        metadata = {k: v for k, v in metadata.items() if k != "implemented_observables"}
        metadata.update(setname=PREFIX + setname, implemented_observables=observables)
        _dump(folder / (PREFIX + setname) / "metadata.yaml", metadata)
    return names


def _dump(path: Path, content: dict) -> None:
    path.write_text(yaml.safe_dump(content, sort_keys=False))


def theory_card(stored, theory_id: int, nnpdf_python: str) -> Path:
    """The card validphys reads for `theory_id`, written into the n3fit environment's nnpdf-data."""
    card = dict(stored.attrs[PROVENANCE_KEY]["theory"]["theory_card"])
    card.update(
        ID=theory_id,
        IC=0,
        Comments=f"ReplicaLake tables of theory {card['ID']} with {card['FNS']}, "
        "charm at Q0 set to zero (tests/benchmarks/n3fit_inputs.py)",
    )
    where = subprocess.run(
        [nnpdf_python, "-c", "import nnpdf_data; print(nnpdf_data.THEORY_CARDS_PATH)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = Path(where) / f"{theory_id}.yaml"
    _dump(path, card)
    return path


def t0_set(x_grid: np.ndarray, folder: Path) -> Path:
    """The toy as a 'replicas' set of two equal members (validphys takes t0 from such a set), with
    the alpha_s knots pdfflow insists on (one-loop running from 0.118 at M_Z; t0 does not use it)."""
    toy = toy_truth(GridParams(x_min=float(x_grid[0]), n_x=x_grid.size))
    q = toy["q_0"].values
    alphas = 0.118 / (1 + 0.118 * (33 - 2 * 5) / (12 * np.pi) * np.log(q**2 / 91.1876**2))
    info = toy.attrs["lhapdf_info"]
    info.update(
        ErrorType="replicas",
        AlphaS_MZ=0.118,
        AlphaS_OrderQCD=0,
        AlphaS_Qs=q.tolist(),
        AlphaS_Vals=alphas.tolist(),
    )
    setdir = write_lhapdf_set(toy, folder, T0_SET)
    path = setdir / f"{T0_SET}.info"
    path.write_text(path.read_text().replace("NumMembers: 1", "NumMembers: 2"))
    shutil.copyfile(setdir / f"{T0_SET}_0000.dat", setdir / f"{T0_SET}_0001.dat")
    return setdir


def write_inputs(
    lake: Lake, entry: str, work: Path, theory_id: int, theory_python: str | None, nnpdf_python: str
) -> dict:
    """Everything n3fit needs under `work`; returns the dataset names and paths."""
    stored, request = entry_request(lake, entry)
    orders = bin_order(stored)
    tables = fk_tables(stored, request, _interpreter(theory_python), work / "pineko")
    fastkernel = work / "share" / "theories" / f"theory_{theory_id}" / "fastkernel"
    fastkernel.mkdir(parents=True, exist_ok=True)
    for name, table in zip(stored.attrs["datasets"], tables):
        shutil.copyfile(table, fastkernel / f"{table_name(name)}.pineappl.lz4")
    names = commondata(stored, orders, work / "commondata")
    card = theory_card(stored, theory_id, nnpdf_python)
    t0_set(stored["x_grid"].values, work / "lhapdf")
    profile = {
        "nnpdf_share": str(work / "share"),
        "theories_path": str(work / "share" / "theories"),
        "results_path": str(work / "results"),
        "data_path": [str(work / "commondata")],
    }
    _dump(work / "nnprofile.yaml", profile)
    inputs = {
        "datasets": names,
        "orders": [o.tolist() for o in orders],
        "theory_card": str(card),
        "profile": str(work / "nnprofile.yaml"),
        "t0_set": T0_SET,
    }
    (work / "inputs.json").write_text(json.dumps(inputs))
    return inputs
