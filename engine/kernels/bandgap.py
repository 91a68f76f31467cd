"""Band-gap fits: I(E) = A (E - E_BG)^b above E_BG (zero below) [+ c E], many spectra at once.

Why our own fitter: a band-gap map fits one small model per pixel and per quantile curve,
10^5 - 10^6 fits, and scipy's curve_fit pays ~ms of Python overhead per call. Here every
spectrum of a chunk (any leading shape, energy last) takes Levenberg-Marquardt steps together:
one batched 2x2 to 4x4 solve per iteration, so the cost per fit is a few microseconds of
array work. A pixel that does not converge (no signal, noise only, a runaway onset) gets NaN
and `converged = False`; it never stops its neighbours.

Model and parameters. For x = E - E_BG > 0 the model is A x^b, else 0; b is either fixed
(0.5 direct, 1.5 indirect gap) or free. Internally each spectrum is divided by its largest
|value| in the window, so A is of order one for every pixel and one damping schedule suits all.

Background (`background="linear"`): a term c E, c >= 0, added under the onset. Below a few eV
the bulk plasmon's loss function E Gamma E_p^2 / ((E^2 - E_p^2)^2 + (E Gamma)^2) is
Gamma E / E_p^2 to within (E / E_p)^2, so the plasmon tail under a band-gap onset is a straight
line through the origin, and it is as large as the onset itself: fitted without it, the power
law starts early to absorb it (E_BG low by 0.2-0.5 eV for b = 1.5 on the generator's spectra).
No constant: no physical term in a ZLP-subtracted low-loss signal is flat, and a free constant,
measured on the generator's spectra, buys its lower bias for b = 1.5 (0.03 instead of 0.09 eV)
only by bending the power law towards the onset's own decay, at twice the scatter and with
runaway fits at 10^6 counts. The bound c >= 0 is kept by an active set: where c sits at 0 and
chi2 would fall by making it negative, c is held at 0 for that step (and in the covariance),
so a spectrum without a tail converges to the pure power law.

Steps are kept only where they lower chi2 and stay in the region where the model is defined:
A > 0, b in [EXPONENT_MIN, EXPONENT_MAX], and enough channels above E_BG to determine the free
parameters. The fit stops when the proposed step is below `xtol` relative to the parameters, or when the
Gauss-Newton step is shorter than `step_tol` standard errors.

Initial guess (what makes the batch robust): for each candidate b, y^(1/b) is linear in E
above the onset, y^(1/b) = A^(1/b) (E - E_BG); a straight line through the channels with clear
signal gives E_BG, then A (and c) follow in closed form (the model is linear in them). With b
free, the candidate with the lowest chi2 starts the fit. A background bends that line, so with
one the onsets of a grid across the window are tried as well.

Uncertainties come from the Jacobian at the optimum: cov = (J^T W J)^-1, scaled by chi2 per
degree of freedom when no absolute errors were given (as curve_fit with absolute_sigma=False).

Array code only (numpy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["BandgapFit", "fit_bandgap", "power_onset"]

EXPONENT_MIN = 0.1
EXPONENT_MAX = 5.0
EXPONENT_CANDIDATES = (0.5, 1.0, 1.5, 2.0, 3.0)  # starting points when b is free
SIGNAL_FRACTION = 0.1  # the linearised guess uses channels above this share of the maximum
EDGE_MARGIN = 1e-3  # a fit this close (in b, or in window spans for E_BG) to the domain's edge failed
LAMBDA_START = 1e-3
RCOND = 1e-13  # unit-diagonal normal matrices with a smaller determinant count as singular
LAMBDA_MAX = 1e12  # damping this large means no step lowers chi2: stop, not converged
BACKGROUND_STARTS = 16  # onsets across the window tried as starts when a background is fitted
A, E_BG, B, C = range(4)  # columns of theta: amplitude, onset, exponent, background slope


@dataclass(frozen=True)
class BandgapFit:
    """Per-spectrum results, each shaped like the spectra without their energy axis.

    Errors are one standard deviation from the fit covariance; `exponent_error` is 0 where b
    was fixed, `background_error` where no background was fitted or c ended on its bound 0.
    `background` is the slope c (data units per eV). `chi2` is chi2 per degree of freedom (in
    data units squared when the fit was unweighted). Where `converged` is False every float is
    NaN.
    """

    e_bg: np.ndarray
    amplitude: np.ndarray
    exponent: np.ndarray
    background: np.ndarray
    e_bg_error: np.ndarray
    amplitude_error: np.ndarray
    exponent_error: np.ndarray
    background_error: np.ndarray
    chi2: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray


def power_onset(energy, e_bg, amplitude, exponent) -> np.ndarray:
    """A (E - E_BG)^b for E > E_BG, else 0; arguments broadcast (energy last)."""
    x = np.asarray(energy, dtype=float) - np.asarray(e_bg, dtype=float)
    above = x > 0
    return np.where(above, amplitude * np.where(above, x, 1.0) ** exponent, 0.0)


def _model(energy: np.ndarray, theta: np.ndarray, free=None, resolution: float = 0.0):
    """Model (n, M) at theta (n, 4) = (A, E_BG, b, c), and if `free` (columns of theta) is given
    d model / d theta[:, free] as (n, len(free), M) (channels last, ready for J W J^T).

    `resolution` bounds the 1/x in d model / d E_BG (see the covariance in fit_bandgap).
    """
    amplitude, e_bg, b, slope = (theta[:, k, None] for k in (A, E_BG, B, C))
    x = energy[None, :] - e_bg
    above = x > 0
    x_safe = np.where(above, x, 1.0)
    need_log = free is not None and B in free
    if b.size == 0:  # no spectra left to evaluate (a chunk with none still fitting)
        power = x_safe.copy()
    elif need_log or not np.all(b == b[0]):
        log_x = np.log(x_safe)
        power = np.exp(b * log_x)
    else:
        power = x_safe ** float(b[0, 0])  # one b for all: no log needed
    power[~above] = 0.0
    onset = amplitude * power
    model = onset + slope * energy[None, :]
    if free is None:
        return model, None
    jac = np.empty((theta.shape[0], len(free), energy.size))
    for j, k in enumerate(free):
        if k == A:
            jac[:, j] = power
        elif k == E_BG:
            np.divide(onset, np.maximum(x_safe, resolution) if resolution else x_safe,
                      out=jac[:, j])
            jac[:, j] *= -b
        elif k == B:
            np.multiply(onset, log_x, out=jac[:, j])
        else:
            jac[:, j] = energy
    return model, jac


def _valid(theta: np.ndarray, energy: np.ndarray, n_free: int, b_free: bool,
           margin: float = 0.0) -> np.ndarray:
    """Where theta lies in the model's domain (see the module docstring), `margin` inside it.

    A fit that ends on the domain's edge (b at a bound, the onset run far below the window:
    what noise without an onset does) found no optimum; a small margin tells those apart.
    c = 0 is inside the domain: it is where a spectrum without a tail belongs.
    """
    span = energy[-1] - energy[0]
    lowest = energy[0] - 5.0 * span  # an onset far below the window is still a valid
    # extrapolation, one this far below is a runaway
    highest = energy[-(n_free + 1)]  # at least n_free + 1 channels above the onset
    b_margin = margin if b_free else 0.0  # a fixed b sits where the caller put it
    return (
        np.isfinite(theta).all(axis=1)
        & (theta[:, A] > 0)
        & (theta[:, E_BG] > lowest + margin * span) & (theta[:, E_BG] < highest)
        & (theta[:, B] >= EXPONENT_MIN + b_margin) & (theta[:, B] <= EXPONENT_MAX - b_margin)
        & (theta[:, C] >= 0)
    )


def _profile_linear(energy, y, weight, e_bg, b, background: bool):
    """The chi2-optimal A and c >= 0 for given E_BG and b (the model is linear in both), and
    that chi2; c is 0 without a background, or where the unconstrained optimum has c < 0."""
    shape = power_onset(energy, e_bg[:, None], 1.0, b[:, None])

    def solo(basis):
        norm = (weight * basis * basis).sum(axis=1)
        return np.where(norm > 0, (weight * basis * y).sum(axis=1) / np.where(norm > 0, norm, 1),
                        np.nan)

    amplitude, slope = solo(shape), np.zeros(e_bg.size)
    if background:
        line = np.broadcast_to(energy, y.shape)
        s_ss, s_ee = (weight * shape * shape).sum(axis=1), (weight * line * line).sum(axis=1)
        s_se = (weight * shape * line).sum(axis=1)
        s_sy, s_ey = (weight * shape * y).sum(axis=1), (weight * line * y).sum(axis=1)
        det = s_ss * s_ee - s_se**2
        solvable = det > RCOND * s_ss * s_ee
        det = np.where(solvable, det, 1.0)
        joint_a, joint_c = (s_ee * s_sy - s_se * s_ey) / det, (s_ss * s_ey - s_se * s_sy) / det
        use = solvable & (joint_c > 0)
        amplitude, slope = np.where(use, joint_a, amplitude), np.where(use, joint_c, 0.0)
    model = amplitude[:, None] * shape + slope[:, None] * energy
    chi2 = (weight * (y - model) ** 2).sum(axis=1)
    return amplitude, slope, chi2


def _hold_bound(hess, grad, theta, free, background: bool):
    """The normal equations with c held where it sits on its bound 0 and chi2 falls towards
    negative c (grad = J^T W r is minus half the chi2 gradient): its row and column become the
    identity's and its gradient 0, so the step leaves it there (an active set of one)."""
    if not background:
        return hess, grad
    k = free.index(C)
    held = (theta[:, C] <= 0) & (grad[:, k] <= 0)
    hess, grad = hess.copy(), grad.copy()
    hess[held, k, :] = 0.0
    hess[held, :, k] = 0.0
    hess[held, k, k] = 1.0
    grad[held, k] = 0.0
    return hess, grad


