"""Benchmark: batched band-gap fits vs scipy.optimize.curve_fit, per fit, same spectra.

Noisy A (E - E_BG)^b onsets (E_BG 1.0-2.5 eV, 0.02 eV channels, window 0.8-4.0 eV: 161
channels), b fixed and free. curve_fit gets the same model, the same Poisson errors and our
initial guess's starting point (E_BG 0.1 eV below the truth), so the ratio is the price of one
Python call per pixel. Also prints how far apart the two optima are.

Then the op's default, background="linear" (b fixed 1.5): the same onsets on a plasmon-tail
line c E, ours only (curve_fit has no bound-constrained equivalent of the same cost).

    python tests/benchmarks/bench_bandgap.py [--fits 20000] [--scipy-fits 500]
        [--background-fits 4096]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import curve_fit

from engine.kernels.bandgap import fit_bandgap, power_onset

ENERGY = np.linspace(0.5, 4.0, 176)
WINDOW = (0.8, 4.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=20000)
    parser.add_argument("--scipy-fits", type=int, default=500)
    parser.add_argument("--background-fits", type=int, default=4096)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    e_bg = rng.uniform(1.0, 2.5, args.fits)
    exact = power_onset(ENERGY, e_bg[:, None], rng.uniform(1e3, 1e4, args.fits)[:, None], 1.5)
    spectra = exact + rng.normal(size=exact.shape) * np.sqrt(np.maximum(exact, 1.0))
    inside = (ENERGY >= WINDOW[0]) & (ENERGY <= WINDOW[1])
    energy = ENERGY[inside]
    for exponent in (1.5, None):
        start = time.perf_counter()
        ours = fit_bandgap(spectra, ENERGY, window=WINDOW, exponent=exponent, sigma="poisson")
        per_ours = (time.perf_counter() - start) / args.fits

        def model(e, a, e0, b=1.5):
            return power_onset(e, e0, a, b)

        theirs = []
        start = time.perf_counter()
        for k in range(args.scipy_fits):
            y = spectra[k, inside]
            p0 = [float(ours.amplitude[k]), e_bg[k] - 0.1] + ([] if exponent else [1.5])
            popt, _ = curve_fit(model, energy, y, p0=p0, sigma=np.sqrt(np.maximum(y, 1.0)),
                                absolute_sigma=True, maxfev=5000)
            theirs.append(popt[1])
        per_scipy = (time.perf_counter() - start) / args.scipy_fits
        gap = np.abs(np.array(theirs) - ours.e_bg[: args.scipy_fits])
        label = "b fixed" if exponent else "b free "
        print(f"{label}: ours {per_ours * 1e6:7.1f} us/fit ({ours.converged.mean():.4f} "
              f"converged), curve_fit {per_scipy * 1e6:7.1f} us/fit, ratio "
              f"{per_scipy / per_ours:5.1f}x; |E_BG ours - curve_fit| median "
              f"{np.median(gap):.1e} eV, max {gap.max():.1e} eV")
    bench_background(args.background_fits)


def bench_background(fits: int, repeats: int = 3) -> None:
    """background="linear", b fixed 1.5: onsets on a line c E, best of `repeats` timings."""
    rng = np.random.default_rng(1)
    e_bg = rng.uniform(1.0, 2.5, fits)
    exact = (power_onset(ENERGY, e_bg[:, None], rng.uniform(1e3, 1e4, fits)[:, None], 1.5)
             + rng.uniform(0.0, 1e3, fits)[:, None] * ENERGY)
    spectra = exact + rng.normal(size=exact.shape) * np.sqrt(np.maximum(exact, 1.0))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fit = fit_bandgap(spectra, ENERGY, window=WINDOW, exponent=1.5, background="linear",
                          sigma="poisson")
        best = min(best, time.perf_counter() - start)
    gap = np.abs(fit.e_bg - e_bg)
    print(f"b fixed, background linear: ours {best / fits * 1e6:7.1f} us/fit "
          f"({fit.converged.mean():.4f} converged, median iterations "
          f"{np.median(fit.iterations):.0f}); |E_BG - truth| median {np.nanmedian(gap):.1e} eV")


if __name__ == "__main__":
    main()
