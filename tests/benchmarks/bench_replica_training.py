"""Batched replica training vs a Python loop of single-replica models, on one CPU thread.

Run: python tests/benchmarks/bench_replica_training.py   (about 1 minute on the 2-core CI machine)

Both sides do the same work per replica and step: forward on 1000 points, chi2 on that replica's
750 training points (diagonal errors), backward, one Adam step. The loop side is what a user would
write without the kernels (torch.nn.Sequential + torch.optim.Adam per replica, trained one after
another as EELSfitter does), but with the kernels' activation functions, so the ratio measures
batching alone (the kernels' CPU tanh is itself ~3x faster than torch.tanh). The batched side is
`train_ensemble` on an `EnsembleMLP`, check epochs included. Stopping is switched off so both
sides run exactly the same number of steps.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from engine.kernels.mlp import ACTIVATIONS, EnsembleMLP
from engine.kernels.optim import OptimiserConfig
from engine.kernels.replicas import draw_replicas, training_masks
from engine.kernels.train import Chi2Loss, StoppingConfig, train_ensemble

NETS = {
    "eels 2-10-15-5-1": ([2, 10, 15, 5, 1], ["sigmoid", "sigmoid", "relu", "linear"]),
    "pdf 2-25-20-8": ([2, 25, 20, 8], ["tanh", "tanh", "linear"]),
}
N_POINTS = 1000
STEPS = 200
NO_STOPPING = StoppingConfig(threshold=math.inf, patience=10**9, stagnation_epochs=None)


def problem(n_replicas: int, seed: int = 0):
    """Pseudo-data replicas of a smooth 2-D function with 5% errors, and 75/25 masks."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 0.9, (N_POINTS, 2))
    central = 1.0 + np.sin(3 * x[:, 0]) * x[:, 1]
    sigma = 0.05 * np.abs(central)
    data = draw_replicas(central, np.diag(sigma**2), None, n_replicas, seed)
    masks = training_masks(N_POINTS, np.zeros(N_POINTS), n_replicas, 0.75, seed)
    return x, sigma, data, masks


def batched(sizes, acts, n_replicas: int, steps: int) -> float:
    x, sigma, data, masks = problem(n_replicas)
    model = EnsembleMLP(n_replicas, sizes, acts, seed=1)
    xt = torch.as_tensor(x, dtype=torch.float32)
    loss = Chi2Loss(lambda m: m(xt).mean(-1), data, np.diag(sigma**2), masks)
    start = time.perf_counter()
    adam = OptimiserConfig("adam", lr=1e-3)
    train_ensemble(model, loss, steps, optimiser=adam, stopping=NO_STOPPING, validation_every=10)
    return time.perf_counter() - start


def python_loop(sizes, acts, n_replicas: int, steps: int) -> float:
    x, sigma, data, masks = problem(n_replicas)
    xt = torch.as_tensor(x, dtype=torch.float32)
    start = time.perf_counter()
    for k in range(n_replicas):
        torch.manual_seed(k)
        layers = []
        for (i, o), act in zip(zip(sizes[:-1], sizes[1:]), acts):
            layers += [torch.nn.Linear(i, o), _Activation(ACTIVATIONS[act])]
        net = torch.nn.Sequential(*layers)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        idx = torch.as_tensor(np.flatnonzero(masks[k]))
        target = torch.as_tensor(data[k], dtype=torch.float32)[idx]
        sig = torch.as_tensor(sigma, dtype=torch.float32)[idx]
        for _ in range(steps):
            opt.zero_grad()
            loss = ((target - net(xt).mean(-1)[idx]) / sig).pow(2).mean()
            loss.backward()
            opt.step()
    return time.perf_counter() - start


class _Activation(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, z):
        return self.fn(z)


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {N_POINTS} points, {STEPS} Adam steps\n")
    print("100 replicas: Python loop of single models vs batched EnsembleMLP")
    for name, (sizes, acts) in NETS.items():
        t_batch = batched(sizes, acts, 100, STEPS)
        t_loop = python_loop(sizes, acts, 100, STEPS)
        print(f"  {name:18s} loop {t_loop:6.2f} s  batched {t_batch:6.2f} s  "
              f"speed-up {t_loop / t_batch:5.1f}x")
    print("\nbatched time per replica-epoch (ms)")
    for name, (sizes, acts) in NETS.items():
        cells = []
        for r in (1, 10, 100, 1000):
            steps = {1: 200, 10: 200, 100: 50, 1000: 10}[r]
            t = batched(sizes, acts, r, steps)
            cells.append(f"R={r}: {1e3 * t / (r * steps):.3f}")
        print(f"  {name:18s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
