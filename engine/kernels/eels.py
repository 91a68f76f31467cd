"""EELS low-loss kernels: zero-loss-peak (ZLP) alignment and log-ratio thickness.

Array code only. Spectra have energy on the LAST axis and any leading shape (a pixel, a
line, a 64 x 64 chunk); every function is vectorised over the leading axes, never loops over
pixels, and makes few passes over memory, because an ingest streams 10^6 spectra through
them chunk by chunk and they must keep up with decompression. Written against numpy; cupy
arrays work too (the namespace is taken from the input array).

Energy axes are linear (first channel energy + channel index x dispersion), as every
spectrometer writes them; a non-linear axis is rejected rather than silently mis-shifted.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = [
    "align_zlp",
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


def _peak_channel(spectra):
    """Subpixel channel of each spectrum's maximum: a parabola through argmax and neighbours.

    The parabola's vertex through three samples is exact for a quadratic peak top and biased
    by well under a channel for the asymmetric ZLP; at the first or last channel (no
    neighbour on one side) the argmax itself is returned.
    """
    xp = _xp(spectra)
    n = spectra.shape[-1]
    i = xp.argmax(spectra, axis=-1)
    centre = xp.clip(i, 1, n - 2)
    idx = centre[..., None] + xp.arange(-1, 2)
    y0, y1, y2 = xp.moveaxis(xp.take_along_axis(spectra, idx, axis=-1), -1, 0)
    curvature = y0 - 2 * y1 + y2
    safe = xp.where(curvature < 0, curvature, -1)
    offset = xp.where(curvature < 0, 0.5 * (y0 - y2) / safe, 0)
    return xp.where(i == centre, centre + offset, i)


def zlp_peak_position(spectra, energy):
    """Energy (eV, float64) of each spectrum's ZLP maximum, subpixel by a 3-point parabola."""
    e0, d = _axis(spectra, energy)
    return e0 + d * _peak_channel(spectra).astype(np.float64)


def shift_spectra(spectra, shift_ev, dispersion: float):
    """Shift each spectrum along energy by its own amount (eV; positive = to higher energy).

    Linear interpolation; channels shifted in from outside the window are 0. The blend
    (1 - f) x[k - n] + f x[k - n - 1] for a shift of n + f channels is formed once on a
    zero-bordered copy, then each spectrum's window is gathered as one contiguous row from a
    strided sliding-window view: about four passes over memory, no per-pixel loop and no
    (pixels x channels) index array.
    """
    xp = _xp(spectra)
    x = _float(spectra)
    lead, n = x.shape[:-1], x.shape[-1]
    s = xp.broadcast_to(xp.asarray(shift_ev, dtype=x.dtype) / x.dtype.type(dispersion), lead)
    if not bool(xp.isfinite(s).all()):
        raise ValueError("shifts must be finite")
    whole = xp.floor(s)
    frac = (s - whole).reshape(-1, 1)
    # beyond -n-1 or n channels everything is shifted out already: clipping keeps zeros exact
    whole = xp.clip(whole, -n - 1, n).astype(xp.int64).reshape(-1)
    x2 = x.reshape(-1, n)
    border = int(xp.abs(whole).max()) + 1 if whole.size else 1
    # blend[:, q] = (1 - f) x[q + 1 - border] + f x[q - border], zero outside 0..n-1
    blend = xp.zeros((x2.shape[0], n + 2 * border - 1), dtype=x.dtype)
    xp.multiply(x2, 1 - frac, out=blend[:, border - 1 : border - 1 + n])
    blend[:, border : border + n] += frac * x2
    windows = xp.lib.stride_tricks.sliding_window_view(blend, n, axis=-1)
    out = windows[xp.arange(x2.shape[0]), border - 1 - whole]
    return out.reshape(x.shape)


def align_zlp(spectra, energy):
    """Shift every spectrum so its ZLP maximum sits at 0 eV.

    Returns (aligned spectra, applied shift in eV = -peak position). The shift is returned so
    an ingest can store it (it is the per-pixel drift map) and later stages can undo it.
    """
    e0, d = _axis(spectra, energy)
    _require_zero(e0, d, spectra.shape[-1])
    shift = -zlp_peak_position(spectra, energy)
    return shift_spectra(spectra, shift, d), shift


