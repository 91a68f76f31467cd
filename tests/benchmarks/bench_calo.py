"""Generative calorimeter simulation: flow sampling vs the synthetic generator, and streamed vs
in-memory flow training, one CPU thread.

Run: python tests/benchmarks/bench_calo.py [--quick] [--showers 20000] [--repeats 3]
     python tests/benchmarks/bench_calo.py --memory
     python tests/benchmarks/bench_calo.py --quality flow2_kind=nsf flow2_coupling=true transforms=6
     (full: about two minutes on the 2-core machine)

Generation: the recipe's flows (NSF flow 1, NSF coupling flow 2, 6 transforms of [64, 64], 3
layers of 6x6 cells) sample showers for the same incident energies the synthetic generator
(kernels.calo_synth) simulates; showers per second of each and their ratio (the flows' speed
does not depend on their training, so freshly initialised flows are timed). The generator is
analytic and vectorised: it is the ceiling here, where Geant4 is the floor in the CaloChallenge.
Training: one epoch of `calo.train_flow` through its lazy graph (chunks of 5000 showers read by
the steps that use them, threaded scheduler, plus the moments pass) vs the same kernel steps
called in a plain loop on arrays already in memory: the ratio is what streaming costs.
Both sides: one untimed warm-up, best of N, interleaved.

Flow quality (--quality KEY=VALUE ...): both flows trained in memory (chunks of 5000, the op's
cosine schedule) on synthetic showers with the given calo.train_flow settings, then judged on
10,000 held-out reference showers at the same incident energies: the metrics op's classifier AUC
(2 fresh classifiers) of the whole chain, and of flow 2 alone (reference layer energies, generated
shapes: the same AUC as the whole chain says flow 2 is what the classifier finds), the
1-Wasserstein distances (reference std) of the observables, training time and sampling speed.
The baseline is whatever the flags leave at the op's defaults, run the same way. `seed` is the
flows' training seed (showers, reference and classifiers stay fixed); --save F.npz keeps the
judged showers (reference, generated, flow 2 alone) and the trained state for diagnosis.

Multinomial allocation (--quality KEY=VALUE ... --multinomial F.npz, F from --save with the same
settings): the saved flows' draws again (the same seed as the judged showers), each layer's
quanta allocated by a multinomial over flow 2's fractions instead of `apportion`, raw and with
the dequantisation's mean (1/2 quantum per cell) taken off first; AUC and W1 as --quality.

Memory (--memory): what one `calo.sample` task holds, measured beside what it declares
(kernels.calo_flow.sampling_bytes): for several flow-2 kinds, batch sizes and shower sizes, each
in a fresh process, the growth of peak resident memory (engine/peak_rss.py) over one
sample_showers call after a warm-up, and the declared bytes; the ratio declared / measured must
stay >= 1 (an under-declared task is what overfills a worker).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from engine.kernels import calo_flow as cf  # noqa: E402
from engine.kernels.calo_synth import simulate_showers  # noqa: E402
from tests.benchmarks._timing import compare, finish, header, ratio, show  # noqa: E402

CHUNK, HIDDEN, TRANSFORMS = 5_000, (64, 64), 6


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
    spec = cf.FlowSpec(
        3,
        36,
        "nsf",
        "nsf",
        TRANSFORMS,
        HIDDEN,
        quantum=0.01,
        flow2_coupling=True,
        layer_sums="exact",  # as the recipe (and the op's defaults, which the streamed side runs)
        flow2_split="shuffled",
    )
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
    params = op.params(
        epochs=1,
        hidden=list(HIDDEN),
        transforms=TRANSFORMS,
        flow2_kind="nsf",
        flow2_coupling=True,
        batch_size=256,
    )
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


def quality(showers: int, epochs: int, settings: dict, save: str | None = None) -> dict:
    import time

    import engine.ops  # noqa: F401  (registers the ops)
    from engine.kernels import calo_observables as obs
    from engine.ops.calo import MetricsParams, TrainFlowParams, _classifier_auc, flow_spec

    torch.set_num_threads(1)
    params = TrainFlowParams(**settings)
    start = time.perf_counter()
    data = simulate_showers(showers, 0)
    reference = simulate_showers(10_000, 1)
    incident = reference["incident_energy"]
    spec = flow_spec(params, 3, 36, 0.01)
    mean, std = cf.scaling_from_moments(cf.feature_moments(data["energy"], data["incident_energy"], spec))
    state = cf.initial_state(spec, params.seed)
    for epoch in range(epochs):
        lr = params.lr * max(0.5 * (1 + np.cos(np.pi * epoch / epochs)), 0.02)
        step = cf.TrainStep(epoch, float(lr), params.batch_size, params.validation_fraction, params.seed)
        for block, first in enumerate(range(0, showers, CHUNK)):
            part = slice(first, first + CHUNK)
            state = cf.train_chunk(
                state, data["energy"][part], data["incident_energy"][part], block, spec, mean, std, step
            )
    train_s = time.perf_counter() - start
    flows = cf.load_flows(state, spec)
    start = time.perf_counter()
    generated = cf.sample_showers(flows, incident, spec, mean, std, seed=2)
    sample_s = time.perf_counter() - start
    layers = spec.n_layers
    x = cf.to_features(reference["energy"], incident, spec, np.random.default_rng(5))
    z = ((x - mean) / std).astype(np.float32)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        shapes = flows["flow2"](torch.as_tensor(z[:, : 1 + layers])).sample().numpy()
    flow2_only = cf.from_features(
        x[:, 1 : 1 + layers], shapes * std[1 + layers :] + mean[1 + layers :], incident, spec
    )
    metrics = MetricsParams(replicas=2, seed=3)
    reference_features = obs.classifier_features(reference["energy"], incident)

    def auc(showers_):
        return _classifier_auc(
            obs.classifier_features(showers_, incident), reference_features, metrics
        ).round(3)

    cell_x = np.tile(np.arange(6) - 2.5, 6)
    w1, _ = obs.wasserstein_table(
        obs.shower_observables(generated, incident, cell_x),
        obs.shower_observables(reference["energy"], incident, cell_x),
    )
    history = cf.history(state, epochs)
    result = {
        "settings": settings,
        "auc": auc(generated).tolist(),
        "auc_flow2_only": auc(flow2_only).tolist(),
        "val_nll_flow1": round(float(history["val_nll_flow1"][-1]), 2),
        "val_nll_flow2": round(float(history["val_nll_flow2"][-1]), 2),
        "w1": dict(zip(obs.observable_names(3), w1.round(3).tolist(), strict=True)),
        "train_s": round(train_s),
        "sample_showers_per_s": round(len(incident) / sample_s),
    }
    print(json.dumps(result), flush=True)
    if save:  # the showers judged, for diagnosis beside the numbers
        np.savez_compressed(
            save,
            incident=incident,
            reference=reference["energy"],
            generated=generated,
            flow2_only=flow2_only,
            **{f"state_{k}": v for k, v in state.items() if k != "record"},
            feature_mean=mean,
            feature_std=std,
        )
    return result


def multinomial(settings: dict, path: str) -> dict:
    from engine.kernels import calo_observables as obs
    from engine.ops.calo import MetricsParams, TrainFlowParams, _classifier_auc, flow_spec

    torch.set_num_threads(1)
    saved = np.load(path)
    spec = flow_spec(TrainFlowParams(**settings), 3, 36, 0.01)
    incident, reference = saved["incident"], saved["reference"]
    mean, std = saved["feature_mean"], saved["feature_std"]
    flows = cf.load_flows({k[6:]: saved[k] for k in saved.files if k.startswith("state_")}, spec)
    draws = list(cf.sample_features(flows, incident, spec, mean, std, seed=2))  # as quality() draws
    x1, x2 = (np.concatenate([d[k] for d in draws]) for k in (1, 2))
    counts = np.floor(cf._layers_from_features(x1, incident.astype(float), spec) / spec.quantum)
    fractions = cf._expit(x2).reshape(counts.shape + (-1,))
    fractions /= fractions.sum(-1, keepdims=True)
    rng = np.random.default_rng(7)
    redrawn = (cf.apportion(fractions, counts) * spec.quantum).astype(np.float32)
    if not np.array_equal(redrawn, saved["generated"]):
        raise SystemExit("the saved flows do not redraw the saved showers: other settings?")
    quanta = (counts[..., None] + spec.n_cells / 2) * fractions - 0.5  # cells' whole quanta, estimated
    cell_x = np.tile(np.arange(6) - 2.5, 6)
    reference_obs = obs.shower_observables(reference, incident, cell_x)
    reference_features = obs.classifier_features(reference, incident)
    result = {"settings": settings}
    for name, weights in (("multinomial", fractions), ("multinomial_debiased", np.clip(quanta, 1e-12, None))):
        p = (weights / weights.sum(-1, keepdims=True)).reshape(-1, spec.n_cells)
        cells = rng.multinomial(counts.reshape(-1).astype(np.int64), p).reshape(fractions.shape)
        showers = (cells * spec.quantum).astype(np.float32)
        w1, _ = obs.wasserstein_table(obs.shower_observables(showers, incident, cell_x), reference_obs)
        auc = _classifier_auc(
            obs.classifier_features(showers, incident), reference_features, MetricsParams(replicas=2, seed=3)
        )
        result[name] = {
            "auc": auc.round(3).tolist(),
            "w1": dict(zip(obs.observable_names(3), w1.round(3).tolist(), strict=True)),
        }
    print(json.dumps(result), flush=True)
    return result


# (flow 2 kind, transforms, coupling, showers per call, cells per side of 3 layers)
MEMORY_CASES = [
    ("maf", 3, False, 1000, 6),
    ("maf", 3, False, 4000, 6),
    ("maf", 3, False, 1000, 10),
    ("nsf", 6, True, 1000, 6),
    ("nsf", 6, True, 4000, 6),
    ("nsf", 6, True, 1000, 10),
    ("nsf", 6, True, 4000, 4),
    ("nsf", 3, True, 4000, 6),
    ("nsf", 3, False, 1000, 6),
]


def memory_case(kind: str, transforms: int, coupling: bool, batch: int, side: int) -> dict:
    """Peak RSS growth of one sampling call (after a warm-up) and its declared bytes, in MiB."""
    from engine.peak_rss import PeakRss

    torch.set_num_threads(1)
    spec = cf.FlowSpec(3, side * side, "nsf", kind, transforms, HIDDEN, quantum=0.01, flow2_coupling=coupling)
    flows = cf.load_flows(cf.initial_state(spec, 0), spec)
    mean, std = np.zeros(spec.n_features), np.ones(spec.n_features)
    incident = np.exp(np.random.default_rng(0).uniform(0, np.log(100), batch))
    cf.sample_showers(flows, incident[:10], spec, mean, std, 0, batch_size=batch)
    gc.collect()
    with PeakRss() as before:
        pass
    with PeakRss() as peak:
        cf.sample_showers(flows, incident, spec, mean, std, 0, batch_size=batch)
    measured = (peak.bytes - before.bytes) / 2**20
    declared = cf.sampling_bytes(spec, batch) / 2**20
    return {"measured_mib": round(measured, 1), "declared_mib": round(declared, 1)}


def memory() -> None:
    print(
        f"{'flow 2':>16} {'showers':>8} {'features':>8} {'measured MiB':>13} "
        f"{'declared MiB':>13} {'ratio':>6}"
    )
    for case in MEMORY_CASES:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-case", json.dumps(case)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        kind, transforms, coupling, batch, side = case
        name = f"{kind} x{transforms}{' coupling' if coupling else ''}"
        print(
            f"{name:>16} {batch:>8} {3 * side * side:>8} {row['measured_mib']:>13.1f} "
            f"{row['declared_mib']:>13.1f} {row['declared_mib'] / row['measured_mib']:>6.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5000 showers, best of 2")
    parser.add_argument("--showers", type=int, default=None, help="default 20000")
    parser.add_argument("--repeats", type=int, default=None, help="best of (default 3, quick 2)")
    parser.add_argument("--memory", action="store_true", help="sampling memory: measured vs declared")
    parser.add_argument(
        "--quality",
        nargs="*",
        metavar="KEY=VALUE",
        default=None,
        help="flow quality with these calo.train_flow settings (YAML values), e.g. flow2_kind=nsf",
    )
    parser.add_argument("--epochs", type=int, default=8, help="--quality: epochs (default 8)")
    parser.add_argument("--save", default=None, help="--quality: write the judged showers to this .npz")
    parser.add_argument(
        "--multinomial", default=None, help="--quality: allocate the quanta of a --save file multinomially"
    )
    parser.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quality is not None:
        import yaml

        settings = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.quality)}
        if args.multinomial:
            multinomial(settings, args.multinomial)
        else:
            quality(args.showers or 20_000, args.epochs, settings, args.save)
    elif args.memory_case:
        print(json.dumps(memory_case(*json.loads(args.memory_case))))
    elif args.memory:
        memory()
    else:
        show(run(args.quick, args.showers, args.repeats))


if __name__ == "__main__":
    main()
