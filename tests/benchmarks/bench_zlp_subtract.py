"""Benchmark: ZLP subtraction, the op's fast path against the exact vectorised brute force.

`eels.subtract_zlp` evaluates every kept replica once on a grid of ln N nodes per image
(`zlp.zlp_quantile_grid`, a one-off cost per model) and then interpolates each pixel's quantile
bands from it (`zlp.subtract_fast`). The baseline is `zlp.subtract_brute`: every replica at each
pixel's exact ln N, vectorised over replicas, pixels and channels (torch forward passes, numpy
matching and sort), the same algorithm without the grid. Both sides: the same trained ensemble
(the kernels' train_zlp on generator spectra of three clusters), the same fresh pixels in memory,
one torch thread, one untimed warm-up each, best of N, interleaved. Printed: time per pixel of
each, the grid's one-off cost and the pixels after which it has paid for itself. The grid is
built, as the op builds it, only on the channels the fast path reads (`zlp.grid_channels`); the
whole-axis grid it replaced is timed beside it. The ensemble is trained briefly: the timing does
not depend on how well it fits; how close the fast bands are to the exact ones is checked in
tests/kernels/test_zlp.py (test_fast_path_agrees_with_brute_force).

Then the op itself, `eels.subtract_zlp` with its default 3 bands and the two dE_I-shifted
medians, on --op-spectra spectra (the fresh pixels tiled, 1024 per chunk) through dask with
one thread: graph, grid task and every chunk, in CPU seconds per spectrum (spectra/s/core).

    python tests/benchmarks/bench_zlp_subtract.py [--quick] [--pixels 4096] [--replicas 100]
        [--epochs 2000] [--repeats 3] [--op-spectra 16384]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from engine.kernels import zlp  # noqa: E402
from engine.kernels.train import StoppingConfig  # noqa: E402
from tests.benchmarks._timing import compare, finish, header, ratio, show  # noqa: E402
from tests.kernels.test_zlp import DE_I, DE_II, FWHM, QUANTILES, clusters  # noqa: E402

KEEP_ALL = StoppingConfig(threshold=math.inf, patience=10**9, stagnation_epochs=None)


def trained_model(replicas: int, epochs: int):
    """(kept arrays, architecture, scaling) of a ZLP ensemble trained on three clusters."""
    energy, spectra, _ = clusters(taus=(0.2, 0.8, 1.5), n_per=20, seed=0)
    ts = zlp.zlp_training_set(spectra, energy, [DE_I] * 3, [DE_II] * 3, replicas, seed=1)
    res = zlp.train_zlp(ts, epochs=epochs, stopping=KEEP_ALL, seed=0)
    arrays = {name: value[res.kept] for name, value in res.weights.items()}
    return arrays, res.architecture, ts.scaling


def compare_paths(
    arrays, architecture, scaling, energy, signal, repeats: int, fwhm=FWHM, de_i=DE_I, de_ii=DE_II
) -> dict:
    """Time grid + fast path and brute force on the same pixels; return the named numbers."""
    ln_n = np.log(signal.sum(axis=1, dtype=np.float64))
    margin = 1e-9 * max(1.0, abs(float(ln_n.max())))  # as the op: float32 vs float64 sums
    nodes = zlp.ln_n_nodes(float(ln_n.min()) - margin, float(ln_n.max()) + margin)

    channels = zlp.grid_channels(energy, fwhm, de_i, de_ii)

    def grid():
        return zlp.zlp_quantile_grid(
            arrays, architecture, scaling, energy, nodes, QUANTILES, channels=channels
        )

    quantile_grid = grid()
    timings = compare(
        {
            "brute": lambda: zlp.subtract_brute(
                signal, arrays, architecture, scaling, energy, fwhm, de_i, de_ii, QUANTILES
            ),
            "fast": lambda: zlp.subtract_fast(signal, energy, nodes, quantile_grid, fwhm, de_i, de_ii),
            "grid": grid,
            "grid_whole_axis": lambda: zlp.zlp_quantile_grid(
                arrays, architecture, scaling, energy, nodes, QUANTILES
            ),
        },
        repeats,
    )
    if timings["fast"].value.shape != timings["brute"].value.shape:
        raise SystemExit("fast path and brute force disagree in shape")
    pixels = signal.shape[0]
    per_brute, per_fast = timings["brute"].wall / pixels, timings["fast"].wall / pixels
    gain = per_brute - per_fast
    result = {"pixels": pixels, "replicas": int(arrays["replica_id"].size), "grid_nodes": nodes.size}
    for name, timing in timings.items():
        result[f"{name}_s"] = round(timing.wall, 4)
        result[f"{name}_cpu_s"] = round(timing.cpu, 4)
    result["brute_us_per_pixel"] = round(per_brute * 1e6, 1)
    result["fast_us_per_pixel"] = round(per_fast * 1e6, 1)
    result["speedup_per_pixel"] = ratio(per_brute, per_fast)
    result["speedup_with_grid"] = ratio(timings["brute"].wall, timings["fast"].wall + timings["grid"].wall)
    result["break_even_pixels"] = round(timings["grid"].wall / gain) if gain > 0 else None
    cpu_gain = (timings["brute"].cpu - timings["fast"].cpu) / pixels  # CPU: less distorted by load
    result["speedup_per_pixel_cpu"] = ratio(timings["brute"].cpu, timings["fast"].cpu)
    result["break_even_pixels_cpu"] = round(timings["grid"].cpu / cpu_gain) if cpu_gain > 0 else None
    result["grid_channels"] = channels.stop - channels.start
    result["grid_speedup_vs_whole_axis_cpu"] = ratio(timings["grid_whole_axis"].cpu, timings["grid"].cpu)
    return result


def op_throughput(arrays, architecture, scaling, energy, signal, labels, spectra: int, repeats: int) -> dict:
    """CPU seconds of eels.subtract_zlp (graph + grid + every chunk, one dask thread) on `spectra`
    spectra: the rows of `signal` (cluster `labels`) tiled, 32 x 32 pixels per chunk (16 x 16
    with fewer than 1024 rows, --quick)."""
    import json

    import dask
    import dask.array as da
    import xarray as xr

    from engine.ops.eels_zlp import KIND, SubtractParams, subtract_zlp

    side = 32 if signal.shape[0] >= 1024 else 16
    rows = signal.shape[0] // (side * side) * side * side
    if rows == 0:
        raise SystemExit(f"need at least {side * side} pixels for the op, found {signal.shape[0]}")
    tiles = -(-spectra // rows)
    block = da.from_array(signal[:rows].reshape(-1, side, energy.size), chunks=(side, side, -1))
    counts = da.concatenate([block] * tiles, axis=0)  # the same pixels again: no copies
    label_map = np.tile(labels[:rows].reshape(-1, side), (tiles, 1))
    image = xr.Dataset({"counts": (("y", "x", "energy"), counts)}, coords={"energy": energy})
    k = int(labels.max()) + 1
    median = np.stack([np.log(np.maximum(np.median(signal[labels == c], axis=0), 1.0)) for c in range(k)])
    groups = xr.Dataset({"cluster": (("y", "x"), label_map)}, coords={"cluster_id": np.arange(k)})
    windows = xr.Dataset(
        {
            "de_i": ("cluster_id", np.full(k, DE_I)),
            "de_ii": ("cluster_id", np.full(k, DE_II)),
            "ln_i_median": (("cluster_id", "energy"), median),
        },
        coords={"cluster_id": np.arange(k), "energy": energy},
    )
    model = xr.Dataset(
        {
            name: (("replica", *(f"{name}_{i}" for i in range(1, value.ndim))), value)
            for name, value in {**arrays, "kept": np.ones(len(arrays["replica_id"]), bool)}.items()
        },
        attrs={"kind": KIND, "architecture": json.dumps(architecture)},
    )
    model["scaling"] = ("scaling_param", [scaling.e_low, scaling.e_high, scaling.ln_n_low, scaling.ln_n_high])

    def run_op():
        ds = subtract_zlp(SubtractParams(), image, groups, windows, model)
        totals = (ds["inelastic_quantile"].data.sum(), ds["inelastic_de_i"].data.sum())
        return dask.compute(*totals, scheduler="threads", num_workers=1)

    timing = compare({"op": run_op}, repeats)["op"]
    n = tiles * rows
    return {
        "op_chunk_pixels": side * side,
        "op_spectra": n,
        "op_s": round(timing.wall, 3),
        "op_cpu_s": round(timing.cpu, 3),
        "op_spectra_per_cpu_s": round(n / timing.cpu),
    }


def run(
    quick: bool = False,
    pixels: int | None = None,
    replicas: int = 100,
    epochs: int | None = None,
    repeats: int | None = None,
    op_spectra: int | None = None,
) -> dict:
    repeats = repeats or (2 if quick else 3)
    op_spectra = op_spectra or (4096 if quick else 16384)
    pixels = pixels or (256 if quick else 4096)
    epochs = epochs or (300 if quick else 2000)
    torch.set_num_threads(1)
    result = header(
        "ZLP subtraction: grid + fast path vs vectorised brute force",
        repeats,
        pixels=pixels,
        replicas=replicas,
        epochs=epochs,
        threads=1,
    )
    arrays, architecture, scaling = trained_model(replicas, epochs)
    per = max(1, pixels // 4)
    energy, spectra, _ = clusters(taus=(0.25, 0.6, 1.0, 1.4), n_per=per, seed=7)
    signal = np.concatenate(spectra)[:pixels].astype(np.float32)
    labels = np.repeat(np.arange(len(spectra)), [len(c) for c in spectra])[:pixels]
    numbers = compare_paths(arrays, architecture, scaling, energy, signal, repeats)
    print(
        f"{numbers['pixels']} pixels, {numbers['replicas']} replicas: brute force "
        f"{numbers['brute_us_per_pixel']:.0f} us/pixel, fast path {numbers['fast_us_per_pixel']:.0f} "
        f"us/pixel ({numbers['speedup_per_pixel']}x) after a {numbers['grid_s']:.2f} s grid "
        f"(pays off after {numbers['break_even_pixels']} pixels)"
    )
    result.update(numbers)
    print(
        f"grid on the {numbers['grid_channels']} channels read: "
        f"{numbers['grid_speedup_vs_whole_axis_cpu']}x less CPU than on the whole axis"
    )
    op = op_throughput(arrays, architecture, scaling, energy, signal, labels, op_spectra, repeats)
    print(
        f"eels.subtract_zlp on {op['op_spectra']} spectra, 1 thread: {op['op_cpu_s']} CPU-s, "
        f"{op['op_spectra_per_cpu_s']} spectra/s/core"
    )
    result.update(op)
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 pixels, a 300-epoch model")
    parser.add_argument("--pixels", type=int, default=None, help="default 4096")
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 2000)")
    parser.add_argument("--repeats", type=int, default=None, help="best of (default 3, quick 2)")
    parser.add_argument("--op-spectra", type=int, default=None, help="op run (default 16384, quick 4096)")
    args = parser.parse_args()
    show(run(args.quick, args.pixels, args.replicas, args.epochs, args.repeats, args.op_spectra))


if __name__ == "__main__":
    main()
