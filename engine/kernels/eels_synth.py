"""Synthetic EELS low-loss spectral images with exact Poisson multiple scattering.

Why a generator: every EELS operation of the engine (alignment, thickness, clustering, ZLP
model, subtraction, band gap) needs a known truth at the scale of a real spectral image
(10^6 spectra x 2048 channels). This module makes one, chunk by chunk, from the model of
DOMAIN.md section 2:

    J(E) = N e^{-tau} IFFT[ FFT(Z) exp(tau FFT(S)) ]

with Z the unit-area zero-loss peak (ZLP) and S the unit-area single-scattering distribution.
The Fourier form sums every scattering order exactly (Poisson statistics of the number of
inelastic events). It is evaluated on an internal grid with the window's dispersion that
reaches well past the plasmon and is zero padded to twice its length; the window is cropped
out at the end. Padding alone is not enough: at tau ~ 2 the 5th-10th plasmon orders still
carry ~1e-4 of the counts past 200 eV, and they wrapped onto the gain side as +50% of its
ZLP tail. So the convolution runs on exponentially damped copies (x e^{-alpha E}, which
convolution preserves) and the window is undamped afterwards: wrapped intensity is
suppressed by e^{-alpha * FFT span} (~1e-5 here) at the price of amplifying float32
round-off by at most DAMPING_GAIN at the top of the window.

Truth maps (tau, e_g, b, n_counts, drift) are smooth functions of GLOBAL pixel coordinates and
the seed, so any block regenerates alone and blocks join seamlessly; only the detector noise
is drawn per block, from SeedSequence([seed, iy0, ix0]).

Array code only: numpy and scipy.fft (faster than numpy.fft for float32 batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy.special import gammaln

# Split Pearson VII ZLP, fitted to the real vacuum ZLP in ../shared/data/eels (DOMAIN.md).
ZLP_WIDTH_GAIN = 0.135
ZLP_WIDTH_LOSS = 0.247
ZLP_SHAPE_GAIN = 1.47
ZLP_SHAPE_LOSS = 1.91
ZLP_BROADENING = 0.15  # widths grow by (1 + 0.15 tau): thicker specimen, broader ZLP
ZLP_FWHM = ZLP_WIDTH_GAIN + ZLP_WIDTH_LOSS  # 0.382 eV at tau = 0; a monochromator narrows it

PLASMON_ENERGY = 22.0  # E_p (eV)
PLASMON_WIDTH = 5.0  # Gamma (eV)
ONSET_FRACTION = 0.06  # share of S's area in the band-gap onset
ONSET_DECAY = 2.0  # w (eV) of A (E - E_g)^b exp(-(E - E_g) / w)

GAIN_MARGIN_EV = 1.0  # internal grid starts this far below the window (drift room)
LOSS_MARGIN_EV = 1.0  # and ends this far above max(window, 3 E_p, E_p + 15 Gamma)

DAMPING_GAIN = 20.0  # undamping may amplify round-off by at most this at the window's top

_SCENE_KEY = 0x5CE4E  # spawn key: the scene's draws never collide with a block's noise draws
_BATCH = 128  # pixels per FFT batch: keeps the Fourier-domain temporaries cache sized


def _pearson_area(width: float, shape: float) -> float:
    """Integral of (1 + c (E/w)^2)^-m over E >= 0, c = 2^(1/m) - 1 (half-width w at half max)."""
    c = 2.0 ** (1.0 / shape) - 1.0
    return (
        width * math.sqrt(math.pi) * math.gamma(shape - 0.5)
        / (2.0 * math.sqrt(c) * math.gamma(shape))
    )


_ZLP_AREA = _pearson_area(ZLP_WIDTH_GAIN, ZLP_SHAPE_GAIN) + _pearson_area(
    ZLP_WIDTH_LOSS, ZLP_SHAPE_LOSS
)


def _drude_area(e_p: float, gamma: float) -> float:
    """Integral of the Drude loss function over E >= 0 (underdamped: gamma < 2 e_p)."""
    q = gamma * math.sqrt(e_p**2 - gamma**2 / 4.0)
    beta = e_p**2 - gamma**2 / 2.0
    return gamma * e_p**2 / (2.0 * q) * (math.pi / 2.0 + math.atan(beta / q))


_DRUDE_AREA = _drude_area(PLASMON_ENERGY, PLASMON_WIDTH)


def energy_axis(n_channels: int, e_min: float = -5.0, e_max: float = 46.0) -> np.ndarray:
    """Linear energy axis (eV, float64); the default window is DOMAIN.md's typical low loss."""
    if n_channels < 2 or not e_max > e_min:
        raise ValueError(f"need n_channels >= 2 and e_max > e_min, got {n_channels}, "
                         f"[{e_min}, {e_max}]")
    return np.linspace(e_min, e_max, n_channels)


