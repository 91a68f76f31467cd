"""ML4EFT training: every (term, replica) network in one batched job vs a loop of separate networks.

Run: python tests/benchmarks/bench_eft_training.py [--quick] [--replicas 5] [--events 50000]
     [--batches 64 128 256 512 4096] [--steps 400] [--validate-every 200] [--repeats 3]
     (full: a few minutes on the 2-core machine, one thread; --quick: ~30 s)

Both sides train the same networks ([2, 25, 25, 25, 1], tanh, smooth positivity 1 + s NN =
softplus(1 + s raw)) for the same number of minibatch steps on the same samples, with the same
cross-section-weighted cross-entropy in the same fused form (a signed softplus of log r and one
weighted sum) and Adam (the rate falling 10x over the steps), and both check their loss on the
same held-out 20% every 200 steps, keeping the best weights: the recipe's settings. Data scaling
and network construction are inside the timer on both sides.

The loop side is what ML4EFT does, written in plain torch: one nn.Sequential and torch.optim.Adam
per (term, replica), trained one after another, minibatches from a standard DataLoader. It gets
the batched side's data tricks: once per pass a shuffled copy of each sample, from which the
DataLoader slices contiguous minibatches (views: no per-step copies or random gathers), and both
samples through one forward pass; and the kernels' CPU tanh (in place on the Linear output, no
copy), ~3x faster than torch.tanh. The batched side is `fit_eft`: one EnsembleMLP whose rows
are term x replica, trained by `train_ensemble` (stopping bookkeeping included, stopping switched
off so both sides run every step). Both get the same untimed 20-step warm-up, then best of N,
interleaved. The speed-up is given in wall time and in CPU seconds (each side's best round), which
a shared machine inflates far less.

The two sides differ in one more way than batching: the loop differentiates with autograd, as
ML4EFT and any plain torch loop do, while the batched side computes its gradient by hand with no
autograd graph (`WeightedCrossEntropy.value_and_grad`: the layers' backward runs the kernels
autograd would, the loss's derivative is in closed form; equal to autograd's gradient in the
tests). Measured apart (the batched side with autograd against without, interleaved runs), it
makes the batched side 1.38x faster at 128 + 128 events and no faster at 1024 + 1024 (README).

The ratio depends on the events per step: batching removes per-network call overhead, not
arithmetic, so it pays most for small minibatches and least once each network's matmuls are
large enough to be arithmetic-bound on their own (hence the sweep over minibatch sizes).
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from engine.kernels import eft
from engine.kernels.mlp import ACTIVATIONS
from engine.kernels.optim import OptimiserConfig
from engine.kernels.regression import scale_features
from engine.kernels.train import StoppingConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks._timing import compare, finish, header, ratio, show  # noqa: E402

HIDDEN = (25, 25, 25)
TERMS = [("c1",), ("c1", "c1")]
C_TRAIN = 2.0
LR, LR_FINAL = 3e-3, 3e-4
VALIDATION_FRACTION = 0.2  # the recipe's held-out share
NO_STOPPING = StoppingConfig(threshold=math.inf, patience=10**9, stagnation_epochs=None)


def samples(replicas: int, events: int):
    sm = np.stack([eft.sample_toy(np.random.default_rng([0, r]), events, {}) for r in range(replicas)])
    terms = np.stack(
        [
            np.stack(
                [
                    eft.sample_toy_term(np.random.default_rng([1 + t, r]), events, term, C_TRAIN)
                    for r in range(replicas)
                ]
            )
            for t, term in enumerate(TERMS)
        ]
    )
    scale = np.array([C_TRAIN ** len(t) for t in TERMS])
    sigma = 1.0 + scale * np.array([eft.toy_sigma(t) for t in TERMS])
    return sm, terms, sigma, scale


class _Tanh(torch.nn.Module):
    """The kernels' CPU tanh (2 sigmoid(2z) - 1, in place on the fresh Linear output: no copy)."""

    def forward(self, z):
        return ACTIVATIONS["tanh"](z)


