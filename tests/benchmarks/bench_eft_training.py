"""ML4EFT training: every (term, replica) network in one batched job vs a loop of separate networks.

Run: python tests/benchmarks/bench_eft_training.py [--replicas 5] [--events 50000]
     [--batches 64 128 256 512 4096] [--steps 150]   (about 2 minutes on the 2-core machine, one thread)

Both sides train the same networks ([2, 25, 25, 25, 1], tanh, smooth positivity 1 + s NN =
softplus(1 + s raw)) for the same number of minibatch steps on the same samples, with the same
cross-section-weighted cross-entropy and Adam (the rate falling 10x over the steps, as in the
recipe). Each side first runs a few untimed steps (allocator and kernel warm-up). The loop side is
what ML4EFT does (one torch.nn network and optimiser per (term, replica), trained one after
another), with the kernels' CPU tanh so that the ratio measures batching alone. The batched side
is `fit_eft`: one EnsembleMLP whose rows are term x replica, trained by `train_ensemble` (check
epochs, stopping bookkeeping and validation included; stopping is switched off so both sides run
every step).

The ratio depends on the events per step: batching removes per-network call overhead, not
arithmetic, so it pays most for small minibatches and least once each network's matmuls are
large enough to be arithmetic-bound on their own (hence the sweep over minibatch sizes).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from engine.kernels import eft
from engine.kernels.mlp import ACTIVATIONS
from engine.kernels.optim import OptimiserConfig
from engine.kernels.regression import scale_features
from engine.kernels.train import StoppingConfig

HIDDEN = (25, 25, 25)
TERMS = [("c1",), ("c1", "c1")]
C_TRAIN = 2.0
LR, LR_FINAL = 3e-3, 3e-4
NO_STOPPING = StoppingConfig(threshold=math.inf, patience=10**9, stagnation_epochs=None)


def samples(replicas: int, events: int):
    sm = np.stack([eft.sample_toy(np.random.default_rng([0, r]), events, {}) for r in range(replicas)])
    terms = np.stack([np.stack([eft.sample_toy_term(np.random.default_rng([1 + t, r]), events, term, C_TRAIN)
                                for r in range(replicas)]) for t, term in enumerate(TERMS)])
    scale = np.array([C_TRAIN ** len(t) for t in TERMS])
    sigma = 1.0 + scale * np.array([eft.toy_sigma(t) for t in TERMS])
    return sm, terms, sigma, scale


class _Tanh(torch.nn.Module):
    def forward(self, z):
        return ACTIVATIONS["tanh"](z.clone())


def _network() -> torch.nn.Sequential:
    layers, sizes = [], [2, *HIDDEN, 1]
    for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(i, o))
        if k < len(HIDDEN):
            layers.append(_Tanh())
    return torch.nn.Sequential(*layers)


def loop(sm, terms, sigma, scale, batch: int, steps: int) -> float:
    """ML4EFT's way: one network and optimiser per (term, replica), trained one after another."""
    low, high = eft.robust_range(sm.reshape(-1, 2))
    start = time.perf_counter()
    for t in range(terms.shape[0]):
        for r in range(sm.shape[0]):
            x_sm = torch.as_tensor(scale_features(sm[r], low, high), dtype=torch.float32)
            x_eft = torch.as_tensor(scale_features(terms[t, r], low, high), dtype=torch.float32)
            net, s = _network(), float(scale[t])
            opt = torch.optim.Adam(net.parameters(), lr=LR)
            rng = np.random.default_rng([t, r])
            for step in range(steps):
                opt.param_groups[0]["lr"] = LR * (LR_FINAL / LR) ** (step / max(1, steps - 1))
                i, j = rng.integers(0, len(x_sm), batch), rng.integers(0, len(x_eft), batch)
                r_sm = F.softplus(1 + s * net(x_sm[i])[:, 0])
                r_eft = F.softplus(1 + s * net(x_eft[j])[:, 0])
                loss = torch.log1p(r_sm).mean() + sigma[t] * (torch.log1p(r_eft) - torch.log(r_eft)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    return time.perf_counter() - start


def batched(sm, terms, sigma, scale, batch: int, steps: int) -> float:
    config = eft.EftTrainConfig(HIDDEN, ("tanh", "tanh", "tanh", "linear"), steps, batch,
                                OptimiserConfig(lr=LR, lr_final=LR_FINAL), NO_STOPPING, validation_every=20,
                                validation_fraction=0.05)
    start = time.perf_counter()
    eft.fit_eft(sm, terms, 1.0, sigma, scale, config)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 4096])
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = samples(args.replicas, args.events)
    rows = len(TERMS) * args.replicas
    print(f"{rows} networks (2 terms x {args.replicas} replicas), {args.steps} steps, 1 thread")
    print(f"{'events/step':>12} {'loop ms':>9} {'batched ms':>11} {'speed-up':>9}   (per network-step)")
    loop(*data, args.batches[0], 20)  # warm-up, untimed
    batched(*data, args.batches[0], 20)
    for batch in args.batches:
        t_batched = batched(*data, batch, args.steps)
        t_loop = loop(*data, batch, args.steps)
        per = 1e3 / (rows * args.steps)
        print(f"{f'{batch}+{batch}':>12} {t_loop * per:9.2f} {t_batched * per:11.2f} "
              f"{t_loop / t_batched:8.1f}x")


if __name__ == "__main__":
    main()
