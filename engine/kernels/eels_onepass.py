"""One-pass aligned log-ratio thickness as a compiled loop per spectrum (numpy float32/float64).

The array-API kernel (engine.kernels.eels.aligned_log_ratio_thickness) makes ~40 vectorised
passes and gathers per chunk: 3.1-3.6 CPU-ms per 32 x 32 x 2048 float32 chunk against 2.3-2.6 to
decode it (load 4-5). Here, 0.8-0.9 CPU-ms, each spectrum is visited once, in cache: the total and the
noise level, the ZLP search and its half-height points, the subpixel top fit, the first minimum
and the few partial sums the shifted integrals need. The rules are those of eels.py (its
constants and docstrings are the specification); float32 element-wise arithmetic is reproduced
by rounding float64 results to float32 (exact for +, -, *, /, sqrt), so the ZLP shifts and
`found` match the array path. The sums are float64 here (float32 einsum there), so t/lambda
agrees to the rounding of float32 sums (~1e-6). The GIL is released: dask runs chunks on threads.
One-off costs per process: importing numba and loading these from numba's cache ~0.65 CPU-s
(+~150 MiB resident, 110 of it llvmlite's shared library), ~2.3 CPU-ms saved per chunk: even at
~3 x 10^5 spectra; compiling on a cold cache (first run after an edit) ~4.4 CPU-s for float32.
"""

from __future__ import annotations

import numba
import numpy as np

from .eels import (
    _FIT_ITERATIONS,
    _NOISE_CHANNELS,
    _PEAK_KERNEL,
    _PROMINENCE_SIGMAS,
    _half_reach,
    _search_window,
)

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}  # numpy: x / 0 is inf, not a raise
_SUM_JIT = {**_JIT, "fastmath": {"reassoc", "nsz"}}  # sums in any order: vectorised (NaN kept)
_K0, _K1, _K2 = _PEAK_KERNEL[0], _PEAK_KERNEL[1], _PEAK_KERNEL[2]


@numba.njit(**_JIT)
def _r(v, single):
    """v rounded to float32 where the spectra are float32: float64 arithmetic then one rounding
    is float32 arithmetic for +, -, *, / and sqrt (double rounding is innocuous there)."""
    return np.float64(np.float32(v)) if single else v


@numba.njit(**_SUM_JIT)
def _squared_steps(part):
    """The sum of the squared steps between neighbouring channels of part: each step and square
    in the spectra's dtype (float32 for float32, as numpy forms them), summed in float64 in any
    order (vectorised; numpy's float32 einsum has its own order, so the sum agrees to rounding)."""
    acc = 0.0
    for i in range(1, part.size):
        step = part[i] - part[i - 1]
        acc += step * step
    return acc


@numba.njit(**_JIT)
def _step_sigma(part, single):
    """sqrt(mean squared step / 2) of part, rounded as numpy forms it in the spectra's dtype."""
    mean = _r(_r(0.5 * _r(_squared_steps(part), single), single) / (part.size - 1), single)
    return _r(np.sqrt(mean), single)


@numba.njit(**_JIT)
def _noise_sigma(x, single):
    """eels._noise_sigma of one spectrum: rms step / sqrt(2) at its quieter end, an end without
    any step skipped."""
    m = min(_NOISE_CHANNELS, x.size)
    gain, loss = _step_sigma(x[:m], single), _step_sigma(x[x.size - m :], single)
    if gain > 0:
        return min(gain, loss) if loss > 0 else gain
    return loss


@numba.njit(**_JIT)
def _half_point(x, peak, step, reach):
    """(channel, dropped) of eels._falls_to_half for one spectrum: the first channel from peak in
    direction step, up to reach away, below half the top (dropped) or above the top (not);
    the window's edge channel, not dropped, where neither happens."""
    n = x.size
    top = x[peak]
    half = 0.5 * top
    room = n - 1 - peak if step > 0 else peak
    for i in range(1, min(reach, room) + 1):
        v = x[peak + step * i]
        if v < half or v > top:
            return peak + step * i, v < half
    return (n - 1 if step > 0 else 0), False


