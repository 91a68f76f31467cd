"""ML4EFT as plain arrays: the analytic toy, the term classifiers, the ratio and the likelihoods.

The EFT cross section is a polynomial in the Wilson coefficients c, so the likelihood ratio is
r(x, c) = 1 + sum_j c_j NN_j(x) + sum_{j<=k} c_j c_k NN_jk(x) (DOMAIN.md section 4). Each term's
network is a classifier between SM events (label 1) and events of "SM + that term" at c_train
(label 0); the cross-section-weighted cross-entropy is minimised by 1 + s NN = dsigma_(SM+term) /
dsigma_SM, where s is the term's coefficient product at c_train (c_train for a linear term,
c_train^2 for a quadratic one). Every (term, replica) network is one row of a single EnsembleMLP,
so all of them train together in one batched job on the replica core.

The analytic toy and the term algebra (names, coefficient products, r from the terms) are numpy
only and live in kernels.eft_toy, so that building a toy recipe's graph imports no torch; they are
re-exported here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .eft_toy import (  # noqa: F401 (re-exported: the toy and the term algebra)
    SM_SIGMA,
    TERM_OUTPUT_TRANSFORM,
    TOY_COEFFICIENTS,
    TOY_FEATURES,
    TOY_NAME,
    TOY_TERMS,
    coefficient_products,
    eft_terms,
    parse_term,
    ratio_from_terms,
    sample_toy,
    sample_toy_term,
    term_name,
    toy_cross_section,
    toy_ratio,
    toy_sigma,
)
from .mlp import EnsembleMLP, register_output_transform, resolve_device
from .optim import OptimiserConfig
from .regression import scale_features
from .train import Progress, StoppingConfig, TrainResult, train_with_config

Tensor = torch.Tensor


# -- the term networks ----------------------------------------------------------------------------
@register_output_transform(TERM_OUTPUT_TRANSFORM)
def _eft_positivity(x: Tensor, out: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """NN with 1 + s NN = softplus(1 + s raw) > 0, s the term's coefficient product at c_train.

    Smooth (gradient everywhere) where ML4EFT's ReLU constraint left dead networks behind.
    """
    s = params["c_scale"].view(-1, 1, 1)
    return (F.softplus(1.0 + s * out) - 1.0) / s


@dataclass(frozen=True)
class EftTrainConfig:
    hidden: tuple[int, ...]
    activations: tuple[str, ...]
    epochs: int
    batch_size: int | None
    optimiser: OptimiserConfig
    stopping: StoppingConfig
    validation_every: int = 10
    validation_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int | None = None


def robust_range(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature 5% and 95% quantiles: the scaler maps them to -1 and 1.

    Robust: the exponential tails of EFT samples would squeeze a min-max scaled bulk into a
    sliver of the network's input range.
    """
    low, high = np.quantile(features, [0.05, 0.95], axis=0)
    return low, np.where(high > low, high, low + 1.0)


def _signed_softplus(raw: Tensor, s: Tensor, sign: Tensor, weight: Tensor) -> Tensor:
    """Per row sum_i w_i softplus(sign_i l_i), l = log r, r = softplus(1 + s raw) (see _loss)."""
    return _weighted_sum(F.softplus(torch.addcmul(_one(raw.device, raw.dtype), raw, s)), sign, weight)


def _weighted_sum(r: Tensor, sign: Tensor, weight: Tensor) -> Tensor:
    """_signed_softplus from r (log r clamped at 1e-30: a finite loss where r underflows)."""
    return (F.softplus(torch.log(r.clamp(min=1e-30)) * sign) * weight).sum(1)


