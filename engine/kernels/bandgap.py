"""Band-gap fits: I(E) = A (E - E_BG)^b above E_BG (zero below) [+ c E], many spectra at once.

Sampling. By default (sampling="point", power_onset) the model is the power law at the channel
centres; its Jacobian jumps where E_BG crosses a centre, so chi2 has a kink there (on the EELS
chain 90% of the fitted onsets stop 0.6-1.0 channel past a channel edge). sampling="channel"
(channel_onset) fits what a detector channel records, the onset averaged over the channel's
width, (A / (b + 1)) [(hi - E_BG)_+^(b+1) - (lo - E_BG)_+^(b+1)] / (hi - lo), smooth in E_BG
(with its first derivatives, for b > 0) (_Basis). Measured on the chain's direct gaps (seeds
5-7, tests/ops/test_eels_bandgap_chain.py): its onsets scatter half as much about the ideal fit
(std 0.0125 vs 0.0224 eV) and no longer jump between the ZLP band curves and shifted-dE_I fits
(median band half-spread 0.0004 vs 0.0050 eV, dE_I systematic 0 vs 0.006 eV), so e_bg_error is
the fit's own error alone, which is too wide there (|pull| < 1 for 0.89, RMS pull 0.91; point
sampling: 0.69 and 1.19, the band spread and dE_I systematic making up the difference). Not the
default until those errors are calibrated (see the covariance below).

Resolution (`resolution`: a FWHM for a Gaussian, or a measured kernel such as the ZLP). A
detector records the onset convolved with the instrument's response, the zero-loss peak, so
the model can be the channel-averaged onset on the window widened by the kernel's reach,
convolved with the kernel sampled on the channel spacing (one product with a Toeplitz matrix;
the derivatives are the convolved derivatives, exact as the convolution is linear). On onsets
made that way (Gaussian 0.05 and 0.2 eV, b 0.5 and 1.5) E_BG and b are recovered to round-off
without noise and with calibrated errors with Poisson noise (E_BG pull std 0.94-1.04 with the
true errors and with HC3, tests/kernels/test_bandgap_resolution.py); on a pure x^0.5 blurred by
the generator's monochromated ZLP, with that ZLP as kernel E_BG and b come out exact where the
bare channel model puts E_BG 8 meV high. It does not make the EELS chain's direct-gap fits
physical: the generator's onset is x^b e^(-x / 2 eV), whose effective exponent 0.5 - x / 2 eV
falls across a 0.5-3 eV window, so a free b is ~0.13-0.2 with or without the resolution (with
the generator's exact ZLP as kernel on its exact direct-gap signals: b 0.16) and the fits stay
near steps. There, noise scatters E_BG more than any local error says (exact ZLP kernel, 30
Poisson draws of 60 pixels: HC3 error 0.8x the scatter, coverage 0.55; the Gauss-Newton and the
full Hessian differ by 5%, so it is the nonlinearity over the noise's range, not the curvature
term), the opposite of the bare channel model's 3.5x. On the chain (seeds 5-10 pooled, 842
direct-gap pixels, each cluster's ZLP FWHM, tests/ops/test_eels_bandgap_chain.py): |pull| < 1 for
0.457, RMS pull 1.71 (point: 0.696, 1.14; channel: 0.903, 0.86), so not the default.

Why our own fitter: a band-gap map fits one small model per pixel and per quantile curve,
10^5 - 10^6 fits, and scipy's curve_fit pays ~ms of Python overhead per call. Here every
spectrum of a chunk (any leading shape, energy last) takes Levenberg-Marquardt steps together,
by variable projection: the model is linear in A (and c), so those are solved in closed form
at every (E_BG, b), and the steps are taken in E_BG (and b) alone, on the Schur complement of
the normal equations (_Projected). Each iteration evaluates the model once, at its trial
point, into buffers that each thread keeps between calls (_Scratch, _kept_scratch), BLOCK_ROWS
spectra at a time so that they stay in the cache (_projected); a 1x1 or 2x2 solve per spectrum.
With b free that evaluation's cost is its exp and log (~5 ns a value measured here: numpy's
float64 SIMD versions need AVX-512), so the first one, where every spectrum often starts from
the same EXPONENT_CANDIDATES b, takes square roots instead (_row_powers), and the spectra are
taken in the order of their onsets so that each block skips them below its lowest (_below_all).
A pixel that does not converge (no signal, noise only, a runaway onset) gets NaN and
`converged = False`; it never stops its neighbours.

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
runaway fits at 10^6 counts. The bound c >= 0 is kept by an active set: where the joint
optimum of (A, c) at the current onset has c <= 0, c is held at 0 (A alone is solved for, and
c is fixed in the covariance), so a spectrum without a tail converges to the pure power law.

Steps are kept only where they lower chi2 and stay in the region where the model is defined:
A > 0, b in [EXPONENT_MIN, EXPONENT_MAX], and enough channels above E_BG to determine the free
parameters. The fit stops when the proposed step in (E_BG, b) is below `xtol` relative to them,
or when the Gauss-Newton step is shorter than `step_tol` standard errors; that last step is
then taken without a trial of its own (in the covariance's evaluation, where it lowers chi2).

Initial guess (what makes the batch robust): for each candidate b, y^(1/b) is linear in E
above the onset, y^(1/b) = A^(1/b) (E - E_BG); a straight line through the channels with clear
signal gives E_BG, then A (and c) follow in closed form (the model is linear in them). With b
free, the candidate with the lowest chi2 starts the fit. A background bends that line, so with
one the onsets of a grid across the window are tried as well.

Uncertainties come from the Jacobian at the optimum. With absolute errors, cov = (J^T W J)^-1.
Without (unweighted), not (J^T J)^-1 scaled by chi2 per degree of freedom (curve_fit's
absolute_sigma=False): that assumes one noise level for every channel, and counting noise grows
along the window, so it is too small where the channels that place the onset are the noisy ones.
Instead the heteroscedasticity-consistent sandwich H^-1 J^T diag(r_i^2 / (1 - h_i)^2) J H^-1
(HC3, MacKinnon & White 1985; h_i the leverage of channel i), which takes each channel's noise
from its own residual and, through 1 - h_i, does not let the few channels just above the onset
that fix E_BG hide their noise by absorbing it. Measured on the EELS chain's direct-gap pixels
(tests/ops/test_eels_bandgap_chain.py, point sampling): RMS pull 1.41 -> 1.25, |pull| 90% quantile
2.40 -> 1.92 (1.19 and 1.80 with the gain-ratio damping below). Every such error is the
linearised one: where the fitted shape is close to a step (b ~ 0.2, the chain's direct gaps with
b free) chi2 has a minimum per channel along E_BG and the
scatter of E_BG (1-2 channels) is set by which one the noise favours, not by the local curvature
(measured there, the kernel alone on the chain's exact signals with Poisson noise, 30 draws of 60
pixels, channel sampling: median HC3 error 3.5x the scatter, (J^T W J)^-1 with the true sigma
0.23x; point sampling: HC3 0.82x, with the jumps between kinks making the pulls' tail).

Array code only (numpy).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "BandgapFit",
    "blurred_onset",
    "channel_edges",
    "channel_onset",
    "fit_bandgap",
    "gaussian_resolution",
    "power_onset",
    "resolution_kernel",
]

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


def channel_edges(energy) -> np.ndarray:
    """The edges of channels centred on `energy` (1-D, increasing): halfway between centres,
    the outer two half a spacing beyond the first and last centre."""
    energy = np.asarray(energy, dtype=float)
    mid = 0.5 * (energy[1:] + energy[:-1])
    return np.concatenate([[2 * energy[0] - mid[0]], mid, [2 * energy[-1] - mid[-1]]])


def channel_onset(energy, e_bg, amplitude, exponent) -> np.ndarray:
    """A (E - E_BG)_+^b averaged over each channel centred on `energy` (edges: channel_edges),
    what a detector's channel records and what fit_bandgap fits with sampling="channel";
    arguments broadcast (energy last)."""
    edges = channel_edges(energy)
    lo, hi = edges[:-1], edges[1:]
    e_bg = np.asarray(e_bg, dtype=float)
    b1 = np.asarray(exponent, dtype=float) + 1.0
    integral = np.maximum(hi - e_bg, 0.0) ** b1 - np.maximum(lo - e_bg, 0.0) ** b1
    return amplitude * integral / (b1 * (hi - lo))


def blurred_onset(energy, e_bg, amplitude, exponent, resolution) -> np.ndarray:
    """channel_onset convolved with the instrument's resolution (a FWHM in eV for a Gaussian, or
    a kernel on the channel spacing, see fit_bandgap): what fit_bandgap fits with `resolution`.
    energy is the (uniform) window; e_bg, amplitude and exponent broadcast to one value per row;
    returns (rows, channels)."""
    energy = np.asarray(energy, dtype=float)
    kernel = resolution_kernel(resolution, energy)
    e_bg, amplitude, exponent = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(v, float)).reshape(-1) for v in (e_bg, amplitude, exponent))
    )
    shape = _Basis(energy, "channel", kernel).shape(e_bg, exponent, True, _Scratch(e_bg.size, energy.size))[0]
    return amplitude[:, None] * shape


def gaussian_resolution(fwhm: float, dispersion: float, reach: float = 4.0) -> np.ndarray:
    """A Gaussian of `fwhm` (eV) sampled at the channel spacing `dispersion` (eV) out to `reach`
    standard deviations, unit sum: a resolution kernel for fit_bandgap."""
    if not (np.isfinite(fwhm) and fwhm > 0 and np.isfinite(dispersion) and dispersion > 0):
        raise ValueError(f"fwhm and dispersion must be positive, got {fwhm!r} and {dispersion!r} eV")
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    h = max(1, int(np.ceil(reach * sigma / dispersion)))
    offset = dispersion * np.arange(-h, h + 1)
    kernel = np.exp(-0.5 * (offset / sigma) ** 2)
    return kernel / kernel.sum()


def resolution_kernel(resolution, energy: np.ndarray) -> np.ndarray | None:
    """fit_bandgap's `resolution` as a unit-sum kernel of odd length on the channel spacing of
    `energy` (which must be uniform), or None."""
    if resolution is None:
        return None
    step = np.diff(energy)
    # to 0.1% of a channel: a float32 axis of 10 meV channels varies by ~1e-5 relative
    if not np.allclose(step, step.mean(), rtol=1e-3, atol=0):
        raise ValueError(
            "resolution needs a uniform energy axis (one dispersion), got steps "
            f"{step.min():.6g}-{step.max():.6g} eV"
        )
    if np.ndim(resolution) == 0:
        return gaussian_resolution(float(resolution), float(step.mean()))
    kernel = np.asarray(resolution, np.float64)
    if kernel.ndim != 1 or kernel.size % 2 != 1:
        raise ValueError(
            f"resolution must be a FWHM (eV) or a 1-D kernel of odd length, got shape {kernel.shape}"
        )
    if not (np.isfinite(kernel).all() and (kernel >= 0).all() and kernel.sum() > 0):
        raise ValueError("a resolution kernel must be finite and non-negative with a positive sum")
    if kernel.size // 2 >= energy.size:
        raise ValueError(
            f"the resolution kernel reaches {kernel.size // 2} channels each side, wider than the "
            f"window's {energy.size} channels"
        )
    return kernel / kernel.sum()


def _toeplitz(kernel: np.ndarray, channels: int) -> np.ndarray:
    """(channels + 2h, channels) T with (s @ T)_i = sum_j kernel_j s_(i + 2h - j): channel i of the
    window gets kernel_j times the onset (j - h) channels below it (kernel index h is the
    zero-loss offset, below it the gain side)."""
    h = kernel.size // 2
    matrix = np.zeros((channels + 2 * h, channels))
    rows = np.arange(channels)
    for j, value in enumerate(kernel):
        matrix[rows + 2 * h - j, rows] = value
    return matrix


def _rows(array: np.ndarray, index: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """array[index], or array itself (no copy of a batch's (rows, channels) data) where index,
    a mask or increasing positions, selects every row. With `out` (a buffer with at least as many
    rows, not array's own memory) the rows are gathered there, not into new memory (_Scratch)."""
    if index.dtype == bool:
        if index.all():
            return array
        if out is None:
            return array[index]
        return np.compress(index, array, axis=0, out=out[: np.count_nonzero(index)])
    if index.size == array.shape[0]:
        return array
    if out is None:
        return array[index]
    return np.take(array, index, axis=0, out=out[: index.size])


def _valid(
    theta: np.ndarray, energy: np.ndarray, n_free: int, b_free: bool, margin: float = 0.0
) -> np.ndarray:
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
        & (theta[:, E_BG] > lowest + margin * span)
        & (theta[:, E_BG] < highest)
        & (theta[:, B] >= EXPONENT_MIN + b_margin)
        & (theta[:, B] <= EXPONENT_MAX - b_margin)
        & (theta[:, C] >= 0)
    )


class _Scratch:
    """(rows, channels) buffers reused by every evaluation of one fit_bandgap call.

    A fresh array of a batch's size (MiBs) is new memory, a page fault per 4 KiB on its first
    write: measured, allocating every temporary anew cost as much system time as the fit's own
    arithmetic. Buffers are made on first use, for the largest batch, and handed out as views of
    the first `rows` rows; whatever one evaluation returns in them is overwritten by the next.
    """

    def __init__(self, rows: int, channels: int):
        self.shape = (rows, channels)
        self.buffers: dict = {}

    def __call__(self, name: str, rows: int, dtype=np.float64, extra: int = 0) -> np.ndarray:
        """Buffer `name` of (rows, channels + extra) (extra 1: the channels' edges)."""
        buffer = self.buffers.get(name)
        if buffer is None:
            shape = (self.shape[0], self.shape[1] + extra)
            buffer = self.buffers[name] = np.empty(shape, dtype)
        return buffer[:rows]

    def child(self, channels: int) -> _Scratch:
        """A scratch of the same rows and `channels` columns (made once, reused)."""
        inner = self.buffers.get(("child", channels))
        if inner is None:
            inner = self.buffers[("child", channels)] = _Scratch(self.shape[0], channels)
        return inner


_KEPT = threading.local()  # each thread's scratches by role (see _kept_scratch)
KEEP_ELEMENTS = 2**20  # per buffer (8 MiB): a thread keeps buffers up to this size between calls


def _kept_scratch(role: str, rows: int, channels: int) -> _Scratch:
    """A _Scratch for (rows, channels), this thread's from its previous call for the same `role`
    where it is large enough (same channels, at least as many rows).

    Its buffers' pages are then already mapped: on this (virtualised) machine a fresh buffer's
    page faults cost more than its arithmetic (measured, 4000 spectra x 161 channels: 6700 minor
    faults and 12-24 ms of system time in an 80 ms call, none with kept buffers). One per role
    and thread, as dask runs one chunk per worker thread; none beyond KEEP_ELEMENTS a buffer.
    fit_bandgap keeps 8 buffers of the batch ("batch") and ~14 of one block (BLOCK_ROWS rows).
    """
    kept = getattr(_KEPT, "scratches", None)
    if kept is None:
        kept = _KEPT.scratches = {}
    scratch = kept.get(role)
    if scratch is not None and scratch.shape[1] == channels and scratch.shape[0] >= rows:
        return scratch
    scratch = _Scratch(rows, channels)
    if rows * channels <= KEEP_ELEMENTS:
        kept[role] = scratch
    return scratch


def _power(x: np.ndarray, b: float, out: np.ndarray) -> np.ndarray:
    """x^b into `out` (not x) for x >= 0 and one b: square and cube roots and products where b
    allows (2-3x faster than a general power), which covers the direct and indirect gaps' 0.5
    and 1.5 and the initial guess's roots y^(1/b)."""
    if b == 0.5:
        return np.sqrt(x, out=out)
    if b == 1.5:
        np.sqrt(x, out=out)
        return np.multiply(out, x, out=out)
    if b == 1.0:
        np.copyto(out, x)
        return out
    if b in (1.0 / 3.0, 2.0 / 3.0):
        np.cbrt(x, out=out)
        return out if b < 0.5 else np.multiply(out, out, out=out)
    if b in (2.0, 3.0):
        np.multiply(x, x, out=out)
        return out if b == 2.0 else np.multiply(out, x, out=out)
    return np.power(x, b, out=out)


def _log_above(x: np.ndarray, above: np.ndarray, out: np.ndarray, skip: int = 0) -> np.ndarray:
    """ln x where `above` (x > 0), 0 elsewhere, into `out`: the exponent of x^b = exp(b ln x).
    The first `skip` columns lie below every row's onset (_below_all): no log is taken there.

    Not ln TINY below the onset: exp(b ln TINY) underflows for b > 1.03, and the C library's exp
    takes a slow path for every such value (measured: exp 1.5x slower with b = 1.5, the largest
    single cost of an evaluation with b free). exp(0) = 1 is then zeroed by `above`.
    """
    np.maximum(x, TINY, out=out)
    np.log(out[:, skip:], out=out[:, skip:])
    return np.multiply(out, above, out=out)


FAST_EXPONENTS = (0.5, 1.0, 1.5, 2.0, 3.0)  # _power's forms without a general power
CUBE_ROOT_START = np.uint64(0x2A9F7893 << 32)  # bits(x) / 3 + this: x^(1/3) to ~5 bits (fdlibm's cbrt)


def _cube_root(x: np.ndarray, nonzero: np.ndarray, out: np.ndarray, work: np.ndarray) -> np.ndarray:
    """x^(1/3) into `out` (`work` a buffer of its shape) for x >= 0, normal floats or (signed) 0
    (`nonzero` is x > 0), to rounding (measured over 1e-300..1e300: within 4 ulp of np.cbrt).

    Why not np.cbrt: it has no SIMD form, ~15-25 ns a value measured here, the largest single cost
    of the guess with b free; this is ~6 ns. The start divides the exponent by 3 in the float's bits
    (fdlibm's first guess, ~5 bits right), then four Newton steps t <- (2 t + x / t^2) / 3 double
    the correct bits each (5 -> 10 -> 20 -> 40 -> 53). At x = 0 they would only shrink t: `nonzero`
    zeroes it.
    """
    bits = out.view(np.uint64)  # unsigned: a -0.0 (y times False) starts finite, as +0.0
    np.floor_divide(x.view(np.uint64), 3, out=bits)
    np.add(bits, CUBE_ROOT_START, out=bits)
    for _ in range(4):
        np.multiply(out, out, out=work)
        np.divide(x, work, out=work)
        out *= 2.0
        out += work
        out *= 1.0 / 3.0
    return np.multiply(out, nonzero, out=out)


def _row_powers(x, b, out, log_x=None, above=None, skip: int = 0) -> np.ndarray:
    """x_+^b into `out` for one b per row (b one value for all where log_x is None); x is
    clipped at 0 in place where _power is used, and left as it is by exp (one pass less).

    With b free, exp(b ln x) from log_x (_log_above) and zeroed below the onset (`above`), unless
    every row has the same b with a fast form (_power): the first evaluation, where each row
    starts from one of the guess's EXPONENT_CANDIDATES, often the same one for all (measured on
    the bench's 4000 onsets: all start at 1.5), does without its exp. No exp is taken in the first
    `skip` columns, below every row's onset (_below_all), where b ln x is 0 (_log_above) and
    `above` zeroes it.
    """
    if log_x is None or (b.size and b.min() == b.max() and float(b[0]) in FAST_EXPONENTS):
        return _power(np.maximum(x, 0.0, out=x), float(b[0]) if b.size else 1.0, out)
    np.multiply(log_x, b[:, None], out=out)
    np.exp(out[:, skip:], out=out[:, skip:])
    return np.multiply(out, above, out=out)


def _below_all(axis: np.ndarray, e_bg: np.ndarray) -> int:
    """How many leading values of the increasing `axis` (channel centres or edges) lie at or below
    every row's onset (0 where an onset is not finite): x = E - E_BG <= 0 there in every row.

    Why: with b free the exp and log are half of an evaluation's cost, and they are 0 there
    (_log_above, _row_powers); the fit takes its spectra in the order of their onsets, so that a
    block's lowest onset is high and a large share of its columns skips them. Only those two skip
    columns: a cheap ufunc on a (rows, columns) slice pays its per-row loop overhead, as much as
    its arithmetic at ~160 columns (measured on the bench's b-free fits: 3% faster skipping
    only these, 6% slower when every pass skipped them).
    """
    lowest = e_bg.min() if e_bg.size else np.nan
    return int(np.searchsorted(axis, lowest, side="right")) if np.isfinite(lowest) else 0


class _Basis:
    """The onset's shape s(E_BG, b) on the window's channels, and its derivatives.

    sampling "channel": a channel records the spectrum integrated over its width,
    so its expected value is the onset averaged over [lo, hi] (edges halfway between channel
    centres, the outer ones half a spacing out), with u = (edge - E_BG)_+:

        s      = [u_hi^(b+1) - u_lo^(b+1)] / ((b + 1) (hi - lo))
        ds/dE_BG = -[u_hi^b - u_lo^b] / (hi - lo)
        ds/db  = [F(u_hi) - F(u_lo)] / (hi - lo),   F(u) = u^(b+1) (ln u / (b + 1) - 1 / (b + 1)^2)

    s and both derivatives are continuous in E_BG for b > 0, so chi2 is smooth as the onset
    moves across a channel. sampling "point": s = x^b at the channel centres (x = E - E_BG > 0),
    ds/dE_BG = -b x^(b-1), ds/db = x^b ln x; ds/dE_BG jumps where E_BG crosses a centre, where
    chi2 has a kink (measured on the EELS chain: 90% of the onsets stopped 0.6-1.0 channel past
    an edge). Channel averaging costs one power on the channels' edges (one more value than
    channels) and one difference per column.

    shape() returns (s, ds/dE_BG column q, its coefficient e, ds/db column), with d model /
    d E_BG = -A e q (e = b for "point", 1 for "channel"), d model / db = A (ds/db column); the
    columns are None unless `jacobian`. The (rows, channels) arrays live in `scratch`.

    With a resolution kernel (2h + 1 values) the "channel" shape and its columns are made on
    the window widened by h channels each side (`inner`) and convolved back onto the window
    (`blur`, _toeplitz); the columns keep their meaning, as the convolution is linear.
    """

    def __init__(self, energy: np.ndarray, sampling: str, kernel: np.ndarray | None = None):
        self.energy = energy
        self.channel = sampling == "channel"
        self.blur = None
        if kernel is not None:  # the channel-averaged onset on h more channels each side
            h = kernel.size // 2
            step = (energy[-1] - energy[0]) / (energy.size - 1)
            wider = np.concatenate(
                [energy[0] - step * np.arange(h, 0, -1), energy, energy[-1] + step * np.arange(1, h + 1)]
            )
            self.inner = _Basis(wider, "channel")
            self.blur = _toeplitz(kernel, energy.size)
        elif self.channel:
            edges = channel_edges(energy)
            width = np.diff(edges)
            uniform = np.allclose(width, width[0], rtol=1e-9, atol=0)
            self.edges = edges
            self.inv_width = 1.0 / float(width.mean()) if uniform else 1.0 / width

    def shape(self, e_bg, b, b_free: bool, scratch, jacobian: bool = False, floor: float = 0.0):
        """floor ("point" only): x^(b-1) is evaluated at max(x, floor) (see the covariance)."""
        if self.blur is not None:
            return self._blurred(e_bg, b, b_free, scratch, jacobian)
        if self.channel:
            return self._channel(e_bg, b, b_free, scratch, jacobian)
        return self._point(e_bg, b, b_free, scratch, jacobian, max(floor, TINY))

    def _blurred(self, e_bg, b, b_free, scratch, jacobian):
        """The channel-averaged onset on the wider axis, convolved with the resolution: one
        product with the (wider, channels) Toeplitz matrix per column. The convolution is
        linear, so the derivatives are the convolved derivatives (exact, no differencing)."""
        m = e_bg.size
        inner = scratch.child(self.inner.energy.size)
        s_w, q_w, e_coef, b_w = self.inner._channel(e_bg, b, b_free, inner, jacobian)
        s = np.matmul(s_w, self.blur, out=scratch("s", m))
        if not jacobian:
            return s, None, None, None
        q = np.matmul(q_w, self.blur, out=scratch("q", m))
        b_col = np.matmul(b_w, self.blur, out=scratch("s_log_x", m)) if b_free else None
        return s, q, e_coef, b_col

    def _point(self, e_bg, b, b_free, scratch, jacobian, floor):
        m = e_bg.size
        x = np.subtract(self.energy[None, :], e_bg[:, None], out=scratch("x", m))
        s = scratch("s", m)
        skip = _below_all(self.energy, e_bg)
        log_x = above = None
        if b_free:
            # ln max(x, TINY), not ln x where x > 0: a masked ufunc runs several times slower. Below the
            # onset that is set to 0 (_log_above); s ln x is then 0 there as s is.
            above = np.greater(x, 0.0, out=scratch("above", m, bool))
            log_x = _log_above(x, above, scratch("log_x", m), skip)
        _row_powers(x, b, s, log_x, above, skip)  # s / max(x, floor) below is then 0, clipped or not
        if not jacobian:
            return s, None, None, None
        q = np.maximum(x, floor, out=scratch("q", m))
        np.divide(s, q, out=q)  # x^(b - 1) above the onset, 0 below
        b_col = np.multiply(s, log_x, out=scratch("s_log_x", m)) if b_free else None
        return s, q, b, b_col

    def _channel(self, e_bg, b, b_free, scratch, jacobian):
        m = e_bg.size
        u = np.subtract(self.edges[None, :], e_bg[:, None], out=scratch("u", m, extra=1))
        p = scratch("p", m, extra=1)  # u_+^b, 0 below the onset: so is g = p u, clipped u or not
        skip = _below_all(self.edges, e_bg)
        log_u = above = None
        if b_free:  # ln u above the onset, 0 below, as in _point; F(u) below is u^(b+1) (...): 0 at u = 0
            above = np.greater(u, 0.0, out=scratch("above_edges", m, bool, extra=1))
            log_u = _log_above(u, above, scratch("log_u", m, extra=1), skip)
        _row_powers(u, b, p, log_u, above, skip)
        g = np.multiply(p, u, out=u)  # u^(b+1)
        s = np.subtract(g[:, 1:], g[:, :-1], out=scratch("s", m))
        s *= self.inv_width
        if b_free:
            s /= (b + 1.0)[:, None]
        else:
            s /= float(b[0]) + 1.0 if m else 1.0
        if not jacobian:
            return s, None, None, None
        q = np.subtract(p[:, 1:], p[:, :-1], out=scratch("q", m))
        q *= self.inv_width
        b_col = None
        if b_free:
            inv = 1.0 / (b + 1.0)
            f = np.multiply(log_u, inv[:, None], out=log_u)  # F(u), 0 at u = 0
            f -= (inv * inv)[:, None]
            f *= g
            b_col = np.subtract(f[:, 1:], f[:, :-1], out=scratch("s_log_x", m))
            b_col *= self.inv_width
        return s, q, np.ones_like(e_bg), b_col


def _profile(
    basis: _Basis,
    y,
    weight,
    e_bg,
    b,
    b_free: bool,
    background: bool,
    sums_e,
    scratch,
    s_yy=None,
    jacobian: bool = False,
    floor: float = 0.0,
):
    """The chi2-optimal A and c >= 0 for given E_BG and b (the model is linear in both), and
    the pieces the normal equations reuse. c is 0 without a background, or where the
    unconstrained optimum has c < 0 (`held`). b is one value for all when not b_free.
    sums_e: (sum w E^2, sum w E y) per spectrum, with a background. The (rows, channels)
    results live in `scratch` (_Scratch) until its next use. With s_yy (sum w y^2) given, chi2
    comes from the sums, sum w y^2 - A sum w s y - c sum w E y (exact at the linear optimum, but
    cancellation costs it digits, so only to rank starts), and no residual is formed.
    jacobian, floor: as for _Basis.shape.

    Returns (s, ds/dE_BG column, its coefficient, ds/db column (see _Basis), w s, sum w s^2,
    sum w s E (or None), A, c, held, residual y - A s - c E (or None), chi2).
    """
    m = e_bg.size
    energy = basis.energy
    s, q, e_coef, b_col = basis.shape(e_bg, b, b_free, scratch, jacobian, floor)
    ws = np.multiply(weight, s, out=scratch("ws", m))
    ss = np.vecdot(ws, s)
    sy = np.vecdot(ws, y)
    positive = ss > 0
    amplitude = np.where(positive, sy / np.where(positive, ss, 1.0), np.nan)
    slope, held, se = np.zeros(m), np.ones(m, bool), None
    if background:
        s_ee, s_ey = sums_e
        se = np.vecdot(ws, energy)
        det = ss * s_ee - se**2
        solvable = det > RCOND * ss * s_ee
        det = np.where(solvable, det, 1.0)
        joint_a, joint_c = (s_ee * sy - se * s_ey) / det, (ss * s_ey - se * sy) / det
        use = solvable & (joint_c > 0)
        amplitude, slope = np.where(use, joint_a, amplitude), np.where(use, joint_c, 0.0)
        held = ~use
    if s_yy is not None:
        chi2 = s_yy - amplitude * sy - (slope * sums_e[1] if background else 0.0)
        return s, q, e_coef, b_col, ws, ss, se, amplitude, slope, held, None, chi2
    residual = np.multiply(s, amplitude[:, None], out=scratch("residual", m))
    np.subtract(y, residual, out=residual)
    if background:
        residual -= np.multiply(energy[None, :], slope[:, None], out=scratch("line", m))
    chi2 = np.vecdot(np.multiply(weight, residual, out=scratch("w_residual", m)), residual)
    return s, q, e_coef, b_col, ws, ss, se, amplitude, slope, held, residual, chi2


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


def _damped_steps(hess, grad, lam):
    """_damped_step at damping lam and at 0 (the Gauss-Newton step) together: (step, newton,
    solvable). In closed form for one or two parameters, where np.linalg's per-call overhead
    would outweigh the arithmetic on the few spectra left after most have converged."""
    p = hess.shape[-1]
    if p > 2:
        (step, safe), (newton, _) = _damped_step(hess, grad, lam), _damped_step(hess, grad, 0 * lam)
        return step, newton, safe
    unit, d, safe = _normalised(hess)
    z = grad / d
    steps = []
    for damping in (lam, np.zeros_like(lam)):
        if p == 1:
            det = unit[:, 0, 0] + damping
            solved = z / np.where(det > RCOND, det, 1.0)[:, None]
        else:
            a, r = unit[:, 0, 0] + damping, unit[:, 0, 1]
            det = a * (unit[:, 1, 1] + damping) - r * r
            inv = 1.0 / np.where(det > RCOND, det, 1.0)
            solved = np.stack(
                [
                    ((unit[:, 1, 1] + damping) * z[:, 0] - r * z[:, 1]) * inv,
                    (a * z[:, 1] - r * z[:, 0]) * inv,
                ],
                axis=1,
            )
        if damping is lam:
            safe &= det > RCOND
        steps.append(solved / d)
    return np.where(safe[:, None], steps[0], 0.0), np.where(safe[:, None], steps[1], 0.0), safe


def _adjugate(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(adj M, det M) per row of 2x2 or 3x3 matrices M, in closed form (cofactors).

    Why not np.linalg.det and inv: for a batch of small matrices their per-matrix cost is most of
    their time (measured, the covariance's 4000 3x3 of the b-free bench: _inverse_diagonal 3.2 ->
    1.5 ms of a ~110 ms fit).
    """
    if m.shape[-1] == 2:
        a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
        return np.stack([np.stack([d, -b], 1), np.stack([-c, a], 1)], 1), a * d - b * c
    (a, b, c), (d, e, f), (g, h, i) = (m[:, k].T for k in range(3))
    cofactors = np.stack(
        [
            np.stack([e * i - f * h, f * g - d * i, d * h - e * g], 1),
            np.stack([c * h - b * i, a * i - c * g, b * g - a * h], 1),
            np.stack([b * f - c * e, c * d - a * f, a * e - b * d], 1),
        ],
        1,
    )
    return cofactors.transpose(0, 2, 1), (m[:, 0] * cofactors[:, 0]).sum(axis=1)


def _inverse(hess):
    """H^-1 per row, and where it exists (elsewhere the identity's inverse stands in)."""
    unit, d, safe = _normalised(hess)
    p = hess.shape[-1]
    if p <= 3:
        adjugate, det = _adjugate(unit) if p > 1 else (np.ones_like(unit), unit[:, 0, 0])
        safe &= det > RCOND
        inverse = np.where(safe[:, None, None], adjugate / np.where(safe, det, 1.0)[:, None, None], np.eye(p))
    else:
        safe &= np.linalg.det(unit) > RCOND
        inverse = np.linalg.inv(np.where(safe[:, None, None], unit, np.eye(p)))
    return inverse / (d[:, :, None] * d[:, None, :]), safe


def _inverse_diagonal(hess):
    """diag(H^-1) per row: the parameter variances; NaN where H is (near) singular."""
    inverse, safe = _inverse(hess)
    return np.where(safe[:, None], np.diagonal(inverse, axis1=1, axis2=2), np.nan)


def _sandwich_diagonal(hess, meat):
    """diag(H^-1 M H^-1) per row: the sandwich covariance's variances; NaN where H is (near)
    singular."""
    bread, safe = _inverse(hess)
    meat = np.where(safe[:, None, None], meat, 0.0)
    return np.where(safe[:, None], np.einsum("nij,njk,nik->ni", bread, meat, bread), np.nan)


def _grid_start(basis: _Basis, y, weight, grid, b: float, background: bool, sums):
    """The best of the onsets `grid` (the same for every spectrum) at exponent b: (A, c) and
    chi2 profiled as in _profile, for all onsets at once.

    The shapes (E - E_BG)^b do not depend on the spectrum, so every weighted sum over channels
    is one matrix product, and the profiled chi2 follows from the sums (at the optimum of the
    linear parameters chi2 = sum w y^2 - A sum w s y - c sum w E y). That form loses digits to
    cancellation, so it only ranks the onsets; the winner's chi2 is recomputed from its
    residuals. Returns (amplitude, e_bg, slope, chi2), NaN / inf where no onset is usable.
    """
    s_ee, s_ey, s_yy, wy, we = sums
    energy = basis.energy
    shape = basis.shape(grid, np.full(grid.size, b), False, _Scratch(grid.size, energy.size))[0]  # (K, M)
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


TINY = 1e-300  # x floor in s / x: where x <= 0, s = 0 and so is the column
# 1 - h floor in the HC3 filling: a channel that alone fixes a parameter (leverage h -> 1) counts
# its residual at most 1 / LEVERAGE_GAP times
LEVERAGE_GAP = 1e-3


class _Projected:
    """The fit's state at given nonlinear parameters (E_BG, and b if free) for a batch: the
    linear ones (A, and c >= 0 with a background) profiled in closed form, chi2, and the
    normal equations of the nonlinear parameters alone (variable projection).

    With theta_l the linear and theta_p the nonlinear parameters and H the Gauss-Newton normal
    matrix of all of them, the step in theta_p with theta_l re-profiled after it solves the Schur
    complement H_pp - H_pl H_ll^-1 H_lp: its gradient J_p^T W r needs no correction, as the
    profiled theta_l make J_l^T W r vanish. A c held on its bound 0 drops out of theta_l (its
    row of H is zeroed), as the active set of the full problem holds it.

    Every weighted sum over channels comes from one product of each Jacobian column (unscaled:
    s = x^b, s / x, s ln x, E) with the weights, so an iteration costs one power (exp and log
    with b free), ~15 passes over (n, channels) and no second model evaluation.
    """

    def __init__(
        self,
        basis: _Basis,
        y,
        weight,
        e_bg,
        b,
        b_free: bool,
        background: bool,
        sums_e,
        scratch,
        floor: float = 0.0,
        sandwich: bool = False,
    ):
        s, q, e_coef, b_col, ws, ss, se, amplitude, slope, held, residual, chi2 = _profile(
            basis, y, weight, e_bg, b, b_free, background, sums_e, scratch, jacobian=True, floor=floor
        )
        self.amplitude, self.slope, self.chi2 = amplitude, slope, chi2
        energy = basis.energy

        # Jacobian columns, unscaled, and their factors: d model / d theta = factor * column
        m = e_bg.size
        columns = [s] + [None] * background + [q] + [b_col] * b_free
        factors = [np.ones_like(amplitude)] + [np.ones_like(amplitude)] * background
        factors += [-e_coef * amplitude] + [amplitude] * b_free
        n_l = 1 + background
        weighted = (
            [ws]
            + [None] * background
            + [np.multiply(weight, c, out=scratch(f"weighted_{k}", m)) for k, c in enumerate(columns[n_l:])]
        )
        k = len(columns)
        gram = np.empty((e_bg.size, k, k))
        for i in range(k):
            for j in range(i, k):
                if i == 1 and background:  # the line E: sums with it are products with E
                    value = sums_e[0] if j == 1 else np.vecdot(weighted[j], energy)
                elif j == 1 and background:
                    value = se
                elif i == 0 and j == 0:
                    value = ss
                else:
                    value = np.vecdot(weighted[i], columns[j])
                gram[:, i, j] = gram[:, j, i] = value * factors[i] * factors[j]
        if background:  # c held at 0: not a linear parameter at this point
            gram[held, 1, :] = 0.0
            gram[held, :, 1] = 0.0
            gram[held, 1, 1] = 1.0
        self.gram = gram  # the full normal matrix, columns (A, c, E_BG, b) as fitted
        if sandwich:
            self.meat = self._filling(energy, weight, residual, columns, factors, held, background)
        h_ll, h_lp, h_pp = gram[:, :n_l, :n_l], gram[:, :n_l, n_l:], gram[:, n_l:, n_l:]
        if n_l == 1:  # A alone: H_ll^-1 H_lp is a division (np.linalg's per-call cost is not)
            ok = np.isfinite(h_ll[:, 0, 0]) & (h_ll[:, 0, 0] != 0)
            solved = h_lp / np.where(ok, h_ll[:, 0, 0], 1.0)[:, None, None]
        else:
            ok = np.isfinite(h_ll).all(axis=(1, 2)) & (np.abs(np.linalg.det(h_ll)) > 0)
            solved = np.linalg.solve(np.where(ok[:, None, None], h_ll, np.eye(n_l)), h_lp)
        self.hess = h_pp - np.einsum("nlp,nlq->npq", h_lp, solved)
        self.grad = np.stack(
            [np.vecdot(w_col, residual) * f for w_col, f in zip(weighted[n_l:], factors[n_l:])],
            axis=1,
        )

    def _filling(self, energy, weight, residual, columns, factors, held, background: bool):
        """J^T W diag(r_i^2 / (1 - h_i)^2) W J: the filling of the HC3 sandwich covariance, with
        h_i = w_i J_i H^-1 J_i^T channel i's leverage (see fit_bandgap's covariance)."""
        jac = [(energy[None, :] if c is None else c) * f[:, None] for c, f in zip(columns, factors)]
        if background:  # a c held on its bound 0 is fixed there: no column
            jac[1] = jac[1] * ~held[:, None]
        inverse, _ = _inverse(self.gram)
        k = len(jac)
        leverage = weight * sum(jac[i] * jac[j] * inverse[:, i, j, None] for i in range(k) for j in range(k))
        scaled = weight * residual / np.maximum(1.0 - leverage, LEVERAGE_GAP)
        scored = [scaled * column for column in jac]
        meat = np.empty_like(self.gram)
        for i in range(k):
            for j in range(i, k):
                meat[:, i, j] = meat[:, j, i] = np.vecdot(scored[i], scored[j])
        return meat


BLOCK_ROWS = 1024  # spectra per evaluation block (_projected)


def _blocks(rows: int) -> list[slice]:
    """Slices of at most BLOCK_ROWS covering `rows` spectra (one, empty, for none)."""
    return [slice(start, start + BLOCK_ROWS) for start in range(0, max(rows, 1), BLOCK_ROWS)]


def _sums_rows(sums_e, rows: slice):
    """sums_e (see _profile) of the spectra `rows`, or None without a background."""
    return None if sums_e is None else (sums_e[0][rows], sums_e[1][rows])


def _projected(
    basis: _Basis,
    y,
    weight,
    e_bg,
    b,
    b_free: bool,
    background: bool,
    sums_e,
    scratch,
    floor: float = 0.0,
    sandwich: bool = False,
) -> _Projected:
    """_Projected for the batch, BLOCK_ROWS spectra at a time, with its per-spectrum results joined.

    An evaluation makes ~25 passes over (spectra, channels) arrays in ~15 buffers; at 4000 x 161
    channels those are 5 MiB each, together more than the cache, and each pass reads them back
    from memory. Blocks of 1024 (1.3 MiB a buffer) stay in it: measured on the bench's onsets,
    an evaluation's time per spectrum 4.1 -> 3.5 us with b free, 1.8 -> 1.4 us with b fixed.
    """
    parts = [
        _Projected(
            basis,
            y[r],
            weight[r],
            e_bg[r],
            b[r],
            b_free,
            background,
            _sums_rows(sums_e, r),
            scratch,
            floor,
            sandwich,
        )
        for r in _blocks(e_bg.size)
    ]
    if len(parts) == 1:
        return parts[0]
    joined = object.__new__(_Projected)
    for name in vars(parts[0]):
        setattr(joined, name, np.concatenate([getattr(part, name) for part in parts]))
    return joined


def _initial_guess(basis: _Basis, y, weight, exponents, n_free, background: bool, sums_e, scratch):
    """Start (n, 4) from the linearised fit of y^(1/b) vs E over the channels with clear signal,
    or with a background from that and a grid of onsets across the window, whichever has the
    lowest chi2. sums_e, scratch as for _profile."""
    n = y.shape[0]
    energy = basis.energy
    clear = y > SIGNAL_FRACTION  # y is scaled to a maximum |value| of 1
    count = clear.sum(axis=1)
    de = np.multiply(clear, energy, out=scratch("de", n))  # no temporaries: see _Scratch
    e_mean = de.sum(axis=1) / np.maximum(count, 1)
    np.subtract(energy, e_mean[:, None], out=de)
    de *= clear
    spread = np.vecdot(de, de)
    span = energy[-1] - energy[0]
    best = np.full((n, 4), np.nan)
    best_chi2 = np.full(n, np.inf)
    s_yy = np.vecdot(np.multiply(weight, y, out=scratch("ws", n)), y)  # ws: free until _profile
    if background:
        grid = np.linspace(energy[0], energy[-(n_free + 2)], BACKGROUND_STARTS)
        wy, we = weight * y, weight * energy
        sums = (*sums_e, s_yy, wy, we)
    y_clear = np.multiply(y, clear, out=scratch("y_clear", n))  # y > SIGNAL_FRACTION there, else 0
    cube_root = None  # y^(1/3), for b = 3 and 1.5 (y^(2/3)), made once (_cube_root)
    for b in exponents:
        root = 1.0 / b
        if root in (1.0 / 3.0, 2.0 / 3.0):
            if cube_root is None:
                cube_root = _cube_root(y_clear, clear, scratch("cube_root", n), scratch("q", n))
            z = cube_root if root < 0.5 else np.multiply(cube_root, cube_root, out=scratch("q", n))
        else:
            z = _power(y_clear, root, scratch("q", n))  # _Projected's buffer, free until then
        z_mean = z.sum(axis=1) / np.maximum(count, 1)
        # sum de (z - z_mean) = sum de z: de sums to 0 over the clear channels, 0 elsewhere
        slope = np.vecdot(de, z) / np.where(spread > 0, spread, 1.0)
        e_bg = np.where(
            (count >= 2) & (slope > 0),
            e_mean - z_mean / np.where(slope > 0, slope, 1.0),
            energy[0] - 0.1 * span,
        )  # no line: assume the onset sits just below
        e_bg = np.clip(e_bg, energy[0] - span, energy[-(n_free + 2)])
        b_arr = np.full(n, b)
        *_, amplitude, slope, _, _, chi2 = _profile(
            basis, y, weight, e_bg, b_arr, False, background, sums_e, scratch, s_yy
        )
        starts = [(amplitude, e_bg, slope, chi2)]
        if background:
            starts.append(_grid_start(basis, y, weight, grid, b, background, sums))
        for amplitude, start, slope, chi2 in starts:
            better = np.isfinite(amplitude) & (amplitude > 0) & (chi2 < best_chi2)
            best[better] = np.stack([amplitude, start, b_arr, slope], axis=1)[better]
            best_chi2[better] = chi2[better]
    return best


# Trial onsets past a channel, flat spectra and empty windows make inf and NaN on purpose: the
# validity masks turn them into "not converged", so numpy's warnings would only be noise to a user.
@np.errstate(over="ignore", invalid="ignore", divide="ignore")
def fit_bandgap(
    spectra,
    energy,
    *,
    window: tuple[float, float] | None = None,
    exponent: float | None = None,
    background: Literal["none", "linear"] = "none",
    sigma=None,
    sampling: Literal["channel", "point"] | None = None,
    resolution=None,
    max_iter: int = 200,
    xtol: float = 1e-8,
    step_tol: float = 1e-2,
) -> BandgapFit:
    """Fit A (E - E_BG)^b to every spectrum (energy last) over the channels inside `window`.

    exponent: b fixed to this value, or None to fit it.
    background: "linear" fits a term c E (c >= 0) jointly with the onset (module docstring).
    sigma: per-channel errors: None (unweighted; HC3 sandwich covariance, module docstring),
        "poisson" (sigma^2 = max(y, 1): counts, absolute) or an array that broadcasts
        against the spectra (absolute errors, as curve_fit with absolute_sigma=True).
    sampling: "point" fits the onset at the channel centres (power_onset), "channel" the onset
        averaged over each channel (edges halfway between the centres; channel_onset), which is
        smooth in E_BG (module docstring). None: "point", or "channel" with a resolution.
    resolution: None, or the instrument's response that the onset is convolved with (module
        docstring): a FWHM in eV (a Gaussian, gaussian_resolution) or a kernel sampled on the
        window's channel spacing, odd length, the zero-loss offset in its middle (e.g. the
        measured ZLP), normalised here. Needs a uniform energy axis and channel sampling.
    """
    spectra = np.asarray(spectra)
    energy = np.asarray(energy, dtype=np.float64)
    if energy.ndim != 1 or energy.size != spectra.shape[-1]:
        raise ValueError(
            f"energy must be 1-D with one value per channel: got {energy.shape} for "
            f"spectra of shape {spectra.shape}"
        )
    lead = spectra.shape[:-1]
    inside = np.ones(energy.size, bool) if window is None else (energy >= window[0]) & (energy <= window[1])
    energy_w = energy[inside]
    if background not in ("none", "linear"):
        raise ValueError(f"background must be 'none' or 'linear', not {background!r}")
    if sampling is None:
        sampling = "point" if resolution is None else "channel"
    if sampling not in ("channel", "point"):
        raise ValueError(f"sampling must be 'channel' or 'point', not {sampling!r}")
    if resolution is not None and sampling != "channel":
        raise ValueError("a resolution convolves the channel-averaged onset: sampling must be 'channel'")
    b_free, with_background = exponent is None, background == "linear"
    # theta columns being fitted: (A, E_BG), then b if free, then c if a background is
    free = [A, E_BG] + [B] * b_free + [C] * with_background
    n_free = len(free)
    if energy_w.size < n_free + 2 or not np.all(np.diff(energy_w) > 0):
        raise ValueError(
            f"the window needs at least {n_free + 2} channels on an increasing "
            f"energy axis, found {energy_w.size}"
        )
    kernel = resolution_kernel(resolution, energy_w)
    # In place where it can be: every (spectra, channels) array made here is new memory
    # (see _Scratch), and these are made once per call.
    channels = np.flatnonzero(inside)
    if channels.size and channels[-1] - channels[0] + 1 == channels.size:
        channels = slice(channels[0], channels[-1] + 1)  # a view, not a gathered copy
    spectra_2d = spectra.reshape(-1, spectra.shape[-1])
    n = spectra_2d.shape[0]
    # buffers kept between calls (_kept_scratch): the batch's data, and one block's evaluations
    batch = _kept_scratch("batch", n, energy_w.size)
    scratch = _kept_scratch("block", min(n, BLOCK_ROWS), energy_w.size)
    y = batch("y", n)
    np.copyto(y, spectra_2d[:, channels], casting="unsafe")  # as np.array(..., dtype=float64)
    if isinstance(sigma, str) and sigma != "poisson":
        raise ValueError(f"sigma must be None, 'poisson' or an array, not {sigma!r}")
    # Scale each spectrum to a largest |value| of 1 (chi2 is unchanged: y and err scale alike).
    # max |y| from two reductions (no |y| temporary); a NaN or inf anywhere in a row makes its
    # scale NaN or inf, so a finite positive scale also says the row is finite
    scale = np.maximum(y.max(axis=1), -y.min(axis=1))
    usable = (scale > 0) & np.isfinite(scale)
    if sigma is None:
        weight = batch("weight", n)
        weight.fill(1.0)
    elif isinstance(sigma, str):  # Poisson: err^2 = max(y, 1), finite and positive with y
        weight = np.maximum(y, 1.0, out=batch("weight", n))
        np.divide((scale * scale)[:, None], weight, out=weight)
    else:
        err = np.broadcast_to(np.asarray(sigma, np.float64), spectra.shape)
        err = err.reshape(-1, spectra.shape[-1])[:, channels]
        usable &= np.isfinite(err).all(axis=1) & (err > 0).all(axis=1)
        weight = (scale[:, None] / np.where(err > 0, err, 1.0)) ** 2
        usable &= np.isfinite(weight).all(axis=1)  # err so small that 1 / err^2 overflows
    scale = np.where(usable, scale, 1.0)
    y /= scale[:, None]
    if not usable.all():
        y[~usable] = 0.0
        weight[~usable] = 1.0

    exponents = EXPONENT_CANDIDATES if exponent is None else (float(exponent),)
    sums_e = (
        (np.einsum("nm,m->n", weight, energy_w**2), np.einsum("nm,nm,m->n", weight, y, energy_w))
        if with_background
        else None
    )
    basis = _Basis(energy_w, sampling, kernel)
    theta = np.concatenate(  # in blocks, as the evaluations (_projected): 8.0 -> 7.1 us a spectrum
        [
            _initial_guess(
                basis, y[r], weight[r], exponents, n_free, with_background, _sums_rows(sums_e, r), scratch
            )
            for r in _blocks(n)
        ]
    )
    active = usable & _valid(theta, energy_w, n_free, b_free)
    lam = np.full(n, LAMBDA_START)
    nu = np.full(n, 2.0)  # growth of lam after a rejected step (gain-ratio damping, below)
    chi2 = np.full(n, np.inf)
    converged = np.zeros(n, bool)
    iterations = np.zeros(n, np.int32)
    dof = energy_w.size - n_free
    nonlinear = [E_BG] + [B] * b_free

    # Levenberg-Marquardt on (E_BG, b) with (A, c) profiled (_Projected). The spectra still
    # iterating are compacted (their data gathered again only when some stop, once an iteration:
    # those that stop before their trial leave first, so the trial needs no gather of its own);
    # each keeps the normal equations of its current point, so an iteration evaluates the model
    # once, at the trial point.
    def spare(name, array):
        """The one of two kept buffers `name` that `array` is not in: the spectra still iterating
        are gathered there when some stop (into new memory, each would cost its page faults)."""
        first = batch(name + "0", n)
        return batch(name + "1", n) if np.may_share_memory(array, first) else first

    def project(th):
        """_Projected at th for the spectra still iterating, and th with A and c profiled."""
        state = _projected(
            basis,
            yy,
            w,
            th[:, E_BG],
            th[:, B],
            b_free,
            with_background,
            (see, sey) if with_background else None,
            scratch,
        )
        th = th.copy()
        th[:, A], th[:, C] = state.amplitude, state.slope
        return state, th

    def keep(mask):
        """Compact the spectra still iterating (positions idx, their normal equations and data) to
        those where `mask`."""
        nonlocal idx, hess, grad, w, yy, see, sey
        idx, hess, grad = idx[mask], hess[mask], grad[mask]
        w, yy = _rows(w, mask, spare("w", w)), _rows(yy, mask, spare("y", yy))
        if with_background:
            see, sey = see[mask], sey[mask]

    idx = np.flatnonzero(active)
    if b_free:  # by onset, for the exp and log it skips (_below_all); a fixed b takes neither
        idx = idx[np.argsort(theta[idx, E_BG], kind="stable")]
        w = np.take(weight, idx, axis=0, out=spare("w", weight)[: idx.size])
        yy = np.take(y, idx, axis=0, out=spare("y", y)[: idx.size])
    else:
        w, yy = _rows(weight, idx, spare("w", weight)), _rows(y, idx, spare("y", y))
    see = sey = None
    if with_background:
        see, sey = sums_e[0][idx], sums_e[1][idx]
    state, theta[idx] = project(theta[idx])
    chi2[idx] = state.chi2
    hess, grad = state.hess, state.grad
    # A start outside the domain once A is profiled (A <= 0) never converges; every later point
    # is an accepted, valid trial
    keep(_valid(theta[idx], energy_w, n_free, b_free))
    final = np.zeros((n, len(nonlinear)))  # the last Gauss-Newton step, taken at the end
    for _ in range(max_iter):
        if idx.size == 0:
            break
        iterations[idx] += 1
        step, newton, solvable = _damped_steps(hess, grad, lam[idx])
        # chi2's decrease predicted by the linearised model for the damped step s (for the
        # gain-ratio damping below): 2 s^T g - s^T H s = s^T g + lam s^T diag(H) s, as
        # (H + lam diag H) s = g
        diagonal = np.diagonal(hess, axis1=1, axis2=2)
        predicted = (step * grad).sum(axis=1) + lam[idx] * (step * step * diagonal).sum(axis=1)
        # Stop where the undamped Gauss-Newton step is shorter than step_tol standard errors
        # (its length in that metric is s^T H s = g^T s, with the noise level estimated by
        # chi2 / dof): the rest is far below the statistical error, so no trial is made.
        # Without this test an onset next to a channel centre (sampling "point": the Jacobian
        # jumps there) oscillates towards it for hundreds of steps. Where a tiny step cannot
        # lower chi2 (noiseless data: chi2 -> 0), the step's relative size ends it after that step.
        flat = solvable & ((newton * grad).sum(axis=1) <= step_tol**2 * chi2[idx] / dof)
        final[idx[flat]] = newton[flat]
        converged[idx[flat]] = True
        go = solvable & ~flat  # the others stop here: converged (flat) or singular
        if not go.all():
            step, predicted = step[go], predicted[go]
            keep(go)
            if idx.size == 0:
                break
        th = theta[idx]
        small = (np.abs(step) <= xtol * (np.abs(th[:, nonlinear]) + xtol)).all(axis=1)
        th[:, nonlinear] += step
        trial_state, trial = project(th)
        before = chi2[idx]
        accept = _valid(trial, energy_w, n_free, b_free) & (trial_state.chi2 <= before)
        theta[idx[accept]] = trial[accept]
        chi2[idx[accept]] = trial_state.chi2[accept]
        hess[accept], grad[accept] = trial_state.hess[accept], trial_state.grad[accept]
        # Gain-ratio damping (Nielsen 1999; Madsen, Nielsen & Tingleff 2004, eq. 2.21): with
        # rho = actual / predicted decrease, lam * max(1/3, 1 - (2 rho - 1)^3) after an accepted
        # step, lam * nu (nu doubling) after a rejected one. Under a model that misses the data
        # by many sigma the Gauss-Newton curvature is too small, and at a channel (sampling
        # "channel": the curvature in E_BG is unbounded at an edge for b < 1, the u^b of the
        # edge) or centre ("point": the Jacobian jumps there) it changes abruptly: full steps
        # overshoot, and dividing lam by 10 after each small gain let them zigzag (measured:
        # channel, 4 of 200 onsets under a falling background, and b = 0.5 onsets at an edge,
        # still going after 200 iterations; point, 4000 Poisson onsets with b = 1.5 fixed / free:
        # at most 42 / 90 iterations, now 16 / 19, 99% quantile 19 -> 12 with b free; on the
        # EELS chain, RMS pull 1.26 -> 1.19, tests/ops/test_eels_bandgap_chain.py).
        gain = (before - chi2[idx]) / np.where(predicted > 0, predicted, np.inf)
        shrink = np.maximum(1.0 / 3.0, 1.0 - (2.0 * gain - 1.0) ** 3)
        lam[idx] = np.where(accept, np.maximum(lam[idx] * shrink, 1e-12), lam[idx] * nu[idx])
        nu[idx] = np.where(accept, 2.0, 2.0 * nu[idx])
        converged[idx[small]] = True
        stop = small | (lam[idx] > LAMBDA_MAX)
        if stop.any():
            keep(~stop)

    # Covariance from the weighted Jacobian at the optimum. With sampling "channel" the model's
    # sensitivity to E_BG is the onset's slope averaged over each channel, bounded by nature.
    # With "point" it is bounded here by the slope half a channel above the onset (a channel
    # records the spectrum averaged over its width): the point-sampled x^(b-1) diverges for b < 1
    # when the onset lands just below a channel and would claim errors 10^4 times too small.
    # A c held on its bound is a fixed parameter there: variance 0.
    # The same evaluation takes the last Gauss-Newton step (shorter than step_tol standard
    # errors, so not worth a trial of its own) where it keeps theta valid and does not raise chi2.
    errors = np.full((n, 4), np.nan)
    idx = np.flatnonzero(converged)
    if idx.size:
        half_channel = 0.5 * float(np.median(np.diff(energy_w)))

        def evaluate(rows, th):
            state = _projected(
                basis,
                _rows(y, rows, batch("y_trial", n)),
                _rows(weight, rows, batch("w_trial", n)),
                th[:, E_BG],
                th[:, B],
                b_free,
                with_background,
                (sums_e[0][rows], sums_e[1][rows]) if with_background else None,
                scratch,
                0.0 if basis.channel else half_channel,
                sigma is None,
            )
            th = th.copy()
            th[:, A], th[:, C] = state.amplitude, state.slope
            meat = state.meat if sigma is None else state.gram
            return np.stack([state.gram, meat], axis=1), state.chi2, th

        th = theta[idx].copy()
        th[:, nonlinear] += final[idx]
        gram, chi2_end, th = evaluate(idx, th)
        worse = ~_valid(th, energy_w, n_free, b_free) | ~(chi2_end <= chi2[idx])
        if worse.any():
            gram[worse], chi2_end[worse], th[worse] = evaluate(idx[worse], theta[idx[worse]])
        theta[idx], chi2[idx] = th, chi2_end
        order = [0] + list(range(1 + with_background, gram.shape[-1])) + [1] * with_background
        gram = gram[..., order, :][..., order]  # columns as `free`
        if sigma is None:  # HC3 sandwich: each channel's squared residual as its variance
            variance = _sandwich_diagonal(gram[:, 0], gram[:, 1])
        else:
            variance = _inverse_diagonal(gram[:, 0])
        errors[np.ix_(idx, free)] = np.sqrt(np.where(variance >= 0, variance, np.nan))
        if with_background:
            errors[idx[theta[idx, C] <= 0], C] = 0.0
        converged[idx] = np.isfinite(errors[np.ix_(idx, free)]).all(axis=1) & _valid(
            theta[idx], energy_w, n_free, b_free, EDGE_MARGIN
        )
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
        e_bg=theta[:, E_BG].reshape(lead),
        amplitude=theta[:, A].reshape(lead),
        exponent=theta[:, B].reshape(lead),
        background=theta[:, C].reshape(lead),
        e_bg_error=errors[:, E_BG].reshape(lead),
        amplitude_error=errors[:, A].reshape(lead),
        exponent_error=errors[:, B].reshape(lead),
        background_error=errors[:, C].reshape(lead),
        chi2=chi2.reshape(lead),
        converged=converged.reshape(lead),
        iterations=iterations.reshape(lead),
    )
