"""EELSfitter v1 (Roest et al., Ultramicroscopy 222 (2021) 113202) as a preset, in plain arrays.

Why a preset of the 2021 method: its WS2 band gap, E_BG = 1.6 eV, is the published anchor our
own chain is compared with, and that number is a product of the method's choices as much as of
the data. Written from reading `EELSFitter_v1/` (its notebooks), our own code; the choices:

- Each spectrum is shifted by whole channels so its maximum sits at 0 eV (no subpixel shift).
- dE_I is set by hand (1.88 eV for WS2); dE_II (12 eV) only places the pseudo-points.
- Targets: the ln I of every training spectrum between -0.5 eV and dE_I, pooled and cut into 30
  equal-width bins (pandas `cut` edges); target = the bin's mean, error = the bin's population
  standard deviation, which mixes the spectrum-to-spectrum spread with the slope of ln I across
  the bin. Each bin is labelled at linspace(min, max, n_bins), not at its centre: the labels drift
  from the centres by up to half a bin width (`binned_targets`).
- 20 pseudo-points ln I = 0.5 +- 0.08 on dE_II ... 16 eV: the ZLP is "gone" there.
- A 1-D network (E only, unscaled) 1-10-15-5-1, sigmoid, sigmoid, ReLU, linear; one replica per
  Gaussian fluctuation of the targets, 80/20 split per replica, RMSprop lr 6e-3, 25k epochs, the
  epoch (on a 1000-epoch cadence) with the lowest validation chi2; replicas with training chi2
  < 3 kept. Trained here batched through the replica core (kernels.train), not one by one.
- The network reaches the channels through v1's prediction grid, bin-averaged onto them
  (`model_on_channels`), not evaluated at the channel energies.
- Matching: the data below dE_0 = dE_I - 0.5 eV, a Gaussian blend w = exp(-(E - dE_I)^2 /
  ((dE_I - dE_0) / 3)^2) of model and data up to dE_I, the model above, zero from 3 dE_II on;
  no cap at the signal. The subtracted spectrum I - ZLP is clipped at zero per replica.
- Band gap: the replica mean of the clipped difference, smoothed by a 4-point Hanning window (in
  effect the mean of each channel and the one below it); `curve_fit` of A (E - E_BG)^b with b free
  on 0 < E < 2.5 eV where that mean is >= 20 counts, start (100, 0, 0.5), bounds A in [0, 1e5],
  E_BG in [0, 40], b in [0, 10]. Where E_BG passes the first fitted point the model is NaN
  there and the optimiser rejects the step, so E_BG can approach the first fitted point but never
  pass it (`fit_onset`): when the data rise more steeply than a power law from E_BG below it
  allows, the fit ends on that point, and the result is where the >= 20-count cut falls.

Checked against v1's own networks (the predictions of its 100 replicas stored in
`EELSFitter_v1/Data/Results/07.09.2020`, 55 of them passing chi2 < 3, as in v1): through this
module's subtraction and fit they give specimen 14's E_BG = 1.600 eV and b = 1.635 (3.51 and
1.26 on the 16% and 84% curves), where v1 printed 1.59999988 eV and b = 1.634 (3.475, 1.242).
What differs is the training: TF1's RMSProp starts its mean square at 1 (here 0), its
Glorot-uniform initial weights are Glorot-normal here, and the last epoch is a candidate beside
the 1000-epoch checkpoints. Every spectrum's I - ZLP is clipped at zero (v1 clipped the one it
fitted, specimen 14).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The preset's settings, as published (EELSFitter_v1/fitter.ipynb, predictions.ipynb).
SIZES = (1, 10, 15, 5, 1)
ACTIVATIONS = ("sigmoid", "sigmoid", "relu", "linear")
TRAIN_LOW_EV = -0.5  # training window starts just left of the peak (exclusive)
N_BINS = 30
PSEUDO_VALUE, PSEUDO_SIGMA, PSEUDO_END_EV, N_PSEUDO = 0.5, 0.08, 16.0, 20
BLEND_WIDTH_EV = 0.5  # dE_0 = dE_I - 0.5 eV
BLEND_SIGMAS = 3.0  # Gaussian blend width (dE_I - dE_0) / 3
ZERO_FROM_DE_II = 3.0  # the model is used up to 3 dE_II, zero beyond
CHI2_KEEP = 3.0
FIT_MIN_COUNTS = 20.0
FIT_WINDOW_EV = (0.0, 2.5)
FIT_START = (100.0, 0.0, 0.5)
FIT_BOUNDS = ((0.0, 0.0, 0.0), (1e5, 40.0, 10.0))
SMOOTH_WINDOW = 4
PREDICT_LOW_EV, PREDICT_POINTS = -0.5, 1000  # v1's prediction grid, linspace(-0.5, 20, 1000)
CHANNEL_WINDOW_EV = (-0.3, 20.0)  # v1's analysis window; the grid is binned onto its channels
PIXELS_PER_PASS = 16  # subtract_and_fit holds (R, this, E) curves at a time
QUANTILE_LEVELS = (0.16, 0.84)


def peak_shifted_energy(spectra: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """(P, E) energy axes with each spectrum's maximum channel at 0 eV (whole-channel shifts)."""
    spectra = np.asarray(spectra, float)
    energy = np.asarray(energy, float)
    if spectra.ndim != 2 or spectra.shape[1] != energy.size:
        raise ValueError(f"spectra must be (P, {energy.size}), got {spectra.shape}")
    if not np.all(np.isfinite(spectra)):
        raise ValueError("spectra contain NaN or infinite counts")
    peak = np.argmax(spectra, axis=1)
    return energy[None, :] - energy[peak][:, None]


