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
    if type(a) is np.ndarray:  # the common case first: called ~40 times per chunk
        return np
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
    # np.allclose(np.diff(e), d, rtol=1e-4, atol=0) in one pass: allclose costs ~0.09 ms, a
    # tenth of a chunk's kernel time where every chunk checks the axis
    if not d > 0 or not np.abs(np.diff(e) - d).max() <= 1e-4 * d:
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


def _clip(a, lo, hi):
    """xp.clip(a, lo, hi) as two ufuncs: np.clip's Python wrapper costs ~2x as much, and the
    kernels clip a few index arrays per call on every chunk."""
    xp = _xp(a)
    return xp.minimum(xp.maximum(a, lo), hi)


def _windows(x, width: int):
    """sliding_window_view(x, width, axis=-1) of a 2-D array (rows, channels), read-only:
    for a C-contiguous numpy array made directly on its buffer (~2 us against ~35 us for
    sliding_window_view's checks, called several times per chunk)."""
    s, n = x.shape
    if isinstance(x, np.ndarray) and x.flags.c_contiguous and n >= width:
        step = x.strides[-1]
        view = np.ndarray((s, n - width + 1, width), x.dtype, x, 0, (x.strides[0], step, step))
        view.flags.writeable = False
        return view
    return _xp(x).lib.stride_tricks.sliding_window_view(x, width, axis=-1)


def _row_slices(x, rows, origin, width: int):
    """x[r, origin_r : origin_r + width] for the rows r of x (spectra, channels), channel indices
    clipped to the window (its edge channels repeat where a slice reaches past them).

    Inside the window each row's channels are one contiguous slice of a sliding-window view,
    copied as a block: no (rows x width) index array and no per-element gather (2-5x cheaper
    than take_along_axis on a chunk's 1024 spectra)."""
    xp = _xp(x)
    n = x.shape[-1]
    if rows.size and width <= n and int(origin.min()) >= 0 and int(origin.max()) + width <= n:
        return _windows(x, width)[rows, origin]
    return x[rows[:, None], _clip(origin[:, None] + xp.arange(width), 0, n - 1)]


def _falls_to_half(x, peak, top, step: int, rows, reach: int, start: int, width: int, end, dropped):
    """For the spectra rows of x (spectra, channels), the first channel from peak in direction
    step (+1 loss side, -1 gain side), from start up to reach channels away, where x drops below
    half of top or rises above it, into end, and whether it dropped (rising first: peak is no
    peak) into dropped; rows where neither happens are left as they are.

    Only channels near each spectrum's own peak are gathered, in blocks of doubling length
    from width, however far apart the peaks of different spectra are, and never past the edge.
    """
    n = x.shape[-1]
    room = n - 1 - peak if step > 0 else peak  # channels from the peak to the edge
    while rows.size and start <= min(reach, int(room[rows].max())):
        width = min(width, reach + 1 - start)
        # channels peak + step * (start .. start + width - 1), nearest the peak first
        origin = peak[rows] + start if step > 0 else peak[rows] - (start + width - 1)
        values = _row_slices(x, rows, origin, width)
        if step < 0:
            values = values[:, ::-1]
        rows = _first_crossing(values, top[rows, None], peak, step * start, rows, end, dropped, n)
        start, width = start + width, 2 * width


def _first_crossing(values, level, peak, offset: int, rows, end, dropped, n: int):
    """Where along each row of values (channels peak + offset, peak + offset +- 1, ...) the
    spectrum first drops below half of level or rises above it: end[rows] (clipped to the
    window) and dropped[rows] for those rows; the rows with neither are returned."""
    xp = _xp(values)
    below = values < 0.5 * level
    hit = below | (values > level)
    first, done = _first_hit(hit)
    finished, first = rows[done], first[done]
    step = 1 if offset > 0 else -1
    end[finished] = _clip(peak[finished] + offset + step * first, 0, n - 1)
    dropped[finished] = below[xp.flatnonzero(done), first]
    return rows[~done]


