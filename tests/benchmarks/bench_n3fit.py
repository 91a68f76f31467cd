"""n3fit side by side with our NNLO replica fit: same points, FK tables, cuts and t0 (issue 20).

Run (three environments: this project's, the theory packages', and NNPDF's `nnpdf` package):
  python tests/benchmarks/bench_n3fit.py --lake /work/theory-lake --work /work/n3fit-work \\
      --nnpdf-python /work/nnpdf-venv/bin/python --theory-python /work/theory-venv/bin/python
Defaults: entry raw/dis_hera_cc_nnlo, our fit pdf-theory-fit-hera-cc (recipes/pdf_theory_fit_hera_cc.yaml,
already run into the lake), evolution raw/dis_hera_nnlo_evolution, 100 n3fit replicas.

n3fit runs on inputs written by tests/benchmarks/n3fit_inputs.py: the entry's points, pineko's
FK tables of the entry (checked equal to the entry's), NNPDF's DIS cuts (validphys must keep every
point: checked after vp-setupfit) and the Les Houches toy as t0. Its settings are NNPDF4.0's NNLO
runcard (network, Nadam, 17000 epochs, patience 10%, exponent ranges) in the NNPDF3.1
perturbative-charm basis (charm zero at Q0, as in our tables), without positivity or integrability
datasets (they need FK tables of their own).

Both fits are then judged by the same code: each kept replica's PDF at Q0 on our x grid (n3fit's
exported grid interpolated cubically in ln x), predictions through the entry's FK tables, chi2/n
per dataset of the replica mean with the t0 covariance, and the PDFs at Q0 and, evolved with the
same eko operators (pdf.evolve), at 100 GeV. n3fit's own chi2 of each replica (experimental
covariance) is recomputed here as a check of the whole chain.

Times: our recipe is rerun here (`--ours-run`; otherwise the recipe's last run record is used) and
n3fit's vp-setupfit + n3fit are timed as subprocesses (wall and CPU of children).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import xarray as xr
import yaml
from scipy.interpolate import CubicSpline

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import n3fit_inputs  # noqa: E402
from _timing import measure  # noqa: E402

from engine.bounds import Params  # noqa: E402
from engine.ingest.lhapdf_format import pdfset_from_arrays  # noqa: E402
from engine.kernels.pdf_fk import FLAVOURS  # noqa: E402
from engine.ops.pdf_chi2 import _table as chi2_by_block  # noqa: E402
from engine.ops.pdf_chi2 import chi2_per_point  # noqa: E402
from engine.ops.pdf_evolve import evolve  # noqa: E402
from engine.ops.pdf_grid import EvaluateParams, evaluate  # noqa: E402
from engine.storage import Lake  # noqa: E402

PDG = {
    "TBAR": -6,
    "BBAR": -5,
    "CBAR": -4,
    "SBAR": -3,
    "UBAR": -2,
    "DBAR": -1,
    "GLUON": 21,
    "D": 1,
    "U": 2,
    "S": 3,
    "C": 4,
    "B": 5,
    "T": 6,
    "PHT": 22,
}
LABEL = {pid: label for label, pid in PDG.items()}  # n3fit's exportgrid labels by PDG id
X_SHOWN = (1e-4, 1e-3, 1e-2, 0.1, 0.3, 0.5, 0.7)
X_BAND = (1e-3, 0.7)  # where "within each other's band" is counted over the grid's knots


def runcard(datasets: list[str], theory_id: int, seed: int, threads: int) -> dict:
    """NNPDF4.0's NNLO fit settings on our datasets (see the module docstring for what differs)."""
    return {
        "description": "n3fit on the points, NNLO FK tables, cuts and t0 of a ReplicaLake entry",
        "dataset_inputs": [{"dataset": name, "frac": 0.75} for name in datasets],
        "datacuts": {"q2min": 3.49, "w2min": 12.5, "t0pdfset": n3fit_inputs.T0_SET},
        "theory": {"theoryid": theory_id},
        "trvlseed": seed,
        "nnseed": seed + 1,
        "mcseed": seed + 2,
        "save": False,
        "genrep": True,
        "parameters": {
            "nodes_per_layer": [25, 20, 7],
            "activation_per_layer": ["tanh", "tanh", "linear"],
            "initializer": "glorot_normal",
            "optimizer": {"clipnorm": 6.073e-6, "learning_rate": 2.621e-3, "optimizer_name": "Nadam"},
            "epochs": 17000,
            "positivity": {"initial": 184.8, "multiplier": None},
            "integrability": {"initial": 10, "multiplier": None},
            "stopping_patience": 0.1,
            "layer_type": "dense",
            "dropout": 0.0,
            "threshold_chi2": 3.5,
        },
        "fitting": {
            "fitbasis": "NN31PC",
            "basis": [
                {"fl": "sng", "trainable": False, "smallx": [1.094, 1.118], "largex": [1.46, 3.003]},
                {"fl": "g", "trainable": False, "smallx": [0.8189, 1.044], "largex": [2.791, 5.697]},
                {"fl": "v", "trainable": False, "smallx": [0.457, 0.7326], "largex": [1.56, 3.431]},
                {"fl": "v3", "trainable": False, "smallx": [0.1462, 0.4061], "largex": [1.745, 3.452]},
                {"fl": "v8", "trainable": False, "smallx": [0.5401, 0.7665], "largex": [1.539, 3.393]},
                {"fl": "t3", "trainable": False, "smallx": [-0.4401, 0.9163], "largex": [1.773, 3.333]},
                {"fl": "t8", "trainable": False, "smallx": [0.5852, 0.8537], "largex": [1.533, 3.436]},
            ],
        },
        "positivity": {"posdatasets": []},
        "integrability": {"integdatasets": []},
        "debug": False,
        "maxcores": threads,
    }