def _normalised(hess: np.ndarray):
    """hess / sqrt(d_i d_j) (unit diagonal) and sqrt(d), with the rows that are safe to invert.

    Working on the unit-diagonal form makes the singularity test independent of the parameters'
    units and of the data's scale (Marquardt's scaling).
    """
    d = np.sqrt(np.abs(np.diagonal(hess, axis1=1, axis2=2)))
    safe = np.isfinite(hess).all(axis=(1, 2)) & (d > 0).all(axis=1)
    d = np.where(safe[:, None], d, 1.0)
    unit = hess / (d[:, :, None] * d[:, None, :])
    safe &= np.isfinite(unit).all(axis=(1, 2))
    unit = np.where(safe[:, None, None], unit, np.eye(hess.shape[-1]))
    return unit, d, safe


def _damped_step(hess, grad, lam):
    """Levenberg-Marquardt steps (H + lam diag H) step = grad for a batch, and where they exist."""
    unit, d, safe = _normalised(hess)
    damped = unit + lam[:, None, None] * np.eye(hess.shape[-1])
    safe &= np.linalg.det(damped) > RCOND
    damped = np.where(safe[:, None, None], damped, np.eye(hess.shape[-1]))
    step = np.linalg.solve(damped, (grad / d)[..., None])[..., 0] / d
    return np.where(safe[:, None], step, 0.0), safe