def _pearson(e: np.ndarray, width, shape, out: np.ndarray | None = None) -> np.ndarray:
    """(1 + c (e/w)^2)^-m, c = 2^(1/m) - 1, computed in one buffer (the generator's hot loop)."""
    c = 2.0 ** (1.0 / shape) - 1.0
    t = np.asarray(np.divide(e, width, out=out))  # 0-d input: a writable 0-d array
    np.square(t, out=t)
    t *= c
    np.log1p(t, out=t)
    t *= -shape
    return np.exp(t, out=t)


def zero_loss_peak(energy, tau=0.0, zlp_scale: float = 1.0) -> np.ndarray:
    """The model ZLP as a density (1/eV) of unit integral, broadened by (1 + 0.15 tau).

    zlp_scale multiplies both half widths: 1 is the fitted real (unmonochromated) ZLP, and
    e.g. 0.05 / ZLP_FWHM a monochromated one with a 50 meV FWHM. Scaling the width keeps the
    shape, so the Pearson VII tail falls with it as zlp_scale^(2m - 1) at a given loss.
    Public so tests and later stages can compare with the exact peak the generator used;
    energy and tau broadcast against each other.
    """
    energy = np.asarray(energy)
    if energy.dtype.kind != "f":
        energy = energy.astype(np.float64)
    scale = zlp_scale * (1.0 + ZLP_BROADENING * np.asarray(tau, dtype=energy.dtype))
    gain = _pearson(energy, ZLP_WIDTH_GAIN * scale, ZLP_SHAPE_GAIN)
    loss = _pearson(energy, ZLP_WIDTH_LOSS * scale, ZLP_SHAPE_LOSS)
    return np.where(energy < 0, gain, loss) / (_ZLP_AREA * scale)


def _drude(energy: np.ndarray) -> np.ndarray:
    """Drude loss function E Gamma E_p^2 / ((E^2 - E_p^2)^2 + (E Gamma)^2), unit area on E >= 0."""
    e = np.maximum(energy, 0.0)
    g, ep2 = PLASMON_WIDTH, PLASMON_ENERGY**2
    return e * g * ep2 / ((e * e - ep2) ** 2 + (e * g) ** 2) / _DRUDE_AREA


def _onset(energy: np.ndarray, b) -> np.ndarray:
    """Band-gap onset x^b exp(-x/w) for x = E - E_g > 0, unit area (Gamma(b+1) w^(b+1))."""
    x = np.maximum(energy, 0.0)
    b = np.asarray(b, dtype=float)
    area = np.exp(gammaln(b + 1.0)) * ONSET_DECAY ** (b + 1.0)
    return np.where(energy > 0, x**b * np.exp(-x / ONSET_DECAY), 0.0) / area


def single_scattering(energy, e_g, b) -> np.ndarray:
    """S(E) density (1/eV) of unit integral: 6% band-gap onset at e_g plus 94% Drude plasmon."""
    energy = np.asarray(energy, dtype=float)
    return (1.0 - ONSET_FRACTION) * _drude(energy) + ONSET_FRACTION * _onset(energy - e_g, b)


