"""What an EnsembleMLP is, as plain data and without torch.

Why its own module: building a graph (`replicalake validate`, `plan`) needs the architecture a
training step will store and the shapes of its weights before anything trains, and it must not
import torch for that (a CPU user without torch can still validate and plan). kernels.mlp builds
its networks from the same functions (layer shapes, layer checks, the architecture dict), so what
an op declares and what a kernel trains agree by construction.

Names here (activations, initialisers) are the ones kernels.mlp implements; a test keeps the two
lists equal. Input and output transforms are registered by the torch kernels that define them, so
only their names are recorded here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral

ACTIVATION_NAMES = ("linear", "tanh", "sigmoid", "relu", "softplus", "elu", "selu", "gelu", "silu",
                    "leaky_relu")
INITIALISER_NAMES = ("glorot_normal", "uniform")


def unknown_name(name: str, known: Iterable[str], what: str) -> ValueError:
    """The error for a name not in `known`, naming the closest entries (typos are the usual cause)."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"unknown {what} {name!r}{hint} (known: {', '.join(sorted(known))})")


def check_layers(sizes: Sequence[int], activations: Sequence[str]) -> list[int]:
    """The layer widths as ints; ValueError unless >= 2 positive widths, one activation per layer."""
    if len(sizes) < 2 or any(int(s) <= 0 for s in sizes):
        raise ValueError(f"sizes must list >= 2 positive layer widths, got {list(sizes)}")
    if len(activations) != len(sizes) - 1:
        raise ValueError(
            f"{len(sizes) - 1} layers need {len(sizes) - 1} activations, got {len(activations)}"
        )
    return [int(s) for s in sizes]


def check_positive_outputs(positive_outputs: Sequence[int], n_out: int) -> list[int]:
    """The output indices as ints; ValueError unless distinct and below n_out."""
    positive = [int(i) for i in positive_outputs]
    if len(set(positive)) != len(positive) or not all(0 <= i < n_out for i in positive):
        raise ValueError(f"positive_outputs must be distinct indices below {n_out}, got {positive}")
    return positive


def layer_shapes(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of every layer: weight k is (R, in, out), bias k is (R, 1, out)."""
    return [(int(i), int(o)) for i, o in zip(sizes[:-1], sizes[1:])]


def architecture(
    sizes: Sequence[int],
    activations: Sequence[str],
    seed: int = 0,
    *,
    init: str = "glorot_normal",
    input_transform: str | None = None,
    output_transform: str | None = None,
    replica_params: Sequence[str] = (),
    trainable_params: Sequence[str] = (),
    positivity: Mapping[str, float] | None = None,
    positive_outputs: Sequence[int] = (),
    dtype: str = "float32",
) -> dict:
    """The JSON-able description EnsembleMLP.architecture() returns for these settings.

    positive_outputs: outputs the network makes positive by construction (softplus of the layers'
    output, before the output transform); recorded only when there are some, so architectures
    stored before it existed read back unchanged.

    ValueError for bad widths, a wrong number of activations, an unknown activation or
    initialiser, a negative seed, trainable params that are not replica params, or positive
    outputs that are not distinct output indices.
    """
    sizes = check_layers(sizes, activations)
    for name in activations:
        if name not in ACTIVATION_NAMES:
            raise unknown_name(name, ACTIVATION_NAMES, "activation")
    if init not in INITIALISER_NAMES:
        raise unknown_name(init, INITIALISER_NAMES, "initialiser")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    unknown = set(trainable_params) - set(replica_params)
    if unknown:
        raise ValueError(f"trainable_params {sorted(unknown)} are not in replica_params")
    positive = check_positive_outputs(positive_outputs, sizes[-1])
    described = {
        "sizes": sizes,
        "activations": list(activations),
        "seed": int(seed),
        "init": init,
        "input_transform": input_transform,
        "output_transform": output_transform,
        "replica_params": list(replica_params),
        "trainable_params": [n for n in replica_params if n in set(trainable_params)],
        "positivity": dict(positivity) if positivity else None,
        "dtype": dtype,
    }
    return {**described, "positive_outputs": positive} if positive else described
