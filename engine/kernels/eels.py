"""EELS low-loss kernels: zero-loss-peak (ZLP) alignment and log-ratio thickness.

Array code only. Spectra have energy on the LAST axis and any leading shape (a pixel, a
line, a 64 x 64 chunk); every function is vectorised over the leading axes, never loops over
pixels, and makes few passes over memory, because an ingest streams 10^6 spectra through
them chunk by chunk and they must keep up with decompression. Written against numpy; cupy
arrays work too (the namespace is taken from the input array).

Energy axes are linear (first channel energy + channel index x dispersion), as every
spectrometer writes them; a non-linear axis is rejected rather than silently mis-shifted.

The ZLP is looked for near 0 eV only (ZLP_SEARCH_EV), never as the tallest peak: on a thick
specimen (t/lambda ~2-3 and above) with a broad (thermionic) ZLP the plasmon is taller, and
taking it moved spectra by 22-45 eV and turned t/lambda 3 into 0-1.5. A spectrum without a clear
peak in that window gets NaN (position, shift, thickness) rather than a wrong number.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np

__all__ = [
    "ZLP_SEARCH_EV",
    "align_zlp",
    "aligned_log_ratio_thickness",
    "first_minimum_channel",
    "log_ratio_thickness",
    "shift_spectra",
    "zlp_intensity",
    "zlp_peak_position",
]


def _xp(a):
    """numpy, or cupy when the array lives on a GPU (cupy is never imported by this module)."""
    cp = sys.modules.get("cupy")
    return cp if cp is not None and isinstance(a, cp.ndarray) else np


def _host(a) -> np.ndarray:
    """A small array (an energy axis) as a float64 numpy array, wherever it lives."""
    return np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float64)


def _float(spectra):
    """Spectra as floats: float32 stays float32 (memory speed), integers become float."""
    xp = _xp(spectra)
    return spectra.astype(xp.result_type(spectra.dtype, xp.float32), copy=False)


def _axis(spectra, energy) -> tuple[float, float]:
    """(first energy, dispersion) of a linear energy axis that matches the spectra."""
    e = _host(energy)
    if e.ndim != 1 or e.size != spectra.shape[-1]:
        raise ValueError(
            f"energy axis must be 1-D with one value per channel: got shape {e.shape} for "
            f"spectra of shape {tuple(spectra.shape)}"
        )
    if e.size < 3:
        raise ValueError(f"need at least 3 energy channels, got {e.size}")
    d = (e[-1] - e[0]) / (e.size - 1)
    if not d > 0 or not np.allclose(np.diff(e), d, rtol=1e-4, atol=0):
        raise ValueError("energy axis must be linear and increasing")
    return float(e[0]), float(d)


def _require_zero(e0: float, d: float, n: int) -> None:
    """The ZLP must be inside the window for anything that integrates or aligns it."""
    if not e0 <= 0.0 <= e0 + d * (n - 1):
        raise ValueError(
            f"energy axis [{e0:g}, {e0 + d * (n - 1):g}] eV does not contain 0 eV: "
            "the zero-loss peak is outside the window"
        )


_PEAK_KERNEL = (1.0, 4.0, 6.0, 4.0, 1.0)  # binomial smoothing of the top for the noise test


ZLP_SEARCH_EV = 1.0
"""Default half width (eV) of the window around 0 eV that must hold each spectrum's ZLP maximum.