@dataclass(frozen=True)
class ModelGrid:
    """Internal grid: the window's channels plus margins, then zero padding for the FFT.

    Channel k of the grid is at energy ``start + k * dispersion``; Z and S occupy the first
    ``n_signal`` channels and the FFT length ``n_fft >= 2 n_signal`` holds the second
    scattering order whole; ``damping`` (1/eV), the alpha of the damped convolution, keeps
    the higher orders that still pass the end from wrapping onto the start.
    """

    start: float
    dispersion: float
    n_signal: int
    n_fft: int
    window: slice
    damping: float

    @property
    def energy(self) -> np.ndarray:
        return self.start + self.dispersion * np.arange(self.n_signal)

    def damp(self, energy_from_start: np.ndarray) -> np.ndarray:
        """The damping factor e^{-alpha E}, E measured from the frame's origin."""
        return np.exp(-self.damping * energy_from_start)


def model_grid(energy: np.ndarray) -> ModelGrid:
    """The internal grid for a linear window (same dispersion, window channels on the grid)."""
    energy = np.asarray(energy, dtype=float)
    if energy.ndim != 1 or energy.size < 2:
        raise ValueError("energy must be a 1-D axis with at least 2 channels")
    d = (energy[-1] - energy[0]) / (energy.size - 1)
    if not d > 0 or not np.allclose(np.diff(energy), d, rtol=1e-6, atol=0):
        raise ValueError("energy axis must be linear and increasing")
    top = max(energy[-1], 3 * PLASMON_ENERGY, PLASMON_ENERGY + 15 * PLASMON_WIDTH)
    n_low = math.ceil(GAIN_MARGIN_EV / d)
    n_signal = n_low + math.ceil((top + LOSS_MARGIN_EV - energy[0]) / d) + 1
    start = float(energy[0] - n_low * d)
    return ModelGrid(
        start=start,
        dispersion=float(d),
        n_signal=n_signal,
        n_fft=sfft.next_fast_len(2 * n_signal, real=True),
        window=slice(n_low, n_low + energy.size),
        damping=math.log(DAMPING_GAIN) / (energy[-1] - start),
    )


# ---------------------------------------------------------------- truth maps (global coordinates)


def _scene(seed: int) -> dict:
    """Random layout of one image: drawn from the seed alone, so every block sees the same one."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SCENE_KEY,)))
    n_flakes = 6
    return {
        "centre": rng.uniform(0.15, 0.85, (n_flakes, 2)),
        "radius": rng.uniform(0.08, 0.2, n_flakes),
        "aspect": rng.uniform(0.5, 1.0, n_flakes),
        "angle": rng.uniform(0.0, np.pi, n_flakes),
        "tau": rng.permutation(np.linspace(0.45, 1.85, n_flakes)),
        "e_g": rng.uniform(1.0, 2.3, n_flakes),
        "b": rng.choice([0.5, 1.5], n_flakes),
        "modes": {name: _draw_modes(rng) for name in ("tau", "e_g", "n", "drift")},
    }


def _draw_modes(rng: np.random.Generator, n_modes: int = 4) -> tuple:
    """Wave numbers, phases and weights of a smooth field over the unit square."""
    k = rng.integers(-3, 4, (n_modes, 2))
    return k, rng.uniform(0, 2 * np.pi, n_modes), rng.uniform(0.5, 1.0, n_modes)


def _smooth(modes: tuple, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A smooth field in [-1, 1] over normalised coordinates (u down, v across)."""
    k, phase, weight = modes
    arg = 2 * np.pi * (k[:, 0, None, None] * u + k[:, 1, None, None] * v) + phase[:, None, None]
    return np.tensordot(weight, np.cos(arg), axes=1) / weight.sum()


