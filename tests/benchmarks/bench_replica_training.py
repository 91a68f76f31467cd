"""Batched replica training vs a Python loop of single-replica models, on one CPU thread.

Run: python tests/benchmarks/bench_replica_training.py [--quick] [--replicas 100] [--steps 200]
     (full: several minutes on the 2-core machine; --quick: 30 steps, ~30 s)

Both sides do the same work per replica and step: forward, chi2 on that replica's training points
(75%, diagonal errors), backward, one Adam step. The loop side is what a user would write without
the kernels (torch.nn.Sequential + torch.optim.Adam per replica, trained one after another as
EELSfitter does), but with the kernels' activation functions, so the ratio measures batching alone
(the kernels' CPU tanh is itself ~3x faster than torch.tanh). The batched side is `train_ensemble`
on an `EnsembleMLP`, check epochs included. Where the observables are the network's outputs
combined linearly ("eels", "pdf 1000 pts") its Chi2Loss takes them as a `NetworkOutput` and
computes its gradient by hand (hand-written layer backward, closed-form chi2 gradient, no autograd
graph), as the EFT benchmark's batched side does; "pdf fk" goes through autograd. The loop side
differentiates with autograd, as any plain torch loop does. Stopping is switched off so both sides
run exactly the same number of steps. Model construction and data preparation are inside the timer
on both sides; both get the same untimed warm-up (10 replicas, 10 steps), then best of N, interleaved.

One thread on both sides (torch intra- and inter-op, BLAS). `other_threads_cpu_s` is the CPU time
of the process's threads other than the main one during a batched run (per thread, from
/proc/self/task): 0 means no pool thread spins on a second core, whatever the machine's load.

Three workloads:
- "eels": the ZLP net [2-10-15-5-1] regressing 1000 (ln E, ln N) points, EELSfitter's use.
- "pdf fk": the PDF net [2-25-20-8] as a PDF fit uses it: evaluated on an FK table's x-grid
  (50 points of (x, ln x)), its 8 outputs convolved with an FK table to 500 observables
  (obs[n] = sum_{x,f} FK[n,x,f] xf[x,f], the size of a BCDMS+SLAC F2 fit). This is the target
  workload of the PDF net.
- "pdf 1000 pts": the same net regressing 1000 points directly. The network's arithmetic then
  dominates both sides (batching removes per-call overhead, not flops), so the ratio is lower; it is
  kept to show where batching stops paying.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.kernels.mlp import ACTIVATIONS, EnsembleMLP
from engine.kernels.optim import OptimiserConfig
from engine.kernels.replicas import draw_replicas, training_masks
from engine.kernels.train import Chi2Loss, NetworkOutput, StoppingConfig, train_ensemble

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks._timing import compare, finish, header, ratio, show  # noqa: E402

EELS_NET = ([2, 10, 15, 5, 1], ["sigmoid", "sigmoid", "relu", "linear"])
PDF_NET = ([2, 25, 20, 8], ["tanh", "tanh", "linear"])
STEPS = 200
NO_STOPPING = StoppingConfig(threshold=math.inf, patience=10**9, stagnation_epochs=None)


@dataclass
class Workload:
    """Network inputs, a linear map from network outputs to observables, and pseudo-data."""

    sizes: list[int]
    activations: list[str]
    inputs: torch.Tensor  # (points, 2)
    observe: Callable[[torch.Tensor], torch.Tensor]  # (R, points, out) -> (R, n)
    central: np.ndarray  # (n,)
    # observables = outputs at the inputs combined by these weights (observe's linear map, as a
    # NetworkOutput, which Chi2Loss differentiates by hand); None: another map (autograd)
    output_weights: np.ndarray | None = None

    def problem(self, n_replicas: int, seed: int = 0):
        sigma = 0.05 * np.abs(self.central)
        n = self.central.size
        data = draw_replicas(self.central, np.diag(sigma**2), None, n_replicas, seed)
        masks = training_masks(n, np.zeros(n), n_replicas, 0.75, seed)
        return sigma, data, masks


def regression(sizes, acts, n_points: int = 1000, seed: int = 0) -> Workload:
    """A smooth 2-D function sampled at n_points; observables are the network's mean output."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 0.9, (n_points, 2))
    central = 1.0 + np.sin(3 * x[:, 0]) * x[:, 1]
    weights = np.full(sizes[-1], 1.0 / sizes[-1])  # the mean of the outputs
    return Workload(
        sizes, acts, torch.as_tensor(x, dtype=torch.float32), lambda out: out.mean(-1), central, weights
    )


def fk_convolution(sizes, acts, n_x: int = 50, n_data: int = 500, seed: int = 0) -> Workload:
    """The PDF net on an FK x-grid, convolved with a random positive FK table to n_data observables."""
    rng = np.random.default_rng(seed)
    x = np.geomspace(1e-3, 0.9, n_x)
    inputs = torch.as_tensor(np.stack([x, np.log(x)], axis=1), dtype=torch.float32)
    n_out = sizes[-1]
    fk = torch.as_tensor(rng.uniform(0, 1, (n_data, n_x * n_out)) / (n_x * n_out), dtype=torch.float32)
    central = 1.0 + rng.uniform(0, 1, n_data)
    return Workload(sizes, acts, inputs, lambda out: out.flatten(-2) @ fk.T, central)


