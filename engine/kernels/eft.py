"""ML4EFT as plain arrays: the analytic toy, the term classifiers, the ratio and the likelihoods.

The EFT cross section is a polynomial in the Wilson coefficients c, so the likelihood ratio is
r(x, c) = 1 + sum_j c_j NN_j(x) + sum_{j<=k} c_j c_k NN_jk(x) (DOMAIN.md section 4). Each term's
network is a classifier between SM events (label 1) and events of "SM + that term" at c_train
(label 0); the cross-section-weighted cross-entropy is minimised by 1 + s NN = dsigma_(SM+term) /
dsigma_SM, where s is the term's coefficient product at c_train (c_train for a linear term,
c_train^2 for a quadratic one). Every (term, replica) network is one row of a single EnsembleMLP,
so all of them train together in one batched job on the replica core.

Why the toy is written as monomials x1^a x2^b times the SM density: every moment and every
mixture component can then be sampled exactly (x1 ~ Gamma(a + 1), |x2| ~ chi_(b + 1)), and any
r(x, c) >= 0 is sampled exactly by accept-reject from the mixture with absolute weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .mlp import EnsembleMLP, register_output_transform, resolve_device
from .optim import OptimiserConfig
from .regression import scale_features
from .train import Progress, StoppingConfig, TrainResult, train_with_config

Tensor = torch.Tensor

# -- the analytic toy -----------------------------------------------------------------------------
TOY_NAME = "ml4eft-toy-2d"
TOY_FEATURES = ("x1", "x2")
TOY_COEFFICIENTS = ("c1", "c2")
# term -> monomials (weight, power of x1, power of x2) of dsigma_term / dsigma_SM. With these,
# r = (1 + c1 x1/4 + c2 x2^2/8)^2 + (c1 x1 x2/4)^2 >= 0 for every c; with c2 = 0 it is DOMAIN.md's
# r = 1 + c x1/2 + c^2 x1^2 (1 + x2^2)/16.
TOY_TERMS: dict[tuple[str, ...], tuple[tuple[float, int, int], ...]] = {
    ("c1",): ((0.5, 1, 0),),
    ("c2",): ((0.25, 0, 2),),
    ("c1", "c1"): ((1 / 16, 2, 0), (1 / 16, 2, 2)),
    ("c1", "c2"): ((1 / 16, 1, 2),),
    ("c2", "c2"): ((1 / 64, 0, 4),),
}
SM_SIGMA = 1.0


def term_name(term: Sequence[str]) -> str:
    """'c1' for a linear term, 'c1*c2' for a quadratic one: the name samples and models use."""
    return "*".join(term)


def parse_term(name: str) -> tuple[str, ...]:
    return tuple(name.split("*"))


def eft_terms(coefficients: Sequence[str], quadratic: bool = True) -> list[tuple[str, ...]]:
    """Linear terms, then the quadratic ones j <= k, in the order the coefficients are given."""
    terms = [(c,) for c in coefficients]
    if quadratic:
        terms += [(a, b) for i, a in enumerate(coefficients) for b in coefficients[i:]]
    return terms


def _moment(a: int, b: int) -> float:
    """E_SM[x1^a x2^b]: a! for x1 ~ Exp(1), (b - 1)!! for even b and x2 ~ N(0, 1)."""
    return math.factorial(a) * (math.prod(range(b - 1, 0, -2)) if b % 2 == 0 else 0.0)


def toy_sigma(term: Sequence[str]) -> float:
    """The term's cross section sigma_term = E_SM[dsigma_term / dsigma_SM] (sigma_SM = 1)."""
    return sum(w * _moment(a, b) for w, a, b in TOY_TERMS[tuple(term)])