def _flake_membership(scene: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft (logistic edge) elliptical flakes: (n_flakes, ny, nx) memberships in [0, 1]."""
    cu, cv = scene["centre"][:, 0, None, None], scene["centre"][:, 1, None, None]
    cos, sin = np.cos(scene["angle"])[:, None, None], np.sin(scene["angle"])[:, None, None]
    a = scene["radius"][:, None, None]
    p, q = (u - cu) * cos + (v - cv) * sin, (v - cv) * cos - (u - cu) * sin
    r = np.hypot(p / a, q / (a * scene["aspect"][:, None, None]))
    edge = 0.01  # edge width as a fraction of the image: a few pixels at 1000 x 1000
    return 0.5 * (1.0 + np.tanh((1.0 - r) * a / edge))


def _paint(background: np.ndarray, levels: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Paint flakes over a background in order, later flakes on top (terraces stay flat)."""
    out = background
    for level, m in zip(levels, member, strict=True):
        out = out + m * (level - out)
    return out


def _hash_uniform(seed: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) per global pixel (splitmix64 of seed, y, x): jitter without an rng state."""
    z = np.full(np.broadcast_shapes(y.shape, x.shape), seed % 2**64, dtype=np.uint64)
    z = z * np.uint64(0x9E3779B97F4A7C15) + (y.astype(np.uint64) << np.uint64(32))
    z = z + x.astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


# The band-gap known truth (issue 17): one thin specimen with an indirect gap beside vacuum,
# at the counts of a real unmonochromated low-loss acquisition (EELSfitter's WS2 spectra hold
# ~6e7 counts). Vacuum (tau = 0) is pure ZLP: the reference a vacuum ZLP and dE_II come from.
BANDGAP_SCENE = {"tau": 0.1, "e_g": 1.4, "b": 1.5, "n_counts": 6e7}
VACUUM_FRACTION = 0.25  # the right quarter of the columns (at least one) is vacuum
SCENES = ("flakes", "bandgap")


def _bandgap_maps(y: np.ndarray, x: np.ndarray, shape: tuple[int, int], seed: int,
                  modes: dict) -> dict[str, np.ndarray]:
    """Truth of the "bandgap" scene: specimen (tau 0.1 +- 3%, E_g 1.4 eV, b 1.5, 6e7 +- 2%
    counts) left of a vacuum strip (tau 0, e_g NaN: no gap). The generator needs a finite E_g
    everywhere, so vacuum is simulated with the specimen's (its onset weight tau is 0)."""
    ny, nx = shape
    u, v = (y + 0.5) / ny, (x + 0.5) / nx
    vacuum = np.broadcast_to(x >= nx - max(1, round(VACUUM_FRACTION * nx)), np.broadcast_shapes(
        y.shape, x.shape))
    tau = BANDGAP_SCENE["tau"] * (1.0 + 0.03 * _smooth(modes["tau"], u, v))
    return {
        "tau": np.where(vacuum, 0.0, tau),
        "e_g": np.full(vacuum.shape, BANDGAP_SCENE["e_g"]),
        "b": np.full(vacuum.shape, BANDGAP_SCENE["b"]),
        "n_counts": BANDGAP_SCENE["n_counts"] * (1.0 + 0.02 * _smooth(modes["n"], u, v)),
        "vacuum": vacuum,
    }


def truth_maps(iy, ix, shape: tuple[int, int], seed: int,
               scene: str = "flakes") -> dict[str, np.ndarray]:
    """Per-pixel truth for rows iy x cols ix (slices or index arrays of the GLOBAL image).

    scene "bandgap" is the band-gap known truth instead (_bandgap_maps); "flakes" is this:

    tau: substrate 0.1-0.3 plus six flakes on terraces 0.45-1.85 (K-means has clusters to find);
    e_g: 2.4 eV substrate, 1.0-2.3 eV per flake; b: 1.5 or 0.5 per flake (hard edge);
    n_counts: 1e6 +- 10%; drift: smooth field +- 0.15 eV plus +- 0.01 eV per-pixel jitter.
    Every value is a function of (global y, global x, seed), so blocks join seamlessly.
    Returned as float32: the exact values the generator uses.
    """
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}; use one of {', '.join(SCENES)}")
    ny, nx = shape
    y = np.arange(ny)[iy][:, None]
    x = np.arange(nx)[ix][None, :]
    jitter = 0.01 * (2.0 * _hash_uniform(seed, y, x) - 1.0)
    if scene == "bandgap":
        modes = _scene(seed)["modes"]
        u, v = (y + 0.5) / ny, (x + 0.5) / nx
        maps = _bandgap_maps(y, x, shape, seed, modes)
        maps["drift"] = 0.15 * _smooth(modes["drift"], u, v) + jitter
        maps["vacuum"] = maps["vacuum"].astype(np.float32)
        return {name: np.ascontiguousarray(m, dtype=np.float32) for name, m in maps.items()}
    scene = _scene(seed)
    u, v = (y + 0.5) / ny, (x + 0.5) / nx
    member = _flake_membership(scene, u, v)
    modes = scene["modes"]
    substrate = np.broadcast_to(0.1 + 0.2 * v, member.shape[1:])
    tau = _paint(substrate, scene["tau"], member)
    tau = np.clip(tau * (1.0 + 0.03 * _smooth(modes["tau"], u, v)), 0.08, 1.9)
    e_g = _paint(np.full_like(tau, 2.4), scene["e_g"], member)
    e_g = e_g + 0.1 * _smooth(modes["e_g"], u, v)
    b = _paint(np.full_like(tau, 1.5), scene["b"], member > 0.5)
    maps = {
        "tau": tau,
        "e_g": e_g,
        "b": b,
        "n_counts": 1e6 * (1.0 + 0.1 * _smooth(modes["n"], u, v)),
        "drift": 0.15 * _smooth(modes["drift"], u, v) + jitter,
    }
    return {name: np.ascontiguousarray(m, dtype=np.float32) for name, m in maps.items()}


