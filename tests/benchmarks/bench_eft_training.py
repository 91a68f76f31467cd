"""ML4EFT training: every (term, replica) network in one batched job vs a loop of separate networks.

Run: python tests/benchmarks/bench_eft_training.py [--replicas 5] [--events 50000]
     [--batches 64 128 256 512 4096] [--steps 400] [--validate-every 200]
     (about 1.5 minutes on the 2-core machine, one thread)

Both sides train the same networks ([2, 25, 25, 25, 1], tanh, smooth positivity 1 + s NN =
softplus(1 + s raw)) for the same number of minibatch steps on the same samples, with the same
cross-section-weighted cross-entropy and Adam (the rate falling 10x over the steps), and both
check their loss on the same held-out 20% every 200 steps, keeping the best weights: the recipe's
settings. Each side first runs a few untimed steps (allocator and kernel warm-up). The loop side
is what ML4EFT does (one torch.nn network and optimiser per (term, replica), trained one after
another), with the kernels' CPU tanh so that the ratio measures batching alone; it indexes tensors
directly, faster than ML4EFT's DataLoader. The batched side is `fit_eft`: one EnsembleMLP whose
rows are term x replica, trained by `train_ensemble` (stopping bookkeeping included, stopping
switched off so both sides run every step).

The ratio depends on the events per step: batching removes per-network call overhead, not
arithmetic, so it pays most for small minibatches and least once each network's matmuls are
large enough to be arithmetic-bound on their own (hence the sweep over minibatch sizes).
"""

from __future__ import annotations

import argparse
import copy
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
VALIDATION_FRACTION = 0.2  # the recipe's held-out share
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


def loop(sm, terms, sigma, scale, batch: int, steps: int, validate_every: int) -> float:
    """ML4EFT's way: one network and optimiser per (term, replica), trained one after another,
    each checking its loss on held-out events every `validate_every` steps and keeping its best
    weights (as the batched side does)."""
    low, high = eft.robust_range(sm.reshape(-1, 2))
    start = time.perf_counter()
    for t in range(terms.shape[0]):
        for r in range(sm.shape[0]):
            x_sm, v_sm = _split(scale_features(sm[r], low, high))
            x_eft, v_eft = _split(scale_features(terms[t, r], low, high))
            net, s = _network(), float(scale[t])
            opt = torch.optim.Adam(net.parameters(), lr=LR)
            rng = np.random.default_rng([t, r])
            best = math.inf
            for step in range(steps + 1):
                if step % validate_every == 0 or step == steps:
                    with torch.no_grad():
                        val = float(_loss(net, s, sigma[t], v_sm, v_eft))
                    if val < best:
                        best, kept = val, copy.deepcopy(net.state_dict())
                if step == steps:
                    break
                opt.param_groups[0]["lr"] = LR * (LR_FINAL / LR) ** (step / max(1, steps - 1))
                i, j = rng.integers(0, len(x_sm), batch), rng.integers(0, len(x_eft), batch)
                opt.zero_grad()
                _loss(net, s, sigma[t], x_sm[i], x_eft[j]).backward()
                opt.step()
            net.load_state_dict(kept)
    return time.perf_counter() - start


def _loss(net, s: float, sigma_eft: float, sm: torch.Tensor, eft_events: torch.Tensor) -> torch.Tensor:
    """The cross-section-weighted cross-entropy of one network (sigma_SM = 1)."""
    r_sm = F.softplus(1 + s * net(sm)[:, 0])
    r_eft = F.softplus(1 + s * net(eft_events)[:, 0])
    return torch.log1p(r_sm).mean() + sigma_eft * (torch.log1p(r_eft) - torch.log(r_eft)).mean()


def _split(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and held-out events, as fit_eft splits them (the last VALIDATION_FRACTION)."""
    n_val = int(len(x) * VALIDATION_FRACTION)
    x = torch.as_tensor(x, dtype=torch.float32)
    return x[: len(x) - n_val], x[len(x) - n_val:]


def batched(sm, terms, sigma, scale, batch: int, steps: int, validate_every: int) -> float:
    config = eft.EftTrainConfig(HIDDEN, ("tanh", "tanh", "tanh", "linear"), steps, batch,
                                OptimiserConfig(lr=LR, lr_final=LR_FINAL), NO_STOPPING,
                                validation_every=validate_every, validation_fraction=VALIDATION_FRACTION)
    start = time.perf_counter()
    eft.fit_eft(sm, terms, 1.0, sigma, scale, config)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 4096])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--validate-every", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = samples(args.replicas, args.events)
    rows = len(TERMS) * args.replicas
    print(f"{rows} networks (2 terms x {args.replicas} replicas), {args.steps} steps, 1 thread")
    print(f"{'events/step':>12} {'loop ms':>9} {'batched ms':>11} {'speed-up':>9}   (per network-step)")
    loop(*data, args.batches[0], 20, args.validate_every)  # warm-up, untimed
    batched(*data, args.batches[0], 20, args.validate_every)
    for batch in args.batches:
        t_batched = batched(*data, batch, args.steps, args.validate_every)
        t_loop = loop(*data, batch, args.steps, args.validate_every)
        per = 1e3 / (rows * args.steps)
        print(f"{f'{batch}+{batch}':>12} {t_loop * per:9.2f} {t_batched * per:11.2f} "
              f"{t_loop / t_batched:8.1f}x")


if __name__ == "__main__":
    main()
