"""Jet tagger replicas: one batched ensemble vs a loop of single-replica trainings, one CPU thread.

Run: python tests/benchmarks/bench_lhc_tagging.py [--quick] [--jets 20000] [--steps 300]
     [--replicas 5 20] [--repeats 3]   (full: a few minutes on the 2-core machine)

Both sides train the same networks the same number of minibatch steps on the same jet-frame
features (bootstrap weights per replica, stopping off): the batched side is one `fit_network` over
R replicas, the loop side calls `fit_network` R times with one replica each (what one would do
without the replica core, e.g. one job per bootstrap). The ratio measures batching alone. Both
sides: one untimed warm-up, best of N, interleaved. Also
reported: jet-frame preprocessing throughput (jets per second per core).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from engine.kernels.classifier import NetworkConfig, bootstrap_weights, fit_network
from engine.kernels.jet_preprocess import constituent_features
from engine.kernels.jets_synth import simulate_jets
from engine.kernels.optim import OptimiserConfig
from engine.kernels.train import StoppingConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks._timing import compare, finish, header, ratio, show  # noqa: E402

N_CONSTITUENTS, BATCH = 30, 512


def run(
    quick: bool = False,
    jets: int | None = None,
    steps: int | None = None,
    replicas=None,
    repeats: int | None = None,
) -> dict:
    jets = jets or (5_000 if quick else 20_000)
    steps = steps or (60 if quick else 300)
    replicas = replicas or ([5] if quick else [5, 20])
    repeats = repeats or (2 if quick else 3)
    torch.set_num_threads(1)
    result = header(
        "jet tagger replicas: batched vs a loop of single trainings",
        repeats,
        jets=jets,
        steps=steps,
        threads=1,
    )
    data = simulate_jets(jets, seed=0)
    prep = compare(
        {"prep": lambda: constituent_features(data["E"], data["PX"], data["PY"], data["PZ"], N_CONSTITUENTS)},
        repeats,
        warmup=0,
    )["prep"]
    x = prep.value
    print(f"preprocessing: {jets / prep.wall:,.0f} jets/s on one core ({N_CONSTITUENTS} constituents of 200)")
    result["preprocess_jets_per_s"] = round(jets / prep.wall)
    y = data["label"].astype(float)
    n_train = jets * 3 // 4
    config = NetworkConfig(
        (64, 64),
        ("relu", "relu", "linear"),
        steps,
        OptimiserConfig(lr=1e-3),
        StoppingConfig(threshold=np.inf, patience=10 * steps, stagnation_epochs=None),
        validation_every=steps,
        seed=0,
    )
    val = (x[n_train:], y[n_train:], np.ones(jets - n_train))

    def fit(weights):
        fit_network("bce", x[:n_train], y[:n_train], weights, *val, config, batch_size=BATCH)

    for r in replicas:
        weights = bootstrap_weights(n_train, r, seed=1)
        timings = compare(
            {
                "batched": lambda w=weights: fit(w),
                "loop": lambda w=weights, r=r: [fit(w[k : k + 1]) for k in range(r)],
            },
            repeats,
        )
        batched, loop = timings["batched"], timings["loop"]
        print(
            f"R={r:3d}: batched {batched.wall:6.2f} s, loop {loop.wall:6.2f} s -> "
            f"{loop.wall / batched.wall:.1f}x ({steps} steps of {BATCH} jets, "
            f"[{3 * N_CONSTITUENTS}-64-64-1])",
            flush=True,
        )
        result[f"r{r}_batched_s"] = round(batched.wall, 3)
        result[f"r{r}_batched_cpu_s"] = round(batched.cpu, 3)
        result[f"r{r}_loop_s"] = round(loop.wall, 3)
        result[f"r{r}_loop_cpu_s"] = round(loop.cpu, 3)
        result[f"r{r}_speedup"] = ratio(loop.wall, batched.wall)
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5000 jets, 60 steps, R = 5 only")
    parser.add_argument("--jets", type=int, default=None, help="default 20000")
    parser.add_argument("--steps", type=int, default=None, help="default 300")
    parser.add_argument("--replicas", type=int, nargs="+", default=None, help="default 5 20")
    parser.add_argument("--repeats", type=int, default=None, help="best of (default 3, quick 2)")
    args = parser.parse_args()
    show(run(args.quick, args.jets, args.steps, args.replicas, args.repeats))


if __name__ == "__main__":
    main()
