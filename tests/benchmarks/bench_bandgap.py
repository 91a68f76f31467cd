"""Benchmark: batched band-gap fits vs scipy.optimize.curve_fit, per fit, same spectra.

Noisy A (E - E_BG)^b onsets (E_BG 1.0-2.5 eV, 0.02 eV channels, window 0.8-4.0 eV: 161
channels), b fixed and free, each channel the onset at its centre (power_onset, the kernel's
default model; --sampling channel: averaged over the channel's width, channel_onset, for the data
and both fits).
curve_fit gets the same model, the same Poisson errors and a start 0.1 eV below the true onset
with our fitted amplitude, so the ratio is the price of one Python call per pixel. Both sides:
one untimed warm-up, best of N, interleaved; ours fits --fits spectra in one call, curve_fit the
first --scipy-fits of them one by one (compared per fit). Also prints how far apart the two
optima are, and the distribution of our iteration counts (median, 90% and 99% quantiles, max).

Then the op's default, background="linear" (b fixed 1.5): the same onsets on a plasmon-tail
line c E, ours only (curve_fit has no bound-constrained equivalent of the same cost).

--resolution FWHM: the channel-averaged onset convolved with a Gaussian of that FWHM (eV): the
data (blurred_onset), ours (the kernel's `resolution`) and curve_fit's model (np.convolve of the
widened channel average with the kernel made once: the same numbers). One BLAS thread on both
sides (per core).

    python tests/benchmarks/bench_bandgap.py [--quick] [--fits 20000] [--scipy-fits 500]
        [--background-fits 4096] [--repeats 3] [--sampling channel|point] [--resolution 0.1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import curve_fit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from engine.kernels.bandgap import (  # noqa: E402
    blurred_onset,
    channel_onset,
    fit_bandgap,
    gaussian_resolution,
    power_onset,
)
from engine.kernels.blas import one_blas_thread  # noqa: E402
from tests.benchmarks._timing import compare, finish, header, ratio, show  # noqa: E402

ENERGY = np.linspace(0.5, 4.0, 176)
WINDOW = (0.8, 4.0)


ONSETS = {"channel": channel_onset, "point": power_onset}


def onset_model(sampling: str, resolution: float | None):
    """The data's onset (energy, e_bg, amplitude, b) -> counts, rows by e_bg: ONSETS[sampling],
    or with a resolution the blurred channel average (blurred_onset)."""
    if resolution is None:
        return ONSETS[sampling]
    return lambda energy, e_bg, amplitude, b: blurred_onset(
        energy, np.ravel(e_bg), np.ravel(amplitude), b, resolution
    )


def scipy_model(energy, sampling: str, resolution: float | None):
    """curve_fit's model on the window `energy`: ONSETS[sampling], or with a resolution what a
    user would write: the channel average on the window widened by the kernel's reach, then
    np.convolve with the kernel made once (the same numbers as blurred_onset)."""
    if resolution is None:
        return ONSETS[sampling]
    kernel = gaussian_resolution(resolution, float(energy[1] - energy[0]))
    h, step = kernel.size // 2, float(energy[1] - energy[0])
    wider = np.concatenate(
        [energy[0] - step * np.arange(h, 0, -1), energy, energy[-1] + step * np.arange(1, h + 1)]
    )
    return lambda e, e_bg, amplitude, b: np.convolve(
        channel_onset(wider, e_bg, amplitude, b), kernel, mode="valid"
    )


def scipy_fits(
    spectra, inside, guess_amplitude, e_bg, exponent, count: int, sampling: str, resolution
) -> np.ndarray:
    """curve_fit pixel by pixel from our starting point; returns the fitted E_BG."""
    energy = ENERGY[inside]
    onset = scipy_model(energy, sampling, resolution)

    def model(e, a, e0, b=1.5):
        return onset(e, e0, a, b)

    fitted = []
    for k in range(count):
        y = spectra[k, inside]
        p0 = [float(guess_amplitude[k]), e_bg[k] - 0.1] + ([] if exponent else [1.5])
        popt, _ = curve_fit(
            model, energy, y, p0=p0, sigma=np.sqrt(np.maximum(y, 1.0)), absolute_sigma=True, maxfev=5000
        )
        fitted.append(popt[1])
    return np.array(fitted)


def run(
    quick: bool = False,
    fits: int | None = None,
    scipy_fits_: int | None = None,
    background_fits: int | None = None,
    repeats: int = 3,
    sampling: str = "point",
    resolution: float | None = None,
) -> dict:
    fits = fits or (4000 if quick else 20000)
    scipy_count = scipy_fits_ or (100 if quick else 500)
    background_fits = background_fits or (1024 if quick else 4096)
    result = header(
        "band-gap fits: batched vs scipy curve_fit",
        repeats,
        fits=fits,
        scipy_fits=scipy_count,
        sampling=sampling,
        resolution=resolution,
    )
    one_blas_thread()  # per core: our blurred model's products and curve_fit's solves alike
    rng = np.random.default_rng(0)
    e_bg = rng.uniform(1.0, 2.5, fits)
    onset = onset_model(sampling, resolution)
    model = {"sampling": None, "resolution": resolution} if resolution else {"sampling": sampling}
    exact = onset(ENERGY, e_bg[:, None], rng.uniform(1e3, 1e4, fits)[:, None], 1.5)
    spectra = exact + rng.normal(size=exact.shape) * np.sqrt(np.maximum(exact, 1.0))
    inside = (ENERGY >= WINDOW[0]) & (ENERGY <= WINDOW[1])
    for exponent, label in ((1.5, "b_fixed"), (None, "b_free")):
        ours = fit_bandgap(spectra, ENERGY, window=WINDOW, exponent=exponent, sigma="poisson", **model)
        timings = compare(
            {
                "ours": lambda x=exponent: fit_bandgap(
                    spectra, ENERGY, window=WINDOW, exponent=x, sigma="poisson", **model
                ),
                "curve_fit": lambda x=exponent, a=ours.amplitude: scipy_fits(
                    spectra, inside, a, e_bg, x, scipy_count, sampling, resolution
                ),
            },
            repeats,
        )
        per_ours = timings["ours"].wall / fits
        per_scipy = timings["curve_fit"].wall / scipy_count
        cpu_ours, cpu_scipy = timings["ours"].cpu / fits, timings["curve_fit"].cpu / scipy_count
        gap = np.abs(timings["curve_fit"].value - timings["ours"].value.e_bg[:scipy_count])
        print(
            f"{label}: ours {per_ours * 1e6:7.1f} us/fit ({ours.converged.mean():.4f} converged), "
            f"curve_fit {per_scipy * 1e6:7.1f} us/fit, ratio {per_scipy / per_ours:5.1f}x "
            f"(CPU: {cpu_ours * 1e6:.1f} vs {cpu_scipy * 1e6:.1f} us/fit, {cpu_scipy / cpu_ours:5.1f}x, "
            f"{1 / cpu_ours:,.0f} fits/s/core); "
            f"|E_BG ours - curve_fit| median {np.median(gap):.1e} eV, max {gap.max():.1e} eV; "
            f"iterations {iteration_quantiles(ours.iterations)}",
            flush=True,
        )
        result[f"{label}_ours_us_per_fit"] = round(per_ours * 1e6, 2)
        result[f"{label}_ours_cpu_us_per_fit"] = round(timings["ours"].cpu / fits * 1e6, 2)
        result[f"{label}_curve_fit_us_per_fit"] = round(per_scipy * 1e6, 2)
        result[f"{label}_curve_fit_cpu_us_per_fit"] = round(timings["curve_fit"].cpu / scipy_count * 1e6, 2)
        result[f"{label}_speedup"] = ratio(per_scipy, per_ours)
        result[f"{label}_speedup_cpu"] = ratio(cpu_scipy, cpu_ours)
        result[f"{label}_fits_per_cpu_s"] = round(1 / cpu_ours)
        result[f"{label}_converged_fraction"] = round(float(ours.converged.mean()), 4)
        result[f"{label}_median_abs_diff_ev"] = float(f"{np.median(gap):.2e}")
        result[f"{label}_iterations"] = iteration_quantiles(ours.iterations)
    result.update(bench_background(background_fits, repeats, sampling, resolution))
    return finish(result)


def iteration_quantiles(iterations) -> dict:
    """Median, 90% and 99% quantiles and maximum of the LM iteration counts."""
    q50, q90, q99 = np.percentile(iterations, [50, 90, 99])
    return {"median": float(q50), "q90": float(q90), "q99": float(q99), "max": int(np.max(iterations))}


def bench_background(
    fits: int, repeats: int, sampling: str = "point", resolution: float | None = None
) -> dict:
    """background="linear", b fixed 1.5: onsets on a line c E, best of `repeats` timings."""
    rng = np.random.default_rng(1)
    e_bg = rng.uniform(1.0, 2.5, fits)
    exact = (
        onset_model(sampling, resolution)(ENERGY, e_bg[:, None], rng.uniform(1e3, 1e4, fits)[:, None], 1.5)
        + rng.uniform(0.0, 1e3, fits)[:, None] * ENERGY
    )
    spectra = exact + rng.normal(size=exact.shape) * np.sqrt(np.maximum(exact, 1.0))
    timing = compare(
        {
            "ours": lambda: fit_bandgap(
                spectra,
                ENERGY,
                window=WINDOW,
                exponent=1.5,
                background="linear",
                sigma="poisson",
                sampling=None if resolution else sampling,
                resolution=resolution,
            )
        },
        repeats,
    )["ours"]
    fit = timing.value
    gap = np.abs(fit.e_bg - e_bg)
    print(
        f"b fixed, background linear: ours {timing.wall / fits * 1e6:7.1f} us/fit "
        f"({fit.converged.mean():.4f} converged, iterations {iteration_quantiles(fit.iterations)}); "
        f"|E_BG - truth| median {np.nanmedian(gap):.1e} eV"
    )
    return {
        "background_linear_us_per_fit": round(timing.wall / fits * 1e6, 2),
        "background_linear_converged_fraction": round(float(fit.converged.mean()), 4),
        "background_linear_median_abs_error_ev": float(f"{np.nanmedian(gap):.2e}"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="4000 fits, 100 by curve_fit, 1024 with background"
    )
    parser.add_argument("--fits", type=int, default=None, help="default 20000")
    parser.add_argument("--scipy-fits", type=int, default=None, help="default 500")
    parser.add_argument("--background-fits", type=int, default=None, help="default 4096")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sampling", choices=("point", "channel"), default="point", help="the onset model (and data)"
    )
    parser.add_argument(
        "--resolution", type=float, default=None, help="Gaussian FWHM (eV) the onset is convolved with"
    )
    args = parser.parse_args()
    show(
        run(
            args.quick,
            args.fits,
            args.scipy_fits,
            args.background_fits,
            args.repeats,
            args.sampling,
            args.resolution,
        )
    )


if __name__ == "__main__":
    main()