# ---------------------------------------------------------------- spectra


def _zlp_rows(grid: ModelGrid, tau: np.ndarray, drift: np.ndarray, zlp_scale: float,
              out: np.ndarray) -> None:
    """Per-pixel ZLP at (grid - drift) with unit sum, into the first n_signal columns of out.

    out is the zero-padded FFT input (its padding stays zero). The loss-side formula runs on
    every channel and the gain side only on the leading channels where some pixel has
    E - drift < 0: half the transcendental work of evaluating both sides everywhere.
    """
    e_grid = grid.energy.astype(np.float32)
    z = out[:, : grid.n_signal]
    np.subtract(e_grid[None, :], drift[:, None], out=z)
    scale = (zlp_scale * (1.0 + ZLP_BROADENING * tau))[:, None]
    n_gain = int(np.searchsorted(e_grid, drift.max(), side="left"))
    head = z[:, :n_gain].copy()
    _pearson(z, ZLP_WIDTH_LOSS * scale, ZLP_SHAPE_LOSS, out=z)
    gain = _pearson(head, ZLP_WIDTH_GAIN * scale, ZLP_SHAPE_GAIN)
    np.copyto(z[:, :n_gain], gain, where=head < 0)
    z /= z.sum(axis=-1, keepdims=True)


class _Workspace:
    """Buffers shared by all batches of a call.

    Fresh 5-10 MB temporaries in every batch cost ~40% of the generator's time in page faults
    (glibc hands such blocks back to the OS on free), so the batch works in place here.
    """

    def __init__(self, grid: ModelGrid, rows: int):
        n_freq = grid.n_fft // 2 + 1
        self.padded = np.zeros((rows, grid.n_fft), np.float32)  # Z, then zero padding
        self.spectrum = np.empty((rows, grid.n_fft), np.float32)  # irfft output
        self.f1, self.f2, self.f3 = (np.empty((rows, n_freq), np.float32) for _ in range(3))
        self.h = np.empty((rows, n_freq), np.complex64)

    def rows(self, n: int) -> tuple[np.ndarray, ...]:
        """The first n rows of every buffer (contiguous views)."""
        buffers = (self.padded, self.spectrum, self.f1, self.f2, self.f3, self.h)
        return tuple(buf[:n] for buf in buffers)


