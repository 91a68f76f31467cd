"""Dielectric function from low-loss EELS: Fourier-log deconvolution and Kramers-Kronig analysis.

Egerton's route (Electron Energy-Loss Spectroscopy in the Electron Microscope, 3rd ed., 4.2 and
4.3), vectorised over any leading shape with the energy axis last:

1. Fourier-log deconvolution. A spectrum is J = Z (x) exp-series of the single-scattering
   distribution (SSD): J_hat = Z_hat exp(S_hat / I0), I0 the zero-loss counts. So
   S = I0 IFFT[G_hat ln(J_hat / Z_hat)], where G is a unit-area Gaussian as wide as the ZLP
   (the reconvolution that keeps noise at frequencies where Z_hat ~ 0 from exploding). The
   principal branch of the complex log is right while the thickness t/lambda < pi.
2. Kramers-Kronig. The angular collection correction turns the SSD into the shape of the loss
   function, Im[-1/eps](E) proportional to S(E) / ln(1 + (beta/theta_E)^2); its scale K comes
   from the sum rule int Im[-1/eps] / E dE = (pi/2)(1 - 1/n^2) (n the refractive index; a metal
   has 1/n^2 = 0). Then Re[1/eps] = 1 + H[Im[-1/eps]] with H the Hilbert transform of the loss
   function extended as an odd function of E, done by FFT on a zero-padded grid, and
   eps = (Re[1/eps] + i Im[-1/eps]) / |1/eps|^2.
3. The same K gives the absolute thickness t = K pi a0 m0 v^2 / I0 (Egerton eq. 4.26).

Why this is streamable: every step is along the energy axis of one spectrum, which the lake
keeps in one chunk, so a 10^6-spectrum image goes through chunk by chunk (exSpy's version needs
the image in memory). Truncation matters: the loss function must have fallen off by the end of
the window, or Re[1/eps] is biased near the end (the test measures it on a Drude metal).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft

BOHR_RADIUS_NM = 0.0529177
ELECTRON_REST_ENERGY_EV = 510_998.95


def _fft_length(n: int) -> int:
    return sfft.next_fast_len(2 * n, real=True)


def cosine_taper(n: int, width: int) -> np.ndarray:
    """Ones with a half-cosine fall to zero over the last `width` channels (no step at the end)."""
    taper = np.ones(n)
    if width > 0:
        taper[n - width:] = 0.5 * (1.0 + np.cos(np.pi * (np.arange(width) + 1) / width))
    return taper


def fourier_log_ssd(spectra, zlp, energy, reconvolve_fwhm, taper_ev: float = 0.0):
    """Single-scattering distribution (counts per channel, same axis) and I0 of each spectrum.

    reconvolve_fwhm (eV): one width, or one per spectrum (shape spectra[..., 0]).

    spectra and zlp share the aligned energy axis (ZLP at 0 eV, a channel-aligned 0 is not
    needed: the frame is rotated by a phase). The end of both is cosine tapered over taper_ev
    so the window's edge does not ring.
    """
    j = np.asarray(spectra, dtype=np.float64)
    z = np.asarray(zlp, dtype=np.float64)
    e = np.asarray(energy, dtype=np.float64)
    n = e.size
    d = (e[-1] - e[0]) / (n - 1)
    taper = cosine_taper(n, int(round(taper_ev / d)))
    i0 = z.sum(axis=-1)
    n_fft = _fft_length(n)
    j_hat = sfft.rfft(j * taper, n_fft, axis=-1)
    z_hat = sfft.rfft(z * taper, n_fft, axis=-1)
    omega = 2.0 * np.pi * sfft.rfftfreq(n_fft, d)
    sigma = np.asarray(reconvolve_fwhm, dtype=np.float64)[..., None] / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    gauss = np.exp(-0.5 * (omega * sigma) ** 2)
    # Z_hat carries the frame's origin (channel 0 at e[0]); the ratio J_hat/Z_hat does not, so the
    # SSD comes out with E = 0 at channel 0 and is shifted back onto the window by the phase.
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(j_hat / z_hat)
    log_ratio = np.where(np.isfinite(log_ratio), log_ratio, 0.0)
    shift = np.exp(1j * omega * e[0])
    ssd = sfft.irfft(gauss * log_ratio * shift, n_fft, axis=-1)[..., :n]
    return ssd * i0[..., None], i0


def loss_grid(energy: np.ndarray) -> tuple[np.ndarray, float]:
    """Positive losses k d, k = 1..M, on the window's dispersion (the odd extension's grid)."""
    d = (energy[-1] - energy[0]) / (energy.size - 1)
    m = int(np.floor(energy[-1] / d + 1e-9))
    return d * np.arange(1, m + 1), d


def _interpolate(values: np.ndarray, energy: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Linear interpolation along the last axis to `at` (same positions for every spectrum)."""
    pos = (at - energy[0]) / (energy[1] - energy[0])
    lo = np.clip(np.floor(pos).astype(int), 0, energy.size - 2)
    w = pos - lo
    return values[..., lo] * (1.0 - w) + values[..., lo + 1] * w


def aperture_factor(loss: np.ndarray, beam_energy_kev: float, collection_angle_mrad: float) -> np.ndarray:
    """ln(1 + (beta/theta_E)^2), theta_E = E / (gamma m0 v^2): the angular integral of scattering."""
    gamma = 1.0 + beam_energy_kev * 1e3 / ELECTRON_REST_ENERGY_EV
    m0v2 = ELECTRON_REST_ENERGY_EV * (1.0 - 1.0 / gamma**2)
    theta_e = loss / (gamma * m0v2)
    return np.log1p((collection_angle_mrad * 1e-3 / theta_e) ** 2)


