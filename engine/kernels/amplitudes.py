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
depends on the initialisation and the split. Predicted sigma = k sqrt(mean_r sigma_r^2 + var_r mu_r),
k fitted on held-out points (see fit_amplitude for why).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .mlp import EnsembleMLP, resolve_device
from .regression import RegressionConfig, feature_range, scale_features
from .train import Progress, train_with_config

Tensor = torch.Tensor


@dataclass(frozen=True)
class ElectroweakConstants:
    alpha: float = 1 / 128.95
    mz: float = 91.1876
    gamma_z: float = 2.4952
    sin2w: float = 0.23122


def ee_mumu_msq(
    sqrt_s: np.ndarray, cos_theta: np.ndarray, constants: ElectroweakConstants = ElectroweakConstants()
) -> np.ndarray:
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


def breit_wigner_angle(sqrt_s, constants: ElectroweakConstants = ElectroweakConstants()):
    """rho = arctan((s - mZ^2) / (mZ GammaZ)): the variable in which the Z resonance is flat."""
    return np.arctan((np.asarray(sqrt_s, float) ** 2 - constants.mz**2) / (constants.mz * constants.gamma_z))


def sample_phase_space(
    n: int, sqrt_s_range: tuple[float, float], seed: int, block: int = 0, sampling: str = "breit_wigner"
) -> dict:
    """n points of (sqrt_s, cos_theta) with rho = breit_wigner_angle(sqrt_s) and |M|^2.

    cos_theta is uniform; sqrt_s is uniform (`sampling` 'uniform') or uniform in rho
    ('breit_wigner': the mapping event generators use for a resonance, so the Z peak, 2.5 GeV of
    a 60 GeV range, gets as many points as its share of |M|^2 rather than of the range).
    Block b of a sample draws from its own generator keyed by (seed, b), so a chunk is the same
    whichever worker draws it.
    """
    low, high = sqrt_s_range
    if not 0 < low < high:
        raise ValueError(f"sqrt_s_range must be (low, high) with 0 < low < high GeV, got {sqrt_s_range}")
    rng = np.random.default_rng([seed, block])
    if sampling == "uniform":
        sqrt_s = rng.uniform(low, high, n)
    elif sampling == "breit_wigner":
        k = ElectroweakConstants()
        rho = rng.uniform(*breit_wigner_angle(np.array([low, high])), n)
        sqrt_s = np.sqrt(k.mz**2 + k.mz * k.gamma_z * np.tan(rho))
    else:
        raise ValueError(f"sampling must be 'uniform' or 'breit_wigner', got {sampling!r}")
    cos_theta = rng.uniform(-1.0, 1.0, n)
    return {
        "sqrt_s": sqrt_s,
        "cos_theta": cos_theta,
        "rho": breit_wigner_angle(sqrt_s),
        "msq": ee_mumu_msq(sqrt_s, cos_theta),
    }


# -- heteroscedastic ensemble ------------------------------------------------------------------
class GaussianNLLLoss:
    """A train_ensemble loss_fn: per-replica mean Gaussian NLL of targets (n,) under (mu, ln sigma^2).

    train_mask (R, n) gives each replica its own training points; the rest validate (full NLL).
    `beta` > 0 weights each point's training loss by sigma^(2 beta) (not differentiated; beta-NLL,
    Seitzer et al. 2022): plain NLL (beta = 0) lets a large sigma excuse a poor mean where the
    fit is hard, and the mean then stops improving there; the weighting leaves each point's
    optimal sigma unchanged. Minibatches (`batch_size`) are drawn per step from (seed, epoch).
    """

    def __init__(
        self,
        x: np.ndarray,
        target: np.ndarray,
        train_mask: np.ndarray,
        *,
        beta: float = 0.5,
        batch_size: int | None = None,
        seed: int = 0,
        device="cpu",
        dtype=torch.float32,
    ):
        mask = np.asarray(train_mask, bool)
        counts = mask.sum(1)
        if counts.min() != counts.max() or counts[0] == 0 or counts[0] == mask.shape[1]:
            raise ValueError(
                "every replica needs the same number of training points and some "
                f"validation points; got {counts.min()}..{counts.max()} of {mask.shape[1]}"
            )
        order = np.argsort(~mask, axis=1, kind="stable")
        as_t = lambda a, t=dtype: torch.as_tensor(a, dtype=t, device=device)  # noqa: E731
        self.x, self.target = as_t(x), as_t(target)
        self.train_idx = as_t(order[:, : counts[0]], torch.int64)
        self.val_idx = as_t(order[:, counts[0] :], torch.int64)
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