def _term_density(term: Sequence[str], x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    return sum(w * x1**a * x2**b for w, a, b in TOY_TERMS[tuple(term)])


def toy_ratio(x1: np.ndarray, x2: np.ndarray, points: np.ndarray,
              coefficients: Sequence[str]) -> np.ndarray:
    """Exact r(x, c), (G, n), at coefficient points (G, len(coefficients)); absent ones are 0."""
    terms = [t for t in TOY_TERMS if set(t) <= set(coefficients)]
    products = coefficient_products(points, coefficients, terms)
    densities = np.array([_term_density(t, x1, x2) for t in terms]).reshape(len(terms), -1)
    return 1.0 + products @ densities


def toy_cross_section(points: np.ndarray, coefficients: Sequence[str]) -> np.ndarray:
    """sigma(c) / sigma_SM of the toy at points (G, len(coefficients))."""
    terms = [t for t in TOY_TERMS if set(t) <= set(coefficients)]
    return SM_SIGMA + coefficient_products(points, coefficients, terms) @ np.array(
        [toy_sigma(t) for t in terms])


def _monomial_draw(rng: np.random.Generator, a: int, b: int, n: int) -> np.ndarray:
    """n exact draws from x1^a x2^b e^-x1 phi(x2) (normalised): Gamma(a + 1) x signed chi_(b + 1)."""
    x1 = rng.gamma(a + 1.0, 1.0, n)
    x2 = rng.standard_normal(n) if b == 0 else (
        np.sqrt(rng.chisquare(b + 1, n)) * rng.choice([-1.0, 1.0], n))
    return np.stack([x1, x2], axis=-1)


def sample_toy(rng: np.random.Generator, n: int, c: Mapping[str, float]) -> np.ndarray:
    """n events (n, 2) from dsigma(c) = dsigma_SM r(x, c) of the toy, exactly."""
    names = list(c)
    terms = [t for t in TOY_TERMS if set(t) <= set(names)]
    products = coefficient_products(np.array([[c[k] for k in names]], float), names, terms)[0]
    return _sample_mixture(rng, n, dict(zip(terms, products)))


def sample_toy_term(rng: np.random.Generator, n: int, term: Sequence[str], c_train: float) -> np.ndarray:
    """n events of "SM + term" at c_train: dsigma_SM + c_train^order dsigma_term (an ML4EFT sample)."""
    return _sample_mixture(rng, n, {tuple(term): c_train ** len(term)})


def _sample_mixture(rng: np.random.Generator, n: int, products: Mapping[tuple, float]) -> np.ndarray:
    """n exact draws from dsigma_SM (1 + sum_t P_t dsigma_t / dsigma_SM).

    Proposal: the mixture of SM and every monomial with weight |P_t w|; accepting with
    probability r(x) / (1 + sum |.| monomials) <= 1 gives the target. A negative r at a proposed
    event means the products describe no physical cross section: a ValueError.
    """
    components = [(1.0, 0, 0)] + [(p * w, a, b) for t, p in products.items()
                                  for w, a, b in TOY_TERMS[t] if p != 0]
    weights = np.array([abs(w) * _moment(a, b) for w, a, b in components])
    out, have = np.empty((n, 2)), 0
    while have < n:
        size = max(64, int(1.2 * (n - have)))
        which = rng.choice(len(components), size, p=weights / weights.sum())
        draws = np.empty((size, 2))
        for k, (_, a, b) in enumerate(components):
            picked = which == k
            draws[picked] = _monomial_draw(rng, a, b, int(picked.sum()))
        x1, x2 = draws[:, 0], draws[:, 1]
        signed = 1.0 + sum(w * x1**a * x2**b for w, a, b in components[1:])
        bound = 1.0 + sum(abs(w) * x1**a * x2**b for w, a, b in components[1:])
        if np.any(signed < 0):
            raise ValueError(f"dsigma is negative at some x for coefficient products "
                             f"{ {term_name(t): p for t, p in products.items()} }: no events to sample")
        accepted = draws[rng.random(size) * bound < signed][: n - have]
        out[have: have + len(accepted)] = accepted
        have += len(accepted)
    return out


# -- the ratio from term networks -----------------------------------------------------------------
def coefficient_products(points: np.ndarray, coefficients: Sequence[str],
                         terms: Sequence[Sequence[str]]) -> np.ndarray:
    """(G, T) products c_j (linear) or c_j c_k (quadratic) of each term at each point (G, C)."""
    points = np.atleast_2d(np.asarray(points, float))
    index = {name: i for i, name in enumerate(coefficients)}
    if not terms:
        return np.zeros((len(points), 0))
    return np.stack([np.prod([points[:, index[c]] for c in t], axis=0) for t in terms], axis=-1)


def ratio_from_terms(products: np.ndarray, nn: np.ndarray) -> np.ndarray:
    """r = 1 + sum_t P_t NN_t: products (G, T), nn (T, ...) -> (G, ...)."""
    t = nn.shape[0]
    return 1.0 + (products @ nn.reshape(t, -1)).reshape(products.shape[0], *nn.shape[1:])


@register_output_transform("eft_positivity")
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

    def __init__(self, sm: np.ndarray, eft: np.ndarray, sigma_sm: np.ndarray, sigma_eft: np.ndarray,
                 config: EftTrainConfig, device: torch.device, dtype: torch.dtype):
        rows, n_sm = sm.shape[:2]
        n_eft = eft.shape[1]
        self.n_val = (max(1, int(n_sm * config.validation_fraction)),
                      max(1, int(n_eft * config.validation_fraction)))
        self.n_train = (n_sm - self.n_val[0], n_eft - self.n_val[1])
        if min(self.n_train) < 1:
            raise ValueError(f"samples of {n_sm} SM and {n_eft} SM+term events leave none to train on")

        def tensor(a):
            return torch.as_tensor(a, dtype=dtype, device=device)

        train = tensor(np.concatenate([sm[:, : self.n_train[0]], eft[:, : self.n_train[1]]], 1))
        self.whole = train  # the full-batch case's events; the parts are views of it
        self.parts = (train[:, : self.n_train[0]], train[:, self.n_train[0]:])
        self.val = tensor(np.concatenate([sm[:, self.n_train[0]:], eft[:, self.n_train[1]:]], 1))
        self.sigma_sm, self.sigma_eft = tensor(sigma_sm), tensor(sigma_eft)
        ratio = sigma_eft / sigma_sm
        self.constant = tensor((sigma_sm + sigma_eft) * np.log1p(ratio) - sigma_eft * np.log(ratio))
        self.batch = config.batch_size
        self.seed = config.seed
        self.epoch = 0  # set by train_ensemble before every call (the minibatch key)
        self.device = device
        self._shuffled: dict[int, tuple[int, Tensor]] = {}  # part -> (pass, its shuffled copy)

    def _loss(self, model: EnsembleMLP, events: Tensor, n_sm: int) -> Tensor:
        """Loss per row; `events` (rows, n, f) holds n_sm SM events, then the SM+term ones."""
        s = model.replica_params["c_scale"].view(-1, 1)
        r = 1.0 + s * model(events)[..., 0]
        r_sm, r_eft = r[:, :n_sm], r[:, n_sm:].clamp(min=1e-30)
        sm_term = F.softplus(torch.log(r_sm.clamp(min=1e-30))).mean(1)  # log(1 + r), stable
        eft_term = (torch.log1p(r_eft) - torch.log(r_eft)).mean(1)
        return (self.sigma_sm * sm_term + self.sigma_eft * eft_term) / self.constant

    def _minibatch(self, part: int) -> Tensor:
        """This step's events of one part (0 SM, 1 SM+term): the next slice of the pass's shuffle.

        Why a copy shuffled once per pass instead of a gather per step: a step's random gather
        from the whole sample misses the cache at nearly every event (88 us of a 1.8 ms step at
        256 + 256 events, 10 networks, in a profile), while slicing the shuffled copy reads memory
        in order; it costs one more copy of the training events. The batches are the same: slice k
        of data[perm] is data[perm[slice k]].
        """
        data = self.parts[part]
        n = data.shape[1]
        if self.batch is None or self.batch >= n:
            return data
        per_pass = n // self.batch
        which = self.epoch // per_pass
        if self._shuffled.get(part, (None,))[0] != which:
            order = np.random.default_rng([self.seed, part, which]).permutation(n)
            self._shuffled[part] = which, torch.index_select(
                data, 1, torch.as_tensor(order, device=self.device))
        start = (self.epoch % per_pass) * self.batch
        return self._shuffled[part][1][:, start: start + self.batch]

    def __call__(self, model: EnsembleMLP, validate: bool) -> tuple[Tensor, Tensor | None]:
        sm, eft = self._minibatch(0), self._minibatch(1)
        events = self.whole if sm.shape[1] + eft.shape[1] == self.whole.shape[1] else torch.cat([sm, eft], 1)
        train = self._loss(model, events, sm.shape[1])
        if not validate:
            return train, None
        with torch.no_grad():
            return train, self._loss(model, self.val, self.n_val[0])


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
    model = EnsembleMLP(t * r, [sm.shape[-1], *config.hidden, 1], list(config.activations),
                        seed=config.seed, device=device, output_transform="eft_positivity",
                        replica_params={"c_scale": np.repeat(np.asarray(c_scale, float), r)})
    sm_rows = np.tile(scale_features(sm, low, high), (t, 1, 1))
    eft_rows = scale_features(eft, low, high).reshape(t * r, *eft.shape[2:])
    loss = WeightedCrossEntropy(sm_rows, eft_rows, np.full(t * r, float(sigma_sm)),
                                np.repeat(np.asarray(sigma_eft, float), r), config, device,
                                model.dtype)
    result = train_with_config(model, loss, config, progress=progress, on_checkpoint=on_checkpoint,
                               resume_from=resume_from)
    return result, low, high


def predict_terms(arrays: Mapping[str, np.ndarray], architecture: Mapping, features: np.ndarray,
                  low: np.ndarray, high: np.ndarray, device: str = "cpu") -> np.ndarray:
    """NN_t of every stored row at features (n, f): (rows, n)."""
    torch.set_num_threads(1)
    model = EnsembleMLP.from_arrays(arrays, architecture, device=resolve_device(device))
    x = torch.as_tensor(scale_features(np.asarray(features, float), low, high), dtype=model.dtype,
                        device=model.device)
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