def _network() -> torch.nn.Sequential:
    layers, sizes = [], [2, *HIDDEN, 1]
    for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(i, o))
        if k < len(HIDDEN):
            layers.append(_Tanh())
    return torch.nn.Sequential(*layers)


class _Slices(torch.utils.data.Sampler):
    """Contiguous minibatch slices of a pass: the DataLoader hands out views, no gathers."""

    def __init__(self, n: int, batch: int):
        self.n, self.batch = n, min(batch, n)

    def __iter__(self):
        return (slice(k, k + self.batch) for k in range(0, self.n - self.batch + 1, self.batch))

    def __len__(self):
        return self.n // self.batch


def _passes(x_sm: torch.Tensor, x_eft: torch.Tensor, batch: int, seed: tuple[int, int]):
    """Endless (SM, SM+term) minibatches: per pass one shuffled copy of each sample (as the
    batched side does), then a standard DataLoader over it slicing contiguous minibatches."""
    for which in itertools.count():
        rng = np.random.default_rng([*seed, which])
        shuffled = (
            x_sm[torch.as_tensor(rng.permutation(len(x_sm)))],
            x_eft[torch.as_tensor(rng.permutation(len(x_eft)))],
        )
        loaders = [
            DataLoader(TensorDataset(x), sampler=_Slices(len(x), batch), batch_size=None) for x in shuffled
        ]
        for (sm,), (eft_events,) in zip(*loaders):
            yield sm, eft_events


def loop(sm, terms, sigma, scale, batch: int, steps: int, validate_every: int) -> float:
    """ML4EFT's way with plain torch: one nn.Sequential and Adam per (term, replica), trained one
    after another from a DataLoader, each checking its loss on held-out events every
    `validate_every` steps and keeping its best weights (as the batched side does). Both samples
    go through one forward pass per step, as on the batched side."""
    low, high = eft.robust_range(sm.reshape(-1, 2))
    for t in range(terms.shape[0]):
        for r in range(sm.shape[0]):
            x_sm, v_sm = _split(scale_features(sm[r], low, high))
            x_eft, v_eft = _split(scale_features(terms[t, r], low, high))
            net, s = _network(), float(scale[t])
            opt = torch.optim.Adam(net.parameters(), lr=LR)
            best = math.inf
            batches = _passes(x_sm, x_eft, batch, (t, r))
            for step in range(steps + 1):
                if step % validate_every == 0 or step == steps:
                    with torch.no_grad():
                        val = float(_loss(net, s, sigma[t], v_sm, v_eft))
                    if val < best:
                        best, kept = val, copy.deepcopy(net.state_dict())
                if step == steps:
                    break
                opt.param_groups[0]["lr"] = LR * (LR_FINAL / LR) ** (step / max(1, steps - 1))
                opt.zero_grad()
                _loss(net, s, sigma[t], *next(batches)).backward()
                opt.step()
            net.load_state_dict(kept)


def _loss(net, s: float, sigma_eft: float, sm: torch.Tensor, eft_events: torch.Tensor) -> torch.Tensor:
    """The cross-section-weighted cross-entropy of one network (sigma_SM = 1), both samples in
    one forward pass, in the batched side's fused form: l = log r, an SM event costs
    softplus(l) = log(1 + r), an SM+term event softplus(-l) = log(1 + 1/r), one signed softplus
    and one weighted sum (the same operations per step as the batched loss)."""
    r = F.softplus(1 + s * net(torch.cat([sm, eft_events]))[:, 0])
    sign, weight = _signed(len(sm), len(eft_events), sigma_eft)
    return (F.softplus(torch.log(r.clamp(min=1e-30)) * sign) * weight).sum()


@functools.cache
def _signed(n_sm: int, n_eft: int, sigma_eft: float) -> tuple[torch.Tensor, torch.Tensor]:
    """+1 (SM) / -1 (SM+term) per event and each event's weight sigma / count."""
    sign = torch.cat([torch.ones(n_sm), -torch.ones(n_eft)])
    return sign, torch.cat([torch.full((n_sm,), 1.0 / n_sm), torch.full((n_eft,), sigma_eft / n_eft)])


