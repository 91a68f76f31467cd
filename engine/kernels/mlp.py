"""A batched ensemble of MLPs: one independent network per Monte Carlo replica.

Why stacked weights: the replica method trains hundreds of identical small networks, and a Python
loop over them is dominated by per-operation overhead. Stacking every replica's weights on a
leading axis, W: (R, in, out), and applying them with one `torch.baddbmm` per layer turns R small
problems into one large one. The sum of the per-replica losses still gives each replica exactly its
own gradient, because a replica's weights appear in no other replica's term.

All weights live in one flat (R, P) parameter and the per-layer tensors are views of it, so an
element-wise optimiser, per-replica clipping, re-initialisation and checkpointing each touch one
tensor instead of one per layer (fewer kernel launches per step for small networks).

Measured on our CPU (one thread, R=100, 1000 points), two choices below matter more than anything
else: activations are computed feature-major, (R, features, points), which makes the batched
matmuls 2-6x faster than points-major for these skinny layers; and CPU tanh is computed as
2 sigmoid(2z) - 1, 3-4x faster than torch.tanh there (torch's CPU tanh is ~10x slower than its
sigmoid). The public interface stays points-major: forward returns a (R, B, out) view.

Why initialisation is keyed by (seed, replica id, generation): replica r of a 1000-replica ensemble
must be reproducible alone (a single-replica model built with `replica_ids=[r]`) and must not
depend on how many replicas are trained beside it or in which chunk. The generation counter makes a
re-initialised (dead) replica draw fresh weights that are again a function of that replica only.

Exports are plain arrays plus a JSON-able architecture whose hooks are registry names, never
callables: loading an ensemble from the lake executes no code (no pickles, no torch.load).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import architecture as spec

Tensor = torch.Tensor
InputTransform = Callable[[Tensor, Mapping[str, Tensor]], Tensor]
OutputTransform = Callable[[Tensor, Tensor, Mapping[str, Tensor]], Tensor]


class _SigmoidTanh(torch.autograd.Function):
    """tanh(z) = 2 sigmoid(2z) - 1, in place on z; backward from the output (1 - y^2).

    Absolute error ~1 ulp of 1 (float32: 1e-7), which no network notices.
    """

    @staticmethod
    def forward(ctx, z):
        ctx.mark_dirty(z)
        y = z.mul_(2).sigmoid_().mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def _tanh(z: Tensor) -> Tensor:
    """torch.tanh where it is fast (GPU); the sigmoid form on CPU (see the module docstring)."""
    return torch.tanh(z) if z.is_cuda else _SigmoidTanh.apply(z)


# Activations receive a fresh matmul output and may overwrite it (tanh on CPU does).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda z: z,
    "tanh": _tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "softplus": F.softplus,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "silu": F.silu,
    "leaky_relu": F.leaky_relu,
}

# Activations whose derivative is a function of their output y, as aten's backward kernels
# (grad, y, out) -> grad f'(z) written into out (may be grad itself), the ones autograd runs for
# them (None: the identity): the ones `EnsembleMLP.layers_backward` differentiates by hand.
_ATEN = torch.ops.aten
BACKWARD_FROM_OUTPUT: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor] | None] = {
    "linear": None,
    "tanh": lambda grad, y, out: _ATEN.tanh_backward.grad_input(grad, y, grad_input=out),  # (1 - y^2)
    "sigmoid": lambda grad, y, out: _ATEN.sigmoid_backward.grad_input(grad, y, grad_input=out),
    "relu": lambda grad, y, out: _ATEN.threshold_backward.grad_input(grad, y, 0, grad_input=out),
}


def without_grad(method: Callable) -> Callable:
    """torch.no_grad() for what a training step calls, entered only where grad mode is on.

    Why: as a decorator, no_grad builds and enters a context per call (~3 us, a few per step at
    small minibatches); a step that holds one context for all of them then pays for one.
    """

    @functools.wraps(method)
    def call(*args, **kwargs):
        if not torch.is_grad_enabled():
            return method(*args, **kwargs)
        with torch.no_grad():
            return method(*args, **kwargs)

    return call


def _layer_outputs(model: EnsembleMLP, h: Tensor, layers: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """[h, every layer's output] with no autograd graph; h (r, in, B) feature-major, `layers`
    the (W^T, b) views of `_transposed_layers` (or the cached `_layer_views`).

    A CPU tanh layer is sigmoid(2z) of one baddbmm(2 b + 2 W h), then -1 + 2 s in one add:
    the doubling done by the matmul (exact: a power of two) and 2 s - 1 in one pass (2 s is
    exact, so the one rounding is 2 s - 1's), two passes less than _SigmoidTanh and the same
    values (at the EFT nets' 10 x 25 x 256, the separate mul and sub cost 16 us a layer, the
    add 7).
    """
    outs = [h]
    for (wt, b), name, act in zip(layers, model.activations, model._acts):
        if name == "tanh" and not h.is_cuda:
            s = torch.baddbmm(b, wt, outs[-1], beta=2, alpha=2).sigmoid_()
            outs.append(torch.add(_minus_one(s.dtype), s, alpha=2, out=s))
        else:
            outs.append(act(torch.baddbmm(b, wt, outs[-1])))
    return outs


@functools.cache
def _minus_one(dtype: torch.dtype) -> Tensor:
    """A 0-d -1 on the CPU (made once: the addend of _layer_outputs' CPU tanh)."""
    return torch.tensor(-1.0, dtype=dtype)


def _flat_gradient(
    model: EnsembleMLP, layers: Sequence[tuple[Tensor, Tensor]], outs: Sequence[Tensor], grad: Tensor
) -> Tensor:
    """d loss / d flat (r, P) from the layer outputs of `_layer_outputs` and d loss / d output.

    The backward walks the layers once: the activation's derivative from its saved output, then
    the weights' gradient by one bmm, the bias gradient by one sum and the gradient of the
    layer's input W g by one more bmm (none for the first layer: the input needs no gradient
    here), and one concatenation into the flat gradient.

    The weights' gradient contracts over the B points, and MKL's batched gemm is up to 2x
    faster when the result has at least as many rows as columns (measured, one thread, the
    EELS ZLP net at 1000 points, 34 replicas: W (15 -> 5) as h g^T (15, 5) 194 us against
    g h^T (5, 15) 400 us; W (10 -> 15) as g h^T 394 us against h g^T 573 us; the EFT net's
    25 x 25: either). So it runs as g h^T (out, in), autograd's product, or as h g^T (in, out)
    transposed into place (a copy of r in out numbers). Equal to autograd's gradient to
    rounding (tested).

    The activations' derivatives overwrite the gradients this walk made itself (the caller's
    `grad` is left alone), and an input gradient goes into the buffer of the one before it where
    the shapes agree: a fresh (r, width, B) buffer cost 7 of a 17 us tanh derivative at the EFT
    nets' 10 x 25 x 256 (a step's buffers outgrow the 512 KiB L2 cache).
    """
    r, last = grad.shape[0], len(layers) - 1
    parts = []
    spare = None  # a buffer of this walk that is no longer needed
    for k in range(last, -1, -1):
        derivative = BACKWARD_FROM_OUTPUT[model.activations[k]]
        if derivative is not None:
            grad = derivative(grad, outs[k + 1], grad if k < last else torch.empty_like(grad))
        i, o = model._shapes[k]
        if o >= i:
            weights = torch.bmm(grad, outs[k].transpose(1, 2)).view(r, -1)
        else:
            weights = torch.bmm(outs[k], grad.transpose(1, 2)).transpose(1, 2).reshape(r, -1)
        parts += [grad.sum(-1), weights]
        if k:
            out = spare if spare is not None and spare.shape == (r, i, grad.shape[2]) else None
            grad, spare = _input_gradient(layers[k][0], grad, out), (grad if k < last else None)
    return torch.cat(parts[::-1], 1)


def _input_gradient(wt: Tensor, grad: Tensor, out: Tensor | None) -> Tensor:
    """W g (r, in, B) from W^T (r, out, in) and g (r, out, B), into `out` where given.

    A one-output layer's is an outer product: a broadcast multiply gives the same products
    (one each, nothing summed) without a gemm call (7 against 16 us at 10 x 25 x 256).
    """
    w = wt.transpose(1, 2)
    if wt.shape[1] == 1:
        return torch.mul(w, grad, out=out)
    return torch.bmm(w, grad, out=out)


# CPU passes take as many replicas as keep the widest activation within this (_replica_chunk)
CHUNK_BYTES = 1 << 20

INPUT_TRANSFORMS: dict[str, InputTransform] = {}
OUTPUT_TRANSFORMS: dict[str, OutputTransform] = {}


def lookup(registry: Mapping[str, object], name: str, what: str):
    """Registry access whose error names the closest known entries (typos are the usual cause)."""
    if name in registry:
        return registry[name]
    raise spec.unknown_name(name, registry, what)


def register_input_transform(name: str):
    """Decorator naming an input hook `f(x, replica_params) -> x'` so exports can refer to it."""

    def add(fn: InputTransform) -> InputTransform:
        INPUT_TRANSFORMS[name] = fn
        return fn

    return add


def register_output_transform(name: str):
    """Decorator naming an output hook `f(x, out, replica_params) -> out'` (x is the raw input)."""

    def add(fn: OutputTransform) -> OutputTransform:
        OUTPUT_TRANSFORMS[name] = fn
        return fn

    return add


@register_input_transform("x_logx")
def _x_logx(x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """(x) -> (x, ln x): PDF networks see both scales of the momentum fraction (n3fit's input)."""
    return torch.cat([x, torch.log(x)], dim=-1)


@register_output_transform("pdf_preprocessing")
def _pdf_preprocessing(x: Tensor, out: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """x f = NN * x^(1 - alpha) (1 - x)^beta, alpha and beta (R, n_out) per replica; x = column 0.

    The prefactor fixes the small- and large-x behaviour that the data barely constrain, so the
    network only has to learn a smooth correction.
    """
    xs = x[..., :1]
    alpha = params["alpha"].unsqueeze(-2)
    beta = params["beta"].unsqueeze(-2)
    return out * xs.pow(1 - alpha) * (1 - xs).pow(beta)


def _glorot_normal(rng: np.random.Generator, fan_in: int, fan_out: int):
    """Keeps activation variance O(1) through tanh/sigmoid layers; zero biases."""
    std = np.sqrt(2.0 / (fan_in + fan_out))
    return rng.normal(0.0, std, (fan_in, fan_out)), np.zeros(fan_out)


def _uniform(rng: np.random.Generator, fan_in: int, fan_out: int):
    """torch.nn.Linear's default, U(+-1/sqrt(fan_in)) on weights and biases."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, (fan_in, fan_out)), rng.uniform(-bound, bound, fan_out)


INITIALISERS = {"glorot_normal": _glorot_normal, "uniform": _uniform}


@dataclass(frozen=True)
class Positivity:
    """Smooth output constraint offset + scale * y > 0.

    y = (softplus(offset + scale * raw) - offset) / scale, so offset + scale * y = softplus(...).

    Why smooth: a ReLU-type constraint has zero gradient on its dead side, so whole networks stop
    learning (ML4EFT's dead replicas). Softplus keeps a gradient everywhere and is the identity far
    inside the allowed region. offset=0, scale=1 gives y > 0; offset=1, scale=c gives 1 + c y > 0.
    """

    offset: float = 0.0
    scale: float = 1.0

    def __post_init__(self):
        if self.scale == 0:
            raise ValueError("Positivity.scale must be non-zero")

    def __call__(self, raw: Tensor) -> Tensor:
        return (F.softplus(self.offset + self.scale * raw) - self.offset) / self.scale


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a CPU run."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA device")
    return device


class EnsembleMLP(torch.nn.Module):
    """R independent MLPs with stacked weights; `forward(x)` returns (R, B, n_out).

    x is (B, in), shared by all replicas, or (R, B, in), one input set per replica; the output is
    a (R, B, n_out) view of feature-major storage (call .contiguous() if you need a copy). Order of
    the computation: input_transform(x) -> layers -> softplus on `positive_outputs` ->
    output_transform(x, out) -> positivity. Replica
    params (e.g. PDF preprocessing exponents alpha, beta) are per-replica arrays with leading dim R;
    those named in `trainable_params` are optimised with the weights.
    """

    def __init__(
        self,
        n_replicas: int,
        sizes: Sequence[int],
        activations: Sequence[str],
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        replica_ids: Sequence[int] | None = None,
        init: str = "glorot_normal",
        input_transform: str | None = None,
        output_transform: str | None = None,
        replica_params: Mapping[str, np.ndarray | Tensor] | None = None,
        trainable_params: Sequence[str] = (),
        positivity: Positivity | None = None,
        positive_outputs: Sequence[int] = (),
    ):
        super().__init__()
        if n_replicas <= 0:
            raise ValueError(f"n_replicas must be positive, got {n_replicas}")
        sizes = spec.check_layers(sizes, activations)
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        ids = np.arange(n_replicas) if replica_ids is None else np.asarray(replica_ids, np.int64)
        if ids.shape != (n_replicas,) or ids.min() < 0:
            raise ValueError(f"replica_ids must hold n_replicas={n_replicas} non-negative ids, got {ids}")
        self.sizes = sizes
        self.activations = list(activations)
        self._acts = [lookup(ACTIVATIONS, a, "activation") for a in self.activations]
        self.positive_outputs = tuple(spec.check_positive_outputs(positive_outputs, sizes[-1]))
        # the hand-written backward runs from the layers' output: no softplus in between
        self.supports_layers_backward = not self.positive_outputs and all(
            a in BACKWARD_FROM_OUTPUT for a in self.activations
        )
        self.seed = int(seed)
        self.init = init
        self._initialiser = lookup(INITIALISERS, init, "initialiser")
        self.input_transform = input_transform
        self.output_transform = output_transform
        self._input_fn = self._output_fn = None
        if input_transform:
            self._input_fn = lookup(INPUT_TRANSFORMS, input_transform, "input transform")
        if output_transform:
            self._output_fn = lookup(OUTPUT_TRANSFORMS, output_transform, "output transform")
        self.positivity = positivity
        self.replica_ids = ids
        self.generation = np.zeros(n_replicas, np.int64)
        device = resolve_device(device)
        self._shapes = spec.layer_shapes(self.sizes)
        self._chunks = [n for i, o in self._shapes for n in (i * o, o)]
        self.n_flat = sum(self._chunks)
        self._widest = max(self.sizes)
        self._views: dict[tuple, list[tuple[Tensor, Tensor]]] = {}  # see _layer_views
        rows = np.stack([self._draw(int(r), 0) for r in ids])
        self.flat = torch.nn.Parameter(torch.as_tensor(rows, dtype=dtype, device=device))
        self._param_names = list(replica_params or {})
        unknown = set(trainable_params) - set(self._param_names)
        if unknown:
            raise ValueError(f"trainable_params {sorted(unknown)} are not in replica_params")
        self.trainable_params = [n for n in self._param_names if n in set(trainable_params)]
        for name, value in (replica_params or {}).items():
            value = torch.as_tensor(value, dtype=dtype, device=device).clone()
            if value.dim() == 0 or value.shape[0] != n_replicas:
                raise ValueError(
                    f"replica param {name!r} needs leading dim {n_replicas}, got shape {tuple(value.shape)}"
                )
            if name in self.trainable_params:
                self.register_parameter(f"param_{name}", torch.nn.Parameter(value))
            else:
                self.register_buffer(f"param_{name}", value)

    @classmethod
    def single(cls, replica: int, sizes, activations, seed: int = 0, **kwargs) -> EnsembleMLP:
        """Replica `replica` of any ensemble with this seed, built alone (same initial weights)."""
        return cls(1, sizes, activations, seed, replica_ids=[replica], **kwargs)

    @property
    def n_replicas(self) -> int:
        return self.flat.shape[0]

    @property
    def device(self) -> torch.device:
        return self.flat.device

    @property
    def dtype(self) -> torch.dtype:
        return self.flat.dtype

    @property
    def replica_params(self) -> dict[str, Tensor]:
        return {n: getattr(self, f"param_{n}") for n in self._param_names}

    def _transposed_layers(self, flat: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(W^T (r, out, in), b (r, out, 1)) per layer: views of `flat` (r, P)."""
        r = flat.shape[0]
        parts = flat.split(self._chunks, dim=1)
        return [
            (parts[2 * k].view(r, o, i), parts[2 * k + 1].view(r, o, 1))
            for k, (i, o) in enumerate(self._shapes)
        ]

    def layers(self) -> list[tuple[Tensor, Tensor]]:
        """(W (R, in, out), b (R, 1, out)) per layer, as views of the flat parameter."""
        layers = self._transposed_layers(self.flat)
        return [(wt.transpose(1, 2), b.transpose(1, 2)) for wt, b in layers]

    def _replica_chunk(self, n_points: int) -> int:
        """Replicas per pass so the widest activation stays within CHUNK_BYTES (CPU); all at
        once on GPU.

        Measured on our CPU (R=100 and 1000, 1000 points): small buffers are recycled by malloc
        instead of being mapped and page-faulted afresh every step, and stay in cache: 1.3x
        faster at R=100 and 2.3x at R=1000 than one pass over all replicas (2 MiB passes). 1 MiB
        (the L2 cache of one core here) trained the EELS ZLP net (100 replicas, 1000 points,
        hand-written backward) 5% faster than 2 MiB, 7% than 512 KiB, 14% than 4 MiB (CPU-s,
        best of 5 interleaved, load ~16 on 2 cores); no change through autograd (0.811 vs 0.808
        CPU-s) and for the PDF net at 1000 points.
        """
        flat = self._parameters["flat"]  # not self.flat: Module attribute lookup, every pass
        if flat.device.type != "cpu":
            return flat.shape[0]
        return max(1, CHUNK_BYTES // (n_points * self._widest * flat.element_size()))

    def _layer_views(self, flat: Tensor) -> list[tuple[Tensor, Tensor]]:
        """`_transposed_layers(flat)` for the graph-free paths, made once per block of `flat`.

        Views share the parameter's memory, so the in-place updates of the optimiser,
        re-initialisation and load_arrays show through them. Cached by the block's address,
        shape and strides: while a cached view holds a block's memory no other tensor can take
        that address. At small minibatches the split and the views per layer, made afresh every
        pass, were a measurable share of a step. Bounded: cleared past a few dozen blocks (a
        replaced parameter's views go with it).
        """
        key = (flat.data_ptr(), tuple(flat.shape), flat.stride(), flat.dtype, flat.device)
        views = self._views.get(key)
        if views is None:
            if len(self._views) >= 64:
                self._views.clear()
            with torch.no_grad():
                views = self._views[key] = self._transposed_layers(flat.detach())
        return views

    def _blocks(self, h: Tensor, n_points: int) -> list[tuple[Tensor, Tensor]]:
        """(h, flat) per replica block of `_replica_chunk` (no split for a single block)."""
        size = self._replica_chunk(n_points)
        if size >= self.n_replicas:
            return [(h, self.flat)]
        return list(zip(h.split(size), self.flat.split(size)))

    def _core(self, h: Tensor, flat: Tensor) -> Tensor:
        """Stacked layers on feature-major h, (in, B) shared or (r, in, B), to (r, out, B)."""
        if h.dim() == 2:
            h = h.expand(flat.shape[0], *h.shape)
        if not (torch.is_grad_enabled() and (flat.requires_grad or h.requires_grad)):
            return _layer_outputs(self, h, self._layer_views(flat))[-1]
        for (wt, b), act in zip(self._transposed_layers(flat), self._acts):
            h = act(torch.baddbmm(b, wt, h))
        return h

    @without_grad
    def layers_forward(self, h: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
        """The stacked layers on feature-major h (R, in, B), with no autograd graph, for a loss
        that computes its gradient by hand: returns the output (R, out, B) and the tape that
        `layers_backward` needs (the layer outputs). No input or output transform is applied.

        Why: at small minibatches autograd's graph of the layers and a loss (one node per
        operation, and the views of the flat parameter) costs a sizeable share of a step: EFT
        term networks at 128 + 128 events trained 1.38x faster without it. (Wrapping the layers
        alone in one autograd.Function measured no faster for the other training ops.)
        """
        if not self.supports_layers_backward:
            raise ValueError(
                f"layers_forward needs activations with a derivative from their output "
                f"{sorted(BACKWARD_FROM_OUTPUT)}, got {self.activations}"
            )
        if h.dim() != 3 or h.shape[:2] != (self.n_replicas, self.sizes[0]):
            raise ValueError(f"h must be ({self.n_replicas}, {self.sizes[0]}, B), got {tuple(h.shape)}")
        tape = [_layer_outputs(self, hc, self._layer_views(fc)) for hc, fc in self._blocks(h, h.shape[-1])]
        return (tape[0][-1] if len(tape) == 1 else torch.cat([t[-1] for t in tape])), tape

    @without_grad
    def layers_backward(self, tape: list[list[Tensor]], grad: Tensor) -> Tensor:
        """d loss / d flat (R, P) from `layers_forward`'s tape and d loss / d output (R, out, B)."""
        if len(tape) == 1:
            return _flat_gradient(self, self._layer_views(self.flat), tape[0], grad)
        sizes = [t[0].shape[0] for t in tape]
        parts = [
            _flat_gradient(self, self._layer_views(fc), t, gc)
            for t, fc, gc in zip(tape, self.flat.split(sizes), grad.split(sizes))
        ]
        return torch.cat(parts)

    def forward(self, x: Tensor) -> Tensor:
        h = self.raw(x)
        if self.positive_outputs:  # positive by construction (e.g. a PDF fit's sea antiquarks)
            index = list(self.positive_outputs)
            h = h.clone()
            h[..., index] = F.softplus(h[..., index])
        if self._output_fn:
            h = self._output_fn(x, h, self.replica_params)
        return self.positivity(h) if self.positivity else h

    def raw(self, x: Tensor) -> Tensor:
        """The layers' output (R, B, n_out) before the output transform and positivity.

        For a loss that applies its own (fused) form of the output hook: at small minibatches
        every elementwise operation on the output is a noticeable share of a step.
        """
        if x.dim() not in (2, 3) or (x.dim() == 3 and x.shape[0] != self.n_replicas):
            raise ValueError(f"input must be (B, in) or ({self.n_replicas}, B, in), got {tuple(x.shape)}")
        params = self.replica_params
        h = self._input_fn(x, params) if self._input_fn else x
        if h.shape[-1] != self.sizes[0]:
            raise ValueError(f"network expects {self.sizes[0]} input features, got {h.shape[-1]}")
        h = h.transpose(-1, -2).contiguous()
        size = self._replica_chunk(h.shape[-1])
        flats = self.flat.split(size) if size < self.n_replicas else [self.flat]
        hs = [h] * len(flats) if h.dim() == 2 or len(flats) == 1 else h.split(size)
        outs = [self._core(hc, fc) for hc, fc in zip(hs, flats)]
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).transpose(1, 2)

    def _draw(self, replica_id: int, generation: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, replica_id, generation])
        parts = []
        for fan_in, fan_out in self._shapes:
            w, b = self._initialiser(rng, fan_in, fan_out)
            parts += [w.T.ravel(), b]
        return np.concatenate(parts)

    @torch.no_grad()
    def reinitialise(self, mask: np.ndarray | Sequence[bool]) -> None:
        """Fresh weights for the selected replicas only (their next generation); others untouched.

        Replica params are left as they are: they are user-given per replica, and a dead replica
        is a weights problem.
        """
        mask = np.asarray(mask, bool)
        if mask.shape != (self.n_replicas,):
            raise ValueError(f"mask must have shape ({self.n_replicas},), got {mask.shape}")
        for k in np.flatnonzero(mask):
            self.generation[k] += 1
            row = self._draw(int(self.replica_ids[k]), int(self.generation[k]))
            self.flat[k] = torch.as_tensor(row, dtype=self.dtype, device=self.device)

    def architecture(self) -> dict:
        """Plain-data description (JSON-able) that, with `to_arrays`, rebuilds the ensemble.

        The same dict kernels.architecture.architecture() gives without torch (ops declare it
        before training).
        """
        return spec.architecture(
            self.sizes,
            self.activations,
            self.seed,
            init=self.init,
            input_transform=self.input_transform,
            output_transform=self.output_transform,
            replica_params=self._param_names,
            trainable_params=self.trainable_params,
            positivity=asdict(self.positivity) if self.positivity else None,
            positive_outputs=self.positive_outputs,
            dtype=str(self.dtype).removeprefix("torch."),
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Weights (R, in, out), biases (R, 1, out), replica params, ids, generations (numpy)."""
        out = {}
        for k, (w, b) in enumerate(self.layers()):
            out[f"weight_{k}"] = w.detach().cpu().numpy().copy()
            out[f"bias_{k}"] = b.detach().cpu().numpy().copy()
        for name, value in self.replica_params.items():
            out[f"param_{name}"] = value.detach().cpu().numpy().copy()
        out["replica_id"] = self.replica_ids.copy()
        out["generation"] = self.generation.copy()
        return out

    @torch.no_grad()
    def load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Overwrite weights, replica params and generations in place from `to_arrays` output."""
        if not np.array_equal(np.asarray(arrays["replica_id"]), self.replica_ids):
            raise ValueError("arrays hold other replica ids than this model")
        rows = []
        for k, (i, o) in enumerate(self._shapes):
            for key, shape in ((f"weight_{k}", (i, o)), (f"bias_{k}", (1, o))):
                a = np.asarray(arrays[key])
                if a.shape != (self.n_replicas, *shape):
                    expected = (self.n_replicas, *shape)
                    raise ValueError(f"{key} has shape {a.shape}, expected {expected}")
                rows.append(a.swapaxes(1, 2).reshape(self.n_replicas, -1))
        self.flat.copy_(torch.as_tensor(np.concatenate(rows, axis=1), dtype=self.dtype))
        for name, value in self.replica_params.items():
            value.copy_(torch.as_tensor(np.asarray(arrays[f"param_{name}"]), dtype=self.dtype))
        self.generation[:] = np.asarray(arrays["generation"])

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, np.ndarray],
        architecture: Mapping,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> EnsembleMLP:
        """Rebuild an ensemble from `to_arrays()` and `architecture()` (no code is loaded)."""
        arch = dict(architecture)
        ids = np.asarray(arrays["replica_id"], np.int64)
        names = arch["replica_params"]
        model = cls(
            len(ids),
            arch["sizes"],
            arch["activations"],
            arch["seed"],
            device,
            dtype or getattr(torch, arch["dtype"]),
            replica_ids=ids,
            init=arch["init"],
            input_transform=arch["input_transform"],
            output_transform=arch["output_transform"],
            replica_params={n: np.asarray(arrays[f"param_{n}"]) for n in names},
            trainable_params=arch["trainable_params"],
            positivity=Positivity(**arch["positivity"]) if arch["positivity"] else None,
            positive_outputs=arch.get("positive_outputs", ()),
        )
        model.load_arrays(arrays)
        return model
