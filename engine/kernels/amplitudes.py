"""Amplitude regression with honest uncertainties: an analytic truth, a heteroscedastic deep ensemble.

Truth: tree-level e+ e- -> mu+ mu- through a photon and a Z, massless fermions, spin-averaged.
With helicity amplitudes (e- helicity i, mu- helicity j, i, j in {L, R}) the result is

    |M|^2 = e^4 / 4 [ (1 + c)^2 (|f_LL|^2 + |f_RR|^2) + (1 - c)^2 (|f_LR|^2 + |f_RL|^2) ],
    f_ij = Q_e Q_mu + g_i g_j / (sin^2 w cos^2 w) * s / (s - mZ^2 + i mZ GammaZ),

with c = cos(theta) the angle between e- and mu-, e^2 = 4 pi alpha, g_L = -1/2 + sin^2 w,
g_R = sin^2 w (the same for e and mu), Q_e = Q_mu = -1. Without the Z it is e^4 (1 + c^2), and
dsigma/dOmega = |M|^2 / (64 pi^2 s). Constants (PDG 2024): alpha(mZ) = 1/128.95 (running coupling
at the Z, the usual tree-level choice there), mZ = 91.1876 GeV, GammaZ = 2.4952 GeV,
sin^2 w = 0.23122 (effective leptonic angle). The tests check the QED limit, the
forward-backward asymmetry, the Z-peak cross section 12 pi Gamma_ee Gamma_mumu / (mZ^2 GammaZ^2)
and an independent vector/axial form of the same amplitude.

Regression: each replica is a network x -> (mu, s) for the standardised log amplitude
t = (ln |M|^2 - m) / k, trained on the Gaussian negative log-likelihood
0.5 [(t - mu)^2 exp(-s) + s] (s = ln sigma^2), each on its own training/validation split and from
its own initialisation (a deep ensemble, Lakshminarayanan et al. 2017). The amplitude is exact,
so the learned sigma is not label noise: it is the network's local misfit, what Bahl et al.
(arXiv:2412.12069) call the systematic uncertainty; the ensemble spread adds the part that
depends on the initialisation and the split. Predicted sigma^2 = mean_r sigma_r^2 + var_r mu_r.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .mlp import EnsembleMLP, resolve_device
from .regression import RegressionConfig, feature_range, scale_features
from .train import Progress, TrainResult, train_with_config

Tensor = torch.Tensor


@dataclass(frozen=True)
class ElectroweakConstants:
    alpha: float = 1 / 128.95
    mz: float = 91.1876
    gamma_z: float = 2.4952
    sin2w: float = 0.23122


def ee_mumu_msq(sqrt_s: np.ndarray, cos_theta: np.ndarray,
                constants: ElectroweakConstants = ElectroweakConstants()) -> np.ndarray:
    """Spin-averaged |M|^2 of e+e- -> mu+mu- (photon + Z, tree level, massless); dimensionless."""
    sqrt_s, c = np.asarray(sqrt_s, float), np.asarray(cos_theta, float)
    if np.any(sqrt_s <= 0) or np.any(np.abs(c) > 1):
        raise ValueError("sqrt_s must be > 0 GeV and cos_theta within [-1, 1]")
    k = constants
    s = sqrt_s**2
    chi = s / (s - k.mz**2 + 1j * k.mz * k.gamma_z) / (k.sin2w * (1 - k.sin2w))
    g = {"L": -0.5 + k.sin2w, "R": k.sin2w}
    f = {i + j: 1.0 + g[i] * g[j] * chi for i in "LR" for j in "LR"}  # Q_e Q_mu = +1
    e4 = (4 * math.pi * k.alpha) ** 2
    same = np.abs(f["LL"]) ** 2 + np.abs(f["RR"]) ** 2
    opposite = np.abs(f["LR"]) ** 2 + np.abs(f["RL"]) ** 2
    return e4 / 4 * ((1 + c) ** 2 * same + (1 - c) ** 2 * opposite)


def sample_phase_space(n: int, sqrt_s_range: tuple[float, float], seed: int, block: int = 0) -> dict:
    """n points uniform in sqrt(s) and cos(theta), with |M|^2; block b of a sample draws from its own
    generator keyed by (seed, b), so a chunk is the same whichever worker draws it."""
    low, high = sqrt_s_range
    if not 0 < low < high:
        raise ValueError(f"sqrt_s_range must be (low, high) with 0 < low < high GeV, got {sqrt_s_range}")
    rng = np.random.default_rng([seed, block])
    sqrt_s = rng.uniform(low, high, n)
    cos_theta = rng.uniform(-1.0, 1.0, n)
    return {"sqrt_s": sqrt_s, "cos_theta": cos_theta, "msq": ee_mumu_msq(sqrt_s, cos_theta)}


# -- heteroscedastic ensemble ------------------------------------------------------------------
class GaussianNLLLoss:
    """A train_ensemble loss_fn: per-replica mean Gaussian NLL of targets (n,) under (mu, ln sigma^2).

    train_mask (R, n) gives each replica its own training points; the rest validate (full NLL).
    `beta` > 0 weights each point's training loss by sigma^(2 beta) (not differentiated; beta-NLL,
    Seitzer et al. 2022): plain NLL (beta = 0) lets a large sigma excuse a poor mean where the
    fit is hard, and the mean then stops improving there; the weighting leaves each point's
    optimal sigma unchanged. Minibatches (`batch_size`) are drawn per step from (seed, epoch).
    """

    def __init__(self, x: np.ndarray, target: np.ndarray, train_mask: np.ndarray, *, beta: float = 0.5,
                 batch_size: int | None = None, seed: int = 0, device="cpu", dtype=torch.float32):
        mask = np.asarray(train_mask, bool)
        counts = mask.sum(1)
        if counts.min() != counts.max() or counts[0] == 0 or counts[0] == mask.shape[1]:
            raise ValueError("every replica needs the same number of training points and some "
                             f"validation points; got {counts.min()}..{counts.max()} of {mask.shape[1]}")
        order = np.argsort(~mask, axis=1, kind="stable")
        as_t = lambda a, t=dtype: torch.as_tensor(a, dtype=t, device=device)  # noqa: E731
        self.x, self.target = as_t(x), as_t(target)
        self.train_idx = as_t(order[:, : counts[0]], torch.int64)
        self.val_idx = as_t(order[:, counts[0]:], torch.int64)
        self.beta, self.batch_size, self.seed, self.epoch = beta, batch_size, seed, 0

    @staticmethod
    def nll(mu: Tensor, log_var: Tensor, target: Tensor) -> Tensor:
        return 0.5 * ((target - mu).pow(2) * torch.exp(-log_var) + log_var + math.log(2 * math.pi))

    def _loss(self, model: EnsembleMLP, idx: Tensor, beta: float) -> Tensor:
        out = model(self.x[idx])  # (R, m, in): each replica its own points
        mu, log_var = out[..., 0], out[..., 1]
        loss = self.nll(mu, log_var, self.target[idx])
        if beta:
            loss = loss * torch.exp(beta * log_var.detach())
        return loss.mean(-1)

    def __call__(self, model: EnsembleMLP, validate: bool):
        idx = self.train_idx
        if self.batch_size and self.batch_size < idx.shape[1]:
            pick = np.random.default_rng([self.seed, self.epoch]).integers(0, idx.shape[1], self.batch_size)
            idx = idx[:, torch.as_tensor(pick, device=idx.device)]
        train = self._loss(model, idx, self.beta)
        if not validate:
            return train, None
        with torch.no_grad():
            return train, self._loss(model, self.val_idx, 0.0)


@dataclass(frozen=True)
class TargetScale:
    """t = (ln y - mean) / std: the network's target from a positive amplitude y."""

    mean: float
    std: float

    @classmethod
    def fit(cls, y: np.ndarray) -> TargetScale:
        logs = np.log(y)
        return cls(float(logs.mean()), float(logs.std() or 1.0))

    def __call__(self, y: np.ndarray) -> np.ndarray:
        return (np.log(y) - self.mean) / self.std