def _transfer(grid: ModelGrid, b: float) -> tuple:
    """FFT pieces of the damped S for one onset exponent b: (1-f) Drude (re, im), f |onset|,
    onset phase, omega, all contiguous float32 rows (strided .real views run 5x slower).

    S starts at 0 eV loss (channel 0 of the FFT frame), so its circular convolution with a ZLP
    row keeps the ZLP's energy origin. The onset is built at 0 eV; each pixel moves it to its
    own e_g with a phase (and e^{-alpha e_g} for the damping). omega is the angular frequency
    (rad/eV) of each rfft bin. Both parts have unit sum before damping.
    """
    e = grid.dispersion * np.arange(grid.n_signal)
    drude = _drude(e)
    onset = _onset(e, b)
    d_hat = sfft.rfft(drude / drude.sum() * grid.damp(e), grid.n_fft)
    o_hat = sfft.rfft(onset / onset.sum() * grid.damp(e), grid.n_fft)
    omega = 2 * np.pi * sfft.rfftfreq(grid.n_fft, grid.dispersion)
    rows = ((1.0 - ONSET_FRACTION) * d_hat.real, (1.0 - ONSET_FRACTION) * d_hat.imag,
            ONSET_FRACTION * np.abs(o_hat), np.angle(o_hat), omega)
    return tuple(r.astype(np.float32) for r in rows)


def _batch_spectra(grid, transfer, work, zlp_scale, tau, e_g, n, drift):
    """Noiseless J and ZLP part on the window for a batch of pixels sharing one b (1-D inputs).

    Fourier form of the damped model: J_hat = Z_hat exp(ln N - tau + tau S_hat), with the
    onset moved to e_g by exp(-(alpha + i omega) e_g) (a band-limited shift that keeps S's
    unit area). The complex exponential is built from float32 exp/cos/sin, ~10x faster than
    numpy's complex64 exp. scipy's rfft is 3x faster than numpy's for float32; numpy's irfft
    is as fast as scipy's and writes into the workspace.
    """
    d_re, d_im, o_mag, o_phase, omega = transfer
    padded, spectrum, phase, amp, tmp, h = work.rows(tau.size)
    _zlp_rows(grid, tau, drift, zlp_scale, out=padded)
    zlp = padded[:, grid.window] * (n * np.exp(-tau))[:, None]
    frame = grid.dispersion * np.arange(grid.n_signal)
    padded[:, : grid.n_signal] *= grid.damp(frame).astype(np.float32)
    z_hat = sfft.rfft(padded, axis=-1)
    onset_scale = (tau * np.exp(-grid.damping * e_g))[:, None]
    np.multiply(e_g[:, None], -omega, out=phase)
    phase += o_phase
    np.cos(phase, out=amp)  # becomes ln N - tau + tau Re S_hat, then its exp
    amp *= o_mag
    amp *= onset_scale
    amp += tau[:, None] * d_re
    amp += (np.log(n) - tau)[:, None]
    np.exp(amp, out=amp)
    theta = np.sin(phase, out=phase)  # becomes tau Im S_hat
    theta *= o_mag
    theta *= onset_scale
    theta += tau[:, None] * d_im
    np.multiply(amp, np.cos(theta, out=tmp), out=h.real)
    np.multiply(amp, np.sin(theta, out=theta), out=h.imag)
    z_hat *= h
    np.fft.irfft(z_hat, grid.n_fft, axis=-1, out=spectrum)
    undamp = 1.0 / grid.damp(frame[grid.window]).astype(np.float32)
    return spectrum[:, grid.window] * undamp, zlp


