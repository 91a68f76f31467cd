"""Benchmark: `pdf.evaluate` throughput in (x, Q, flavour) evaluations per second per core.

Builds an NNPDF-sized grid (196 x knots, 3 Q subgrids split at the c and b thresholds, 11
flavours) from the Les Houches toy, then evaluates 10^6 random (x, Q) points for every flavour
of a few members, on one thread:

- the kernel alone (numpy; torch CPU too), best of --repeats;
- the op, lazily built and computed with dask's synchronous scheduler (one core);
- `parton` (scipy splines on the same grid files), on a subset of points, scaled.

Prints each rate and the ratios to parton measured in this run. Target: >= 10^7 evaluations/s.

    python tests/benchmarks/bench_pdf_evaluate.py [--points 1000000] [--members 3] [--device cuda]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.ingest.lhapdf_format import pdfset_from_arrays, write_lhapdf_set  # noqa: E402
from engine.kernels.pdf_interp import evaluate, hermite_grid  # noqa: E402
from engine.registry import get_op  # noqa: E402
from tests.data.lhapdf.make_toy_set import toy_xf  # noqa: E402

FLAVOURS = [-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 21]
Q_SUBGRIDS = [np.geomspace(1.65, 4.92, 12), np.geomspace(4.92, 173.0, 24), np.geomspace(173.0, 1e5, 24)]
X_KNOTS = np.concatenate([np.geomspace(1e-9, 0.1, 150, endpoint=False), np.linspace(0.1, 1, 46)])


def make_set(members: int) -> xr.Dataset:
    rng = np.random.default_rng(0)
    scales = rng.uniform(0.95, 1.05, members)
    values = []
    for q in Q_SUBGRIDS:
        base = np.stack([toy_xf(abs(f) if abs(f) <= 3 or f == 21 else 3, X_KNOTS[:, None], q[None, :])
                         for f in FLAVOURS])
        values.append(scales[:, None, None, None] * base[None])
    return pdfset_from_arrays([X_KNOTS] * 3, Q_SUBGRIDS, FLAVOURS, values,
                              {"SetDesc": "benchmark", "ErrorType": "replicas"})


def best_of(repeats: int, func) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10**6)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parton-points", type=int, default=20000)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: also time the kernel on torch CUDA tensors")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    pdf = make_set(args.members)
    rng = np.random.default_rng(1)
    x = np.exp(rng.uniform(np.log(1e-7), 0, args.points))
    q = np.exp(rng.uniform(np.log(1.65), np.log(1e5), args.points))
    per_call = args.points * len(FLAVOURS) * args.members
    print(f"grid: {X_KNOTS.size} x knots, Q subgrids of {[s.size for s in Q_SUBGRIDS]} knots, "
          f"{len(FLAVOURS)} flavours, {args.members} members; {args.points} points "
          f"-> {per_call:.3g} evaluations per call, 1 thread")

    values = [pdf[f"xf_{k}"].values for k in range(3)]
    start = time.perf_counter()
    grid = hermite_grid(values, [X_KNOTS] * 3, Q_SUBGRIDS)
    print(f"precompute (Hermite tables): {time.perf_counter() - start:.3f} s")

    rates = {}
    seconds = best_of(args.repeats, lambda: evaluate(grid, x, q))
    rates["kernel, numpy"] = per_call / seconds
    tx, tq = torch.from_numpy(x), torch.from_numpy(q)
    seconds = best_of(args.repeats, lambda: evaluate(grid, tx, tq))
    rates["kernel, torch CPU"] = per_call / seconds
    if args.device == "cuda":
        cx, cq = tx.cuda(), tq.cuda()
        cuda_grid = grid.to(cx)

        def on_gpu():
            evaluate(cuda_grid, cx, cq)
            torch.cuda.synchronize()

        on_gpu()
        rates["kernel, torch CUDA"] = per_call / best_of(args.repeats, on_gpu)

    points = xr.Dataset({"x": ("point", x), "q": ("point", q)}).chunk({"point": 2**18})
    spec = get_op("pdf.evaluate")

    def through_op():
        out = spec.func(spec.params(), pdf=pdf, points=points)
        out.xf.data.compute(scheduler="synchronous")

    rates["op (dask, synchronous)"] = per_call / best_of(args.repeats, through_op)

    import parton

    with tempfile.TemporaryDirectory() as folder:
        write_lhapdf_set(pdf, folder, "Bench")
        n = min(args.parton_points, args.points)
        members = [parton.PDF("Bench", m, pdfdir=folder) for m in range(args.members)]

        def with_parton():
            for member in members:
                for flavour in FLAVOURS:
                    member.xfxQ(flavour, x[:n], q[:n], grid=False)

        with_parton()  # parton builds its splines on first use
        rates["parton (scipy splines)"] = n * len(FLAVOURS) * args.members / best_of(args.repeats,
                                                                                   with_parton)
        ours = evaluate(grid, x[:n], q[:n]).reshape(args.members, len(FLAVOURS), n)
        theirs = np.stack([[m.xfxQ(f, x[:n], q[:n], grid=False) for f in FLAVOURS] for m in members])
        spread = np.nanmax(np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-3))

    baseline = rates["parton (scipy splines)"]
    for label, rate in rates.items():
        print(f"{label:26s} {rate / 1e6:9.2f} M evaluations/s   x{rate / baseline:8.1f} vs parton")
    print(f"max |ours - parton| / max(|parton|, 1e-3) on {n} points: {spread:.2e} (different splines)")


if __name__ == "__main__":
    main()