def fit_amplitude(features: np.ndarray, amplitude: np.ndarray, train_mask: np.ndarray,
                  config: RegressionConfig, *, beta: float = 0.5, batch_size: int | None = None,
                  progress: Callable[[Progress], None] | None = None,
                  on_checkpoint: Callable | None = None,
                  resume_from: Mapping[str, np.ndarray] | None = None):
    """Train R = len(train_mask) heteroscedastic networks on ln |M|^2; returns (result, low, high,
    target scale)."""
    torch.set_num_threads(1)
    features = np.asarray(features, float).reshape(len(features), -1)
    amplitude = np.asarray(amplitude, float)
    if not np.all(amplitude > 0) or not np.all(np.isfinite(amplitude)):
        raise ValueError("amplitudes must be positive and finite (the network learns their logarithm)")
    low, high = feature_range(features)
    scale = TargetScale.fit(amplitude)
    device = resolve_device(config.device)
    model = EnsembleMLP(len(train_mask), [features.shape[1], *config.hidden, 2], list(config.activations),
                        seed=config.seed, device=device)
    loss = GaussianNLLLoss(scale_features(features, low, high), scale(amplitude), train_mask, beta=beta,
                           batch_size=batch_size, seed=config.seed, device=device)
    result = train_with_config(model, loss, config, progress=progress, on_checkpoint=on_checkpoint,
                               resume_from=resume_from)
    return result, low, high, scale