def _inverse_diagonal(hess):
    """diag(H^-1) per row: the parameter variances; NaN where H is (near) singular."""
    unit, d, safe = _normalised(hess)
    safe &= np.linalg.det(unit) > RCOND
    unit = np.where(safe[:, None, None], unit, np.eye(hess.shape[-1]))
    variance = np.diagonal(np.linalg.inv(unit), axis1=1, axis2=2) / (d * d)
    return np.where(safe[:, None], variance, np.nan)


def _grid_start(energy, y, weight, grid, b: float, background: bool, sums):
    """The best of the onsets `grid` (the same for every spectrum) at exponent b: (A, c) and
    chi2 profiled as in _profile_linear, for all onsets at once.

    The shapes (E - E_BG)^b do not depend on the spectrum, so every weighted sum over channels
    is one matrix product, and the profiled chi2 follows from the sums (at the optimum of the
    linear parameters chi2 = sum w y^2 - A sum w s y - c sum w E y). That form loses digits to
    cancellation, so it only ranks the onsets; the winner's chi2 is recomputed from its
    residuals. Returns (amplitude, e_bg, slope, chi2), NaN / inf where no onset is usable.
    """
    s_ee, s_ey, s_yy, wy, we = sums
    shape = power_onset(energy, grid[:, None], 1.0, b)  # (K, M)
    s_ss = weight @ (shape * shape).T  # (n, K)
    s_sy = wy @ shape.T
    positive = s_ss > 0
    amplitude = np.where(positive, s_sy / np.where(positive, s_ss, 1.0), np.nan)
    slope = np.zeros_like(amplitude)
    if background:
        s_se = we @ shape.T
        det = s_ss * s_ee[:, None] - s_se**2
        solvable = det > RCOND * s_ss * s_ee[:, None]
        det = np.where(solvable, det, 1.0)
        joint_a = (s_ee[:, None] * s_sy - s_se * s_ey[:, None]) / det
        joint_c = (s_ss * s_ey[:, None] - s_se * s_sy) / det
        use = solvable & (joint_c > 0)
        amplitude, slope = np.where(use, joint_a, amplitude), np.where(use, joint_c, 0.0)
    rank = s_yy[:, None] - amplitude * s_sy - slope * s_ey[:, None]
    usable = np.isfinite(amplitude) & (amplitude > 0)
    rank = np.where(usable, rank, np.inf)
    k = np.argmin(rank, axis=1)  # first of equals, as the sequential scan kept
    rows = np.arange(y.shape[0])
    found = usable[rows, k]
    amplitude, slope = amplitude[rows, k], slope[rows, k]
    model = amplitude[:, None] * shape[k] + slope[:, None] * energy
    chi2 = np.where(found, (weight * (y - model) ** 2).sum(axis=1), np.inf)
    return amplitude, grid[k], slope, chi2


