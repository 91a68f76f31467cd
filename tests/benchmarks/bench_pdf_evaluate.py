"""Benchmark: `pdf.evaluate` throughput in (x, Q, flavour) evaluations per second per core.

Builds an NNPDF-sized grid (196 x knots, 3 Q subgrids split at the c and b thresholds, 11
flavours) from the Les Houches toy, then evaluates 10^6 random (x, Q) points for every flavour
of a few members, on one thread:

- the kernel alone (numpy; torch CPU too), on Hermite tables precomputed once (timed apart);
- the op, its graph built and computed with dask's synchronous scheduler (one core);
- `parton` (scipy splines on the same grid files, built on first use), on a subset of points.

Every side: one untimed warm-up (parton's spline building), best of --repeats, interleaved.
Prints each rate and the ratios to parton measured in this run. Target: >= 10^7 evaluations/s.

    python tests/benchmarks/bench_pdf_evaluate.py [--quick] [--points 1000000] [--members 3] [--device cuda]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.ingest.lhapdf_format import pdfset_from_arrays, write_lhapdf_set  # noqa: E402
from engine.kernels.pdf_interp import evaluate, hermite_grid  # noqa: E402
from engine.registry import get_op  # noqa: E402
from tests.benchmarks._timing import compare, finish, header, ratio, show  # noqa: E402
from tests.data.lhapdf.make_toy_set import toy_xf  # noqa: E402

FLAVOURS = [-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 21]
Q_SUBGRIDS = [np.geomspace(1.65, 4.92, 12), np.geomspace(4.92, 173.0, 24), np.geomspace(173.0, 1e5, 24)]
X_KNOTS = np.concatenate([np.geomspace(1e-9, 0.1, 150, endpoint=False), np.linspace(0.1, 1, 46)])


def make_set(members: int) -> xr.Dataset:
    rng = np.random.default_rng(0)
    scales = rng.uniform(0.95, 1.05, members)
    values = []
    for q in Q_SUBGRIDS:
        base = np.stack(
            [toy_xf(abs(f) if abs(f) <= 3 or f == 21 else 3, X_KNOTS[:, None], q[None, :]) for f in FLAVOURS]
        )
        values.append(scales[:, None, None, None] * base[None])
    return pdfset_from_arrays(
        [X_KNOTS] * 3, Q_SUBGRIDS, FLAVOURS, values, {"SetDesc": "benchmark", "ErrorType": "replicas"}
    )


def run(
    quick: bool = False,
    points: int | None = None,
    members: int = 3,
    repeats: int = 3,
    parton_points: int | None = None,
    device: str = "cpu",
) -> dict:
    import parton
    import torch

    points = points or (100_000 if quick else 10**6)
    parton_points = min(parton_points or (5_000 if quick else 20_000), points)
    torch.set_num_threads(1)
    result = header(
        "pdf.evaluate: (x, Q, flavour) evaluations/s vs parton",
        repeats,
        points=points,
        members=members,
        threads=1,
    )
    pdf = make_set(members)
    rng = np.random.default_rng(1)
    x = np.exp(rng.uniform(np.log(1e-7), 0, points))
    q = np.exp(rng.uniform(np.log(1.65), np.log(1e5), points))
    per_call = points * len(FLAVOURS) * members
    print(
        f"grid: {X_KNOTS.size} x knots, Q subgrids of {[s.size for s in Q_SUBGRIDS]} knots, "
        f"{len(FLAVOURS)} flavours, {members} members; {points} points -> {per_call:.3g} evaluations per call"
    )

    values = [pdf[f"xf_{k}"].values for k in range(3)]
    precompute = compare({"grid": lambda: hermite_grid(values, [X_KNOTS] * 3, Q_SUBGRIDS)}, repeats, warmup=0)
    grid = precompute["grid"].value
    result["hermite_precompute_s"] = round(precompute["grid"].wall, 4)
    tx, tq = torch.from_numpy(x), torch.from_numpy(q)
    points_ds = xr.Dataset({"x": ("point", x), "q": ("point", q)}).chunk({"point": 2**18})
    spec = get_op("pdf.evaluate")

    def through_op():  # builds the graph (and its per-chunk tables) and computes it
        out = spec.func(spec.params(), pdf=pdf, points=points_ds)
        out.xf.data.compute(scheduler="synchronous")

    with tempfile.TemporaryDirectory() as folder:
        write_lhapdf_set(pdf, folder, "Bench")
        parton_members = [parton.PDF("Bench", m, pdfdir=folder) for m in range(members)]
        n = parton_points

        def with_parton():  # parton builds its splines on first use: the warm-up call
            for member in parton_members:
                for flavour in FLAVOURS:
                    member.xfxQ(flavour, x[:n], q[:n], grid=False)

        sides = {
            "kernel_numpy": lambda: evaluate(grid, x, q),
            "kernel_torch_cpu": lambda: evaluate(grid, tx, tq),
            "op_dask_synchronous": through_op,
            "parton": with_parton,
        }
        if device == "cuda":
            cx, cq = tx.cuda(), tq.cuda()
            cuda_grid = grid.to(cx)

            def on_gpu():
                evaluate(cuda_grid, cx, cq)
                torch.cuda.synchronize()

            sides["kernel_torch_cuda"] = on_gpu
        timings = compare(sides, repeats)
        ours = evaluate(grid, x[:n], q[:n]).reshape(members, len(FLAVOURS), n)
        theirs = np.stack([[m.xfxQ(f, x[:n], q[:n], grid=False) for f in FLAVOURS] for m in parton_members])
        spread = np.nanmax(np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-3))

    rates = {
        name: (n * len(FLAVOURS) * members if name == "parton" else per_call) / t.wall
        for name, t in timings.items()
    }
    for name, rate in rates.items():
        print(f"{name:22s} {rate / 1e6:9.2f} M evaluations/s   x{rate / rates['parton']:8.1f} vs parton")
        result[f"{name}_mevals_per_s"] = round(rate / 1e6, 3)
        result[f"{name}_cpu_s"] = round(timings[name].cpu, 4)
        if name != "parton":
            result[f"{name}_over_parton"] = ratio(rate, rates["parton"])
    print(f"max |ours - parton| / max(|parton|, 1e-3) on {n} points: {spread:.2e} (different splines)")
    result["parton_points"] = n
    result["max_rel_diff_vs_parton"] = float(f"{spread:.2e}")
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^5 points, parton on 5000")
    parser.add_argument("--points", type=int, default=None, help="default 10^6")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parton-points", type=int, default=None, help="default 20000")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: also time the kernel on torch CUDA tensors",
    )
    args = parser.parse_args()
    show(run(args.quick, args.points, args.members, args.repeats, args.parton_points, args.device))


if __name__ == "__main__":
    main()