def _first_hit(hit):
    """(index of the first True, whether there is one) per row of a boolean (rows, columns)
    array: argmax stops at the first True, and a gather tells an all-False row (argmax 0)
    from one that starts True; any(axis=-1) costs ~10x more on a chunk's short rows."""
    xp = _xp(hit)
    first = xp.argmax(hit, axis=-1)
    return first, hit[xp.arange(hit.shape[0]), first]


_HALF_BLOCK = 16  # channels each side of the peak read first: a ZLP at 0.025 eV/channel is at half
# height ~5-15 channels from its maximum


def _half_points(x, peak, top, rows, reach: int):
    """(gain side, loss side) of _falls_to_half for the spectra rows: each (channel, value there,
    dropped); the spectrum's edge, not dropped, where neither happens within reach channels
    and for the rows not asked about. The first _HALF_BLOCK channels on both sides and the
    5 channels of the smoothed top come from one contiguous slice per spectrum."""
    xp = _xp(x)
    s, n = x.shape
    end = xp.stack([xp.zeros(s, dtype=peak.dtype), xp.full(s, n - 1, dtype=peak.dtype)])
    dropped = xp.zeros((2, s), dtype=bool)
    smooth_top = xp.zeros(s, dtype=x.dtype)
    if rows.size:
        width = min(_HALF_BLOCK, reach)
        window = _row_slices(x, rows, peak[rows] - width, 2 * width + 1)
        level = top[rows, None]
        kernel = xp.asarray(_PEAK_KERNEL, dtype=x.dtype)
        smooth_top[rows] = xp.einsum("ij,j->i", window[:, width - 2 : width + 3], kernel) / x.dtype.type(16)
        for side, step in ((0, -1), (1, 1)):
            values = window[:, width - 1 :: -1] if step < 0 else window[:, width + 1 :]
            left = _first_crossing(values, level, peak, step, rows, end[side], dropped[side], n)
            _falls_to_half(x, peak, top, step, left, reach, 1 + width, 2 * width, end[side], dropped[side])
    floor = x[xp.arange(s)[None, :], end]
    return end, floor, dropped, smooth_top


def _noise_sigma(x):
    """Noise sigma of each spectrum, from the steps between neighbouring channels at its quieter
    end (far from the ZLP): rms step / sqrt(2), scale free (counts, electrons or normalised
    spectra). Unlike a median or a quantile it is not 0 for sparse counts, where most steps are
    0; an end with no step at all (zeros of a padded or dead region) says nothing and is skipped.
    """
    xp = _xp(x)
    m = min(_NOISE_CHANNELS, x.shape[-1])
    steps = xp.empty((2, x.shape[0], m - 1), dtype=x.dtype)
    xp.subtract(x[:, 1:m], x[:, : m - 1], out=steps[0])
    xp.subtract(x[:, -m + 1 :], x[:, -m:-1], out=steps[1])
    squares = xp.multiply(steps, steps, out=steps)
    # einsum sums the short rows ~10x cheaper than .mean(axis=-1)
    gain, loss = xp.sqrt(0.5 * xp.einsum("rij->ri", squares) / x.dtype.type(m - 1))
    return xp.where(gain > 0, xp.where(loss > 0, xp.minimum(gain, loss), gain), loss)


