"""Benchmark: LO closure fit of F2 (BCDMS + SLAC, p and d) with 100 replicas x 4000 epochs, batched,
against a loop of single-replica fits timed in the same run and scaled to 100 replicas.

Run: python tests/benchmarks/bench_pdf_fit.py [--replicas 100] [--epochs 4000] [--singles 3]
Prints wall times, the batched/loop ratio and the closure estimators of the batched fit.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from engine.ingest.nnpdf import apply_cuts, read_commondata
from engine.kernels.optim import OptimiserConfig
from engine.kernels.pdf_fit import PdfFitConfig, basis_on_grid, fit_pdf, flavours_from_basis
from engine.kernels.pdf_fk import f2_fk_table, les_houches_toy, x_grid
from engine.kernels.replicas import draw_replicas, training_masks
from engine.kernels.train import StoppingConfig

DATASETS = ["SLAC_NC_NOTFIXED_P", "SLAC_NC_NOTFIXED_D", "BCDMS_NC_NOTFIXED_P_EM-F2",
            "BCDMS_NC_NOTFIXED_D_EM-F2"]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=4000)
    parser.add_argument("--singles", type=int, default=3, help="single-replica fits to time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fk, grid, cov, truth, level1, pseudo, mask = closure_problem(args.replicas)
    config = PdfFitConfig(("Sigma", "T3"), epochs=args.epochs, seed=3,
                          optimiser=OptimiserConfig(name="adam", lr=3e-3),
                          stopping=StoppingConfig(threshold=3.0, patience=400))
    print(f"{truth.size} points, R = {args.replicas}, {args.epochs} epochs, 1 torch thread")
    start = time.perf_counter()
    result, penalty = fit_pdf(fk, grid, pseudo, mask, cov, config)
    batched = time.perf_counter() - start
    kept = result.kept & (penalty < 1e-6)
    print(f"batched fit: {batched:.1f} s ({result.epochs_run} epochs run; {result.summary()}; "
          f"{int(kept.sum())} also pass positivity)")
    chi2_truth, chi2_data, pull = closure_estimators(result, fk, grid, cov, truth, level1)
    print(f"closure: chi2(central, truth)/n = {chi2_truth:.3f}, chi2(central, level-1)/n = {chi2_data:.3f}, "
          f"RMS pull = {pull:.2f}")
    start = time.perf_counter()
    epochs = []
    for k in range(args.singles):
        single, _ = fit_pdf(fk, grid, pseudo[k:k + 1], mask[k:k + 1], cov, config)
        epochs.append(single.epochs_run)
    singles = time.perf_counter() - start
    loop = singles / args.singles * args.replicas
    print(f"single-replica fits: {singles / args.singles:.1f} s each (epochs run {epochs}); "
          f"a loop of {args.replicas} -> {loop:.0f} s")
    print(f"batched / loop: {batched / loop:.3f} (batched is {loop / batched:.1f}x faster)")


if __name__ == "__main__":
    main()