def predict_amplitude(arrays: Mapping[str, np.ndarray], architecture: Mapping, features: np.ndarray,
                      low: np.ndarray, high: np.ndarray, scale: TargetScale, kept: np.ndarray | None = None,
                      device: str = "cpu") -> dict[str, np.ndarray]:
    """Ensemble prediction of ln |M|^2 at features (n, f): mean, sigma (total), sigma_aleatoric
    (the networks' own sigma, rms over replicas), sigma_ensemble (spread of the means); natural-log
    units of the amplitude, so sigma is a relative uncertainty of |M|^2."""
    torch.set_num_threads(1)
    features = np.asarray(features, float).reshape(len(features), -1)
    model = EnsembleMLP.from_arrays(arrays, architecture, device=resolve_device(device))
    x = torch.as_tensor(scale_features(features, low, high), dtype=model.dtype, device=model.device)
    with torch.no_grad():
        out = model(x).cpu().numpy().astype(np.float64)
    if kept is not None:
        out = out[np.asarray(kept, bool)]
    mu = out[..., 0] * scale.std + scale.mean
    var = np.exp(out[..., 1]) * scale.std**2
    aleatoric2 = var.mean(0)
    ensemble2 = mu.var(0, ddof=1) if mu.shape[0] > 1 else np.zeros(mu.shape[1])
    return {"log_mean": mu.mean(0), "sigma": np.sqrt(aleatoric2 + ensemble2),
            "sigma_aleatoric": np.sqrt(aleatoric2), "sigma_ensemble": np.sqrt(ensemble2)}


def precision_summary(log_pred: np.ndarray, sigma: np.ndarray, truth: np.ndarray,
                      tail_fraction: float = 0.05,
                      percentiles: tuple[float, ...] = (50.0, 90.0, 99.0)) -> dict[str, np.ndarray]:
    """Pulls and precision of a prediction of ln |M|^2 against the true |M|^2 (n,).

    Pull = (ln pred - ln truth) / sigma. Bulk: points whose true |M|^2 lies between the
    `tail_fraction` and 1 - `tail_fraction` quantiles of the sample; tails: the rest (the Z peak's
    top and the amplitude's smallest values, where a network has fewest comparable points).
    Relative error |pred / truth - 1| percentiles over all points.
    """
    truth = np.asarray(truth, float)
    pulls = (np.asarray(log_pred) - np.log(truth)) / np.asarray(sigma)
    lo, hi = np.quantile(truth, [tail_fraction, 1 - tail_fraction])
    bulk = (truth >= lo) & (truth <= hi)
    rel = np.abs(np.exp(np.asarray(log_pred) - np.log(truth)) - 1)
    return {"pulls": pulls, "bulk": bulk,
            "rms_pull_bulk": float(np.sqrt(np.mean(pulls[bulk] ** 2))),
            "rms_pull_tails": float(np.sqrt(np.mean(pulls[~bulk] ** 2))),
            "relative_error_percentiles": np.percentile(rel, percentiles)}
