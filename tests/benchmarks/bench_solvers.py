"""Benchmark: the neural bounce solver (`solve.bounce`'s kernel) against CosmoTransitions on the
same quartic potentials: time and agreement of the action S3, thin and thick walls side by side.

Potentials V = a phi^2 - (1 + 2a)/3 phi^3 + phi^4/4 (true vacuum at phi = 1; a -> 1/4 is the
thin-wall limit): a = 0.1, 0.15 (thick), 0.2, 0.235 (thin). Ours: R replicas from different
initialisations trained together (Adam, then Gauss-Newton on the output layers), one CPU thread,
float64; the action from the replica mean profile's integral, with its replica spread. Reference:
CosmoTransitions' SingleFieldInstanton (overshoot/undershoot shooting), findProfile + findAction.
Both timed the same way (tests/benchmarks/_timing.compare), each from the potential alone. Also
reports the known-truth ODE/PDE errors of `solve.equation`'s kernel with the recipe's settings.

    python tests/benchmarks/bench_solvers.py [--quick] [--repeats 1]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.kernels.bounce import QuarticPotential, cosmotransitions_action, solve_bounce  # noqa: E402
from engine.kernels.nn_solvers import SolverConfig, solve_on_grid  # noqa: E402
from engine.kernels.optim import OptimiserConfig  # noqa: E402
from tests.benchmarks._timing import compare, finish, header, ratio, show  # noqa: E402

CASES = (0.1, 0.15, 0.2, 0.235)


def run(quick: bool = False, repeats: int = 1) -> dict:
    replicas, epochs = (2, 300) if quick else (8, 1000)
    cases = (0.1, 0.235) if quick else CASES
    result = header("neural bounce vs CosmoTransitions", repeats, replicas=replicas, epochs=epochs, threads=1)
    bounce = SolverConfig(
        replicas=replicas,
        epochs=epochs,
        n_collocation=300,
        polish=True,
        optimiser=OptimiserConfig(lr=2e-3, lr_final=2e-5),
    )
    worst = 0.0
    __import__("cosmoTransitions.tunneling1D")  # imported before timing: its import is ~3 s
    for a in cases:
        potential = QuarticPotential(a, -(1 + 2 * a) / 3, 0.25)
        timings = compare(
            {
                "nn": lambda p=potential: solve_bounce(p, bounce),
                "cosmotransitions": lambda p=potential: cosmotransitions_action(p),
            },
            repeats,
            warmup=0,
        )
        nn, (reference, phi0) = timings["nn"].value, timings["cosmotransitions"].value
        deviation = nn["action"] / reference - 1
        key = f"a{a:g}"
        result.update(
            {
                f"{key}_s3_reference": round(reference, 4),
                f"{key}_s3_nn_mean": round(float(nn["action"].mean()), 4),
                f"{key}_s3_nn_std": round(float(nn["action"].std(ddof=1)) if replicas > 1 else 0.0, 4),
                f"{key}_rel_dev_mean": round(float(deviation.mean()), 5),
                f"{key}_rel_dev_max_abs": round(float(np.abs(deviation).max()), 5),
                f"{key}_rel_dev_derrick": round(float((nn["action_derrick"] / reference - 1).mean()), 5),
                f"{key}_rel_dev_start": round(nn["guess_action"] / reference - 1, 5),
                f"{key}_phi0_nn": round(float(nn["phi0"].mean()), 5),
                f"{key}_phi0_reference": round(phi0, 5),
                f"{key}_nn_s": round(timings["nn"].wall, 2),
                f"{key}_reference_s": round(timings["cosmotransitions"].wall, 4),
                f"{key}_time_ratio_nn_over_reference": ratio(
                    timings["nn"].wall, timings["cosmotransitions"].wall
                ),
            }
        )
        worst = max(worst, float(np.abs(deviation).max()))
        print(
            f"a = {a:5}: S3 nn {nn['action'].mean():10.4f} +- {result[f'{key}_s3_nn_std']:.4f}, "
            f"CosmoTransitions {reference:10.4f}: {deviation.mean():+.3%} (worst replica "
            f"{np.abs(deviation).max():.3%}); {timings['nn'].wall:.1f} s vs "
            f"{timings['cosmotransitions'].wall:.3f} s",
            flush=True,
        )
    result["rel_dev_worst_replica"] = round(worst, 5)
    equations = {"ode1": (64, 201), "ode2": (64, 201), "poisson": (24, 51)}
    for name, (collocation, grid) in equations.items():
        config = SolverConfig(
            replicas=replicas,
            epochs=150 if quick else (500 if name == "poisson" else 1000),
            n_collocation=collocation,
            optimiser=OptimiserConfig(lr=3e-2, lr_final=1e-4),
        )
        timing = compare({name: lambda c=config, n=name, g=grid: solve_on_grid(n, c, g)}, repeats, warmup=0)[
            name
        ]
        out = timing.value
        error = float(np.abs(out["solution"].mean(0) - out["exact"]).max())
        result[f"{name}_max_error"] = float(f"{error:.3g}")
        result[f"{name}_replica_spread"] = float(f"{out['solution'].std(0).max():.3g}")
        result[f"{name}_s"] = round(timing.wall, 2)
        print(
            f"{name}: max |mean - exact| {error:.2e}, replica spread {result[f'{name}_replica_spread']:.1e}, "
            f"{timing.wall:.1f} s",
            flush=True,
        )
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 replicas, 300 steps, 2 potentials")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    show(run(args.quick, args.repeats))


if __name__ == "__main__":
    main()
