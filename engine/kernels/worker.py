"""Process set-up for training and evaluating small networks on CPU: every torch kernel calls it.

One torch thread: small networks train 2-17x slower with two threads than with one (DOMAIN.md
section 1); the engine runs replicas and chunks in parallel instead. And glibc's malloc tuned
(engine.memory) when a kernel runs outside a recipe run (a benchmark, a notebook): a training step
frees and reallocates activations of a few hundred kB, which the default settings keep handing
back to the kernel and faulting in again.
"""

from __future__ import annotations

import torch

from ..memory import tune_malloc


def prepare_small_network_worker() -> None:
    """One torch thread for this process, and (once) the malloc settings of engine.memory."""
    torch.set_num_threads(1)
    tune_malloc()
