"""Benchmark: `pdf.compress`'s search (1000 -> 100 replicas, 50 x knots x 8 flavours) against a
plain numpy implementation of the same search.

Both sides run kernels.compress.compress with the same seed, so they draw the same random subsets
and the same mutants; they differ only in how a child subset is scored. Ours updates the parent's
sums over members (powers z^1..4, products for the correlations, KS level indicators) with the
1-3 swapped replicas; the baseline computes every child's mean, std, skewness, kurtosis,
correlation matrix and KS distance from its 100 members with plain numpy. Same decisions, so the
same chosen subset (checked). Replicas are drawn from a Gaussian process over (flavour, ln x).

    python tests/benchmarks/bench_pdf_compress.py [--quick] [--generations 500] [--repeats 1]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.kernels.compress import ESTIMATORS, Prepared, Sums, compress  # noqa: E402
from tests.benchmarks._timing import compare, finish, header, ratio, show  # noqa: E402
from tests.kernels.test_compress import gaussian_process  # noqa: E402

N_REPLICAS, M, N_X, N_FLAVOURS, KS_LEVELS = 1000, 100, 50, 8, 50


def plain_children(
    prep: Prepared,
    members: np.ndarray,
    sums: Sums,
    removed: np.ndarray,
    added: np.ndarray,
    weight: np.ndarray,
) -> tuple[np.ndarray, None]:
    """Every child's six distances from its members alone: the textbook numpy way."""
    levels = plain_children.levels
    upper = np.triu_indices(prep.corr_index.size, 1)
    parts = []
    for c in range(removed.shape[0]):
        child = members.copy()
        child[removed[c][weight[c]]] = added[c][weight[c]]
        z = prep.z[child]
        mean, std = z.mean(0), z.std(0)
        centred = (z - mean) / std
        skew, kurt = np.mean(centred**3, 0), np.mean(centred**4, 0) - 3
        corr = np.corrcoef(z[:, prep.corr_index], rowvar=False)
        cdf = np.mean(z[:, :, None] <= levels.T[None], axis=0)
        parts.append(
            [
                np.mean(mean**2),
                np.mean((std - 1) ** 2),
                np.mean((skew - prep.skewness) ** 2),
                np.mean((kurt - prep.kurtosis) ** 2),
                np.mean((corr[upper] - prep.correlation[upper]) ** 2),
                np.mean(np.abs(cdf - prep.full_cdf).max(-1)),
            ]
        )
    return np.array(parts), None


def run(quick: bool = False, generations: int | None = None, repeats: int = 1) -> dict:
    generations = generations or (100 if quick else 500)
    result = header(
        "pdf.compress search: incremental sums vs plain numpy",
        repeats,
        replicas=N_REPLICAS,
        keep=M,
        points=f"{N_X} x {N_FLAVOURS}",
        generations=generations,
        threads=1,
    )
    values, _, _ = gaussian_process(N_REPLICAS, N_X, N_FLAVOURS, seed=0)
    corr = (np.arange(N_FLAVOURS)[:, None] * N_X + np.linspace(0, N_X - 1, 5).astype(int)[None]).ravel()
    z = (values - values.mean(0)) / values.std(0)
    plain_children.levels = np.quantile(z, (np.arange(KS_LEVELS) + 0.5) / KS_LEVELS, axis=0)
    common = {"generations": generations, "seed": 1, "corr_index": corr, "ks_levels": KS_LEVELS}
    timings = compare(
        {
            "ours": lambda: compress(values, M, **common),
            "plain_numpy": lambda: compress(values, M, evaluate=plain_children, **common),
        },
        repeats,
        warmup=0,
    )
    ours, plain = timings["ours"].value, timings["plain_numpy"].value
    for name, timing in timings.items():
        print(
            f"{name:12s} {timing.wall:8.2f} s wall  {timing.cpu:8.2f} s CPU  "
            f"{1e3 * timing.wall / generations:7.2f} ms/generation"
        )
        result[f"{name}_s"] = round(timing.wall, 3)
        result[f"{name}_cpu_s"] = round(timing.cpu, 3)
    result["speedup_vs_plain"] = ratio(timings["plain_numpy"].wall, timings["ours"].wall)
    result["speedup_vs_plain_cpu"] = ratio(timings["plain_numpy"].cpu, timings["ours"].cpu)
    result["same_subset"] = int(np.array_equal(ours.chosen, plain.chosen))
    result["final_error"] = round(float(ours.history[-1]), 4)
    result["start_error"] = round(float(ours.history[0]), 4)
    print(
        f"speed-up x{result['speedup_vs_plain']} (CPU x{result['speedup_vs_plain_cpu']}); same subset: "
        f"{bool(result['same_subset'])}; normalised error {result['start_error']} -> {result['final_error']}"
    )
    median = np.median(ours.random_parts, axis=0)
    for i, name in enumerate(ESTIMATORS):
        result[f"{name}_vs_random_median"] = round(float(ours.parts[i] / median[i]), 3)
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 generations")
    parser.add_argument("--generations", type=int, default=None, help="default 500")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    show(run(args.quick, args.generations, args.repeats))


if __name__ == "__main__":
    main()