def batched(work: Workload, n_replicas: int, steps: int) -> None:
    sigma, data, masks = work.problem(n_replicas)
    model = EnsembleMLP(n_replicas, work.sizes, work.activations, seed=1)
    if work.output_weights is None:
        predict = lambda m: work.observe(m(work.inputs))  # noqa: E731
    else:  # the same predictions, with the chi2's gradient by hand
        predict = NetworkOutput(work.inputs, None if work.sizes[-1] == 1 else work.output_weights)
    loss = Chi2Loss(predict, data, np.diag(sigma**2), masks)
    adam = OptimiserConfig("adam", lr=1e-3)
    train_ensemble(model, loss, steps, optimiser=adam, stopping=NO_STOPPING, validation_every=10)


def python_loop(work: Workload, n_replicas: int, steps: int) -> None:
    sigma, data, masks = work.problem(n_replicas)
    for k in range(n_replicas):
        torch.manual_seed(k)
        layers = []
        for (i, o), act in zip(zip(work.sizes[:-1], work.sizes[1:]), work.activations):
            layers += [torch.nn.Linear(i, o), _Activation(ACTIVATIONS[act])]
        net = torch.nn.Sequential(*layers)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        idx = torch.as_tensor(np.flatnonzero(masks[k]))
        target = torch.as_tensor(data[k], dtype=torch.float32)[idx]
        sig = torch.as_tensor(sigma, dtype=torch.float32)[idx]
        for _ in range(steps):
            opt.zero_grad()
            prediction = work.observe(net(work.inputs)[None])[0]
            loss = ((target - prediction[idx]) / sig).pow(2).mean()
            loss.backward()
            opt.step()


class _Activation(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, z):
        return self.fn(z)


def other_threads_cpu(func: Callable[[], object]) -> float | None:
    """CPU seconds that threads other than the calling one spent while func() ran (Linux
    /proc/self/task; None elsewhere)."""
    try:
        before = _thread_cpu()
    except OSError:
        return None
    func()
    after, main = _thread_cpu(), threading.get_native_id()
    return sum(t - before.get(k, 0.0) for k, t in after.items() if k != main)


def _thread_cpu() -> dict[int, float]:
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[int(task)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def run(
    quick: bool = False, replicas: int | None = None, steps: int | None = None, repeats: int | None = None
) -> dict:
    steps = steps or (30 if quick else STEPS)
    replicas = replicas or 100
    repeats = repeats or (2 if quick else 3)
    torch.set_num_threads(1)
    workloads = {
        "eels": regression(*EELS_NET),
        "pdf_fk": fk_convolution(*PDF_NET),
        "pdf_1000pts": regression(*PDF_NET),
    }
    result = header(
        f"Replica training: loop of {replicas} torch models vs batched EnsembleMLP",
        repeats,
        steps=steps,
        threads=1,
        torch=torch.__version__,
    )
    for name, work in workloads.items():
        for side in (batched, python_loop):  # the same untimed warm-up for both
            side(work, min(replicas, 10), 10)
        timings = compare(
            {
                "loop": lambda w=work: python_loop(w, replicas, steps),
                "batched": lambda w=work: batched(w, replicas, steps),
            },
            repeats,
            warmup=0,
        )
        t_loop, t_batch = timings["loop"], timings["batched"]
        print(
            f"  {name:12s} loop {t_loop.wall:6.2f} s  batched {t_batch.wall:6.2f} s  "
            f"speed-up {t_loop.wall / t_batch.wall:5.1f}x",
            flush=True,
        )
        result[f"{name}_loop_s"] = round(t_loop.wall, 3)
        result[f"{name}_loop_cpu_s"] = round(t_loop.cpu, 3)
        result[f"{name}_batched_s"] = round(t_batch.wall, 3)
        result[f"{name}_batched_cpu_s"] = round(t_batch.cpu, 3)
        result[f"{name}_speedup"] = ratio(t_loop.wall, t_batch.wall)
    result["replicas"], result["steps"] = replicas, steps
    result["eels_batched_other_threads_cpu_s"] = other_threads_cpu(
        lambda: batched(workloads["eels"], replicas, steps)
    )
    if not quick:
        print("batched time per replica-epoch (ms)")
        for name, work in workloads.items():
            for r in (1, 10, 100, 1000):
                n_steps = {1: 200, 10: 200, 100: 50, 1000: 10}[r]
                t = compare({"batched": lambda w=work, r=r, n=n_steps: batched(w, r, n)}, repeats)["batched"]
                result[f"{name}_batched_ms_per_replica_epoch_r{r}"] = round(1e3 * t.wall / (r * n_steps), 4)
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 steps, no per-replica-epoch sweep")
    parser.add_argument("--replicas", type=int, default=None, help="default 100")
    parser.add_argument("--steps", type=int, default=None, help=f"Adam steps (default {STEPS})")
    parser.add_argument("--repeats", type=int, default=None, help="best of (default 3, quick 2)")
    args = parser.parse_args()
    show(run(args.quick, args.replicas, args.steps, args.repeats))


if __name__ == "__main__":
    main()