@torch.no_grad()
def refit_log_variance(
    model: EnsembleMLP,
    loss: GaussianNLLLoss,
    iterations: int = 30,
    ridge: float = 1e-6,
    on: str = "training",
) -> None:
    """Set each replica's ln sigma^2 output row to the exact NLL minimiser on its training points,
    the mean and the hidden layers held fixed (Newton's method; the problem is convex).

    Why: trained jointly, sigma trails the mean: as steps shrink the residuals, the sigma output
    is still sized for earlier, larger ones (training-point pulls measured 0.7 at the end of
    training, where a fitted sigma gives 1). ln sigma^2 = w . h + b is linear in the last hidden
    features h, and sum_i [r_i^2 exp(-w . h_i) + w . h_i] is convex in (w, b): damped Newton steps
    (backtracking per replica) find its minimum, which gradient steps only approach.
    """
    layers = model.layers()
    weight, bias = layers[-1]
    idx = loss.train_idx
    h = loss.x[idx]  # (R, m, f): each replica's own training points
    for (w, b), act in zip(layers[:-1], model.activations[:-1]):
        h = _activation(act, torch.baddbmm(b, h, w))
    h64 = torch.cat([h, torch.ones_like(h[..., :1])], -1).double()
    mu = torch.einsum("rmk,rk->rm", h64[..., :-1], weight[..., 0].double()) + bias[:, 0, 0:1].double()
    r2 = (loss.target[idx].double() - mu).pow(2).clamp_min(1e-30)
    theta = torch.cat([weight[..., 1], bias[:, 0, 1:2]], -1).double()  # (R, K+1)

    def objective(t: Tensor) -> Tensor:
        eta = torch.einsum("rmk,rk->rm", h64, t)
        return (r2 * torch.exp(-eta) + eta).sum(-1)

    eye = torch.eye(theta.shape[1], dtype=theta.dtype, device=theta.device)
    for _ in range(iterations):
        eta = torch.einsum("rmk,rk->rm", h64, theta)
        scaled = r2 * torch.exp(-eta)  # (R, m)
        grad = torch.einsum("rmk,rm->rk", h64, 1 - scaled)
        hess = torch.einsum("rmk,rml,rm->rkl", h64, h64, scaled)
        damping = ridge * hess.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
        step = torch.linalg.lstsq(hess + damping[:, None, None] * eye, grad.unsqueeze(-1)).solution[..., 0]
        # backtracking per replica: Newton on exp(-eta) can overshoot from far away
        before, size = objective(theta), torch.ones_like(damping)
        for _ in range(30):
            trial = theta - size[:, None] * step
            better = torch.isfinite(objective(trial)) & (objective(trial) <= before)
            if better.all():
                break
            size = torch.where(better, size, size / 2)
        theta = torch.where(better[:, None], trial, theta)
    weight[..., 1] = theta[:, :-1].to(weight.dtype)
    bias[:, 0, 1] = theta[:, -1].to(bias.dtype)


def _activation(name: str, z: Tensor) -> Tensor:
    from .mlp import ACTIVATIONS

    return ACTIVATIONS[name](z)


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