def _find_zlp(x, lo: int, hi: int, reach: int) -> _Zlp:
    """The ZLP of each spectrum (x is (spectra, channels)): the maximum of channels lo..hi.

    It counts as a ZLP only if it is a clear peak: strictly inside the window (a maximum on the
    window's edge is the slope of something outside it), falling below half its height on both
    sides within reach channels before anything rises above it (so not a bump on a plasmon or
    on a dark baseline), and with its 5-channel binomial-smoothed top more than
    _PROMINENCE_SIGMAS noise sigmas above those half-height points (so not the largest noise
    excursion of a dark or beam-blanked spectrum; smoothing keeps a single spike of sparse
    counts from passing).
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
    (gain_half, loss_half), floors, (gain_drops, loss_drops), smooth_top = _half_points(
        x, peak, top, candidates, reach
    )
    floor = xp.maximum(floors[1], floors[0])
    found = inside & loss_drops & gain_drops & (smooth_top - floor > _PROMINENCE_SIGMAS * _noise_sigma(x))
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
    rows = xp.arange(x.shape[0])
    y_below, y_above = x[rows, below], x[rows, above]
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
    k = xp.where(zlp.found, _clip((zlp.loss_half - zlp.gain_half) // 4, 1, (n - 1) // 2), 1)
    widest = int(k.max())
    offsets = xp.arange(-widest, widest + 1)
    weight = (xp.abs(offsets) <= k[:, None]).astype(np.float64)
    moments = xp.stack([offsets**0, offsets, offsets**2], axis=-1).astype(np.float64)
    # sums of offsets^0, ^2, ^4 over -k..k, exact integers
    s0 = (2 * k + 1).astype(np.float64)
    s2 = (k * (k + 1) * (2 * k + 1) // 3).astype(np.float64)
    s4 = (k * (k + 1) * (2 * k + 1) * (3 * k * k + 3 * k - 1) // 15).astype(np.float64)
    skew = xp.where(k >= 2, 3 * k * (k + 1) / (4 * (2 * k + 1)), 0)
    limit = xp.maximum(k / 2, 1)
    determinant = s0 * s4 - s2**2
    centre = _clip(zlp.peak, k, n - 1 - k)
    position = xp.zeros(x.shape[0])
    active = slice(None)  # every spectrum, then those whose fit centre moved (the others would
    for _ in range(_FIT_ITERATIONS):  # only repeat their last step)
        c = centre[active]
        y = weight[active] * _row_slices(x, rows[active], c - widest, 2 * widest + 1)
        m0, m1, m2 = xp.einsum("ij,jk->ki", y, moments)  # the sums of y, y offsets, y offsets^2
        b1 = m1 / s2[active]  # (one product: .sum along a chunk's short rows costs ~10x more)
        b2 = (s0[active] * m2 - s2[active] * m0) / determinant[active]
        step = xp.where(b2 < 0, -b1 / (2 * xp.where(b2 < 0, b2, -1)), 0)
        vertex = c + _clip(step, -limit[active], limit[active])
        here, g, lo, r = vertex, gain[active], loss[active], skew[active]
        for _ in range(3):
            h_gain, h_loss = here - g, lo - here
            spread = xp.maximum(h_loss**2 + h_gain**2, 1e-12)  # 0 only where nothing was found
            here = vertex - r * (h_loss**2 - h_gain**2) / spread
        position[active] = here
        moved = _clip(xp.rint(here).astype(c.dtype), k[active], n - 1 - k[active])
        changed = moved != c  # before c, a view of centre on the first step, is overwritten
        centre[active] = moved
        active = rows[active][changed]
        if not active.size:
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
    return _clip(whole, -n - 1, n).astype(xp.int64).reshape(-1), frac


def _shifted(x, whole, frac, lo: int, hi: int):
    """Channels lo .. hi-1 of the spectra x (spectra, channels) shifted by whole + frac
    channels: (1 - f) x[k - n] + f x[k - n - 1] at channel k for a shift of n + f, x being 0
    outside its window, and 0 at any k outside the window (lo < 0 or hi > channels is fine).

    The blend is formed once per source channel on a zero-bordered buffer spanning what the
    rows' shifts reach, then each row's channels are gathered as one contiguous slice of a
    strided sliding-window view: a few passes over hi - lo (+ the spread of the shifts)
    channels, no per-pixel loop, no (pixels x channels) index array (shift_spectra, a batch of
    whole spectra at a time).
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
    windows = _windows(blend, hi - lo)
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


_FIRST_BLOCK = 128  # channels past each spectrum's loss-side half height read first (doubling)


