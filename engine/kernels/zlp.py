"""Zero-loss-peak (ZLP) model and subtraction for EELS spectra, as plain arrays (DOMAIN.md 2.4-2.5).

The model (after EELSfitter, our own code): one MLP per Monte Carlo replica maps (E, ln N) to
ln I_ZLP(E), N being a spectrum's total counts. Each replica is trained on ONE randomly drawn
spectrum per cluster, so the spread of the ensemble carries the spectrum-to-spectrum spread of
the ZLP. Targets: the measured ln I below dE_I (gain side and ZLP core), one count above dE_II
(the ZLP has died out there), nothing in between except a penalty that keeps the model
decreasing: that is the region where the ZLP hides under the inelastic onset and the model
extrapolates its tail.

Subtraction: the matched ZLP is the measured signal near the peak, blends into the model, is the
model up to dE_II and zero beyond. It is not capped at the signal: I - ZLP is a signed residual,
so where the true inelastic signal is ~0 (just above dE_I) its noise averages to zero in a fit
instead of being rectified into a positive floor (see match_zlp). Two paths give quantiles over
replicas of the inelastic signal I - ZLP:

- brute force: every replica evaluated at the pixel's exact ln N, matched, quantiles last;
- fast: the model depends on a pixel only through the scalar ln N, so quantiles of ln I over
  replicas are taken once per node of a ln N grid and interpolated per pixel, then matched.
  Matching is monotone (non-decreasing) in the model value at every channel, so an order
  statistic of the matched ZLP is the matched order statistic of the model, and I - ZLP turns
  ZLP rank R - 1 - i into inelastic rank i (quantiles are single order statistics for exactly
  this reason: see order_ranks). What remains approximate is the linear interpolation in ln N
  between grid nodes: measured, not assumed (see DEFAULT_GRID_SIZE).

Array code only (numpy, torch for the networks); ops wrap these with the lake.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit

from .mlp import EnsembleMLP, resolve_device
from .optim import OptimiserConfig
from .replicas import training_masks
from .train import Chi2Loss, Progress, StoppingConfig, TrainResult, train_ensemble

# Nodes of the fast path's ln N grid. Measured against brute force (70 kept replicas, 200
# generator pixels over ln N 12.6-13.9, |fast - brute| / (P84 - P16) on channels with a band of
# >= 1 count), max / 99th percentile: G=32 0.72 / 0.019, 64 0.25 / 0.008, 128 0.11 / 0.003,
# 256 0.06 / 0.0009, 512 0.03 / 0.0003. The max falls as 1/G: it sits where the model crosses the
# signal between two nodes (the kink of the cap min(ZLP, signal) the matching then had; it is
# signed now, see match_zlp). 256 keeps every channel within 6% of a band width; the grid costs
# ~1.5 s once per model, the per-pixel work does not depend on G.
DEFAULT_GRID_SIZE = 256
SCALE_LOW, SCALE_HIGH = 0.1, 0.9  # inputs mapped here: inside the sigmoids' responsive range
HIGH_TARGET_SIGMA = 0.8  # error of the "one count" targets above dE_II (EELSfitter's choice)
BLEND_STEPS = 10.0  # logistic blend width: (dE_I - dE_0) / 10, weights 0.7% / 99.3% at the ends


@dataclass(frozen=True)
class ZlpScaling:
    """Linear maps of E (eV) and ln N onto [0.1, 0.9]; plain floats so ops can store them."""

    e_low: float
    e_high: float
    ln_n_low: float
    ln_n_high: float

    def inputs(self, energy, ln_n) -> np.ndarray:
        """Network inputs (..., 2) float32 for energies and ln N that broadcast together."""
        energy, ln_n = np.broadcast_arrays(np.asarray(energy, float), np.asarray(ln_n, float))
        span = SCALE_HIGH - SCALE_LOW
        e = SCALE_LOW + span * (energy - self.e_low) / (self.e_high - self.e_low)
        n = SCALE_LOW + span * (ln_n - self.ln_n_low) / (self.ln_n_high - self.ln_n_low)
        return np.stack([e, n], axis=-1).astype(np.float32)


@dataclass
class ZlpTrainingSet:
    """Per-replica training data with one point layout shared by all replicas.

    x (R, n, 2) scaled inputs (E is the same for every replica, ln N is the drawn spectrum's);
    y (R, n) targets ln I; sigma (n,) their errors; groups (n,) a (cluster, region) label per
    point, so training/validation splits keep every cluster's core and tail in both sets.
    penalty_x (R, K * m, 2): per cluster, m energies from dE_I to dE_II at the drawn spectrum's
    ln N; penalty_step (K,) their spacing in eV. drawn (R, K) which spectrum each replica drew;
    ln_n (R, K) its ln N.
    """

    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    groups: np.ndarray
    penalty_x: np.ndarray
    penalty_step: np.ndarray
    drawn: np.ndarray
    ln_n: np.ndarray
    scaling: ZlpScaling
    seed: int


def cluster_points(spectra, energy, de_i, de_ii, n_high, min_counts):
    """Channels and errors of one cluster: the core below dE_I and subsampled tail above dE_II.

    Tail targets span dE_II ... dE_II + (dE_II - dE_I) only: the matched ZLP is zero beyond dE_II,
    so the model matters there just as an anchor for the extrapolated tail, and spreading targets
    to the window's end (46 eV) would squeeze the ZLP core into a few percent of the scaled energy
    input, which sigmoid networks resolve only after very many epochs.

    Core channels are those below dE_I where the cluster's median reaches min_counts: further out
    on the gain side ln I is read noise, not ZLP. The error is half the P16-P84 spread of ln I over
    the cluster's spectra, floored at the Poisson error 1/sqrt(I) of one spectrum: a cluster with
    one spectrum, or a few, would otherwise claim a spread of zero.
    """
    log_i = np.log(np.maximum(spectra, 1.0))
    median = np.median(spectra, axis=0)
    core = np.flatnonzero((energy < de_i) & (median >= min_counts))
    if core.size == 0:
        raise ValueError(f"no channel below dE_I = {de_i} has median counts >= {min_counts}")
    p16, p84 = np.percentile(log_i[:, core], [16, 84], axis=0)
    sigma_core = np.maximum((p84 - p16) / 2, 1.0 / np.sqrt(median[core]))
    above = np.flatnonzero((energy > de_ii) & (energy <= 2 * de_ii - de_i))
    if above.size == 0:
        raise ValueError(f"no channel of the window lies in (dE_II, 2 dE_II - dE_I] = "
                         f"({de_ii}, {2 * de_ii - de_i}] eV for the tail targets")
    tail = above[np.unique(np.linspace(0, above.size - 1, min(n_high, above.size)).round().astype(int))]
    return core, sigma_core, tail


def zlp_training_set(
    spectra_by_cluster: Sequence[np.ndarray],
    energy: np.ndarray,
    de_i,
    de_ii,
    n_replicas: int,
    seed: int,
    *,
    n_high: int = 40,
    n_penalty: int = 32,
    min_counts: float = 10.0,
) -> ZlpTrainingSet:
    """Draw one spectrum per cluster for every replica and lay out its targets (DOMAIN.md 2.4).

    spectra_by_cluster: K arrays (n_c, E) of aligned counts; de_i, de_ii (K,) in eV. Replica r draws
    from SeedSequence([seed, r]): it is the same whether 10 or 1000 replicas are drawn. The scaling
    spans every spectrum's ln N (not only the drawn ones) and every fitted or penalised energy, so
    it does not depend on the draws.
    """
    energy = np.asarray(energy, float)
    de_i, de_ii = np.atleast_1d(np.asarray(de_i, float)), np.atleast_1d(np.asarray(de_ii, float))
    k = len(spectra_by_cluster)
    if k == 0 or de_i.shape != (k,) or de_ii.shape != (k,):
        raise ValueError(f"need K >= 1 clusters and de_i, de_ii of shape (K,); got K = {k}, "
                         f"{de_i.shape}, {de_ii.shape}")
    if not np.all(de_i < de_ii):
        raise ValueError(f"dE_I must lie below dE_II for every cluster, got {de_i}, {de_ii}")
    if n_replicas <= 0 or n_penalty < 2:
        raise ValueError("need n_replicas >= 1 and n_penalty >= 2")
    spectra = [np.asarray(s, float) for s in spectra_by_cluster]
    for c, s in enumerate(spectra):
        if s.ndim != 2 or s.shape[1] != energy.size or s.shape[0] == 0:
            raise ValueError(f"cluster {c}: spectra must be (n_c >= 1, {energy.size}), got {s.shape}")
    points = [cluster_points(s, energy, a, b, n_high, min_counts)
              for s, a, b in zip(spectra, de_i, de_ii)]
    ln_n_all = [np.log(s.sum(axis=1)) for s in spectra]
    if not all(np.all(np.isfinite(v)) for v in ln_n_all):
        raise ValueError("every spectrum needs positive total counts")
    lo_n = min(v.min() for v in ln_n_all)
    hi_n = max(v.max() for v in ln_n_all)
    e_used = np.concatenate([energy[np.r_[c, t]] for c, _, t in points])
    scaling = ZlpScaling(float(e_used.min()), float(e_used.max()),
                         float(lo_n), float(hi_n if hi_n > lo_n else lo_n + 1.0))

    drawn = np.empty((n_replicas, k), np.int64)
    for r in range(n_replicas):
        rng = np.random.default_rng(np.random.SeedSequence([seed, r]))
        drawn[r] = [rng.integers(s.shape[0]) for s in spectra]
    ln_n = np.stack([ln_n_all[c][drawn[:, c]] for c in range(k)], axis=1)

    xs, ys, sig, groups = [], [], [], []
    for c, (core, sigma_core, tail) in enumerate(points):
        chosen = spectra[c][drawn[:, c]]
        channels = np.r_[core, tail]
        xs.append(scaling.inputs(energy[channels][None, :], ln_n[:, c, None]))
        ys.append(np.r_["1", np.log(np.maximum(chosen[:, core], 1.0)),
                        np.zeros((n_replicas, tail.size))])
        sig.append(np.r_[sigma_core, np.full(tail.size, HIGH_TARGET_SIGMA)])
        groups.append(np.r_[np.full(core.size, 2 * c), np.full(tail.size, 2 * c + 1)])
    grid = np.linspace(de_i, de_ii, n_penalty, axis=1)  # (K, m)
    penalty_x = scaling.inputs(grid[None], ln_n[:, :, None]).reshape(n_replicas, -1, 2)
    return ZlpTrainingSet(
        x=np.concatenate(xs, axis=1), y=np.concatenate(ys, axis=1), sigma=np.concatenate(sig),
        groups=np.concatenate(groups), penalty_x=penalty_x, penalty_step=grid[:, 1] - grid[:, 0],
        drawn=drawn, ln_n=ln_n, scaling=scaling, seed=int(seed),
    )


class ZlpLoss:
    """chi2/n on the training points + lambda * mean ReLU(d ln I / dE) on the penalty grid.

    One forward pass covers data and penalty points (the penalty part is kept from the same
    pass). The slope is a finite difference along each cluster's penalty energies, in 1/eV; a
    mean rather than a sum keeps lambda independent of the grid density. The penalty enters the
    validation loss too, so early stopping never picks an epoch where a replica rises between
    dE_I and dE_II (as n3fit only accepts epochs that satisfy positivity).
    """

    def __init__(self, ts: ZlpTrainingSet, train_mask: np.ndarray, penalty: float,
                 device: torch.device):
        r, n = ts.y.shape
        self.n = n
        self.k = ts.penalty_step.size
        self.penalty = float(penalty)
        self.x = torch.as_tensor(np.concatenate([ts.x, ts.penalty_x], axis=1), device=device)
        self.penalty_step = torch.as_tensor(ts.penalty_step, dtype=torch.float32, device=device)[:, None]
        self._penalty_out = None
        self.chi2 = Chi2Loss(self._predict, ts.y, np.diag(ts.sigma**2), train_mask, device=device)

    def _predict(self, model: EnsembleMLP) -> torch.Tensor:
        out = model(self.x)[..., 0]
        self._penalty_out = out[:, self.n:]
        return out[:, : self.n]

    def slope_penalty(self) -> torch.Tensor:
        """(R,) mean positive slope (1/eV) of the last forward pass on the penalty grid."""
        pen = self._penalty_out.reshape(self._penalty_out.shape[0], self.k, -1)
        return torch.relu(pen.diff(dim=-1) / self.penalty_step).mean(dim=(1, 2))

    def __call__(self, model: EnsembleMLP, validate: bool):
        train, val = self.chi2(model, validate)
        penalty = self.penalty * self.slope_penalty()
        return train + penalty, None if val is None else val + penalty.detach()


def train_zlp(
    training_set: ZlpTrainingSet,
    *,
    hidden: Sequence[int] = (10, 15, 5),
    activations: Sequence[str] = ("sigmoid", "sigmoid", "relu", "linear"),
    epochs: int = 5000,
    optimiser: OptimiserConfig | None = None,
    stopping: StoppingConfig | None = None,
    penalty: float = 10.0,
    train_fraction: float = 0.75,
    validation_every: int = 10,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[Progress], None] | None = None,
    checkpoint_every: int | None = None,
    on_checkpoint: Callable[[dict[str, np.ndarray]], None] | None = None,
    resume_from: Mapping[str, np.ndarray] | None = None,
) -> TrainResult:
    """Train the [2, *hidden, 1] ensemble, one network per replica of `training_set`.

    train_fraction is each (cluster, region) group's share of training points (75/25 as in
    DOMAIN.md 1); the rest validates, and train_ensemble stops each replica on it. Weight
    initialisation is keyed by `seed`, the split by the training set's seed (per replica).
    Default lr 1e-2: these inputs are O(1) and the targets ln I up to ~12, so Adam's 1e-3
    (EELSfitter, 30k epochs) spends most epochs just climbing to the peak height.
    Subtract with the kept replicas only, {k: v[result.kept] for k, v in result.weights.items()}:
    a replica that never fitted can sit orders of magnitude off and would set a quantile.
    """
    torch.set_num_threads(1)  # small nets: one thread per worker is fastest (DOMAIN.md 1)
    ts = training_set
    r, n = ts.y.shape
    dev = resolve_device(device)
    mask = training_masks(n, ts.groups, r, train_fraction, ts.seed)
    model = EnsembleMLP(r, [2, *hidden, 1], list(activations), seed=seed, device=dev)
    loss = ZlpLoss(ts, mask, penalty, dev)
    return train_ensemble(model, loss, epochs, optimiser=optimiser or OptimiserConfig(lr=1e-2),
                          stopping=stopping, validation_every=validation_every, progress=progress,
                          checkpoint_every=checkpoint_every, on_checkpoint=on_checkpoint,
                          resume_from=resume_from)


def _model(arrays, architecture, device) -> EnsembleMLP:
    torch.set_num_threads(1)
    return EnsembleMLP.from_arrays(arrays, architecture, device=resolve_device(device))


def _evaluate(model: EnsembleMLP, scaling: ZlpScaling, energy, ln_n) -> np.ndarray:
    """(R, len(ln_n), len(energy)) model ln I, all replicas at once."""
    x = scaling.inputs(np.asarray(energy)[None, :], np.asarray(ln_n, float)[:, None])
    xt = torch.as_tensor(x.reshape(-1, 2), device=model.device)
    with torch.no_grad():
        out = model(xt)[..., 0]
    return out.cpu().numpy().reshape(model.n_replicas, len(ln_n), len(energy))


def zlp_on_grid(arrays, architecture, scaling: ZlpScaling, energy, ln_n_grid,
                device: str = "cpu") -> np.ndarray:
    """Model ln I_ZLP (R, G, E) float32 of every replica at every ln N node and energy."""
    return _evaluate(_model(arrays, architecture, device), scaling, energy, ln_n_grid)


def ln_n_nodes(ln_n_low: float, ln_n_high: float, size: int = DEFAULT_GRID_SIZE) -> np.ndarray:
    """An evenly spaced ln N grid; it must cover every pixel the fast path will see."""
    if size < 2 or not ln_n_high >= ln_n_low:
        raise ValueError(f"need size >= 2 and ln_n_high >= ln_n_low, got {size}, "
                         f"[{ln_n_low}, {ln_n_high}]")
    return np.linspace(ln_n_low, ln_n_high if ln_n_high > ln_n_low else ln_n_low + 1e-6, size)


def order_ranks(n_replicas: int, quantiles: Sequence[float]) -> np.ndarray:
    """Rank (0-based, ascending) of the order statistic that stands for each quantile.

    Quantiles here are single order statistics (nearest rank, halves rounded up), never an
    interpolation between two: a monotone map commutes exactly with an order statistic, but not
    with linear interpolation between neighbours when it has a kink between them. The former
    cap min(ZLP, signal) was such a kink; with np.quantile's linear rule the fast path differed
    from brute force by up to a full band width where adjacent replicas straddled the signal
    (R = 12). The matching is linear in the model now, but the rule stays exact for any
    monotone matching.
    """
    q = np.asarray(quantiles, float)
    if q.ndim != 1 or q.size == 0 or np.any((q < 0) | (q > 1)):
        raise ValueError(f"quantiles must be a non-empty list of levels in [0, 1], got {quantiles}")
    return np.floor((n_replicas - 1) * q + 0.5).astype(np.int64)


def zlp_quantile_grid(arrays, architecture, scaling: ZlpScaling, energy, ln_n_grid,
                      quantiles: Sequence[float] = (0.16, 0.5, 0.84), device: str = "cpu",
                      nodes_per_pass: int = 16, channels: slice | None = None) -> np.ndarray:
    """(Q, G, E) float32: entry k is the ln I order statistic that gives inelastic quantile k.

    I - ZLP decreases with the model, so inelastic rank i (ascending) comes from model rank
    R - 1 - i: the mirror of order_ranks, stored so subtract_fast indexes it directly. Nodes go
    through in passes to bound memory to (R, nodes_per_pass, E).

    channels: evaluate only these energy channels (grid_channels: the only ones subtract_fast
    reads, ~1/8 of a -5 ... 46 eV window), NaN elsewhere, so a read outside them cannot pass
    unnoticed; None: every channel.
    """
    model = _model(arrays, architecture, device)
    ranks = model.n_replicas - 1 - order_ranks(model.n_replicas, quantiles)
    ln_n_grid = np.asarray(ln_n_grid, float)
    energy = np.asarray(energy)
    channels = slice(0, energy.size) if channels is None else channels
    out = np.full((ranks.size, ln_n_grid.size, energy.size), np.nan, np.float32)
    for lo in range(0, ln_n_grid.size, nodes_per_pass):
        part = _evaluate(model, scaling, energy[channels], ln_n_grid[lo : lo + nodes_per_pass])
        out[:, lo : lo + part.shape[1], channels] = np.sort(part, axis=0)[ranks]
    return out


def grid_channels(energy, fwhm, de_i, de_ii) -> slice:
    """The channels subtract_fast reads for pixels with any of these windows: from the lowest
    dE_0 = (FWHM + dE_I) / 2 to the highest dE_II, and one more channel on each side (float32
    and float64 windows may round apart). fwhm, de_ii (K,); de_i (K,) or (S, K): every dE_I a
    run will use, moved ones included."""
    window = _window(energy, np.asarray(fwhm, float), np.asarray(de_i, float), np.asarray(de_ii, float))
    return slice(max(window.start - 1, 0), min(window.stop + 1, len(energy)))


def _per_pixel(value, shape, name) -> np.ndarray:
    value = np.asarray(value, np.float32)
    try:
        return np.broadcast_to(value, shape)[..., None]
    except ValueError:
        raise ValueError(f"{name} of shape {value.shape} does not broadcast to pixels {shape}") from None


def match_zlp(signal, model_zlp, energy, fwhm, de_i, de_ii) -> np.ndarray:
    """The matched ZLP (..., E): signal, blend, model, zero.

    E < dE_0 = (FWHM + dE_I)/2: the measured signal, the whole gain side included (there is no
    energy-loss signal at E < 0, so the inelastic part is exactly zero there);
    dE_0 <= E < dE_I: (1 - w) signal + w model, w logistic from 0.7% at dE_0 to 99.3% at dE_I;
    dE_I <= E < dE_II: the model; E >= dE_II: zero. Every step is non-decreasing in the model
    value, which the fast path uses.

    Not capped at the signal (EELSfitter's min(ZLP, signal)): the ZLP model is an expectation,
    the signal a Poisson draw around ZLP + inelastic, so where the inelastic part is ~0 the cap
    turns the noise into max(counts - ZLP, 0), a positive floor. Measured on the band-gap known
    truth (issue 17; ZLP ~2e4 counts at 1.2 eV, onset ~60): +41-43 counts at 1.2 eV, +17-21 at
    1.4 eV, and the per-pixel fitted onsets' median 1.50-1.55 eV capped vs 1.35-1.45 signed
    (E_g 1.4, seeds 5-7). The signed residual averages to the true inelastic signal, and
    beyond dE_II the inelastic part is the signal itself, read noise included, as before.
    fwhm, de_i, de_ii are scalars or per-pixel arrays broadcasting to signal.shape[:-1].
    """
    signal = np.asarray(signal)
    model_zlp = np.asarray(model_zlp)
    shape = np.broadcast_shapes(signal.shape[:-1], model_zlp.shape[:-1])
    weight, below, beyond = _matching(energy, fwhm, de_i, de_ii, shape)
    zlp = signal + weight * (model_zlp - signal)  # weight 1: the model itself (below)
    zlp = np.where(below, signal, np.where(weight == 1, model_zlp, zlp))
    return np.where(beyond, 0.0, zlp).astype(np.float32)


def _matching(energy, fwhm, de_i, de_ii, shape):
    """match_zlp's rule per pixel and channel, (*shape, E) each: the model's weight (0 below
    dE_0, the logistic blend up to dE_I, 1 from dE_I on, 0 from dE_II on), the channels below
    dE_0 (ZLP = signal) and those from dE_II on (ZLP = 0)."""
    e = np.asarray(energy, np.float32)
    de_i, de_ii = _per_pixel(de_i, shape, "de_i"), _per_pixel(de_ii, shape, "de_ii")
    de_0 = (_per_pixel(fwhm, shape, "fwhm") + de_i) / 2
    if not np.all((de_0 < de_i) & (de_i < de_ii)):
        raise ValueError("need FWHM < dE_I < dE_II for every pixel")
    below, beyond = e < de_0, e >= de_ii
    weight = expit((e - (de_0 + de_i) / 2) * (BLEND_STEPS / (de_i - de_0))).astype(np.float32)
    weight[below | beyond] = 0.0
    weight[(e >= de_i) & ~beyond] = 1.0
    return weight, below, beyond


def _matching_shared(energy, fwhm, de_i_sets, de_ii, p: int) -> list[tuple]:
    """_matching for P pixels under each dE_I set, pixels sharing a few windows (one per
    cluster): evaluated once per distinct (FWHM, dE_II, every set's dE_I), then gathered."""
    columns = [np.broadcast_to(np.asarray(v, np.float32), (p,)) for v in (fwhm, de_ii, *de_i_sets)]
    key = np.zeros(p, np.int64)
    for column in columns:  # a window's key: its index among the distinct values
        levels, index = np.unique(column, return_inverse=True)
        key = key * levels.size + index.reshape(-1)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    fwhm, de_ii, *sets = (column[first] for column in columns)
    u = first.size
    parts = _matching(energy, np.tile(fwhm, len(sets)), np.concatenate(sets), np.tile(de_ii, len(sets)),
                      (len(sets) * u,))
    inverse = inverse.reshape(-1)
    return [tuple(part[k * u + inverse] for part in parts) for k in range(len(sets))]


def _window(energy, fwhm, de_i, de_ii) -> slice:
    """Channels where the model matters: from the lowest dE_0 to the highest dE_II."""
    de_0 = (np.min(np.asarray(fwhm) + np.asarray(de_i))) / 2
    e = np.asarray(energy)
    return slice(int(np.searchsorted(e, de_0)), int(np.searchsorted(e, np.max(de_ii))))


def _assemble(signal, window, inel_window, n_q, out=None) -> np.ndarray:
    """Inelastic (Q, P, E): zero below the window (ZLP = signal), the signal above (ZLP = 0).
    inel_window None: the window is already in `out`."""
    if out is None:
        out = np.empty((n_q, *signal.shape), np.float32)
    out[..., : window.start] = 0.0
    if inel_window is not None:
        out[..., window] = inel_window
    out[..., window.stop :] = signal[..., window.stop :]
    return out


def _check_signal(signal, energy) -> np.ndarray:
    signal = np.asarray(signal, np.float32)
    if signal.ndim != 2 or signal.shape[1] != len(energy):
        raise ValueError(f"signal must be (P, {len(energy)}), got {signal.shape}")
    return signal


def subtract_brute(signal, arrays, architecture, scaling: ZlpScaling, energy, fwhm, de_i, de_ii,
                   quantiles: Sequence[float] = (0.16, 0.5, 0.84), device: str = "cpu",
                   pixels_per_pass: int = 16) -> np.ndarray:
    """Inelastic quantiles (Q, P, E): every replica at each pixel's exact ln N, matched, then
    quantiles (order_ranks) over replicas. The reference the fast path is measured against.

    signal (P, E) aligned counts; fwhm, de_i, de_ii scalars or (P,) (a pixel's cluster values);
    arrays: the kept replicas only (see train_zlp).
    """
    signal = _check_signal(signal, energy)
    p = signal.shape[0]
    fwhm, de_i, de_ii = (np.broadcast_to(np.asarray(v, np.float32), (p,)) for v in (fwhm, de_i, de_ii))
    win = _window(energy, fwhm, de_i, de_ii)
    e_win = np.asarray(energy)[win]
    model = _model(arrays, architecture, device)
    ranks = order_ranks(model.n_replicas, quantiles)
    ln_n = np.log(signal.sum(axis=1, dtype=np.float64))
    inel = np.empty((len(quantiles), p, e_win.size), np.float32)
    for lo in range(0, p, pixels_per_pass):
        sl = slice(lo, lo + pixels_per_pass)
        zlp_model = np.exp(_evaluate(model, scaling, e_win, ln_n[sl]))  # (R, p, C)
        s = signal[sl, win]
        zlp = match_zlp(s, zlp_model, e_win, fwhm[sl], de_i[sl], de_ii[sl])
        inel[:, sl] = np.sort(s - zlp, axis=0)[ranks]
    return _assemble(signal, win, inel, len(quantiles))


def subtract_fast(signal, energy, ln_n_grid, quantile_grid, fwhm, de_i, de_ii, *, moved_de_i=(),
                  moved_row: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Inelastic quantiles (Q, P, E) from a zlp_quantile_grid, interpolated linearly in ln N.

    quantile_grid (Q, G, E) from zlp_quantile_grid (entry k gives inelastic quantile k);
    signal (P, E); fwhm, de_i, de_ii scalars or (P,). Only the channels from the lowest dE_0 to
    the highest dE_II are computed: elsewhere the ZLP is the signal or zero. A pixel whose ln N
    falls outside the grid is an error, not an extrapolation: the grid must cover the image.

    moved_de_i: S more dE_I sets (scalars or (P,)), each subtracted with grid row moved_row only
    (default Q // 2, the median of an odd Q) and appended: (Q + S, P, E). The interpolated model
    is shared, only the matching moves. out: a (Q + S, P, E) float32 array to fill and return.

    I - ZLP is computed as weight x (I - model) (match_zlp's weight) with the channels below
    dE_0 set to 0 and those from dE_II on to I: the same values to float32 rounding, one pass
    per step over the (Q, P, window) block and none over the whole energy axis but the output's.
    """
    signal = _check_signal(signal, energy)
    grid = np.asarray(ln_n_grid, float)
    qg = np.asarray(quantile_grid, np.float32)
    if qg.ndim != 3 or qg.shape[1:] != (grid.size, len(energy)):
        raise ValueError(f"quantile_grid must be (Q, {grid.size}, {len(energy)}), got {qg.shape}")
    n_q, p = qg.shape[0], signal.shape[0]
    row = n_q // 2 if moved_row is None else moved_row
    if not 0 <= row < n_q:
        raise ValueError(f"moved_row must index the grid's {n_q} rows, got {moved_row}")
    sets = [de_i, *moved_de_i]
    shape = (n_q + len(sets) - 1, p, len(energy))
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
    ln_n = np.log(signal.sum(axis=1, dtype=np.float64))
    if ln_n.size and not (ln_n.min() >= grid[0] and ln_n.max() <= grid[-1]):
        raise ValueError(f"pixels' ln N in [{ln_n.min():.4g}, {ln_n.max():.4g}] leave the grid "
                         f"[{grid[0]:.4g}, {grid[-1]:.4g}]")
    every_de_i = np.stack([np.broadcast_to(np.asarray(d, float), (p,)) for d in sets])
    win = _window(energy, fwhm, every_de_i, de_ii)  # the union of every set's window
    i = np.clip(np.searchsorted(grid, ln_n, side="right") - 1, 0, grid.size - 2)
    t = ((ln_n - grid[i]) / (grid[i + 1] - grid[i])).astype(np.float32)[:, None]
    q_win = qg[:, :, win]
    low = q_win[:, i]
    diff = q_win[:, i + 1]  # (Q, P, C): in place, low + t (high - low), exp, I - model
    np.subtract(diff, low, out=diff)
    diff *= t
    diff += low
    np.exp(diff, out=diff)
    s = signal[:, win]
    np.subtract(s, diff, out=diff)
    e_win = np.asarray(energy)[win]
    for j, (weight, below, beyond) in enumerate(_matching_shared(e_win, fwhm, sets, de_ii, p)):
        bands = out[:n_q, :, win] if j == 0 else out[n_q + j - 1, :, win]
        np.multiply(diff if j == 0 else diff[row], weight, out=bands)
        np.copyto(bands, 0.0, where=below)
        np.copyto(bands, s, where=beyond)
    return _assemble(signal, win, None, shape[0], out)


# ---------------------------------------------------------------- a ZLP from the vacuum spectra

STRETCH_RANGE = (0.7, 1.6)  # stretches of the vacuum ZLP tried (thick clusters are broader)
STRETCH_STEPS = 901  # grid of the search; then a parabola through the best three points


def stretched(energy, log_vacuum, stretch: float) -> np.ndarray:
    """The vacuum ZLP widened by `stretch` about 0 eV, V(E / s) in counts (0 where ln V is NaN).

    A thicker specimen broadens the ZLP (the generator's (1 + 0.15 tau), a real energy spread
    alike) by scaling its width: a stretch of the energy axis, which moves the Pearson-like tail
    by s^(2m-1) (~4% at s = 1.015), far more than a Gaussian convolution of the same FWHM would.
    The amplitude is set per pixel later, so V(E / s) is not renormalised here.
    """
    from scipy.interpolate import CubicSpline

    e = np.asarray(energy, float)
    y = np.asarray(log_vacuum, float)
    out = np.zeros_like(e)
    finite = np.flatnonzero(np.isfinite(y))
    if finite.size < 4:
        return out
    # one finite run around the peak: a cubic spline of ln V (smooth there, unlike V, whose
    # sharp top linear interpolation flattens: the stretch came out 1.0877 for 1.09 with it)
    peak = int(np.nanargmax(y))
    gaps = np.flatnonzero(~np.isfinite(y))
    lo = gaps[gaps < peak].max() + 1 if (gaps < peak).any() else 0
    hi = gaps[gaps > peak].min() if (gaps > peak).any() else e.size
    x = e / stretch
    inside = (x >= e[lo]) & (x <= e[hi - 1])
    out[inside] = np.exp(CubicSpline(e[lo:hi], y[lo:hi])(x[inside]))
    return out


def vacuum_stretch(energy, log_cluster, log_vacuum) -> float:
    """The stretch s that best maps the vacuum ZLP onto a cluster's median spectrum on the
    gain side (E < 0, pure ZLP: no energy can be gained from a specimen), by least squares in
    ln I weighted by counts (the Poisson variance of ln I is 1/I), amplitude profiled; grid
    search over STRETCH_RANGE, then a parabola through the best three points.

    Measured on the "bandgap" known truth (t/lambda 0.1, true stretch 1.015): 1.0137. Adding
    the loss tail below dE_I to the fit (unweighted ln I) gave 1.0094 and a larger residual
    ZLP under the onset: the specimen's own inelastic tail leaks into it.
    """
    e = np.asarray(energy, float)
    y = np.asarray(log_cluster, float)
    gain = (e < 0) & np.isfinite(y) & np.isfinite(np.asarray(log_vacuum, float))
    if gain.sum() < 4:
        raise ValueError("the vacuum ZLP needs at least 4 gain-side channels (E < 0) with "
                         "positive counts in both the vacuum and the cluster median")
    weight = np.exp(y[gain])
    grid = np.linspace(*STRETCH_RANGE, STRETCH_STEPS)
    cost = np.full(grid.size, np.inf)
    for i, s in enumerate(grid):
        v = stretched(e, log_vacuum, s)[gain]
        ok = v > 0
        if ok.sum() < gain.sum():
            continue
        d = y[gain] - np.log(v)
        offset = (weight * d).sum() / weight.sum()
        cost[i] = (weight * (d - offset) ** 2).sum()
    k = int(np.argmin(cost))
    if not np.isfinite(cost[k]):
        raise ValueError("no stretch of the vacuum ZLP covers the cluster's gain side")
    if 0 < k < grid.size - 1 and np.isfinite(cost[k - 1]) and np.isfinite(cost[k + 1]):
        c0, c1, c2 = cost[k - 1:k + 2]
        curvature = c0 - 2 * c1 + c2
        if curvature > 0:
            return float(grid[k] + 0.5 * (c0 - c2) / curvature * (grid[1] - grid[0]))
    return float(grid[k])


def vacuum_amplitude(signal, energy, zlp, low, high) -> np.ndarray:
    """Per-pixel scale of a ZLP template: counts of the signal over those of the template on
    low <= E < high (per pixel). (P,) float64; NaN where the template has no counts there.

    subtract_vacuum uses [dE_0, dE_I): the ZLP's own tail just below the onset region, which
    the method declares pure ZLP. Scaling on the tail rather than the peak makes the
    extrapolation past dE_I depend only on the template's tail shape (for a power-law tail
    the ratio of two tail points does not depend on the stretch at all); ~10^5-10^6 counts
    there set the scale to ~0.1%.
    """
    signal = np.asarray(signal, float)
    e = np.asarray(energy, float)
    inside = ((e[None, :] >= np.asarray(low, float).reshape(-1, 1))
              & (e[None, :] < np.asarray(high, float).reshape(-1, 1)))
    num = np.where(inside, signal, 0.0).sum(axis=1)
    den = np.where(inside, np.asarray(zlp, float), 0.0).sum(axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def subtract_vacuum(signal, energy, zlp, relative_error, quantiles, fwhm, de_i, de_ii) -> np.ndarray:
    """Inelastic quantiles (Q, P, E) with a measured ZLP template instead of the network.

    zlp (P, E): each pixel's template (its cluster's stretched vacuum ZLP, counts); it is
    scaled per pixel (vacuum_amplitude on [dE_0, dE_I)) and matched exactly as the model is
    (match_zlp). relative_error (P, E): the template's relative standard error (the vacuum
    median's); quantile q of the inelastic signal takes the ZLP at its (1 - q) level,
    amplitude x (1 - z_q relative_error) with z_q the normal quantile: the same convention as
    the replica bands (I - ZLP decreases with the ZLP).
    """
    from scipy.special import ndtri

    signal = _check_signal(signal, energy)
    p = signal.shape[0]
    fwhm, de_i, de_ii = (np.broadcast_to(np.asarray(v, np.float32), (p,)) for v in (fwhm, de_i, de_ii))
    win = _window(energy, fwhm, de_i, de_ii)
    e = np.asarray(energy, float)
    amplitude = vacuum_amplitude(signal, e, zlp, (fwhm + de_i) / 2, de_i)
    base = np.asarray(zlp, float) * amplitude[:, None]
    z = ndtri(np.asarray(quantiles, float))
    out = np.empty((z.size, p, win.stop - win.start), np.float32)
    s = signal[:, win]
    for k, zq in enumerate(z):
        model = (base * (1.0 - zq * np.asarray(relative_error, float)))[:, win]
        out[k] = s - match_zlp(s, np.nan_to_num(model), e[win], fwhm, de_i, de_ii)
    return _assemble(signal, win, out, z.size)