def _split(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and held-out events, as fit_eft splits them (the last VALIDATION_FRACTION)."""
    n_val = int(len(x) * VALIDATION_FRACTION)
    x = torch.as_tensor(x, dtype=torch.float32)
    return x[: len(x) - n_val], x[len(x) - n_val :]


def batched(sm, terms, sigma, scale, batch: int, steps: int, validate_every: int) -> None:
    config = eft.EftTrainConfig(
        HIDDEN,
        ("tanh", "tanh", "tanh", "linear"),
        steps,
        batch,
        OptimiserConfig(lr=LR, lr_final=LR_FINAL),
        NO_STOPPING,
        validation_every=validate_every,
        validation_fraction=VALIDATION_FRACTION,
    )
    eft.fit_eft(sm, terms, 1.0, sigma, scale, config)


def run(
    quick: bool = False,
    replicas: int = 5,
    events: int | None = None,
    batches=None,
    steps: int | None = None,
    validate_every: int = 200,
    repeats: int | None = None,
) -> dict:
    events = events or (20_000 if quick else 50_000)
    batches = batches or ([128, 1024] if quick else [64, 128, 256, 512, 4096])
    steps = steps or (200 if quick else 400)
    repeats = repeats or (2 if quick else 3)
    torch.set_num_threads(1)
    rows = len(TERMS) * replicas
    result = header(
        "EFT training: batched term x replica rows vs a loop of nn.Sequential + DataLoader",
        repeats,
        networks=rows,
        steps=steps,
        events=events,
        threads=1,
    )
    data = samples(replicas, events)
    for side in (loop, batched):  # the same untimed warm-up for both (allocator, kernels)
        side(*data, batches[0], 20, validate_every)
    print(
        f"{'events/step':>12} {'loop ms':>9} {'batched ms':>11} {'speed-up':>9} {'CPU speed-up':>13}"
        "   (per network-step, wall)"
    )
    per = 1e3 / (rows * steps)
    for batch in batches:
        timings = compare(
            {
                "loop": lambda b=batch: loop(*data, b, steps, validate_every),
                "batched": lambda b=batch: batched(*data, b, steps, validate_every),
            },
            repeats,
            warmup=0,
        )
        t_loop, t_batched = timings["loop"], timings["batched"]
        print(
            f"{f'{batch}+{batch}':>12} {t_loop.wall * per:9.3f} {t_batched.wall * per:11.3f} "
            f"{t_loop.wall / t_batched.wall:8.1f}x {t_loop.cpu / t_batched.cpu:12.1f}x",
            flush=True,
        )
        result[f"loop_ms_per_network_step_b{batch}"] = round(t_loop.wall * per, 4)
        result[f"batched_ms_per_network_step_b{batch}"] = round(t_batched.wall * per, 4)
        result[f"loop_cpu_s_b{batch}"] = round(t_loop.cpu, 3)
        result[f"batched_cpu_s_b{batch}"] = round(t_batched.cpu, 3)
        result[f"speedup_b{batch}"] = ratio(t_loop.wall, t_batched.wall)
        result[f"speedup_cpu_b{batch}"] = ratio(t_loop.cpu, t_batched.cpu)
    result["networks"] = rows
    result["steps"] = steps
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20000 events, batches 128 and 1024, 200 steps")
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--events", type=int, default=None, help="default 50000")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default 64 128 256 512 4096")
    parser.add_argument("--steps", type=int, default=None, help="default 400")
    parser.add_argument("--validate-every", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=None, help="best of (default 3, quick 2)")
    args = parser.parse_args()
    show(
        run(
            args.quick,
            args.replicas,
            args.events,
            args.batches,
            args.steps,
            args.validate_every,
            args.repeats,
        )
    )


if __name__ == "__main__":
    main()
