"""Benchmark: LO closure fit of F2 (BCDMS + SLAC, p and d) with 100 replicas x 4000 epochs, batched,
against a loop of single-replica fits timed in the same run and scaled to 100 replicas.

Run: python tests/benchmarks/bench_pdf_fit.py [--quick] [--replicas 100] [--epochs 4000] [--singles 3]
Prints wall and CPU times, the loop/batched ratio and the closure estimators of the batched fit.
Both sides: the same untimed 20-epoch warm-up, the same stopping, best of --repeats, interleaved
(full mode best of 1: the batched fit alone takes over a minute).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from engine.ingest.nnpdf import apply_cuts, read_commondata
from engine.kernels.optim import OptimiserConfig
from engine.kernels.pdf_fit import PdfFitConfig, basis_on_grid, fit_pdf, flavours_from_basis
from engine.kernels.pdf_fk import f2_fk_table, les_houches_toy, x_grid
from engine.kernels.replicas import draw_replicas, training_masks
from engine.kernels.train import StoppingConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks._timing import compare, finish, header, ratio, show  # noqa: E402

DATASETS = [
    "SLAC_NC_NOTFIXED_P",
    "SLAC_NC_NOTFIXED_D",
    "BCDMS_NC_NOTFIXED_P_EM-F2",
    "BCDMS_NC_NOTFIXED_D_EM-F2",
]


def closure_problem(replicas: int):
    data = apply_cuts(read_commondata(DATASETS), 3.49, 12.5)
    grid = x_grid()
    fk = f2_fk_table(data["x"].values, data["target_index"].values, grid)
    cov = data["covariance"].values
    truth = np.einsum("nxf,xf->n", fk, les_houches_toy(grid))
    level1 = truth + np.linalg.cholesky(cov) @ np.random.default_rng(1).standard_normal(truth.size)
    pseudo = draw_replicas(level1, cov, None, replicas, 2)
    mask = training_masks(truth.size, data["dataset_index"].values, replicas, 0.75, 2)
    return fk, grid, cov, truth, level1, pseudo, mask


def closure_estimators(result, fk, grid, cov, truth, level1):
    values = basis_on_grid(result.weights, result.architecture, grid)
    xf = flavours_from_basis(values, grid, ("Sigma", "T3"), np.ones(values.shape[0]))
    pred = np.einsum("nxf,rxf->rn", fk, xf)[result.kept]
    central = pred.mean(0)
    factor = np.linalg.cholesky(cov)

    def chi2(a, b):
        z = np.linalg.solve(factor, a - b)
        return z @ z / z.size

    pull = np.sqrt(np.mean(((central - truth) / pred.std(0, ddof=1)) ** 2))
    return chi2(central, truth), chi2(central, level1), pull


def run(
    quick: bool = False,
    replicas: int | None = None,
    epochs: int | None = None,
    singles: int | None = None,
    repeats: int | None = None,
) -> dict:
    replicas = replicas or (10 if quick else 100)
    epochs = epochs or (150 if quick else 4000)
    singles = singles or (2 if quick else 3)
    repeats = repeats or (2 if quick else 1)
    torch.set_num_threads(1)
    fk, grid, cov, truth, level1, pseudo, mask = closure_problem(replicas)
    config = PdfFitConfig(
        ("Sigma", "T3"),
        epochs=epochs,
        seed=3,
        optimiser=OptimiserConfig(name="adam", lr=3e-3),
        stopping=StoppingConfig(threshold=3.0, patience=400),
    )
    result = header(
        "PDF closure fit: batched replicas vs a loop of single-replica fits",
        repeats,
        points=truth.size,
        replicas=replicas,
        epochs=epochs,
        threads=1,
    )
    warm = PdfFitConfig(
        ("Sigma", "T3"), epochs=20, seed=3, optimiser=config.optimiser, stopping=config.stopping
    )
    fit_pdf(fk, grid, pseudo, mask, cov, warm)  # the same untimed warm-up for both sides
    fit_pdf(fk, grid, pseudo[:1], mask[:1], cov, warm)

    def loop():
        return [
            fit_pdf(fk, grid, pseudo[k : k + 1], mask[k : k + 1], cov, config)[0].epochs_run
            for k in range(singles)
        ]

    timings = compare(
        {"batched": lambda: fit_pdf(fk, grid, pseudo, mask, cov, config), "singles": loop}, repeats, warmup=0
    )
    batched = timings["batched"]
    fit, penalty = batched.value
    kept = fit.kept & (penalty < 1e-6)
    loop_s = timings["singles"].wall / singles * replicas
    chi2_truth, chi2_data, pull = closure_estimators(fit, fk, grid, cov, truth, level1)
    print(
        f"batched fit: {batched.wall:.1f} s ({fit.epochs_run} epochs run; {fit.summary()}; "
        f"{int(kept.sum())} also pass positivity)"
    )
    print(
        f"closure: chi2(central, truth)/n = {chi2_truth:.3f}, chi2(central, level-1)/n = {chi2_data:.3f}, "
        f"RMS pull = {pull:.2f}"
    )
    print(
        f"single-replica fits: {timings['singles'].wall / singles:.1f} s each (epochs run "
        f"{timings['singles'].value}); a loop of {replicas} -> {loop_s:.0f} s; batched is "
        f"{loop_s / batched.wall:.1f}x faster"
    )
    result.update(
        {
            "batched_s": round(batched.wall, 2),
            "batched_cpu_s": round(batched.cpu, 2),
            "single_fit_s": round(timings["singles"].wall / singles, 3),
            "single_fit_cpu_s": round(timings["singles"].cpu / singles, 3),
            "loop_of_replicas_s": round(loop_s, 1),
            "speedup": ratio(loop_s, batched.wall),
            "replicas": replicas,
            "kept": int(fit.kept.sum()),
            "kept_and_positive": int(kept.sum()),
            "chi2_central_truth_per_point": round(chi2_truth, 4),
            "chi2_central_level1_per_point": round(chi2_data, 4),
            "rms_pull": round(pull, 3),
            "points": int(truth.size),
        }
    )
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 replicas, 150 epochs, 2 single fits")
    parser.add_argument("--replicas", type=int, default=None, help="default 100")
    parser.add_argument("--epochs", type=int, default=None, help="default 4000")
    parser.add_argument("--singles", type=int, default=None, help="single-replica fits to time (default 3)")
    parser.add_argument("--repeats", type=int, default=None, help="best of (default 1, quick 2)")
    args = parser.parse_args()
    show(run(args.quick, args.replicas, args.epochs, args.singles, args.repeats))


if __name__ == "__main__":
    main()