def _signed_softplus_derivative(
    raw: Tensor, s: Tensor, n_sm: int, sign: Tensor, weight: Tensor, signed_weight: Tensor, value: bool
) -> tuple[Tensor | None, Tensor]:
    """(_signed_softplus, or None where not `value`; d it / d raw), no autograd graph, for rows
    of n_sm SM events (sign +1) then SM+term events (sign -1); signed_weight is w sign.

    The chain rule through _signed_softplus is w sign sigmoid(sign l) / r * sigmoid(z) s with
    z = 1 + s raw, and sigmoid(l) = r / (1 + r), sigmoid(-l) = 1 / (1 + r), so

        d = w sign s sigmoid(z) / (1 + r)        (SM)
        d = w sign s sigmoid(z) / ((1 + r) r)    (SM+term),   0 where r < 1e-30 (the clamp),

    ten passes on the forward's intermediate values where the chain rule as written took
    thirteen (no log, clamp or second sigmoid: at 128 + 128 events a pass is mostly its call).
    """
    z = torch.addcmul(_one(raw.device, raw.dtype), raw, s)  # 1 + s raw in one pass
    r = F.softplus(z)
    loss = _weighted_sum(r, sign, weight) if value else None
    den = r + 1.0
    n_eft = r.shape[1] - n_sm
    den.narrow(1, n_sm, n_eft).mul_(r.narrow(1, n_sm, n_eft))
    d = z.sigmoid_().div_(den).mul_(signed_weight).mul_(s)
    return loss, d.masked_fill_(r < 1e-30, 0.0)


@functools.cache
def _one(device: torch.device, dtype: torch.dtype) -> Tensor:
    """A 0-d 1 on `device` (made once: addcmul's addend in _signed_softplus)."""
    return torch.ones((), device=device, dtype=dtype)