def _first_minimum(x, smooth: int):
    """Channel of the first local minimum after the peak of the boxcar-smoothed spectrum.

    The slope of a (2h+1)-channel boxcar between channels k and k+1 is proportional to
    x[k+h+1] - x[k-h], so the smoothed spectrum is never formed: comparing two shifted views
    finds where it stops falling. The search starts once the spectrum is below half its
    maximum on the loss side: on the flat, noisy top of the peak the smoothed slope flips sign
    at random and would end the ZLP a channel after its maximum. Channels are scanned in
    blocks of doubling width from the earliest peak on, and the scan ends as soon as every
    spectrum has its minimum, usually within the first block: a few percent of the channels.
    A spectrum that falls to the window's end (a pure ZLP in vacuum) has no minimum: its last
    channel is returned.
    """
    xp = _xp(x)
    n = x.shape[-1]
    h = smooth // 2
    peak = xp.argmax(x, axis=-1)[..., None]
    half = 0.5 * xp.take_along_axis(x, peak, axis=-1)
    stop = xp.full(x.shape[:-1], n - 1)
    todo = xp.ones(x.shape[:-1], dtype=bool)
    lo, end, width = max(int(peak.min()) + 1, h), n - h - 1, 128
    while lo < end and bool(todo.any()):
        hi = min(lo + width, end)
        k = xp.arange(lo, hi)
        hit = x[..., lo + h + 1 : hi + h + 1] >= x[..., lo - h : hi - h]  # smoothed slope >= 0
        hit &= x[..., lo:hi] < half
        hit &= k > peak
        found = todo & hit.any(axis=-1)
        stop = xp.where(found, xp.argmax(hit, axis=-1) + lo, stop)
        todo &= ~found
        lo, width = hi, 2 * width
    return stop


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


def zlp_intensity(spectra, energy, method: str = "first_minimum", threshold_ev=None,
                  smooth: int = 5):
    """ZLP counts and total counts of each spectrum: (I_zlp, I_total), shape spectra[..., 0].

    I_zlp integrates from the first channel (gain side included) up to the first local minimum
    after the peak ("first_minimum", HyperSpy/EELSfitter convention; ``smooth`` is the boxcar
    width in channels that keeps Poisson noise from stopping it at the first wiggle) or up to
    ``threshold_ev`` ("threshold", for spectra already aligned so the peak is at 0 eV).
    The ZLP sum only touches the channels up to the latest integration limit.
    """
    xp = _xp(spectra)
    x = _float(spectra)
    e0, d = _axis(x, energy)
    n = x.shape[-1]
    _require_zero(e0, d, n)
    total = x.sum(axis=-1)
    if method == "threshold":
        k = _threshold_channel(e0, d, n, threshold_ev)
        return x[..., : k + 1].sum(axis=-1), total
    if method != "first_minimum":
        raise ValueError(f"unknown method {method!r}: use 'first_minimum' or 'threshold'")
    if smooth < 1 or smooth % 2 == 0 or smooth + 1 > n:
        raise ValueError(f"smooth={smooth} must be an odd width shorter than the spectrum")
    stop = _first_minimum(x, smooth)
    head = x[..., : int(stop.max()) + 1] if stop.size else x[..., :1]
    inside = xp.arange(head.shape[-1]) <= stop[..., None]
    return xp.where(inside, head, 0).sum(axis=-1), total


def log_ratio_thickness(spectra, energy, method: str = "first_minimum", threshold_ev=None,
                        smooth: int = 5):
    """Relative thickness t/lambda = ln(I_total / I_zlp) per spectrum (float32 for float32).

    Counts beyond the window are missing from I_total, so with a window ending below the
    multiple-plasmon region the result is the windowed log ratio, an underestimate of t/lambda
    (DOMAIN.md: up to 0.48 at t/lambda = 1.9 with a 46 eV window). Spectra whose ZLP or total
    counts are not positive (noise only) give NaN.
    """
    xp = _xp(spectra)
    zlp, total = zlp_intensity(spectra, energy, method, threshold_ev, smooth)
    with np.errstate(divide="ignore", invalid="ignore"):
        return xp.log(total / zlp)