def noiseless_spectra(energy: np.ndarray, maps: dict,
                      zlp_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Exact expected counts J and its zero-loss part N e^{-tau} Z on the window.

    zlp_scale: the ZLP's width relative to the fitted real one (see zero_loss_peak).

    Both float32 with shape maps["tau"].shape + (n_channels,); each pixel's spectrum is
    generated on E - drift. Pixels go through in batches (a loop over batches, not pixels) so
    the Fourier temporaries stay cache sized; a batch straddling a flake edge with two values
    of b is split by b, since each b has its own S template.
    """
    grid = model_grid(energy)
    names = ("tau", "e_g", "n_counts", "drift")
    flat = {k: np.asarray(maps[k], np.float32).ravel() for k in names}
    b = np.asarray(maps["b"], np.float32).ravel()
    transfers = {v: _transfer(grid, float(v)) for v in np.unique(b)}
    work = _Workspace(grid, min(_BATCH, b.size))
    n_pix, n_ch = b.size, len(energy)
    j = np.empty((n_pix, n_ch), np.float32)
    zlp = np.empty((n_pix, n_ch), np.float32)
    for lo in range(0, n_pix, _BATCH):
        batch = slice(lo, min(lo + _BATCH, n_pix))
        for b_value in np.unique(b[batch]):
            rows = np.flatnonzero(b[batch] == b_value) + lo
            if rows.size == batch.stop - lo:
                rows = batch  # the usual case: a slice writes faster than a scatter
            j[rows], zlp[rows] = _batch_spectra(
                grid, transfers[b_value], work, zlp_scale, *(flat[k][rows] for k in names)
            )
    shape = np.shape(maps["tau"]) + (n_ch,)
    return j.reshape(shape), zlp.reshape(shape)


def detector_counts(j: np.ndarray, rng: np.random.Generator, gain: float = 1.0,
                    read_noise: float = 2.0) -> np.ndarray:
    """gain * Poisson(J / gain) + Gaussian read noise, float32 (one rng stream, C order)."""
    lam = np.maximum(j, 0.0) / gain  # irfft round-off can dip a hair below 0 in far tails
    counts = rng.poisson(lam).astype(np.float32)
    if gain != 1.0:
        counts *= np.float32(gain)
    if read_noise > 0:
        counts += np.float32(read_noise) * rng.standard_normal(counts.shape, np.float32)
    return counts


def simulate_chunk(energy: np.ndarray, maps: dict, rng: np.random.Generator, gain: float = 1.0,
                   read_noise: float = 2.0, zlp_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy counts (..., E) float32 and the windowed log-ratio truth (...) float32.

    The windowed truth ln(sum_window J / sum_window N e^{-tau} Z) is what log-ratio
    thickness can recover inside a finite window (plasmons beyond it are lost).
    """
    j, zlp = noiseless_spectra(energy, maps, zlp_scale)
    windowed = np.log(j.sum(axis=-1) / zlp.sum(axis=-1))
    return detector_counts(j, rng, gain, read_noise), windowed.astype(np.float32)


def simulate_block(shape: tuple[int, int], block_origin: tuple[int, int],
                   block_shape: tuple[int, int], energy: np.ndarray, seed: int, gain: float = 1.0,
                   read_noise: float = 2.0, zlp_scale: float = 1.0,
                   scene: str = "flakes") -> dict[str, np.ndarray]:
    """One block of a (NY, NX) image: counts, windowed_log_ratio and every truth map.

    Noise comes from SeedSequence([seed, iy0, ix0]), so the same call returns identical bytes
    and any block regenerates without its neighbours. scene: see truth_maps. In the "bandgap"
    scene the returned e_g is NaN on vacuum (no gap there) and `vacuum` is 1 there, else 0.
    """
    (iy0, ix0), (by, bx) = block_origin, block_shape
    if not (0 <= iy0 and 0 <= ix0 and by > 0 and bx > 0
            and iy0 + by <= shape[0] and ix0 + bx <= shape[1]):
        raise ValueError(f"block {block_origin} + {block_shape} is not inside image {shape}")
    maps = truth_maps(slice(iy0, iy0 + by), slice(ix0, ix0 + bx), shape, seed, scene)
    rng = np.random.default_rng(np.random.SeedSequence([seed, iy0, ix0]))
    counts, windowed = simulate_chunk(energy, maps, rng, gain, read_noise, zlp_scale)
    if "vacuum" in maps:
        maps["e_g"] = np.where(maps["vacuum"] > 0, np.nan, maps["e_g"]).astype(np.float32)
    return {"counts": counts, "windowed_log_ratio": windowed, **maps}