def _initial_guess(energy, y, weight, exponents, n_free, background: bool):
    """Start (n, 4) from the linearised fit of y^(1/b) vs E over the channels with clear signal,
    or with a background from that and a grid of onsets across the window, whichever has the
    lowest chi2."""
    n = y.shape[0]
    clear = y > SIGNAL_FRACTION  # y is scaled to a maximum |value| of 1
    count = clear.sum(axis=1)
    e_mean = np.where(clear, energy, 0.0).sum(axis=1) / np.maximum(count, 1)
    de = np.where(clear, energy - e_mean[:, None], 0.0)
    spread = (de * de).sum(axis=1)
    span = energy[-1] - energy[0]
    best = np.full((n, 4), np.nan)
    best_chi2 = np.full(n, np.inf)
    if background:
        grid = np.linspace(energy[0], energy[-(n_free + 2)], BACKGROUND_STARTS)
        wy, we = weight * y, weight * energy
        sums = ((we * energy).sum(axis=1), (wy * energy).sum(axis=1), (wy * y).sum(axis=1),
                wy, we)
    y_clear = np.where(clear, np.maximum(y, 0.0), 0.0)
    for b in exponents:
        z = y_clear ** (1.0 / b)
        z_mean = z.sum(axis=1) / np.maximum(count, 1)
        slope = (de * (z - z_mean[:, None])).sum(axis=1) / np.where(spread > 0, spread, 1.0)
        e_bg = np.where((count >= 2) & (slope > 0),
                        e_mean - z_mean / np.where(slope > 0, slope, 1.0),
                        energy[0] - 0.1 * span)  # no line: assume the onset sits just below
        e_bg = np.clip(e_bg, energy[0] - span, energy[-(n_free + 2)])
        b_arr = np.full(n, b)
        amplitude, slope, chi2 = _profile_linear(energy, y, weight, e_bg, b_arr, background)
        starts = [(amplitude, e_bg, slope, chi2)]
        if background:
            starts.append(_grid_start(energy, y, weight, grid, b, background, sums))
        for amplitude, start, slope, chi2 in starts:
            better = np.isfinite(amplitude) & (amplitude > 0) & (chi2 < best_chi2)
            best[better] = np.stack([amplitude, start, b_arr, slope], axis=1)[better]
            best_chi2[better] = chi2[better]
    return best