@numba.njit(**_JIT)
def _smooth_top(x, peak, single):
    """The 1-4-6-4-1 binomial mean of the channels around the peak (edge channels repeat)."""
    n = x.size
    weights = (_K0, _K1, _K2, _K1, _K0)
    acc = 0.0
    for i in range(5):
        j = min(max(peak - 2 + i, 0), n - 1)
        acc = _r(acc + _r(x[j] * weights[i], single), single)
    return _r(acc / 16.0, single)


@numba.njit(**_JIT)
def _crossing(x, below, above, half, single):
    """Subchannel half-height crossing between channel below and its neighbour above."""
    y_below = np.float64(x[below])
    rise = _r(x[above] - y_below, single)
    fraction = _r(_r(half - y_below, single) / rise, single) if rise > 0 else 0.0
    return below + (above - below) * fraction


@numba.njit(**_JIT)
def _peak_channel(x, peak, gain_half, loss_half, single):
    """eels._peak_channel of one spectrum with a ZLP: the re-centred least-squares parabola over
    the top +-K channels, K = FWHM / 4, less its asymmetry bias."""
    n = x.size
    half = _r(0.5 * x[peak], single)
    gain = _crossing(x, gain_half, gain_half + 1, half, single)
    loss = _crossing(x, loss_half, loss_half - 1, half, single)
    k = min(max((loss_half - gain_half) // 4, 1), (n - 1) // 2)
    s0 = np.float64(2 * k + 1)
    s2 = np.float64(k * (k + 1) * (2 * k + 1) // 3)
    s4 = np.float64(k * (k + 1) * (2 * k + 1) * (3 * k * k + 3 * k - 1) // 15)
    skew = 3 * k * (k + 1) / (4 * (2 * k + 1)) if k >= 2 else 0.0
    limit = max(k / 2, 1.0)
    determinant = s0 * s4 - s2 * s2
    centre = min(max(peak, k), n - 1 - k)
    position = 0.0
    for _ in range(_FIT_ITERATIONS):
        m0 = m1 = m2 = 0.0
        for o in range(-k, k + 1):
            y = np.float64(x[centre + o])
            m0 += y
            m1 += y * o
            m2 += y * o * o
        b1 = m1 / s2
        b2 = (s0 * m2 - s2 * m0) / determinant
        step = -b1 / (2 * b2) if b2 < 0 else 0.0
        vertex = centre + min(max(step, -limit), limit)
        position = vertex
        for _ in range(3):
            h_gain, h_loss = position - gain, loss - position
            spread = max(h_loss**2 + h_gain**2, 1e-12)
            position = vertex - skew * (h_loss**2 - h_gain**2) / spread
        moved = min(max(np.int64(np.rint(position)), k), n - 1 - k)
        if moved == centre:
            break
        centre = moved
    return position


@numba.njit(**_JIT)
def _first_minimum(x, start, h):
    """eels._first_minimum of one spectrum: the first channel k >= start where the (2h+1)-channel
    boxcar stops falling, x[k + h + 1] >= x[k - h] (0 below channel 0) with k + h + 1 inside the
    window; the last channel where there is none."""
    n = x.size
    for k in range(start, n - h - 1):
        back = x[k - h] if k - h >= 0 else 0.0
        if x[k + h + 1] >= back:
            return k
    return n - 1


@numba.njit(**_SUM_JIT)
def _sum(x, a, b):
    """The float64 sum of channels a .. b-1: reassociation lets the loop vectorise (a strict
    left-to-right sum waits on each add; 5x), over a slice counted from 0 (over range(a, b)
    it did not vectorise: measured 1.0 against 0.2 ms per 32 x 32 x 2048 chunk)."""
    acc = 0.0
    part = x[a:b]
    for i in range(part.size):
        acc += part[i]
    return acc


@numba.njit(**_JIT)
def _upto(x, j, total):
    """X[j], the sum of channels 0 .. j (float64): 0 below channel 0, the total from the last on;
    read from the nearer end of the spectrum."""
    n = x.size
    if j < 0:
        return 0.0
    if j >= n - 1:
        return total
    return _sum(x, 0, j + 1) if j < n // 2 else total - _sum(x, j + 1, n)


@numba.njit(**_JIT)
def _before(x, j, upto_j):
    """X[j - 1] from X[j]."""
    if j < 0:
        return 0.0
    return upto_j - x[j] if j < x.size else upto_j


@numba.njit(**_JIT)
def _integrals(x, end, whole, frac, single):
    """(the whole window, the ZLP up to channel end) of the spectrum shifted by whole + frac
    channels, reading every channel once: the head up to end, then the rest, then the few edge
    channels the shift moves out. A shift of whole + frac channels makes the sum over aligned
    channels 0 .. j + whole (1 - f) (X[j] - X[-whole - 1]) + f (X[j - 1] - X[-whole - 2]), X the
    running sum of the unshifted spectrum (see eels.aligned_log_ratio_thickness)."""
    n = x.size
    split = min(max(end + 1, 0), n)
    head = _sum(x, 0, split)
    total = head + _sum(x, split, n)
    below = _upto(x, -whole - 1, total)
    below_1 = _before(x, -whole - 1, below)
    keep = _r(1 - frac, single)  # 1 - f is formed in the spectra's dtype there
    last = n - 1 - whole
    full = _upto(x, last, total)
    window = keep * (full - below) + frac * (_before(x, last, full) - below_1)
    zlp = keep * (head - below) + frac * (_before(x, end, head) - below_1)
    return window, zlp


@numba.njit(**_JIT)
def _zlp(x, lo, hi, reach, single):
    """(peak, found, gain_half, loss_half) of eels._find_zlp for one spectrum."""
    peak = lo
    for i in range(lo, hi + 1):
        if np.isnan(x[i]):  # np.argmax takes the first NaN as the maximum: no ZLP then
            peak = i
            break
        if x[i] > x[peak]:
            peak = i
    if not lo < peak < hi:
        return peak, False, 0, x.size - 1
    gain_half, gain_drops = _half_point(x, peak, -1, reach)
    loss_half, loss_drops = _half_point(x, peak, 1, reach)
    floor = max(x[loss_half], x[gain_half])
    prominence = _r(_smooth_top(x, peak, single) - floor, single)
    noise = _r(_PROMINENCE_SIGMAS * _noise_sigma(x, single), single)
    return peak, gain_drops and loss_drops and prominence > noise, gain_half, loss_half


@numba.njit(**_JIT)
def one_pass(flat, single, e0, d, lo, hi, reach, threshold, smooth, t, shift):
    """Fill t (t/lambda) and shift (eV) for each spectrum of flat (spectra, channels).

    single: flat is float32. threshold: the ZLP's last channel on the aligned axis, or -1 for
    the first minimum (boxcar width smooth, or the ZLP's FWHM where smooth is -1). t and shift
    have flat's dtype: the shift is rounded to it before it is split into channels, as
    eels._split_shift does.
    """
    s, n = flat.shape
    step = np.float64(np.float32(d)) if single else d  # the dispersion as _split_shift divides by it
    for r in range(s):
        x = flat[r]
        peak, found, gain_half, loss_half = _zlp(x, lo, hi, reach, single)
        if not found:
            t[r] = np.nan
            shift[r] = np.nan
            continue
        shift[r] = -(e0 + d * _peak_channel(x, peak, gain_half, loss_half, single))
        channels = _r(shift[r] / step, single)
        if not np.isfinite(channels):  # a NaN channel in the top fit (the array path refuses it)
            t[r] = np.nan
            continue
        whole = np.floor(channels)
        frac = channels - whole
        whole = np.int64(min(max(whole, -n - 1), n))
        last = n - 1 - whole
        if threshold >= 0:
            end = threshold - whole
        else:
            h = loss_half - peak if smooth < 0 else smooth // 2
            end = _first_minimum(x, loss_half, h)
            end = last if end >= n - 1 else min(end, last)
        window, zlp = _integrals(x, end, whole, frac, single)
        t[r] = np.log(window / zlp)


def aligned_thickness(flat, e0: float, d: float, threshold: int | None, smooth: int | None, search_ev: float):
    """(t/lambda, shift in eV) of eels.aligned_log_ratio_thickness for float32/float64 spectra
    (spectra, channels) on a checked axis, threshold the ZLP's last channel or None for the first
    minimum."""
    flat = np.ascontiguousarray(flat)
    lo, hi = _search_window(e0, d, flat.shape[-1], search_ev)
    t, shift = np.empty((2, flat.shape[0]), dtype=flat.dtype)
    one_pass(flat, flat.dtype == np.float32, e0, d, lo, hi, _half_reach(d),
             -1 if threshold is None else threshold, -1 if smooth is None else smooth, t, shift)
    return t, shift
