"""Jet tagger replicas: one batched ensemble vs a loop of single-replica trainings, one CPU thread.

Run: python tests/benchmarks/bench_lhc_tagging.py   (about a minute on the 2-core machine)

Both sides train the same networks the same number of minibatch steps on the same jet-frame
features (bootstrap weights per replica, stopping off): the batched side is one `fit_network` over
R replicas, the loop side calls `fit_network` R times with one replica each (what one would do
without the replica core, e.g. one job per bootstrap). The ratio measures batching alone. Also
reported: jet-frame preprocessing throughput (jets per second per core).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from engine.kernels.classifier import NetworkConfig, bootstrap_weights, fit_network
from engine.kernels.jet_preprocess import constituent_features
from engine.kernels.jets_synth import simulate_jets
from engine.kernels.optim import OptimiserConfig
from engine.kernels.train import StoppingConfig

N_JETS, N_CONSTITUENTS, STEPS, BATCH = 20_000, 30, 300, 512


def main() -> None:
    torch.set_num_threads(1)
    jets = simulate_jets(N_JETS, seed=0)
    start = time.perf_counter()
    x = constituent_features(jets["E"], jets["PX"], jets["PY"], jets["PZ"], N_CONSTITUENTS)
    prep = time.perf_counter() - start
    print(f"preprocessing: {N_JETS / prep:,.0f} jets/s on one core ({N_CONSTITUENTS} constituents of 200)")
    y = jets["label"].astype(float)
    n_train = N_JETS * 3 // 4
    config = NetworkConfig((64, 64), ("relu", "relu", "linear"), STEPS, OptimiserConfig(lr=1e-3),
                           StoppingConfig(threshold=np.inf, patience=10 * STEPS, stagnation_epochs=None),
                           validation_every=STEPS, seed=0)
    val = (x[n_train:], y[n_train:], np.ones(N_JETS - n_train))
    for replicas in (5, 20):
        weights = bootstrap_weights(n_train, replicas, seed=1)
        start = time.perf_counter()
        fit_network("bce", x[:n_train], y[:n_train], weights, *val, config, batch_size=BATCH)
        batched = time.perf_counter() - start
        start = time.perf_counter()
        for r in range(replicas):
            fit_network("bce", x[:n_train], y[:n_train], weights[r:r + 1], *val, config, batch_size=BATCH)
        loop = time.perf_counter() - start
        print(f"R={replicas:3d}: batched {batched:6.2f} s, loop {loop:6.2f} s -> {loop / batched:.1f}x "
              f"({STEPS} steps of {BATCH} jets, [{3 * N_CONSTITUENTS}-64-64-1])")


if __name__ == "__main__":
    main()