class WeightedCrossEntropy:
    """A loss_fn for train_ensemble: per-row cross-entropy of SM vs SM+term, in minibatches.

    Row k of the ensemble is (term k // R, replica k % R). Each row sees its replica's SM sample
    (weight sigma_SM / N per event) and its own SM+term sample (weight sigma_(SM+term) / M);
    decision g = 1 / (1 + r), r = 1 + s NN. The loss is reported relative to the best constant
    classifier (r = sigma_(SM+term) / sigma_SM), so 1 means "learned nothing" whatever the
    sample sizes: the stopping threshold then reads as "better than a constant", and a replica
    stuck above it is re-initialised. Minibatches are drawn from permutations keyed by (seed,
    pass) and the step train_ensemble sets: a resumed run sees the same batches as an
    uninterrupted one.

    Why a step's SM and SM+term events go through the networks together: one forward pass is
    half the operations of two, and at small minibatches the per-operation cost is most of a step.
    """

    def __init__(
        self,
        sm: np.ndarray,
        eft: np.ndarray,
        sigma_sm: np.ndarray,
        sigma_eft: np.ndarray,
        config: EftTrainConfig,
        device: torch.device,
        dtype: torch.dtype,
    ):
        rows, n_sm = sm.shape[:2]
        n_eft = eft.shape[1]
        self.n_val = (
            max(1, int(n_sm * config.validation_fraction)),
            max(1, int(n_eft * config.validation_fraction)),
        )
        self.n_train = (n_sm - self.n_val[0], n_eft - self.n_val[1])
        if min(self.n_train) < 1:
            raise ValueError(f"samples of {n_sm} SM and {n_eft} SM+term events leave none to train on")

        def tensor(a):
            return torch.as_tensor(a, dtype=dtype, device=device)

        # feature-major (rows, features, events), the layers' own layout: no transposing copy
        # per step, and a step's events are one concatenation of two slices; each part
        # contiguous, so that its shuffle gathers rows of a 2-D view (see _shuffle)
        self.parts = tuple(
            tensor(a[:, :n]).transpose(1, 2).contiguous() for a, n in zip((sm, eft), self.n_train)
        )
        self._whole: Tensor | None = None  # the full-batch case's events, made at its first step
        self.val = tensor(np.concatenate([sm[:, self.n_train[0] :], eft[:, self.n_train[1] :]], 1))
        self.sigma_sm, self.sigma_eft = tensor(sigma_sm), tensor(sigma_eft)
        ratio = sigma_eft / sigma_sm
        self.constant = tensor((sigma_sm + sigma_eft) * np.log1p(ratio) - sigma_eft * np.log(ratio))
        self.batch = config.batch_size
        self.seed = config.seed
        self.epoch = 0  # set by train_ensemble before every call (the minibatch key)
        self.device = device
        self._shuffled: dict[int, tuple[int, Tensor]] = {}  # see _pass_copy: 0, 1 parts, 2 both
        self._signed: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}  # see _weights

    def _loss(self, model: EnsembleMLP, events: Tensor, n_sm: int) -> Tensor:
        """Loss per row; `events` (rows, n, f) holds n_sm SM events, then the SM+term ones.

        With r = 1 + s NN = softplus(1 + s raw) (the positivity hook, applied here to the raw
        output) and l = log r, an SM event costs log(1 + r) = softplus(l) and an SM+term event
        log(1 + 1/r) = softplus(-l): one signed softplus and one weighted sum over all events,
        instead of the hook's and the two terms' separate passes (at 128 + 128 events, 10 rows,
        the loss and hook were ~0.3 ms of a 2 ms step).
        """
        s = model.replica_params["c_scale"].view(-1, 1)
        sign, weight, _ = self._weights(n_sm, events.shape[1])
        return _signed_softplus(model.raw(events)[..., 0], s, sign, weight)

    def _weights(self, n_sm: int, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """+1 (SM) / -1 (SM+term) per event, each event's weight sigma / (count constant), and
        their product."""
        key = n_sm, n
        if key not in self._signed:
            sign = torch.ones(1, n, dtype=self.constant.dtype, device=self.device)
            sign[:, n_sm:] = -1.0
            per = torch.stack([self.sigma_sm / n_sm, self.sigma_eft / (n - n_sm)], 1)
            counts = torch.tensor([n_sm, n - n_sm], device=self.device)
            weight = (per / self.constant[:, None]).repeat_interleave(counts, 1)
            self._signed[key] = sign, weight, weight * sign
        return self._signed[key]

    def _shuffle(self, part: int, which: int) -> Tensor:
        """Part `part`'s (0 SM, 1 SM+term) training events in the order of pass `which`.

        Why a copy shuffled once per pass instead of a gather per step: a step's random gather
        from the whole sample misses the cache at nearly every event (88 us of a 1.8 ms step at
        256 + 256 events, 10 networks, in a profile), while slicing the shuffled copy reads memory
        in order; it costs one more copy of the training events. The batches are the same: slice k
        of data[perm] is data[perm[slice k]]. The copy gathers along the rows of the part's
        (rows x features, events) view: the same values, 6x faster than index_select along the
        last dim of the 3-D tensor (0.2 against 1.3 ms for 10 x 2 x 16000 events).
        """
        data = self.parts[part]
        n = data.shape[2]
        order = np.random.default_rng([self.seed, part, which]).permutation(n)
        order = torch.as_tensor(order, device=self.device)
        return torch.index_select(data.view(-1, n), 1, order).view(data.shape)

    def _pass_copy(self, key: int, which: int, make: Callable[[], Tensor]) -> Tensor:
        """The copy `key` of pass `which`, made (replacing the previous pass's) on its first use."""
        if self._shuffled.get(key, (None,))[0] != which:
            self._shuffled[key] = (which, make())
        return self._shuffled[key][1]

    def _minibatch(self, part: int) -> Tensor:
        """This step's events of one part (0 SM, 1 SM+term): the next slice of the pass's shuffle."""
        data = self.parts[part]
        n = data.shape[2]
        if self.batch is None or self.batch >= n:
            return data
        per_pass = n // self.batch
        which = self.epoch // per_pass
        shuffled = self._pass_copy(part, which, lambda: self._shuffle(part, which))
        return shuffled.narrow(2, (self.epoch % per_pass) * self.batch, self.batch)

    def _events(self) -> tuple[Tensor, int]:
        """This step's events (rows, features, n), SM first, and how many are SM.

        Where both parts take the same number of minibatches per pass (equal samples, the
        usual case), their passes start together, and every step's SM and SM+term slices are
        laid side by side in one copy per pass: a step is then a slice of it, no concatenation
        (a fresh buffer) and two slicings per step (with the faster shuffle of _shuffle: 15 us
        per step for its events against 49, at 128 + 128 events, 10 networks, of a ~1.2 ms step).
        """
        b, (n_sm, n_eft) = self.batch, self.n_train
        if b is None or b >= min(n_sm, n_eft) or n_sm // b != n_eft // b:
            sm, eft = self._minibatch(0), self._minibatch(1)
            if sm is not self.parts[0] or eft is not self.parts[1]:
                return torch.cat([sm, eft], 2), sm.shape[2]
            if self._whole is None:
                self._whole = torch.cat(self.parts, 2)
            return self._whole, sm.shape[2]
        per_pass = n_sm // b
        which = self.epoch // per_pass
        paired = self._pass_copy(2, which, lambda: self._side_by_side(which, per_pass))
        return paired.narrow(2, (self.epoch % per_pass) * 2 * b, 2 * b), b

    def _side_by_side(self, which: int, per_pass: int) -> Tensor:
        """Pass `which` as (rows, features, per_pass 2 b): step k's b SM events, then its b SM+term."""
        rows, features = self.parts[0].shape[:2]
        steps = [
            self._shuffle(part, which)[..., : per_pass * self.batch].reshape(rows * features, per_pass, -1)
            for part in (0, 1)
        ]
        return torch.cat(steps, 2).view(rows, features, -1)

    def __call__(self, model: EnsembleMLP, validate: bool) -> tuple[Tensor, Tensor | None]:
        events, n_sm = self._events()
        train = self._loss(model, events.transpose(1, 2), n_sm)
        if not validate:
            return train, None
        with torch.no_grad():
            return train, self._loss(model, self.val, self.n_val[0])

    def value_and_grad(
        self, model: EnsembleMLP, validate: bool
    ) -> tuple[Tensor, Tensor | None, list[Tensor]] | None:
        """__call__'s losses (train None where not `validate`: train_ensemble reads it at check
        epochs only) and d train.sum() / d model.parameters(), by hand (train_ensemble
        uses it in place of autograd): the layers' forward and backward of
        EnsembleMLP.layers_forward / layers_backward, the loss's derivative in closed form.
        None where the layers are not all there is to it (an input transform, trainable
        replica params) or their activations have no hand-written backward: autograd then.

        Why: at the recipe's 128 + 128 events per step and 10 networks, autograd's graph (one
        node per operation of the layers and the loss) cost about a quarter of a step (this
        path trains 1.38x faster; no gain at 1024 + 1024, where the arithmetic dominates).
        """
        if model.trainable_params or model.input_transform or not model.supports_layers_backward:
            return None
        events, n_sm = self._events()
        s = model.param_c_scale.view(-1, 1)
        sign, weight, signed_weight = self._weights(n_sm, events.shape[2])
        with torch.no_grad():  # one context for the step (the layers' own are then skipped)
            out, tape = model.layers_forward(events)
            train, d = _signed_softplus_derivative(
                out.select(1, 0), s, n_sm, sign, weight, signed_weight, validate
            )
            grads = [model.layers_backward(tape, d.unsqueeze(1))]
            val = self._loss(model, self.val, self.n_val[0]) if validate else None
        return train, val, grads


def fit_eft(
    sm: np.ndarray,
    eft: np.ndarray,
    sigma_sm: float,
    sigma_eft: np.ndarray,
    c_scale: np.ndarray,
    config: EftTrainConfig,
    *,
    progress: Callable[[Progress], None] | None = None,
    on_checkpoint: Callable[[dict[str, np.ndarray]], None] | None = None,
    resume_from: Mapping[str, np.ndarray] | None = None,
) -> tuple[TrainResult, np.ndarray, np.ndarray]:
    """Train every (term, replica) network at once; returns (result, scaler low, scaler high).

    sm (R, N, f): each replica's SM sample; eft (T, R, M, f): each term's SM+term sample per
    replica; sigma_eft (T,) their fiducial cross sections; c_scale (T,) each term's coefficient
    product at c_train. Rows of the ensemble are ordered term-major: row = t R + r.
    """
    torch.set_num_threads(1)
    t, r = eft.shape[:2]
    if sm.shape[0] != r or sm.shape[-1] != eft.shape[-1]:
        raise ValueError(f"SM samples {sm.shape} do not match the SM+term samples {eft.shape}")
    if np.any(np.asarray(c_scale) == 0):
        raise ValueError("a term's c_train product is 0: SM+term would equal SM")
    low, high = robust_range(sm.reshape(-1, sm.shape[-1]))
    device = resolve_device(config.device)
    model = EnsembleMLP(
        t * r,
        [sm.shape[-1], *config.hidden, 1],
        list(config.activations),
        seed=config.seed,
        device=device,
        output_transform=TERM_OUTPUT_TRANSFORM,
        replica_params={"c_scale": np.repeat(np.asarray(c_scale, float), r)},
    )
    as_model = str(model.dtype).removeprefix("torch.")  # cast before the copies for the networks
    sm_rows = np.tile(scale_features(sm, low, high).astype(as_model), (t, 1, 1))
    eft_rows = scale_features(eft, low, high).astype(as_model).reshape(t * r, *eft.shape[2:])
    loss = WeightedCrossEntropy(
        sm_rows,
        eft_rows,
        np.full(t * r, float(sigma_sm)),
        np.repeat(np.asarray(sigma_eft, float), r),
        config,
        device,
        model.dtype,
    )
    result = train_with_config(
        model, loss, config, progress=progress, on_checkpoint=on_checkpoint, resume_from=resume_from
    )
    return result, low, high


def predict_terms(
    arrays: Mapping[str, np.ndarray],
    architecture: Mapping,
    features: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    device: str = "cpu",
) -> np.ndarray:
    """NN_t of every stored row at features (n, f): (rows, n)."""
    torch.set_num_threads(1)
    model = EnsembleMLP.from_arrays(arrays, architecture, device=resolve_device(device))
    x = torch.as_tensor(
        scale_features(np.asarray(features, float), low, high), dtype=model.dtype, device=model.device
    )
    with torch.no_grad():
        return model(x)[..., 0].cpu().numpy()


# -- likelihoods ----------------------------------------------------------------------------------
def sum_log_ratio(products: np.ndarray, nn: np.ndarray) -> np.ndarray:
    """sum_i log r(x_i, c) at every point: products (G, T), nn (T, n) -> (G,); -inf where r <= 0."""
    r = ratio_from_terms(products, nn)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(r > 0, np.log(np.where(r > 0, r, 1.0)), -np.inf)
    return logs.sum(axis=-1)


def unbinned_log_likelihood(sum_log_r: np.ndarray, sigma: np.ndarray, luminosity: float) -> np.ndarray:
    """Extended unbinned log L(c) = -Lumi sigma(c) + sum_i log r(x_i, c) (constants dropped)."""
    return -luminosity * sigma + sum_log_r


def binned_log_likelihood(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Poisson log L = sum_b n_b log mu_b - mu_b: counts (B,), expected (G, B) -> (G,)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(counts > 0, counts * np.log(np.where(expected > 0, expected, 0.0)), 0.0)
    value = (logs - expected).sum(axis=-1)
    return np.where(np.all((expected > 0) | (counts == 0), axis=-1), value, -np.inf)


def delta_chi2(log_l: np.ndarray) -> np.ndarray:
    """q = -2 (log L - max log L): 0 at the best point."""
    return -2.0 * (log_l - np.max(log_l))


def interval(grid: np.ndarray, q: np.ndarray, level: float = 3.84) -> tuple[float, float]:
    """The interval {c: q(c) <= level} around the minimum, ends interpolated linearly.

    An end that does not cross `level` inside the grid is NaN: the grid is too narrow to say.
    """
    best = int(np.argmin(q))
    ends = []
    for step in (-1, 1):
        k, end = best, np.nan
        while 0 <= k + step < len(grid):
            if q[k + step] > level:
                f = (level - q[k]) / (q[k + step] - q[k]) if np.isfinite(q[k + step]) else 0.0
                end = grid[k] + f * (grid[k + step] - grid[k])
                break
            k += step
        ends.append(float(end))
    return ends[0], ends[1]