def _bin_index(x: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of every x among n_bins equal-width bins over [min x, max x], as v1 bins: pandas
    `cut` edges (the first lowered by 0.1% of the range), scipy `binned_statistic` assignment
    (a value on an inner edge goes to the bin above, the last bin is closed)."""
    lo, hi = x.min(), x.max()
    edges = np.linspace(lo, hi, n_bins + 1)
    edges[0] -= 0.001 * (hi - lo)
    return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)


def binned_targets(x: np.ndarray, y: np.ndarray, n_bins: int = N_BINS):
    """(labels, mean, std) of y in n_bins equal-width bins of x, as EELSfitter v1 bins.

    Edges: linspace(min x, max x, n_bins + 1) with the first edge lowered by 0.1% of the range
    (pandas `cut`); a value on an inner edge goes to the bin above, the last bin is closed
    (scipy `binned_statistic`). std is the population standard deviation (ddof 0). Labels are
    linspace(min x, max x, n_bins): v1 plots and fits each bin there, not at its centre. A bin
    with fewer than 2 values has no spread to serve as an error: ValueError.
    """
    x = np.asarray(x, float).ravel()
    y = np.asarray(y, float).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"x and y must be equally long and non-empty, got {x.shape}, {y.shape}")
    if n_bins < 1 or not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        raise ValueError("need n_bins >= 1 and finite x, y")
    lo, hi = x.min(), x.max()
    if not hi > lo:
        raise ValueError(f"x spans no range ({lo} .. {hi}); cannot bin")
    index = _bin_index(x, n_bins)
    count = np.bincount(index, minlength=n_bins)
    if count.min() < 2:
        empty = np.flatnonzero(count < 2).tolist()
        raise ValueError(
            f"bins {empty} of {n_bins} hold fewer than 2 values (counts "
            f"{count[count < 2].tolist()}): too few channels below dE_I for "
            f"{n_bins} bins"
        )
    mean = np.bincount(index, weights=y, minlength=n_bins) / count
    std = np.sqrt(np.bincount(index, weights=(y - mean[index]) ** 2, minlength=n_bins) / count)
    if not np.all(std > 0):
        raise ValueError(
            f"bins {np.flatnonzero(std == 0).tolist()} have zero spread: "
            "identical values cannot give an error"
        )
    return np.linspace(lo, hi, n_bins), mean, std


def pseudo_points(de_ii: float, end_ev: float = PSEUDO_END_EV, n: int = N_PSEUDO):
    """(x, y, sigma) of the pseudo-points ln I = 0.5 +- 0.08 on dE_II ... end_ev."""
    if not end_ev > de_ii or n < 1:
        raise ValueError(f"pseudo-points need dE_II < {end_ev} eV and n >= 1, got dE_II = {de_ii}")
    return (np.linspace(de_ii, end_ev, n), np.full(n, PSEUDO_VALUE), np.full(n, PSEUDO_SIGMA))


@dataclass
class V1TrainingSet:
    """The preset's targets (n,): binned ln I below dE_I, then the pseudo-points."""

    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    n_binned: int


def training_set(
    spectra: np.ndarray,
    energy: np.ndarray,
    de_i: float,
    de_ii: float,
    n_bins: int = N_BINS,
    n_pseudo: int = N_PSEUDO,
) -> V1TrainingSet:
    """Targets from the training spectra (P, E) counts: every channel with -0.5 < E < dE_I of
    every peak-shifted spectrum, ln I binned (`binned_targets`), then the pseudo-points.

    v1 also drops points sharing an energy; with dE_I < dE_II the bin labels (below dE_I) and
    the pseudo-points (from dE_II) never coincide, so there is nothing to drop and the set always
    has n_bins + n_pseudo points.
    """
    if not TRAIN_LOW_EV < de_i < de_ii:
        raise ValueError(f"need {TRAIN_LOW_EV} < dE_I < dE_II, got dE_I = {de_i}, dE_II = {de_ii}")
    shifted = peak_shifted_energy(spectra, energy)
    counts = np.asarray(spectra, float)
    inside = (shifted > TRAIN_LOW_EV) & (shifted < de_i)
    if np.any(counts[inside] <= 0):
        raise ValueError(
            f"spectra have zero or negative counts between {TRAIN_LOW_EV} eV and "
            f"dE_I = {de_i} eV: ln I is undefined there"
        )
    labels, mean, std = binned_targets(shifted[inside], np.log(counts[inside]), n_bins)
    px, py, ps = pseudo_points(de_ii, n=n_pseudo)
    return V1TrainingSet(x=np.r_[labels, px], y=np.r_[mean, py], sigma=np.r_[std, ps], n_binned=labels.size)


def train(
    ts: V1TrainingSet,
    n_replicas: int,
    *,
    epochs: int = 25000,
    lr: float = 6e-3,
    validation_every: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    progress=None,
    checkpoint_every: int | None = None,
    on_checkpoint=None,
    resume_from=None,
):
    """The v1 ensemble, all replicas at once (a kernels.train.TrainResult; `kept_by_chi2`
    applies v1's selection to its best_train).

    Replica k's targets are y + N(0, sigma) (replicas.draw_replicas, keyed by (seed, k)); its
    own random 80/20 split (replicas.training_masks); no early stopping (patience beyond the last
    epoch, no stagnation check): the kept weights are those of the check epoch with the lowest
    validation chi2, as v1 restores its best 1000-epoch checkpoint.
    """
    import torch

    from .mlp import EnsembleMLP, resolve_device
    from .optim import OptimiserConfig
    from .replicas import draw_replicas, training_masks
    from .train import Chi2Loss, StoppingConfig, train_ensemble

    torch.set_num_threads(1)
    n = ts.x.size
    data = draw_replicas(ts.y, np.diag(ts.sigma**2), None, n_replicas, seed)
    mask = training_masks(n, np.zeros(n, int), n_replicas, 0.8, seed)
    dev = resolve_device(device)
    model = EnsembleMLP(n_replicas, list(SIZES), list(ACTIVATIONS), seed=seed, device=dev)
    x = torch.as_tensor(ts.x[:, None], dtype=torch.float32, device=dev)
    loss = Chi2Loss(lambda m: m(x)[..., 0], data, np.diag(ts.sigma**2), mask, device=dev)
    stopping = StoppingConfig(
        threshold=np.inf, patience=epochs + validation_every, stagnation_epochs=None, outlier_sigma=1e9
    )
    return train_ensemble(
        model,
        loss,
        epochs,
        optimiser=OptimiserConfig(name="rmsprop", lr=lr, rho=0.9, eps=1e-10),
        stopping=stopping,
        validation_every=validation_every,
        progress=progress,
        checkpoint_every=checkpoint_every,
        on_checkpoint=on_checkpoint,
        resume_from=resume_from,
    )


def kept_by_chi2(best_train: np.ndarray, threshold: float = CHI2_KEEP) -> np.ndarray:
    """v1's post-fit selection: training chi2/n (at the chosen epoch) below 3."""
    best = np.asarray(best_train, float)
    return np.isfinite(best) & (best < threshold)


def evaluate(arrays, architecture, energy: np.ndarray, device: str = "cpu") -> np.ndarray:
    """(R, ...) model ln I_ZLP of every replica at `energy` (any shape), float64."""
    import torch

    from .mlp import EnsembleMLP, resolve_device

    torch.set_num_threads(1)
    model = EnsembleMLP.from_arrays(arrays, architecture, device=resolve_device(device))
    e = np.asarray(energy, float)
    xt = torch.as_tensor(e.reshape(-1, 1), dtype=torch.float32, device=model.device)
    with torch.no_grad():
        out = model(xt)[..., 0]
    return out.cpu().numpy().astype(float).reshape(model.n_replicas, *e.shape)


def model_on_channels(ln_zlp_at, shifted: np.ndarray, predict_points: int = PREDICT_POINTS):
    """(R, p, E) model ln I_ZLP on each spectrum's channels, by v1's route from network to
    channels: the network on linspace(-0.5, 20, predict_points) (v1's prediction grid), the
    points in [-0.3, 20] eV bin-averaged into as many equal bins as the spectrum has channels
    there, bin j given to the j-th of those channels. The bins do not sit on the channels: the
    model is read up to ~0.02 eV above each channel, with a jitter where bins hold 1 or 2 grid
    points. Outside [-0.3, 20] eV (and in a bin no grid point falls in) the network is evaluated
    at the channel itself. ln_zlp_at(energies (n,) or (p, E)) -> (R, ...) ln I_ZLP.
    """
    shifted = np.asarray(shifted, float)
    if predict_points < 2:
        raise ValueError(f"predict_points must be >= 2, got {predict_points}")
    grid = np.linspace(PREDICT_LOW_EV, CHANNEL_WINDOW_EV[1], predict_points)
    grid = grid[(grid >= CHANNEL_WINDOW_EV[0]) & (grid <= CHANNEL_WINDOW_EV[1])]
    on_grid = ln_zlp_at(grid)  # (R, m)
    out = ln_zlp_at(shifted)  # (R, p, E)
    tol = 1e-9
    for i, row in enumerate(shifted):
        channels = np.flatnonzero((row >= CHANNEL_WINDOW_EV[0] - tol) & (row <= CHANNEL_WINDOW_EV[1] + tol))
        if channels.size < 2 or grid.size < 2:
            continue
        index = _bin_index(grid, channels.size)
        count = np.bincount(index, minlength=channels.size)
        sums = np.stack([np.bincount(index, weights=r, minlength=channels.size) for r in on_grid])
        filled = count > 0
        out[:, i, channels[filled]] = sums[:, filled] / count[filled]
    return out


def match(signal, model_zlp, energy, de_i: float, de_ii: float) -> np.ndarray:
    """v1's matched ZLP (..., E): signal below dE_0 = dE_I - 0.5, Gaussian blend to dE_I, model
    up to 3 dE_II, zero beyond. energy broadcasts to signal (per-spectrum shifted axes)."""
    signal = np.asarray(signal, float)
    model_zlp = np.asarray(model_zlp, float)
    e = np.asarray(energy, float)
    de_0 = de_i - BLEND_WIDTH_EV
    delta = (de_i - de_0) / BLEND_SIGMAS
    w = np.exp(-((e - de_i) ** 2) / delta**2)
    blended = w * model_zlp + (1.0 - w) * signal
    return np.where(
        e < de_0, signal, np.where(e < de_i, blended, np.where(e < ZERO_FROM_DE_II * de_ii, model_zlp, 0.0))
    )


def smooth(values: np.ndarray, window: int = SMOOTH_WINDOW) -> np.ndarray:
    """v1's `smooth` along the last axis: a Hanning window over reflected ends, cut back to the
    input length with v1's offset. For window 4 this is (v[i - 1] + v[i]) / 2 ((v[0] + v[1]) / 2
    at the start): half a channel's shift towards lower energy. Even windows only (v1's cut gives
    one point too many for odd ones)."""
    v = np.asarray(values, float)
    if window < 2 or window % 2:
        raise ValueError(f"smooth window must be even and >= 2, got {window}")
    if v.shape[-1] < window:
        raise ValueError(f"need at least {window} channels to smooth, got {v.shape[-1]}")
    padded = np.concatenate([v[..., window - 1 : 0 : -1], v, v[..., -2 : -window - 1 : -1]], axis=-1)
    w = np.hanning(window)
    w = w / w.sum()
    full = np.apply_along_axis(lambda row: np.convolve(w, row, mode="valid"), -1, padded)
    return full[..., window // 2 - 1 : full.shape[-1] - window // 2]


def replica_stats(difference: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, median and v1's 16/84% values over replicas (axis 0) of I - ZLP clipped at zero,
    each smoothed along energy. v1's 16/84% are single sorted values, at int(0.16 R), int(0.84 R)."""
    d = np.sort(np.maximum(np.asarray(difference, float), 0.0), axis=0)
    r = d.shape[0]
    low, high = (int(q * r) for q in QUANTILE_LEVELS)
    return {
        "mean": smooth(d.mean(axis=0)),
        "median": smooth(np.median(d, axis=0)),
        "low": smooth(d[low]),
        "high": smooth(d[min(high, r - 1)]),
    }


def onset_model(e, amplitude, e_bg, b):
    """A (E - E_BG)^b; NaN where E < E_BG (a negative base to a fractional power), as in v1."""
    with np.errstate(invalid="ignore"):
        return amplitude * np.power(e - e_bg, b)


@dataclass
class OnsetFit:
    """One curve's fit: NaN parameters and n_points 0 when fewer than 3 points qualify."""

    amplitude: float
    e_bg: float
    b: float
    first_point: float
    n_points: int


def fit_points(energy: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Channels v1 fits: 0 < E < 2.5 eV with the (smoothed) replica mean >= 20 counts."""
    e = np.asarray(energy, float)
    m = np.asarray(mean, float)
    return (e > FIT_WINDOW_EV[0]) & (e < FIT_WINDOW_EV[1]) & np.isfinite(m) & (m >= FIT_MIN_COUNTS)


def fit_onset(energy: np.ndarray, values: np.ndarray, points: np.ndarray) -> OnsetFit:
    """v1's `curve_fit` of A (E - E_BG)^b on the chosen points (trust-region reflective, since
    bounds are given). Its rule, kept: E_BG never passes the first fitted point (in v1 a trial
    E_BG above it makes the model NaN there and the optimiser rejects the step)."""
    from scipy.optimize import least_squares

    e = np.asarray(energy, float)[points]
    v = np.asarray(values, float)[points]
    if e.size < 3 or not np.all(np.isfinite(v)):
        return OnsetFit(np.nan, np.nan, np.nan, float(e[0]) if e.size else np.nan, int(e.size))
    # curve_fit's own call (trust-region reflective, 2-point Jacobian). v1's NaN wall becomes an
    # explicit upper bound at the first point: the same constraint, but a finite-difference
    # Jacobian taken just below the wall can no longer step across it into NaN (current scipy
    # then fails where v1's 2020 scipy happened not to).
    low, high = np.array(FIT_BOUNDS[0]), np.array(FIT_BOUNDS[1])
    high[1] = min(high[1], e[0])
    start = np.clip(FIT_START, low, high)
    fit = least_squares(
        lambda p: onset_model(e, *p) - v,
        start,
        jac="2-point",
        bounds=(low, high),
        method="trf",
        max_nfev=10000,
    )
    pars = fit.x if fit.status > 0 else np.full(3, np.nan)
    return OnsetFit(float(pars[0]), float(pars[1]), float(pars[2]), float(e[0]), int(e.size))


def subtract_and_fit(
    signal: np.ndarray,
    energy: np.ndarray,
    ln_zlp_at,
    de_i: float,
    de_ii: float,
    predict_points: int = PREDICT_POINTS,
    pixels_per_pass: int = PIXELS_PER_PASS,
) -> dict[str, np.ndarray]:
    """ZLP subtraction and band-gap fits of spectra (P, E) with the kept replicas' model.

    ln_zlp_at(energies) -> (R, ...) ln I_ZLP, the network; it reaches the channels through
    `model_on_channels` (v1's prediction grid of predict_points), on passes of pixels_per_pass
    spectra (memory R x pass x E). Returns per spectrum the smoothed replica
    statistics of the clipped I - ZLP (mean, median, low, high: (P, E), on the spectrum's own
    channels) and the onset fits of the mean, low and high curves over the points the mean
    selects: e_bg, b, amplitude (P, 3) in that order, first_point and n_points (P,).
    """
    signal = np.asarray(signal, float)
    shifted = peak_shifted_energy(signal, energy)
    p = signal.shape[0]
    stats = {k: np.empty_like(signal) for k in ("mean", "median", "low", "high")}
    for lo in range(0, p, pixels_per_pass):
        sl = slice(lo, lo + pixels_per_pass)
        model = np.exp(model_on_channels(ln_zlp_at, shifted[sl], predict_points))
        zlp = match(signal[None, sl], model, shifted[None, sl], de_i, de_ii)
        for k, v in replica_stats(signal[None, sl] - zlp).items():
            stats[k][sl] = v
    out = {k: np.full((p, 3), np.nan) for k in ("e_bg", "b", "amplitude")}
    out["first_point"] = np.full(p, np.nan)
    out["n_points"] = np.zeros(p, np.int64)
    for i in range(p):
        chosen = fit_points(shifted[i], stats["mean"][i])
        for j, curve in enumerate(("mean", "low", "high")):
            fit = fit_onset(shifted[i], stats[curve][i], chosen)
            out["e_bg"][i, j], out["b"][i, j], out["amplitude"][i, j] = fit.e_bg, fit.b, fit.amplitude
        out["first_point"][i], out["n_points"][i] = fit.first_point, fit.n_points
    return {**stats, **out}


def on_common_axis(values: np.ndarray, signal: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Per-spectrum curves (P, E) on their own peak-shifted channels, moved by whole channels so
    that every spectrum's peak lands on the channel of `energy` nearest 0 eV; NaN where a
    spectrum has no channel. The labels are then off by that channel's energy (< half a channel)."""
    values = np.asarray(values, float)
    peak = np.argmax(np.asarray(signal), axis=1)
    zero = int(np.argmin(np.abs(np.asarray(energy, float))))
    source = np.arange(values.shape[1])[None, :] + (peak - zero)[:, None]
    inside = (source >= 0) & (source < values.shape[1])
    picked = np.take_along_axis(values, np.clip(source, 0, values.shape[1] - 1), axis=1)
    return np.where(inside, picked, np.nan)


def kept_arrays(weights: dict[str, np.ndarray], kept: Sequence[bool]) -> dict[str, np.ndarray]:
    """The weights of the kept replicas only (what subtraction uses)."""
    kept = np.asarray(kept, bool)
    if not kept.any():
        raise ValueError(
            "no replica of the EELSfitter v1 ensemble passed its chi2 selection "
            "(v1: training chi2/n < 3); train longer or raise chi2_keep"
        )
    return {name: np.asarray(value)[kept] for name, value in weights.items()}