def timed(commands: list[list[str]], cwd: Path, env: dict, logs: list[Path]) -> tuple[float, float]:
    """(wall, CPU seconds, children included: _timing.measure) of subprocesses run side by side, each
    writing to its log; a failure shows the end of its log."""

    def run_all() -> list[int]:
        with ExitStack() as stack:
            outs = [stack.enter_context(log.open("w")) for log in logs]
            running = [
                subprocess.Popen(c, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
                for c, out in zip(commands, outs)
            ]
            return [process.wait() for process in running]

    wall, cpu, codes = measure(run_all)
    for command, code, log in zip(commands, codes, logs):
        if code:
            raise RuntimeError(
                f"{' '.join(command)} exited {code}; the end of {log}:\n"
                + "\n".join(log.read_text().splitlines()[-20:])
            )
    return wall, cpu


def run_n3fit(
    work: Path,
    inputs: dict,
    nnpdf_python: str,
    theory_id: int,
    replicas: int,
    seed: int,
    processes: int,
    threads: int,
) -> dict:
    """vp-setupfit, then n3fit on replicas 1..R split over `processes` processes of `threads`
    TensorFlow threads each; returns their times. n3fit 4.1 trains the replicas a process gets in
    one model, to the last replica's stop: measured here per replica-epoch, 1 replica ~10 ms, 15 in
    a 1-thread process ~5 ms (two side by side), 30 in one process ~3.3 ms."""
    run = work / "run"
    run.mkdir(parents=True, exist_ok=True)
    name = f"rl_{replicas}"
    card = runcard(inputs["datasets"], theory_id, seed, threads)
    (run / f"{name}.yml").write_text(yaml.safe_dump(card, sort_keys=False))
    env = {
        **os.environ,
        "NNPDF_PROFILE_PATH": inputs["profile"],
        "LHAPDF_DATA_PATH": str(work / "lhapdf"),
        "CUDA_VISIBLE_DEVICES": "",
    }
    bin_dir = Path(nnpdf_python).parent
    setup = timed([[str(bin_dir / "vp-setupfit"), f"{name}.yml"]], run, env, [run / "setupfit.log"])
    summary = re.search(r"Summary: (\d+)/(\d+) datapoints passed", (run / "setupfit.log").read_text())
    if not summary or summary.group(1) != summary.group(2):
        raise RuntimeError(f"validphys's cuts drop points of the entry ({summary and summary.group(0)})")
    edges = np.linspace(0, replicas, processes + 1).round().astype(int)
    commands = [
        [str(bin_dir / "n3fit"), f"{name}.yml", str(a + 1), "-r", str(b)]
        for a, b in zip(edges[:-1], edges[1:])
        if b > a
    ]
    fit = timed(commands, run, env, [run / f"n3fit_{k}.log" for k in range(len(commands))])
    return {
        "fit": str(run / name),
        "setup_wall": setup[0],
        "setup_cpu": setup[1],
        "fit_wall": fit[0],
        "fit_cpu": fit[1],
        "processes": len(commands),
    }


def n3fit_replicas(fit: Path, x_grid: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """xf (replica, FLAVOURS, x_grid) at Q0 from each replica's exported grid, and its fit record."""
    values, records = [], []
    for folder in sorted((fit / "nnfit").glob("replica_*"), key=lambda p: int(p.name.split("_")[1])):
        grid = yaml.safe_load((folder / f"{fit.name}.exportgrid").read_text())
        x = np.asarray(grid["xgrid"], float)
        table = np.asarray(grid["pdfgrid"], float)  # (x, label): x f at Q0
        columns = [grid["labels"].index(LABEL[f]) for f in FLAVOURS]
        inside = x < 1.0
        spline = CubicSpline(np.log(x[inside]), table[inside][:, columns], axis=0)
        on_grid = spline(np.log(np.clip(x_grid, x[0], x[inside][-1])))
        on_grid[x_grid >= 1.0] = 0.0  # x f vanishes at x = 1
        values.append(on_grid.T)
        records.append(json.loads((folder / f"{fit.name}.json").read_text()))
    return np.stack(values), records


def predictions(fk: np.ndarray, xf: np.ndarray) -> np.ndarray:
    """(replica, point) = sum over x, flavour of FK (point, x, flavour) xf (replica, flavour, x)."""
    return np.einsum("pxf,rfx->rp", fk, xf)


def chi2_table(prediction: np.ndarray, data: np.ndarray, covariance: np.ndarray, counts) -> list[float]:
    """[all, then each dataset's block]: chi2/n of the replica-mean prediction (pdf.chi2_by_dataset's)."""
    return chi2_by_block(prediction.mean(axis=0), data, covariance, tuple(counts)).tolist()


def combinations(xf: np.ndarray, flavours: list[int]) -> dict[str, np.ndarray]:
    """g, Sigma, V, V3, T3 from xf (member, flavour, ...) over the PDG ids `flavours`."""
    f = {pid: xf[:, i] for i, pid in enumerate(flavours)}
    zero = np.zeros_like(f[21])
    q = {k: f.get(k, zero) for k in (1, 2, 3, 4, 5, -1, -2, -3, -4, -5)}
    minus = {k: q[k] - q[-k] for k in (1, 2, 3)}
    return {
        "g": f[21],
        "Sigma": sum(q[k] + q[-k] for k in (1, 2, 3, 4, 5)),
        "V": minus[1] + minus[2] + minus[3],
        "V3": minus[2] - minus[1],
        "T3": q[2] + q[-2] - q[1] - q[-1],
    }


def band_table(ours: dict, theirs: dict, x: np.ndarray) -> list[dict]:
    """Per combination: mean +- std of both at X_SHOWN, and the share of knots in X_BAND where each
    mean lies in the other's 68% band (mean +- std)."""
    rows = []
    shown = [int(np.argmin(np.abs(np.log(x / v)))) for v in X_SHOWN]
    window = (x >= X_BAND[0]) & (x <= X_BAND[1])
    for name in ours:
        a, b = ours[name], theirs[name]
        ma, sa, mb, sb = a.mean(0), a.std(0), b.mean(0), b.std(0)
        gap = np.abs(ma - mb)
        rows.append(
            {
                "pdf": name,
                "at": {
                    f"{x[i]:.3g}": [float(ma[i]), float(sa[i]), float(mb[i]), float(sb[i])] for i in shown
                },
                "ours_in_n3fit_band": float(np.mean(gap[window] <= sb[window])),
                "n3fit_in_our_band": float(np.mean(gap[window] <= sa[window])),
            }
        )
    return rows


def at_q(pdf_set: xr.Dataset, evolution: xr.Dataset, x: np.ndarray, q: float) -> tuple[np.ndarray, list[int]]:
    """xf (member, flavour, x) of a set at Q0 evolved by pdf.evolve, at scale q (GeV)."""
    evolved = evolve(Params(), pdf_set, evolution)
    points = xr.Dataset({"x": ("point", x), "q": ("point", np.full(x.size, q))})
    values = evaluate(EvaluateParams(), evolved, points).compute()
    name = next(iter(values.data_vars))
    array = values[name].transpose("member", "flavour", "point")
    return array.values, array["flavour"].values.tolist()


def as_set(xf: np.ndarray, x_grid: np.ndarray, q0: float) -> xr.Dataset:
    """Replicas 1..R at Q0 as a PDF set (values repeated in a 2-knot Q grid), as pdf.evolve takes."""
    values = np.repeat(xf[:, :, :, None], 2, axis=3)
    return pdfset_from_arrays(
        [x_grid],
        [np.array([q0, 2 * q0])],
        list(FLAVOURS),
        [values],
        {"SetDesc": "replicas at Q0"},
        members=np.arange(1, xf.shape[0] + 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--nnpdf-python", required=True)
    parser.add_argument("--theory-python", default=None)
    parser.add_argument("--entry", default="dis_hera_cc_nnlo")
    parser.add_argument("--fit", default="pdf-theory-fit-hera-cc")
    parser.add_argument("--evolution", default="dis_hera_nnlo_evolution")
    parser.add_argument("--theory-id", type=int, default=41900001)
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--seed", type=int, default=14613416)
    parser.add_argument("--processes", type=int, default=1, help="n3fit processes side by side")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow threads of each (maxcores)")
    parser.add_argument("--reuse", action="store_true", help="read an earlier n3fit run in --work")
    args = parser.parse_args(argv)
    lake, work = Lake(args.lake), args.work
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    inputs = n3fit_inputs.write_inputs(
        lake, args.entry, work, args.theory_id, args.theory_python, args.nnpdf_python
    )
    print(
        f"inputs: {len(inputs['datasets'])} datasets, FK tables checked ({time.perf_counter() - start:.0f} s)"
    )
    times_path = work / f"times_{args.replicas}.json"
    if args.reuse and times_path.exists():
        times = json.loads(times_path.read_text())
    else:
        times = run_n3fit(
            work,
            inputs,
            args.nnpdf_python,
            args.theory_id,
            args.replicas,
            args.seed,
            args.processes,
            args.threads,
        )
        times_path.write_text(json.dumps(times))
    stored = lake.open("raw", args.entry).load()
    prediction = lake.open("derived", f"{args.fit}/prediction").load()
    fitted = lake.open("derived", f"{args.fit}/fitted").load()
    x_grid = stored["x_grid"].values
    theirs, records = n3fit_replicas(Path(times["fit"]), x_grid)
    ours_kept = fitted["kept"].values & (fitted["member"].values > 0)
    ours = fitted["xf_0"].isel(q_0=0).transpose("member", "flavour", "x_0").values[ours_kept]
    fk, data = stored["fk"].values, prediction["data"].values
    counts = list(stored.attrs["dataset_points"])

    # validphys's covariances of the same points against ours (its order: the FK tables' bins)
    env = {**os.environ, "NNPDF_PROFILE_PATH": inputs["profile"], "LHAPDF_DATA_PATH": str(work / "lhapdf")}
    script = Path(__file__).with_name("n3fit_covmat.py")
    subprocess.run(
        [args.nnpdf_python, str(script), str(work), str(args.theory_id)],
        env=env,
        check=True,
        capture_output=True,
    )
    order = np.concatenate([np.asarray(o) for o in inputs["orders"]])
    for kind, ours_cov in (
        ("exp", prediction["covariance_experimental"].values),
        ("t0", prediction["covariance"].values),
    ):
        theirs_cov = np.load(work / f"validphys_covmat_{kind}.npy")
        scale = np.sqrt(np.outer(np.diag(theirs_cov), np.diag(theirs_cov)))
        difference = np.max(np.abs(ours_cov[np.ix_(order, order)] - theirs_cov) / scale)
        print(f"validphys's {kind} covariance vs ours: max |difference| / sqrt(C_ii C_jj) {difference:.1e}")

    # n3fit's own chi2 per replica (t0 covariance, real data), recomputed here through our tables
    own = np.array([r["chi2"] for r in records])
    t0_cov = prediction["covariance"].values
    again = np.array([chi2_per_point(p, data, t0_cov) for p in predictions(fk, theirs)])
    print(
        f"n3fit's replica chi2 (t0 covariance) recomputed through our FK tables and t0 covariance: "
        f"max |relative difference| {np.max(np.abs(again / own - 1)):.2e} over {own.size} replicas"
    )

    table_ours = chi2_table(predictions(fk, ours), data, t0_cov, counts)
    table_theirs = chi2_table(predictions(fk, theirs), data, t0_cov, counts)
    names = ["all"] + list(stored.attrs["datasets"])
    print("\nchi2/n of the replica mean, t0 covariance (same code, same FK tables, same points)")
    print(f"{'dataset':34s} {'points':>6s} {'ours':>7s} {'n3fit':>7s}")
    for name, n, a, b in zip(names, [sum(counts)] + counts, table_ours, table_theirs):
        print(f"{name:34s} {n:6d} {a:7.3f} {b:7.3f}")

    q0 = float(fitted["q_0"].values[0])
    bands = {
        "Q0": band_table(combinations(ours, list(FLAVOURS)), combinations(theirs, list(FLAVOURS)), x_grid)
    }
    evolution = lake.open("raw", args.evolution).load()
    shown = np.array(
        sorted(
            {float(x_grid[np.argmin(np.abs(np.log(x_grid / v)))]) for v in X_SHOWN}
            | set(x_grid[(x_grid >= X_BAND[0]) & (x_grid <= X_BAND[1])].tolist())
        )
    )
    a, flavours = at_q(as_set(ours, x_grid, q0), evolution, shown, 100.0)
    b, _ = at_q(as_set(theirs, x_grid, q0), evolution, shown, 100.0)
    bands["100 GeV"] = band_table(combinations(a, flavours), combinations(b, flavours), shown)
    for scale, rows in bands.items():
        print(
            f"\nPDFs at {scale}: x f, mean +- std over kept replicas (ours | n3fit); share of x knots in "
            f"[{X_BAND[0]}, {X_BAND[1]}] where each mean is inside the other's 68% band"
        )
        for row in rows:
            cells = "  ".join(
                f"x={k}: {v[0]:.3g}+-{v[1]:.2g} | {v[2]:.3g}+-{v[3]:.2g}" for k, v in row["at"].items()
            )
            print(
                f"{row['pdf']:6s} ours in n3fit's {row['ours_in_n3fit_band']:.2f}, n3fit in ours "
                f"{row['n3fit_in_our_band']:.2f}  {cells}"
            )

    best = np.array([r["best_epoch"] for r in records])
    per_replica = times["fit_cpu"] / len(records)
    setup = f"vp-setupfit {times['setup_wall']:.0f} s wall / {times['setup_cpu']:.0f} CPU-s"
    fit = f"n3fit {times['fit_wall']:.0f} s wall / {times['fit_cpu']:.0f} CPU-s"
    fit += f" in {times['processes']} processes"
    print(
        f"\nn3fit: {len(records)} replicas, {setup}, {fit} ({per_replica:.1f} CPU-s a replica), "
        f"best epoch median {np.median(best):.0f} (range {best.min()}-{best.max()}), stopped at "
        f"{max(r['stop_epoch'] for r in records)}"
    )
    print(f"ours: {ours.shape[0]} kept replicas (time: the recipe's run, README)")
    result = {
        "chi2": {"datasets": names, "ours": table_ours, "n3fit": table_theirs},
        "bands": bands,
        "times": times,
        "replicas": len(records),
        "ours_kept": int(ours.shape[0]),
        "n3fit_chi2_check": float(np.max(np.abs(again / own - 1))),
    }
    (work / f"bench_n3fit_{args.replicas}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
