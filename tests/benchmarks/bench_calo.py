"""Generative calorimeter simulation: flow sampling vs the synthetic generator, and streamed vs
in-memory flow training, one CPU thread.

Run: python tests/benchmarks/bench_calo.py [--quick] [--showers 20000] [--repeats 3]
     (full: about two minutes on the 2-core machine)

Generation: the recipe's flows (NSF flow 1, MAF flow 2, 3 transforms of [64, 64], 3 layers of 6x6
cells) sample showers for the same incident energies the synthetic generator (kernels.calo_synth)
simulates; showers per second of each and their ratio (the flows' speed does not depend on their
training, so freshly initialised flows are timed). The generator is analytic and vectorised: it
is the ceiling here, where Geant4 is the floor in the CaloChallenge.
Training: one epoch of `calo.train_flow` through its lazy graph (chunks of 5000 showers read by
the steps that use them, threaded scheduler, plus the moments pass) vs the same kernel steps
called in a plain loop on arrays already in memory: the ratio is what streaming costs.
Both sides: one untimed warm-up, best of N, interleaved.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from engine.kernels import calo_flow as cf  # noqa: E402
from engine.kernels.calo_synth import simulate_showers  # noqa: E402
from tests.benchmarks._timing import compare, finish, header, ratio, show  # noqa: E402

CHUNK, HIDDEN = 5_000, (64, 64)


def run(quick: bool = False, showers: int | None = None, repeats: int | None = None) -> dict:
    import engine.ops  # noqa: F401  (registers the ops)
    from engine.registry import get_op

    showers = showers or (5_000 if quick else 20_000)
    repeats = repeats or (2 if quick else 3)
    torch.set_num_threads(1)
    result = header(
        "calorimeter flows: sampling vs the synthetic generator; streamed vs in-memory training",
        repeats,
        showers=showers,
        chunk=CHUNK,
        threads=1,
    )
    data = simulate_showers(showers, seed=0)
    spec = cf.FlowSpec(3, 36, transforms=3, hidden=HIDDEN, quantum=0.01)
    mean, std = cf.scaling_from_moments(cf.feature_moments(data["energy"], data["incident_energy"], spec))
    flows = cf.load_flows(cf.initial_state(spec, 0), spec)
    n_gen = min(showers, 2_000 if quick else 5_000)
    incident = data["incident_energy"][:n_gen]
    timings = compare(
        {
            "flow": lambda: cf.sample_showers(flows, incident, spec, mean, std, seed=1),
            "generator": lambda: simulate_showers(n_gen, 1, incident=incident),
        },
        repeats,
    )
    flow_rate, generator_rate = n_gen / timings["flow"].wall, n_gen / timings["generator"].wall
    print(
        f"generation: flow {flow_rate:,.0f} showers/s, synthetic generator {generator_rate:,.0f} "
        f"showers/s -> generator {generator_rate / flow_rate:.1f}x faster ({n_gen} showers)"
    )
    result.update(
        {
            "flow_showers_per_s": round(flow_rate),
            "generator_showers_per_s": round(generator_rate),
            "generator_over_flow": ratio(generator_rate, flow_rate),
        }
    )

    dataset = xr.Dataset(
        {
            "energy": (("shower", "layer", "cell"), data["energy"]),
            "incident_energy": ("shower", data["incident_energy"]),
        },
        attrs={"quantum": 0.01},
    ).chunk({"shower": CHUNK})
    op = get_op("calo.train_flow")
    params = op.params(epochs=1, hidden=list(HIDDEN), transforms=3, batch_size=256)
    step = cf.TrainStep(0, params.lr, params.batch_size, params.validation_fraction, params.seed)

    def in_memory():
        state = cf.initial_state(spec, params.seed)
        for block, start in enumerate(range(0, showers, CHUNK)):
            part = slice(start, start + CHUNK)
            state = cf.train_chunk(
                state, data["energy"][part], data["incident_energy"][part], block, spec, mean, std, step
            )
        return state

    timings = compare(
        {"streamed": lambda: op.func(params, dataset).compute(scheduler="threads"), "in_memory": in_memory},
        repeats,
    )
    streamed, memory = timings["streamed"], timings["in_memory"]
    print(
        f"training, 1 epoch of {showers} showers: streamed {streamed.wall:.2f} s, in memory "
        f"{memory.wall:.2f} s -> streaming costs {streamed.wall / memory.wall:.2f}x "
        f"({showers / streamed.wall:,.0f} showers/s)"
    )
    result.update(
        {
            "train_streamed_s": round(streamed.wall, 3),
            "train_in_memory_s": round(memory.wall, 3),
            "train_streamed_over_in_memory": ratio(streamed.wall, memory.wall),
            "train_showers_per_s": round(showers / streamed.wall),
        }
    )
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5000 showers, best of 2")
    parser.add_argument("--showers", type=int, default=None, help="default 20000")
    parser.add_argument("--repeats", type=int, default=None, help="best of (default 3, quick 2)")
    args = parser.parse_args()
    show(run(args.quick, args.showers, args.repeats))


if __name__ == "__main__":
    main()