def holdout_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """(n,) True for the points no replica trains or validates on (seeded): the sigma scale's."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must lie in (0, 1), got {fraction}")
    mask = np.zeros(n, bool)
    mask[np.random.default_rng([seed, 2]).permutation(n)[: max(1, int(round(fraction * n)))]] = True
    return mask


def fit_amplitude(
    features: np.ndarray,
    amplitude: np.ndarray,
    train_mask: np.ndarray,
    config: RegressionConfig,
    *,
    holdout: np.ndarray,
    beta: float = 0.5,
    batch_size: int | None = None,
    refit_sigma: bool = True,
    progress: Callable[[Progress], None] | None = None,
    on_checkpoint: Callable | None = None,
    resume_from: Mapping[str, np.ndarray] | None = None,
):
    """Train R = len(train_mask) heteroscedastic networks on ln |M|^2 of the points outside
    `holdout` (train_mask (R, n_fit) splits those per replica), refit their sigma outputs, and
    fit the ensemble's sigma scale on the held-out points. Returns (result, low, high, target
    scale, sigma scale).

    Why a sigma scale: each replica's (mu_r, sigma_r) is calibrated on its own points (pulls 1),
    but the ensemble mean averages away part of each replica's misfit, so sqrt(mean sigma_r^2 +
    var mu_r) overstates the mean's error, by a factor that was nearly the same everywhere in phase
    space (measured 0.50 in the bulk, 0.47 in the tails; the correlated-error formula
    sigma_r^2 - var mu_r missed the tails by 25%). One factor, measured on points no replica saw,
    calibrates it; the bulk/tails comparison then tests the shape, which the factor cannot fix.
    """
    torch.set_num_threads(1)
    features = np.asarray(features, float).reshape(len(features), -1)
    amplitude = np.asarray(amplitude, float)
    holdout = np.asarray(holdout, bool)
    if holdout.shape != amplitude.shape or holdout.all() or not holdout.any():
        raise ValueError(f"holdout must be a ({amplitude.size},) mask with points on both sides")
    if not np.all(amplitude > 0) or not np.all(np.isfinite(amplitude)):
        raise ValueError("amplitudes must be positive and finite (the network learns their logarithm)")
    fit_x, fit_y = features[~holdout], amplitude[~holdout]
    low, high = feature_range(fit_x)
    scale = TargetScale.fit(fit_y)
    device = resolve_device(config.device)
    model = EnsembleMLP(
        len(train_mask),
        [features.shape[1], *config.hidden, 2],
        list(config.activations),
        seed=config.seed,
        device=device,
    )
    loss = GaussianNLLLoss(
        scale_features(fit_x, low, high),
        scale(fit_y),
        train_mask,
        beta=beta,
        batch_size=batch_size,
        seed=config.seed,
        device=device,
    )
    result = train_with_config(
        model, loss, config, progress=progress, on_checkpoint=on_checkpoint, resume_from=resume_from
    )
    if refit_sigma:
        refit_log_variance(model, loss)
        result.weights = model.to_arrays()
    held = predict_amplitude(
        result.weights, result.architecture, features[holdout], low, high, scale, device=str(device)
    )
    pulls = (held["log_mean"] - np.log(amplitude[holdout])) / held["sigma"]
    return result, low, high, scale, float(np.sqrt(np.mean(pulls**2)))


def predict_amplitude(
    arrays: Mapping[str, np.ndarray],
    architecture: Mapping,
    features: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    scale: TargetScale,
    kept: np.ndarray | None = None,
    sigma_scale: float = 1.0,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Ensemble prediction of ln |M|^2 at features (n, f): mean, sigma (total), sigma_aleatoric
    (the networks' own sigma, rms over replicas), sigma_ensemble (spread of the means), each
    times `sigma_scale`; natural-log units of the amplitude, so sigma is a relative
    uncertainty of |M|^2."""
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
    k = sigma_scale
    return {
        "log_mean": mu.mean(0),
        "sigma": k * np.sqrt(aleatoric2 + ensemble2),
        "sigma_aleatoric": k * np.sqrt(aleatoric2),
        "sigma_ensemble": k * np.sqrt(ensemble2),
    }


def precision_summary(
    log_pred: np.ndarray,
    sigma: np.ndarray,
    truth: np.ndarray,
    tail_fraction: float = 0.05,
    percentiles: tuple[float, ...] = (50.0, 90.0, 99.0),
) -> dict[str, np.ndarray]:
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
    return {
        "pulls": pulls,
        "bulk": bulk,
        "rms_pull_bulk": float(np.sqrt(np.mean(pulls[bulk] ** 2))),
        "rms_pull_tails": float(np.sqrt(np.mean(pulls[~bulk] ** 2))),
        "relative_error_percentiles": np.percentile(rel, percentiles),
    }