About three FWHM of a cold-FEG ZLP and more than the calibration error of a spectrometer whose
ZLP was set to 0 eV, yet below the band-gap onsets and excitons of most materials and far below
any plasmon (5-30 eV), which a thick specimen makes taller than the ZLP. Only the maximum must
lie inside: the peak's flanks may reach beyond (a 2-3 eV thermionic ZLP is fine). Never
narrower than _SEARCH_MIN_CHANNELS channels on each side, so that at coarse dispersion (0.5 eV
per channel) the peak still has neighbours. An axis miscalibrated by more needs a wider window.
"""
_SEARCH_MIN_CHANNELS = 3
_NOISE_CHANNELS = 33  # channels at each end of a spectrum that its noise level is taken from
_PROMINENCE_SIGMAS = 8.0  # the smoothed ZLP top must stand this far above its flanks' noise
# A ZLP falls to half its height within this many eV of its maximum: twice the loss-side half
# width of a W-filament ZLP (FWHM 3 eV) broadened at t/lambda = 3. What does not is no ZLP, and
# the search for its half height (a whole spectrum for a dark baseline) stops here.
_HALF_REACH_EV = 5.0


def _search_window(e0: float, d: float, n: int, search_ev: float) -> tuple[int, int]:
    """First and last channel of the ZLP search window |E| <= max(search_ev, 3 channels)."""
    if not search_ev > 0:
        raise ValueError(f"the ZLP search half width must be positive, got {search_ev} eV")
    reach = max(float(search_ev), _SEARCH_MIN_CHANNELS * d)
    lo = max(int(np.ceil((-reach - e0) / d - 1e-9)), 0)
    hi = min(int(np.floor((reach - e0) / d + 1e-9)), n - 1)
    return lo, hi


class _Zlp(NamedTuple):
    """Where each spectrum's ZLP is: raw maximum channel, whether it is a ZLP at all, and the
    nearest channels below half its height on the gain side and on the loss side (its width,
    for the first-minimum boxcar and the subpixel fit)."""

    peak: object
    found: object
    gain_half: object
    loss_half: object


def _falls_to_half(x, peak, top, step: int, rows, reach: int):
    """For the spectra rows of x (spectra, channels), the first channel from peak in direction
    step (+1 loss side, -1 gain side) within reach channels where x drops below half of top or
    rises above it, the value there, and whether it dropped (rising first: peak is no peak).
    Where neither happens, and for the rows not asked about: the spectrum's edge, not dropped.

    Only channels near each spectrum's own peak are gathered, in blocks of doubling length
    (16 first: the half height of a ZLP sampled at 0.025 eV per channel is ~5-15 channels
    away), however far apart the peaks of different spectra are, and never past the edge.
    """
    xp = _xp(x)
    s, n = x.shape
    end = xp.full(s, n - 1 if step > 0 else 0, dtype=peak.dtype)
    dropped = xp.zeros(s, dtype=bool)
    room = n - 1 - peak if step > 0 else peak  # channels from the peak to the edge
    start, width = 1, 16
    while rows.size and start <= min(reach, int(room[rows].max())):
        width = min(width, reach + 1 - start)
        k = xp.clip(peak[rows, None] + step * xp.arange(start, start + width), 0, n - 1)
        values = x[rows[:, None], k]
        below = values < 0.5 * top[rows, None]
        hit = below | (values > top[rows, None])
        done = hit.any(axis=-1)
        first = xp.argmax(hit[done], axis=-1)[:, None]
        end[rows[done]] = xp.take_along_axis(k[done], first, axis=-1)[:, 0]
        dropped[rows[done]] = xp.take_along_axis(below[done], first, axis=-1)[:, 0]
        rows = rows[~done]
        start, width = start + width, 2 * width
    return end, x[xp.arange(s), end], dropped


def _noise_sigma(x):
    """Noise sigma of each spectrum, from the steps between neighbouring channels at its quieter
    end (far from the ZLP): rms step / sqrt(2), scale free (counts, electrons or normalised
    spectra). Unlike a median or a quantile it is not 0 for sparse counts, where most steps are
    0; an end with no step at all (zeros of a padded or dead region) says nothing and is skipped.
    """
    m = min(_NOISE_CHANNELS, x.shape[-1])
    return _noise_of_ends(x[:, :m], x[:, -m:])


def _noise_of_ends(gain_end, loss_end):
    """_noise_sigma from the channels at each end of the spectra (rows of the two arrays)."""
    xp = _xp(gain_end)
    gain, loss = (xp.sqrt(0.5 * (xp.diff(part, axis=-1) ** 2).mean(axis=-1)) for part in (gain_end, loss_end))
    return xp.where(gain > 0, xp.where(loss > 0, xp.minimum(gain, loss), gain), loss)


def _find_zlp(x, lo: int, hi: int, reach: int, noise=None) -> _Zlp:
    """The ZLP of each spectrum (x is (spectra, channels)): the maximum of channels lo..hi.

    It counts as a ZLP only if it is a clear peak: strictly inside the window (a maximum on the
    window's edge is the slope of something outside it), falling below half its height on both
    sides within reach channels before anything rises above it (so not a bump on a plasmon or
    on a dark baseline), and with its 5-channel binomial-smoothed top more than
    _PROMINENCE_SIGMAS noise sigmas above those half-height points (so not the largest noise
    excursion of a dark or beam-blanked spectrum; smoothing keeps a single spike of sparse
    counts from passing). noise: the spectra's _noise_sigma where x holds only their first
    channels (at least hi + reach + 1 of them: the result is then that of the whole spectra).
    """
    xp = _xp(x)
    s, n = x.shape
    if s == 0:
        empty = xp.zeros(0, dtype=xp.int64)
        return _Zlp(empty, empty.astype(bool), empty, empty)
    peak = xp.argmax(x[:, lo : hi + 1], axis=-1) + lo
    top = x[xp.arange(s), peak]
    inside = (peak > lo) & (peak < hi)
    candidates = xp.flatnonzero(inside)  # only these can be a ZLP: no scan for the others
    loss_half, loss_floor, loss_drops = _falls_to_half(x, peak, top, 1, candidates, reach)
    gain_half, gain_floor, gain_drops = _falls_to_half(x, peak, top, -1, candidates, reach)
    floor = xp.maximum(loss_floor, gain_floor)
    near = xp.take_along_axis(x, xp.clip(peak[:, None] + xp.arange(-2, 3), 0, n - 1), axis=-1)
    smooth_top = near @ xp.asarray(_PEAK_KERNEL, dtype=x.dtype) / x.dtype.type(16)
    found = (
        inside
        & loss_drops
        & gain_drops
        & (smooth_top - floor > _PROMINENCE_SIGMAS * (_noise_sigma(x) if noise is None else noise))
    )
    return _Zlp(peak, found, gain_half, loss_half)


def _half_reach(d: float) -> int:
    """Channels within which a ZLP must fall to half its height (_HALF_REACH_EV)."""
    return max(int(np.ceil(_HALF_REACH_EV / d)), _SEARCH_MIN_CHANNELS)


def _zlp_of(x, e0: float, d: float, search_ev: float) -> _Zlp:
    """_find_zlp over the search window of an axis starting at e0 with dispersion d."""
    return _find_zlp(x, *_search_window(e0, d, x.shape[-1], search_ev), _half_reach(d))


_FIT_ITERATIONS = 5  # most re-centrings of the top fit: a noisy raw maximum converges in 2-3


def _half_crossing(x, below, above, half):
    """Subchannel position where each spectrum crosses half between channel below (under half)
    and its neighbour above (at or over half), by linear interpolation."""
    xp = _xp(x)
    y_below = xp.take_along_axis(x, below[:, None], axis=-1)[:, 0]
    y_above = xp.take_along_axis(x, above[:, None], axis=-1)[:, 0]
    rise = y_above - y_below
    fraction = xp.where(rise > 0, (half - y_below) / xp.where(rise > 0, rise, 1), 0)
    return below + (above - below) * fraction.astype(np.float64)


def _peak_channel(x, zlp: _Zlp):
    """Subpixel channel of each ZLP maximum (x is (spectra, channels); meaningful where found).

    A least-squares parabola over the top +-K channels, K = FWHM / 4 (at least 1): on a thick
    pixel at fine dispersion (0.01 eV per channel, ~40 channels per FWHM) the top is flat and
    noisy, and the raw maximum or a fixed 5-channel smoothing wandered 2-10 channels (up to 90
    on one pixel in 600 at t/lambda = 2); a fit over half the FWHM averages that out while the
    top is still close to a parabola. The fit is re-centred on its own result until it sits
    on the maximum. The ZLP is asymmetric (broader on the loss side), and a symmetric parabola
    fitted to a top with curvatures a_gain, a_loss has its vertex r 3K(K+1) / (4(2K+1)) channels
    to the loss side, r = (a_gain - a_loss) / (a_gain + a_loss), growing with K: that is taken
    off, with r from the half widths h on each side of the corrected maximum (curvature ~ 1/h^2,
    the same profile on both sides), solved by a few fixed-point steps (each shrinks the error
    ~5x). Measured on the generator: bias <= 0.05 channel, RMS 0.2-1.0 channel at 0.01 eV per
    channel for t/lambda 0.1-3 (N = 1e6). An undersampled peak (K = 1, FWHM under ~8 channels)
    has no measurable asymmetry and is not corrected: its bias stays under 0.3 channel.
    """
    xp = _xp(x)
    n = x.shape[-1]
    if x.shape[0] == 0:
        return xp.zeros(0)
    rows = xp.arange(x.shape[0])
    half = 0.5 * x[rows, zlp.peak]
    gain = _half_crossing(x, zlp.gain_half, zlp.gain_half + 1, half)
    loss = _half_crossing(x, zlp.loss_half, zlp.loss_half - 1, half)
    k = xp.where(zlp.found, xp.clip((zlp.loss_half - zlp.gain_half) // 4, 1, (n - 1) // 2), 1)
    offsets = xp.arange(-int(k.max()), int(k.max()) + 1)
    weight = (xp.abs(offsets) <= k[:, None]).astype(np.float64)
    s0, s2, s4 = ((weight * offsets.astype(np.float64) ** p).sum(axis=-1) for p in (0, 2, 4))
    skew = xp.where(k >= 2, 3 * k * (k + 1) / (4 * (2 * k + 1)), 0)
    centre = zlp.peak
    for _ in range(_FIT_ITERATIONS):
        centre = xp.clip(centre, k, n - 1 - k)
        y = weight * xp.take_along_axis(x, xp.clip(centre[:, None] + offsets, 0, n - 1), axis=-1)
        b1 = (y * offsets).sum(axis=-1) / s2
        b2 = (s0 * (y * offsets**2).sum(axis=-1) - s2 * y.sum(axis=-1)) / (s0 * s4 - s2**2)
        step = xp.where(b2 < 0, -b1 / (2 * xp.where(b2 < 0, b2, -1)), 0)
        vertex = centre + xp.clip(step, -xp.maximum(k / 2, 1), xp.maximum(k / 2, 1))
        position = vertex
        for _ in range(3):
            h_gain, h_loss = position - gain, loss - position
            spread = xp.maximum(h_loss**2 + h_gain**2, 1e-12)  # 0 only where nothing was found
            position = vertex - skew * (h_loss**2 - h_gain**2) / spread
        moved, centre = centre, xp.rint(position).astype(zlp.peak.dtype)
        if not bool((centre != moved).any()):
            break
    return position


def zlp_peak_position(spectra, energy, search_ev: float = ZLP_SEARCH_EV):
    """Energy (eV) of each spectrum's ZLP maximum, subpixel (top fit, see _peak_channel).

    The maximum is looked for within +-search_ev of 0 eV (ZLP_SEARCH_EV; widen it for an axis
    miscalibrated by more); a spectrum without a clear peak there gives NaN (see _find_zlp).
    Same float dtype as the spectra (float32 for float32), so it stores beside them.
    """
    x = _float(spectra)
    e0, d = _axis(x, energy)
    n = x.shape[-1]
    _require_zero(e0, d, n)
    return _peak_position(x.reshape(-1, n), e0, d, search_ev)[0].reshape(x.shape[:-1])


def _peak_position(flat, e0: float, d: float, search_ev: float):
    """(zlp_peak_position, _Zlp) of spectra (spectra, channels) on a checked axis."""
    xp = _xp(flat)
    zlp = _zlp_of(flat, e0, d, search_ev)
    position = e0 + d * _peak_channel(flat, zlp)
    return xp.where(zlp.found, position, np.nan).astype(flat.dtype), zlp


_SHIFT_BATCH = 256  # spectra blended at a time: the blend buffer stays ~2 MB, not a chunk


def _split_shift(x, shift_ev, dispersion: float):
    """A shift in eV per spectrum of x (..., channels) as (whole channels, fraction), flat.

    The shift is s = n + f channels, n = floor(s), 0 <= f < 1, computed in x's float dtype
    (float32 for float32: every path that shifts gets the very same blend weights)."""
    xp = _xp(x)
    lead, n = x.shape[:-1], x.shape[-1]
    s = xp.broadcast_to(xp.asarray(shift_ev, dtype=x.dtype) / x.dtype.type(dispersion), lead)
    if not bool(xp.isfinite(s).all()):
        raise ValueError("shifts must be finite")
    whole = xp.floor(s)
    frac = (s - whole).reshape(-1)
    # beyond -n-1 or n channels everything is shifted out already: clipping keeps zeros exact
    return xp.clip(whole, -n - 1, n).astype(xp.int64).reshape(-1), frac


def _shifted(x, whole, frac, lo: int, hi: int):
    """Channels lo .. hi-1 of the spectra x (spectra, channels) shifted by whole + frac
    channels: (1 - f) x[k - n] + f x[k - n - 1] at channel k for a shift of n + f, x being 0
    outside its window, and 0 at any k outside the window (lo < 0 or hi > channels is fine).

    The blend is formed once per source channel on a zero-bordered buffer spanning what the
    rows' shifts reach, then each row's channels are gathered as one contiguous slice of a
    strided sliding-window view: a few passes over hi - lo (+ the spread of the shifts)
    channels, no per-pixel loop, no (pixels x channels) index array. Every caller (the whole
    spectra in shift_spectra, a few channels in aligned_log_ratio_thickness) gets bit-identical
    values for the same channel.
    """
    xp = _xp(x)
    s, n = x.shape
    if s == 0:
        return xp.zeros((0, hi - lo), dtype=x.dtype)
    # source channel q feeds output channel q + n: blend[:, q - q0] = (1 - f) x[q] + f x[q - 1]
    q0, q1 = lo - int(whole.max()), hi - int(whole.min())
    f = frac[:, None]
    blend = xp.zeros((s, q1 - q0), dtype=x.dtype)
    a, b = max(q0, 0), min(q1, n)
    if a < b:
        xp.multiply(x[:, a:b], 1 - f, out=blend[:, a - q0 : b - q0])
    a, b = max(q0 - 1, 0), min(q1 - 1, n)
    if a < b:
        blend[:, a + 1 - q0 : b + 1 - q0] += f * x[:, a:b]
    windows = xp.lib.stride_tricks.sliding_window_view(blend, hi - lo, axis=-1)
    out = windows[xp.arange(s), lo - whole - q0]
    if lo < 0:
        out[:, : min(-lo, hi - lo)] = 0
    if hi > n:
        out[:, max(n - lo, 0) :] = 0
    return out


def shift_spectra(spectra, shift_ev, dispersion: float):
    """Shift each spectrum along energy by its own amount (eV; positive = to higher energy).

    Linear interpolation; channels shifted in from outside the window are 0 (see _shifted),
    a batch of spectra at a time: no chunk-sized temporary besides the output.
    """
    xp = _xp(spectra)
    x = _float(spectra)
    n = x.shape[-1]
    whole, frac = _split_shift(x, shift_ev, dispersion)
    x2 = x.reshape(-1, n)
    out = xp.empty_like(x2)
    for lo in range(0, x2.shape[0], _SHIFT_BATCH):
        rows = slice(lo, lo + _SHIFT_BATCH)
        out[rows] = _shifted(x2[rows], whole[rows], frac[rows], 0, n)
    return out.reshape(x.shape)


def align_zlp(spectra, energy, search_ev: float = ZLP_SEARCH_EV):
    """Shift every spectrum so its ZLP maximum sits at 0 eV.

    Returns (aligned spectra, applied shift in eV = -peak position). The shift is returned so
    an ingest can store it (it is the per-pixel drift map) and later stages can undo it. A
    spectrum without a ZLP within +-search_ev of 0 eV is left where it is and its shift is
    NaN: moving it by the position of whatever else is tallest would only hide the problem.
    """
    xp = _xp(spectra)
    _, d = _axis(spectra, energy)
    shift = -zlp_peak_position(spectra, energy, search_ev)
    missing = xp.isnan(shift)
    return shift_spectra(spectra, xp.where(missing, 0, shift), d), shift


def _first_true(n: int, lo: int, condition, todo):
    """Per spectrum, the first channel k >= lo of n where condition(lo, hi)[..., k - lo] holds.

    Channels are scanned in blocks of doubling width and the scan ends as soon as every
    spectrum has its channel, usually within the first block, so a search that ends near the
    ZLP reads a few percent of the spectrum. Spectra where it never holds get the last channel,
    as do those where todo is False, which never prolong the scan.
    """
    xp = _xp(todo)
    first = xp.full(todo.shape, n - 1)
    todo = todo.copy()
    width = 128
    while lo < n and bool(todo.any()):
        hi = min(lo + width, n)
        hit = condition(lo, hi)
        found = todo & hit.any(axis=-1)
        first = xp.where(found, xp.argmax(hit, axis=-1) + lo, first)
        todo &= ~found
        lo, width = hi, 2 * width
    return first


def _zero_padded(x):
    """Channels lo .. hi-1 of the spectra x (spectra, channels), 0 outside the window."""
    xp = _xp(x)
    s, n = x.shape

    def block(lo: int, hi: int):
        out = xp.zeros((s, hi - lo), dtype=x.dtype)
        first, last = max(lo, 0), min(hi, n)
        if first < last:
            out[:, first - lo : last - lo] = x[:, first:last]
        return out

    return block


def _first_minimum(block, n: int, smooth: int | None, zlp: _Zlp):
    """Channel of the first local minimum after the ZLP of the boxcar-smoothed spectrum.

    block(lo, hi) gives channels lo .. hi-1 of the spectra ((spectra, hi - lo), 0 outside the
    window of n channels: _zero_padded, or _shifted for spectra as if aligned), zlp their
    _find_zlp. The slope of a (2h+1)-channel boxcar between
    channels k and k+1 is proportional to x[k+h+1] - x[k-h], so the smoothed spectrum is never
    formed. The search starts where the spectrum has fallen below half the ZLP's height on the
    loss side: on the flat, noisy top of the peak the smoothed slope flips sign at random. With
    smooth=None each spectrum's h is that loss-side half width at half maximum, so the boxcar
    spans about the ZLP's FWHM whatever the dispersion, and depends on the spectrum alone (never
    on its chunk). A spectrum that falls to the window's end (a pure ZLP in vacuum) has no
    minimum: its last channel is returned. A spectrum without a ZLP gets -1 (nothing is ZLP).
    """
    xp = _xp(zlp.peak)
    if not bool(zlp.found.any()):
        return xp.full(zlp.peak.shape[0], -1)
    rows = xp.arange(zlp.peak.shape[0])
    start = xp.where(zlp.found, zlp.loss_half, zlp.peak + 1)
    h = start - zlp.peak if smooth is None else xp.full_like(start, smooth // 2)
    h = xp.where(zlp.found, h, 0)
    reach = int(h.max())

    def rising(lo, hi):
        # x[k + h + 1] and x[k - h] for k in [lo, hi): per-spectrum offsets, so each is one
        # contiguous row gathered from a sliding-window view of a zero-bordered slab.
        slab = block(lo - reach, hi + reach + 1)
        view = xp.lib.stride_tricks.sliding_window_view(slab, hi - lo, axis=-1)
        ahead, behind = view[rows, reach + h + 1], view[rows, reach - h]
        k = xp.arange(lo, hi)
        return (ahead >= behind) & (k >= start[:, None]) & (k + h[:, None] + 1 < n)

    first = _first_true(n, int(start[zlp.found].min()), rising, zlp.found)
    return xp.where(zlp.found, first, -1)


def first_minimum_channel(spectra, energy, search_ev: float = ZLP_SEARCH_EV):
    """Channel of each spectrum's first minimum after the ZLP (the end of the ZLP), FWHM boxcar;
    -1 for a spectrum without a ZLP within +-search_ev of 0 eV."""
    x = _float(spectra)
    e0, d = _axis(x, energy)
    n = x.shape[-1]
    _require_zero(e0, d, n)
    flat = x.reshape(-1, n)
    return _first_minimum(_zero_padded(flat), n, None, _zlp_of(flat, e0, d, search_ev)).reshape(x.shape[:-1])


def _threshold_channel(e0: float, d: float, n: int, threshold_ev) -> int:
    """Last channel at or below a fixed energy (the ZLP integration limit)."""
    if threshold_ev is None:
        raise ValueError("method='threshold' needs threshold_ev")
    k = int(np.floor((threshold_ev - e0) / d + 1e-9))
    if k < 0 or k >= n:
        raise ValueError(
            f"threshold_ev={threshold_ev} eV is outside the window [{e0:g}, {e0 + d * (n - 1):g}]"
            " eV: the ZLP integration range has no channels or no end inside the window"
        )
    return k


def _zlp_end(e0: float, d: float, n: int, method: str, threshold_ev, smooth: int | None):
    """Check the ZLP integration settings; the last channel for "threshold", None otherwise."""
    _require_zero(e0, d, n)
    if method not in ("first_minimum", "threshold"):
        raise ValueError(f"unknown method {method!r}: use 'first_minimum' or 'threshold'")
    if method == "threshold":
        return _threshold_channel(e0, d, n, threshold_ev)
    if smooth is not None and (smooth < 1 or smooth % 2 == 0 or smooth + 1 > n):
        raise ValueError(f"smooth={smooth} must be an odd width shorter than the spectrum")
    return None


def zlp_intensity(
    spectra,
    energy,
    method: str = "first_minimum",
    threshold_ev=None,
    smooth: int | None = None,
    search_ev: float = ZLP_SEARCH_EV,
):
    """ZLP counts and total counts of each spectrum: (I_zlp, I_total), shape spectra[..., 0].

    I_zlp integrates from the first channel (gain side included) up to the first local minimum
    after the peak ("first_minimum", HyperSpy/EELSfitter convention) or up to ``threshold_ev``
    ("threshold", for spectra already aligned so the peak is at 0 eV). ``smooth`` is the odd
    boxcar width (channels) that keeps Poisson noise from ending the ZLP at the first wiggle;
    None sizes it per spectrum to about the ZLP's FWHM (see _first_minimum): narrower boxcars
    stop early on noise and overestimate t/lambda (measured at 0.025 eV/channel, N = 1e5:
    errors up to 0.06 with 5 channels, 0.02 with the FWHM). The ZLP sum only reads channels
    up to the latest limit. I_zlp is NaN for a spectrum without a ZLP within +-search_ev of
    0 eV (see _find_zlp), with either method: a fixed threshold would integrate whatever is
    there.
    """
    xp = _xp(spectra)
    x = _float(spectra)
    e0, d = _axis(x, energy)
    n = x.shape[-1]
    k = _zlp_end(e0, d, n, method, threshold_ev, smooth)
    total = x.sum(axis=-1)
    flat = x.reshape(-1, n)
    zlp = _zlp_of(flat, e0, d, search_ev)
    found = zlp.found.reshape(x.shape[:-1])
    if method == "threshold":
        return xp.where(found, x[..., : k + 1].sum(axis=-1), np.nan), total
    stop = _first_minimum(_zero_padded(flat), n, smooth, zlp)
    channels = xp.arange(int(stop.max()) + 1 if stop.size else 1)
    head = _row_sums(flat[:, : channels.size], lambda rows: channels <= stop[rows, None])
    return xp.where(found, head.reshape(x.shape[:-1]), np.nan), total


def log_ratio_thickness(
    spectra,
    energy,
    method: str = "first_minimum",
    threshold_ev=None,
    smooth: int | None = None,
    search_ev: float = ZLP_SEARCH_EV,
):
    """Relative thickness t/lambda = ln(I_total / I_zlp) per spectrum (float32 for float32).

    Counts beyond the window are missing from I_total, so with a window ending below the
    multiple-plasmon region the result is the windowed log ratio, an underestimate of t/lambda
    (DOMAIN.md: up to 0.48 at t/lambda = 1.9 with a 46 eV window). Spectra without a ZLP
    within +-search_ev of 0 eV, or whose counts are not positive, give NaN.
    """
    xp = _xp(spectra)
    zlp, total = zlp_intensity(spectra, energy, method, threshold_ev, smooth, search_ev)
    with np.errstate(divide="ignore", invalid="ignore"):
        return xp.log(total / zlp)


def _prefix_pair(x, j, total):
    """Per spectrum of x (spectra, channels), the sums of channels 0 .. j and 0 .. j-1 (float64)
    for a per-spectrum channel j of any value (0 below channel 0, the total from the last on).

    Only the channels up to the largest j in the first half of the window are read, and those
    after the smallest j in the second half (the total minus the rest)."""
    xp = _xp(x)
    s, n = x.shape
    last = xp.where((j >= 0) & (j < n), x[xp.arange(s), xp.clip(j, 0, n - 1)], 0)
    j = xp.clip(j, -1, n - 1)
    upto = total.astype(np.float64)
    low = j < n // 2
    if bool(low.any()):
        width = int(j[low].max()) + 1
        channels = xp.arange(width)
        head = _row_sums(x[:, :width], lambda rows: channels <= j[rows, None])
        upto = xp.where(low, head, upto)
    if not bool(low.all()):
        first = int(j[~low].min()) + 1
        channels = xp.arange(first, n)
        tail = _row_sums(x[:, first:], lambda rows: channels > j[rows, None])
        upto = xp.where(low, upto, upto - tail)
    return upto, upto - last


def _row_sums(part, keep):
    """Per row of part (spectra, channels), the sum of the entries where keep(rows)[row] holds,
    _SHIFT_BATCH rows at a time: the masked copy stays ~2 MB, not a chunk."""
    xp = _xp(part)
    out = xp.empty(part.shape[0], dtype=part.dtype)
    for lo in range(0, part.shape[0], _SHIFT_BATCH):
        rows = slice(lo, lo + _SHIFT_BATCH)
        out[rows] = xp.where(keep(rows), part[rows], 0).sum(axis=-1)
    return out


def aligned_log_ratio_thickness(
    spectra,
    energy,
    method: str = "first_minimum",
    threshold_ev=None,
    smooth: int | None = None,
    search_ev: float = ZLP_SEARCH_EV,
):
    """log_ratio_thickness of the spectra as align_zlp would shift them, and that shift (eV), in
    one pass: the shifted spectra are never formed.

    A shift of n + f channels makes channel k of the aligned spectrum (1 - f) x[k - n] +
    f x[k - n - 1], so its sum over channels 0 .. K is (1 - f) (X[K - n] - X[-n - 1]) +
    f (X[K - n - 1] - X[-n - 2]), X the running sum of the unshifted spectrum: the integration
    limits move with the shift, the partial channels at the edges interpolated linearly. Those
    running sums are read at a few channels (_prefix_pair); the total is the one pass over every
    channel. Where the ZLP ends (the aligned spectrum's own peak, half-height point and first
    minimum, as log_ratio_thickness finds them) is decided on aligned channels formed only
    where needed: its first hi + reach channels, 33 at the far end for the noise level, the
    blocks the first-minimum scan reads (_shifted, bit-identical to shift_spectra). So it is
    the aligned path up to the rounding of the sums (measured in tests/ops/test_eels.py) for
    0.6x its CPU time (2.5 against 4.0 CPU-s at 1.6e5 spectra, reading them once 1.07;
    tests/benchmarks/bench_eels_thickness.py); what is left is mostly finding the ZLP twice and
    the top fit (_peak_channel). NaN (t/lambda and shift) without a ZLP.
    """
    xp = _xp(spectra)
    x = _float(spectra)
    e0, d = _axis(x, energy)
    n = x.shape[-1]
    k = _zlp_end(e0, d, n, method, threshold_ev, smooth)
    flat = x.reshape(-1, n)
    position, _ = _peak_position(flat, e0, d, search_ev)
    shift = -position
    whole, frac = _split_shift(flat, xp.where(xp.isnan(shift), 0, shift), d)
    # the aligned spectra's ZLP, from their first channels and their ends (_find_zlp's noise)
    lo, hi = _search_window(e0, d, n, search_ev)
    reach = _half_reach(d)
    head = _shifted(flat, whole, frac, 0, min(hi + reach + 1, n))
    m = min(_NOISE_CHANNELS, n)
    noise = _noise_of_ends(
        head[:, :m] if head.shape[-1] >= m else _shifted(flat, whole, frac, 0, m),
        _shifted(flat, whole, frac, n - m, n),
    )
    zlp = _find_zlp(head, lo, hi, reach, noise)
    del head
    if k is None:
        stop = _first_minimum(lambda a, b: _shifted(flat, whole, frac, a, b), n, smooth, zlp)
    else:
        stop = xp.full(flat.shape[0], k)
    total = flat.sum(axis=-1)
    below, below_1 = _prefix_pair(flat, -whole - 1, total)  # shifted out below channel 0

    def aligned_sum(last):
        upto, upto_1 = _prefix_pair(flat, last - whole, total)
        return (1 - frac) * (upto - below) + frac * (upto_1 - below_1)

    with np.errstate(divide="ignore", invalid="ignore"):
        t = xp.log(aligned_sum(n - 1) / xp.where(zlp.found, aligned_sum(stop), np.nan))
    return t.astype(x.dtype).reshape(x.shape[:-1]), shift.reshape(x.shape[:-1])