def fit_bandgap(
    spectra,
    energy,
    *,
    window: tuple[float, float] | None = None,
    exponent: float | None = None,
    background: Literal["none", "linear"] = "none",
    sigma=None,
    max_iter: int = 200,
    xtol: float = 1e-8,
    step_tol: float = 1e-2,
) -> BandgapFit:
    """Fit A (E - E_BG)^b to every spectrum (energy last) over the channels inside `window`.

    exponent: b fixed to this value, or None to fit it.
    background: "linear" fits a term c E (c >= 0) jointly with the onset (module docstring).
    sigma: per-channel errors: None (unweighted; covariance scaled by chi2 per degree of
        freedom), "poisson" (sigma^2 = max(y, 1): counts, absolute) or an array that broadcasts
        against the spectra (absolute errors, as curve_fit with absolute_sigma=True).
    """
    spectra = np.asarray(spectra)
    energy = np.asarray(energy, dtype=np.float64)
    if energy.ndim != 1 or energy.size != spectra.shape[-1]:
        raise ValueError(f"energy must be 1-D with one value per channel: got {energy.shape} for "
                         f"spectra of shape {spectra.shape}")
    lead = spectra.shape[:-1]
    inside = (np.ones(energy.size, bool) if window is None
              else (energy >= window[0]) & (energy <= window[1]))
    energy_w = energy[inside]
    if background not in ("none", "linear"):
        raise ValueError(f"background must be 'none' or 'linear', not {background!r}")
    b_free, with_background = exponent is None, background == "linear"
    # theta columns being fitted: (A, E_BG), then b if free, then c if a background is
    free = [A, E_BG] + [B] * b_free + [C] * with_background
    n_free = len(free)
    if energy_w.size < n_free + 2 or not np.all(np.diff(energy_w) > 0):
        raise ValueError(f"the window needs at least {n_free + 2} channels on an increasing "
                         f"energy axis, found {energy_w.size}")
    y = spectra.reshape(-1, spectra.shape[-1])[:, inside].astype(np.float64)
    n = y.shape[0]

    if sigma is None:
        err = None
    elif isinstance(sigma, str):
        if sigma != "poisson":
            raise ValueError(f"sigma must be None, 'poisson' or an array, not {sigma!r}")
        err = np.sqrt(np.maximum(y, 1.0))
    else:
        err = np.broadcast_to(np.asarray(sigma, np.float64), spectra.shape)
        err = err.reshape(-1, spectra.shape[-1])[:, inside]
    # Scale each spectrum to a largest |value| of 1 (chi2 is unchanged: y and err scale alike).
    scale = np.abs(y).max(axis=1)
    usable = np.isfinite(y).all(axis=1) & (scale > 0) & np.isfinite(scale)
    if err is None:
        weight = np.ones_like(y)
    else:
        usable &= np.isfinite(err).all(axis=1) & (err > 0).all(axis=1)
        weight = (scale[:, None] / np.where(err > 0, err, 1.0)) ** 2
    scale = np.where(usable, scale, 1.0)
    y = np.where(usable[:, None], y / scale[:, None], 0.0)
    weight = np.where(usable[:, None] & np.isfinite(weight), weight, 1.0)

    exponents = EXPONENT_CANDIDATES if exponent is None else (float(exponent),)
    theta = _initial_guess(energy_w, y, weight, exponents, n_free, with_background)
    active = usable & _valid(theta, energy_w, n_free, b_free)
    lam = np.full(n, LAMBDA_START)
    chi2 = np.full(n, np.inf)
    chi2[active] = (weight[active] * (y[active] - _model(energy_w, theta[active])[0]) ** 2
                    ).sum(axis=1)
    converged = np.zeros(n, bool)
    iterations = np.zeros(n, np.int32)
    dof = energy_w.size - n_free

    # The spectra still iterating, compacted: their weights and data are gathered again only
    # when some of them stop.
    idx = np.flatnonzero(active)
    w, yy = weight[idx], y[idx]
    for _ in range(max_iter):
        if idx.size == 0:
            break
        iterations[idx] += 1
        th = theta[idx]
        model, jac = _model(energy_w, th, free)
        jtw = jac * w[:, None, :]
        hess = np.einsum("nim,njm->nij", jtw, jac)  # faster than matmul on many tiny matrices
        grad = np.einsum("nim,nm->ni", jtw, yy - model)
        hess, grad = _hold_bound(hess, grad, th, free, with_background)
        step, solvable = _damped_step(hess, grad, lam[idx])
        trial = th.copy()
        trial[:, free] += step
        trial[:, C] = np.maximum(trial[:, C], 0.0)  # a step past c = 0 stops on it
        step = trial[:, free] - th[:, free]
        ok = solvable & _valid(trial, energy_w, n_free, b_free)
        trial_chi2 = np.full(idx.size, np.inf)
        if ok.any():
            trial_model = _model(energy_w, trial[ok])[0]
            trial_chi2[ok] = (w[ok] * (yy[ok] - trial_model) ** 2).sum(axis=1)
        accept = ok & (trial_chi2 <= chi2[idx])
        theta[idx[accept]] = trial[accept]
        chi2[idx[accept]] = trial_chi2[accept]
        lam[idx] = np.where(accept, np.maximum(lam[idx] / 10.0, 1e-12), lam[idx] * 10.0)
        # Stop where a tiny step cannot lower chi2 (noiseless data: chi2 -> 0), or where the
        # undamped Gauss-Newton step is shorter than step_tol standard errors (its length in
        # that metric is s^T H s = g^T s, with the noise level estimated by chi2 / dof): the
        # rest is far below the statistical error. Without the second test an onset next to a
        # channel, where the Jacobian jumps, oscillates towards it for hundreds of steps.
        small = solvable & (np.abs(step) <= xtol * (np.abs(th[:, free]) + xtol)).all(axis=1)
        newton, _ = _damped_step(hess, grad, np.zeros(idx.size))
        flat = solvable & ((newton * grad).sum(axis=1) <= step_tol**2 * chi2[idx] / dof)
        done = (small & (accept | (trial_chi2 >= chi2[idx]))) | flat
        converged[idx[done]] = True
        stop = done | (lam[idx] > LAMBDA_MAX) | ~solvable
        if stop.any():
            active[idx[stop]] = False
            keep = ~stop
            idx, w, yy = idx[keep], w[keep], yy[keep]

    # Covariance from the weighted Jacobian at the optimum. A channel records the spectrum
    # averaged over its width, so its sensitivity to E_BG is bounded by the slope half a channel
    # above the onset; the point-sampled x^(b-1) diverges for b < 1 when the onset lands just
    # below a channel and would claim errors 10^4 times too small.
    # A c held on its bound is a fixed parameter there: variance 0.
    errors = np.full((n, 4), np.nan)
    idx = np.flatnonzero(converged)
    if idx.size:
        half_channel = 0.5 * float(np.median(np.diff(energy_w)))
        model, jac = _model(energy_w, theta[idx], free, half_channel)
        jtw = jac * weight[idx, None, :]
        grad = np.einsum("nim,nm->ni", jtw, y[idx] - model)
        hess, _ = _hold_bound(np.einsum("nim,njm->nij", jtw, jac), grad, theta[idx], free,
                              with_background)
        variance = _inverse_diagonal(hess)
        if sigma is None:
            variance *= (chi2[idx] / dof)[:, None]
        errors[np.ix_(idx, free)] = np.sqrt(np.where(variance >= 0, variance, np.nan))
        if with_background:
            errors[idx[theta[idx, C] <= 0], C] = 0.0
        converged[idx] = (np.isfinite(errors[np.ix_(idx, free)]).all(axis=1)
                          & _valid(theta[idx], energy_w, n_free, b_free, EDGE_MARGIN))
    if not b_free:
        errors[:, B] = 0.0
    if not with_background:
        errors[:, C] = 0.0

    # Back to the data's units; NaN wherever the fit failed.
    theta[:, [A, C]] *= scale[:, None]
    errors[:, [A, C]] *= scale[:, None]
    if sigma is None:
        chi2 = chi2 * scale**2  # unweighted: residual variance in data units
    nan = ~converged
    theta[nan] = np.nan
    errors[nan] = np.nan
    chi2 = np.where(nan, np.nan, chi2 / dof)
    return BandgapFit(
        e_bg=theta[:, E_BG].reshape(lead), amplitude=theta[:, A].reshape(lead),
        exponent=theta[:, B].reshape(lead), background=theta[:, C].reshape(lead),
        e_bg_error=errors[:, E_BG].reshape(lead), amplitude_error=errors[:, A].reshape(lead),
        exponent_error=errors[:, B].reshape(lead), background_error=errors[:, C].reshape(lead),
        chi2=chi2.reshape(lead), converged=converged.reshape(lead),
        iterations=iterations.reshape(lead),
    )