def hilbert_odd(loss_function: np.ndarray, n_fft: int) -> np.ndarray:
    """H[f](E_k) for f sampled at E_k = k d (k = 1..M), extended as an odd function of E.

    H[f](x) = (1/pi) P int f(t) / (x - t) dt; the odd extension turns the one-sided KK integral
    (2/pi) P int_0^inf f(E') E' / (E'^2 - E^2) dE' into -H[f]. Zero padding to n_fft >= 4M keeps
    the circular transform from folding the negative half onto the positive one.
    """
    m = loss_function.shape[-1]
    frame = np.zeros(loss_function.shape[:-1] + (n_fft,))
    frame[..., 1:m + 1] = loss_function
    frame[..., n_fft - m:] = -loss_function[..., ::-1]
    spectrum = sfft.rfft(frame, axis=-1)
    spectrum *= -1j
    spectrum[..., 0] = 0.0
    if n_fft % 2 == 0:
        spectrum[..., -1] = 0.0
    return sfft.irfft(spectrum, n_fft, axis=-1)[..., 1:m + 1]


TAIL_EXPONENTS = (2.0, 6.0)


def extend_power_law(values: np.ndarray, loss: np.ndarray, fit_from: float, fit_to: float,
                     reach: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Replace values beyond fit_to with A E^-r fitted (in log-log) on [fit_from, fit_to], out to
    reach x the window's end, r clipped to TAIL_EXPONENTS. Why: the loss function of a solid
    falls as ~E^-3 past its plasmon, and cutting it at a 46 eV window end biases the KK integral
    by tens of percent at low loss (Egerton extrapolates the same way). A fit range with no
    positive signal gives r = 3.
    """
    d = loss[1] - loss[0]
    grid = d * np.arange(1, int(round(reach * loss[-1] / d)) + 1)
    fit = (loss >= fit_from) & (loss <= fit_to)
    lo, hi = loss[fit][0], loss[fit][-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        head = values[..., fit][..., : max(fit.sum() // 4, 1)].mean(axis=-1)
        tail = values[..., fit][..., -max(fit.sum() // 4, 1):].mean(axis=-1)
        r = np.log(head / tail) / np.log(hi / lo)
    # The f-sum rule (int E Im[-1/eps] dE finite) needs r > 2; noisy tails can give anything.
    r = np.clip(np.where(np.isfinite(r) & (head > 0) & (tail > 0), r, 3.0), *TAIL_EXPONENTS)
    keep = grid <= fit_to
    out = np.empty(values.shape[:-1] + (grid.size,))
    out[..., keep] = values[..., : keep.sum()]
    out[..., ~keep] = np.maximum(tail, 0.0)[..., None] * (grid[~keep] / hi) ** -r[..., None]
    return out, grid


def dielectric_from_loss(loss_function: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eps1, eps2) from a normalised loss function Im[-1/eps] on the grid E_k = k d."""
    m = loss_function.shape[-1]
    re_inverse = 1.0 + hilbert_odd(loss_function, sfft.next_fast_len(4 * (m + 1)))
    norm = re_inverse**2 + loss_function**2
    return re_inverse / norm, loss_function / norm


TAIL_FIT = (0.8, 0.9)  # share of the window's top loss where the power-law tail is fitted


def kramers_kronig(ssd, i0, energy, beam_energy_kev: float, collection_angle_mrad: float | None,
                   refractive_index: float | None) -> dict[str, np.ndarray]:
    """Loss function, eps1, eps2 on E_k = k d and the absolute thickness (nm) of each spectrum.

    refractive_index None: a metal (Re[1/eps(0)] = 0). collection_angle_mrad None skips the
    angular correction (Im[-1/eps] taken proportional to the SSD itself) and the thickness,
    which needs it, is NaN. Past TAIL_FIT the loss function is a fitted power law
    (extend_power_law), which also replaces the tapered last channels of the SSD.
    """
    e = np.asarray(energy, dtype=np.float64)
    loss, d = loss_grid(e)
    s = _interpolate(np.asarray(ssd, dtype=np.float64), e, loss) / d  # counts per eV
    shape = s / aperture_factor(loss, beam_energy_kev, collection_angle_mrad) if collection_angle_mrad \
        else s
    shape, grid = extend_power_law(shape, loss, TAIL_FIT[0] * loss[-1], TAIL_FIT[1] * loss[-1])
    limit = 1.0 if refractive_index is None else 1.0 - 1.0 / refractive_index**2
    with np.errstate(divide="ignore", invalid="ignore"):
        k = (shape / grid).sum(axis=-1) * d / (0.5 * np.pi * limit)
        loss_function = shape / k[..., None]
    eps1, eps2 = dielectric_from_loss(loss_function)
    m = loss.size
    thickness = np.full(np.shape(k), np.nan)
    if collection_angle_mrad:
        gamma = 1.0 + beam_energy_kev * 1e3 / ELECTRON_REST_ENERGY_EV
        m0v2 = ELECTRON_REST_ENERGY_EV * (1.0 - 1.0 / gamma**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            thickness = k * np.pi * BOHR_RADIUS_NM * m0v2 / np.asarray(i0, dtype=np.float64)
    return {"loss": loss, "loss_function": loss_function[..., :m], "eps1": eps1[..., :m],
            "eps2": eps2[..., :m], "thickness_nm": thickness}