def _first_minimum(x, smooth: int | None, zlp: _Zlp):
    """Channel of the first local minimum after the ZLP of the boxcar-smoothed spectrum.

    x: the spectra (spectra, channels), 0 outside the window; zlp: their _find_zlp. The slope
    of a (2h+1)-channel boxcar between channels k and k+1 is proportional to x[k+h+1] - x[k-h],
    so the smoothed spectrum is never formed. The search starts where the spectrum has fallen
    below half the ZLP's height on the loss side: on the flat, noisy top of the peak the
    smoothed slope flips sign at random. With smooth=None each spectrum's h is that loss-side
    half width at half maximum, so the boxcar spans about the ZLP's FWHM whatever the
    dispersion, and depends on the spectrum alone (never on its chunk). A spectrum that falls
    to the window's end (a pure ZLP in vacuum) has no minimum: its last channel is returned. A
    spectrum without a ZLP gets -1 (nothing is ZLP).

    Each spectrum's channels are read from its own start, _FIRST_BLOCK of them first (the
    first minimum of the synthetic images lies 47-119 channels past it at 0.025 eV per channel),
    then blocks of doubling width for the spectra still without one: a few percent of the
    spectrum, two contiguous slices per spectrum and block.
    """
    xp = _xp(zlp.peak)
    n = x.shape[-1]
    first = xp.full(zlp.peak.shape[0], -1)
    rows = xp.flatnonzero(zlp.found)
    if not rows.size:
        return first
    start = zlp.loss_half[rows]
    h = start - zlp.peak[rows] if smooth is None else xp.full_like(start, smooth // 2)
    pad = max(-int((start - h).min()), 0)  # a fixed boxcar wider than the gain side: 0 there
    if pad:
        x = xp.concatenate([xp.zeros((x.shape[0], pad), dtype=x.dtype), x], axis=-1)
    first[rows] = n - 1
    offset, width = 0, _FIRST_BLOCK
    while rows.size:
        k = start + offset  # each spectrum's first channel k of this block
        rising = _row_slices(x, rows, k + h + 1 + pad, width) >= _row_slices(x, rows, k - h + pad, width)
        if int((k + h).max()) + width >= n:  # the boxcar must end inside: k + h + 1 < n
            rising &= k[:, None] + h[:, None] + xp.arange(1, width + 1) < n
        at, done = _first_hit(rising)
        first[rows[done]] = k[done] + at[done]
        more = ~done & (k + h + width + 1 < n)  # spectra with channels left to read
        rows, start, h = rows[more], start[more], h[more]
        offset, width = offset + width, 2 * width
    return first


def first_minimum_channel(spectra, energy, search_ev: float = ZLP_SEARCH_EV):
    """Channel of each spectrum's first minimum after the ZLP (the end of the ZLP), FWHM boxcar;
    -1 for a spectrum without a ZLP within +-search_ev of 0 eV."""
    x = _float(spectra)
    e0, d = _axis(x, energy)
    n = x.shape[-1]
    _require_zero(e0, d, n)
    flat = x.reshape(-1, n)
    return _first_minimum(flat, None, _zlp_of(flat, e0, d, search_ev)).reshape(x.shape[:-1])


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
    flat = x.reshape(-1, n)
    total = _rowsum(flat).reshape(x.shape[:-1])  # summed as _row_sums sums: a ZLP to the end is all
    zlp = _zlp_of(flat, e0, d, search_ev)
    found = zlp.found.reshape(x.shape[:-1])
    if method == "threshold":  # _rowsum: half the CPU of .sum(axis=-1) on a chunk's 1024 rows
        return xp.where(found, _rowsum(flat[:, : k + 1]).reshape(x.shape[:-1]), np.nan), total
    stop = _first_minimum(flat, smooth, zlp)
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


def _head_and_total(x, j):
    """(X[j], X[j - 1], total) per spectrum of x (spectra, channels), X the running sum (float64,
    0 below channel 0, the total from the last on): the total is the one pass over every
    channel, X[j] read as in _prefix_pair."""
    total = _rowsum(x)
    return (*_prefix_pair(x, j, total), total)


def _rowsum(part):
    """The sum of each row of part (rows, channels) in its dtype: einsum's vectorised loop, 2x
    cheaper than .sum(axis=-1) on float32 spectra and ~10x on short rows (which pay per row),
    with the rounding of float32 partial sums (3e-7 relative on 2048 channels of counts)."""
    xp = _xp(part)
    return xp.einsum("ij->i", part)


_RUNNING_SUM_CHANNELS = 64  # up to this many channels, a running sum (float64) beats masked sums


def _prefix_pair(x, j, total):
    """Per spectrum of x (spectra, channels), the sums of channels 0 .. j and 0 .. j-1 (float64)
    for a per-spectrum channel j of any value (0 below channel 0, the total from the last on).

    Only the channels up to the largest j in the first half of the window are read, and those
    after the smallest j in the second half (the total minus the rest): as a running sum where
    that is a few channels (the edges an alignment shifts out), else as masked sums."""
    xp = _xp(x)
    s, n = x.shape
    rows = xp.arange(s)
    j = _clip(j, -2, n)
    upto = xp.broadcast_to(total.astype(np.float64)[:, None], (s, 2))  # X[j], X[j - 1]
    pair = j[:, None] - xp.arange(2)
    low = j < n // 2
    if bool(low.any()):
        width = int(j[low].max()) + 1
        if width <= _RUNNING_SUM_CHANNELS:
            running = xp.cumsum(x[:, : max(width, 1)], axis=-1, dtype=np.float64)
            head = xp.where(pair >= 0, running[rows[:, None], _clip(pair, 0, running.shape[-1] - 1)], 0)
        else:
            common = max(int(j[low].min()) + 1, 0)  # channels every such spectrum sums
            channels = xp.arange(common, width)
            head = _rowsum(x[:, :common]) + _row_sums(x[:, common:width], lambda r: channels <= j[r, None])
            head = head[:, None]
            head = head - xp.stack([xp.zeros(s), _at(x, j)], axis=-1)
        upto = xp.where(low[:, None], head, upto)
    if not bool(low.all()):
        first = int(j[~low].min()) + 1  # the sum of channels first .. n-1 is taken off the total
        if n - first + 1 <= _RUNNING_SUM_CHANNELS:
            # running[:, i] = the sum of the last i channels
            flipped = xp.cumsum(x[:, max(first - 1, 0) :][:, ::-1], axis=-1, dtype=np.float64)
            running = xp.concatenate([xp.zeros((s, 1)), flipped], axis=-1)
            tail = running[rows[:, None], _clip(n - 1 - pair, 0, running.shape[-1] - 1)]
        else:
            common = min(int(j[~low].max()) + 1, n)  # from here on in every such spectrum's tail
            channels = xp.arange(first, common)
            tail = _row_sums(x[:, first:common], lambda r: channels > j[r, None]) + _rowsum(x[:, common:])
            tail = tail[:, None]
            tail = tail + xp.stack([xp.zeros(s), _at(x, j)], axis=-1)
        upto = xp.where(low[:, None], upto, upto - tail)
    return upto[:, 0], upto[:, 1]


def _at(x, j):
    """x[row, j[row]] per row, 0 where j is outside the window."""
    xp = _xp(x)
    n = x.shape[-1]
    return xp.where((j >= 0) & (j < n), x[xp.arange(x.shape[0]), _clip(j, 0, n - 1)], 0)


def _row_sums(part, keep):
    """Per row of part (spectra, channels), the sum of the entries where keep(rows)[row] holds,
    _SHIFT_BATCH rows at a time: the masked copy stays ~2 MB, not a chunk."""
    xp = _xp(part)
    out = xp.empty(part.shape[0], dtype=part.dtype)
    for lo in range(0, part.shape[0], _SHIFT_BATCH):
        rows = slice(lo, lo + _SHIFT_BATCH)
        out[rows] = _rowsum(xp.where(keep(rows), part[rows], 0))
    return out


def aligned_log_ratio_thickness(
    spectra,
    energy,
    method: str = "first_minimum",
    threshold_ev=None,
    smooth: int | None = None,
    search_ev: float = ZLP_SEARCH_EV,
):
    """Log-ratio thickness of the spectra as align_zlp would shift them, and that shift (eV), in
    one pass: the ZLP is found once, on the spectra as they are, and the shifted spectra are
    never formed.

    A shift of n + f channels makes channel k of the aligned spectrum (1 - f) x[k - n] +
    f x[k - n - 1], so its sum over channels 0 .. K is (1 - f) (X[K - n] - X[-n - 1]) +
    f (X[K - n - 1] - X[-n - 2]), X the running sum of the unshifted spectrum: the integration
    limits move with the shift, the partial channels at the edges interpolated linearly. X is
    read at the ZLP's end after the one pass that sums every channel (_head_and_total), and
    near both edges of the window (_prefix_pair). The ZLP's end: the fixed energy threshold_ev
    of the aligned axis ("threshold", the same as align_zlp then log_ratio_thickness up to the
    rounding of the sums, measured 4.8e-7), or the aligned channel the unshifted spectrum's
    first minimum (_first_minimum, on the ZLP just found) is moved to. The two-step chain takes
    the minimum of the interpolated (slightly smoothed) spectrum; where the two fall on
    different channels t/lambda differs by the counts between: measured at most 0.009 with a
    2 eV gap (0.01-0.5 eV/channel, t/lambda 0.1-3), each as close to the truth, and up to 0.09
    where a gap near 1 eV hides the minimum, the one pass the nearer to the truth there
    (tests/ops/test_eels.py, test_eels_thick.py). A spectrum without a minimum integrates to
    the window's end (t/lambda 0), one without a ZLP gives NaN (t/lambda and shift), as on the
    two-step chain. numpy spectra go through one compiled loop per spectrum (eels_onepass: per
    32 x 32 x 2048 float32 chunk 0.9 against 3.2 CPU-ms for these array operations, which cupy
    spectra get; the same shifts and NaNs, t/lambda to float32 rounding, 5e-7).
    """
    x = _float(spectra)
    e0, d = _axis(x, energy)
    n = x.shape[-1]
    k = _zlp_end(e0, d, n, method, threshold_ev, smooth)
    flat = x.reshape(-1, n)
    if type(flat) is np.ndarray:  # a compiled loop per spectrum, 3.5x cheaper: eels_onepass
        from .eels_onepass import aligned_thickness  # imports numba (~0.3 CPU-s) only when used

        kernel = aligned_thickness
    else:
        kernel = _aligned_thickness
    return tuple(a.reshape(x.shape[:-1]) for a in kernel(flat, e0, d, k, smooth, search_ev))


def _aligned_thickness(flat, e0: float, d: float, k: int | None, smooth: int | None, search_ev: float):
    """aligned_log_ratio_thickness of spectra (spectra, channels) on a checked axis in array
    operations (any array namespace; the reference eels_onepass is tested against), k the ZLP's
    last channel or None for the first minimum: (t/lambda, shift in eV), flat."""
    xp = _xp(flat)
    n = flat.shape[-1]
    position, zlp = _peak_position(flat, e0, d, search_ev)
    shift = -position
    whole, frac = _split_shift(flat, xp.where(zlp.found, shift, 0), d)
    last = n - 1 - whole  # the unshifted channel that alignment moves to the window's last
    if k is None:
        end = _first_minimum(flat, smooth, zlp)
        end = xp.where(end >= n - 1, last, xp.minimum(end, last))  # n - 1: no minimum
        if bool(zlp.found.any()):  # no ZLP (NaN): any channel, one that widens no sum
            end = xp.where(zlp.found, end, int(end[zlp.found].min()))
    else:
        end = k - whole
    upto, upto_1, total = _head_and_total(flat, end)
    below, below_1 = _prefix_pair(flat, -whole - 1, total)  # shifted out below channel 0
    full, full_1 = _prefix_pair(flat, last, total)

    def aligned(sum_to, sum_to_1):
        return (1 - frac) * (sum_to - below) + frac * (sum_to_1 - below_1)

    with np.errstate(divide="ignore", invalid="ignore"):
        t = xp.log(aligned(full, full_1) / xp.where(zlp.found, aligned(upto, upto_1), np.nan))
    return t.astype(flat.dtype), shift
