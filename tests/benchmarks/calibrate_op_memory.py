"""Calibration: what one task of an op holds, measured, beside what the op declares.

Where the `memory=` numbers of the ops (engine/ops/*.py) come from. For each case, in a fresh
process: compile a recipe on synthetic inputs, store the op's inputs as zarr and reopen them
lazily (so a task reads its input chunk as a run does), build the op, then compute its first
output block on the synchronous scheduler and read the growth of peak resident memory over the
resident size before (engine/peak_rss.py). Printed per case and chunk size: the chunk bytes of
inputs + output, the growth, their ratio (the multiplier a chunk-proportional op should declare)
and the op's declared need for that task.

    python tests/benchmarks/calibrate_op_memory.py                  # every case
    python tests/benchmarks/calibrate_op_memory.py eels.align_zlp lhc.kinematics
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

MIB = 2**20
EELS_CHAIN = """\
version: 1
name: calibrate
sources:
  image: {{catalog: lake, entry: raw/img, chunks: {{y: {chunk}, x: {chunk}}}}}
steps:
  - {{id: aligned, op: eels.align_zlp, inputs: {{image: image}}}}
  - {{id: thickness, op: eels.thickness, inputs: {{image: aligned}}}}
  - {{id: thickness_one_pass, op: eels.thickness, inputs: {{image: image}}, params: {{align_zlp: true}}}}
  - {{id: clusters, op: eels.cluster, inputs: {{image: aligned}}, params: {{n_clusters: 3, seed: 1}}}}
  - id: windows
    op: eels.zlp_windows
    inputs: {{image: aligned, clusters: clusters}}
    params: {{n_sample: 300, seed: 2}}
  - id: zlp_model
    op: eels.train_zlp
    inputs: {{image: aligned, clusters: clusters, windows: windows}}
    params: {{replicas: {replicas}, epochs: 300, n_spectra: 300, seed: 7, device: cpu,
              stopping: {{threshold: 1000.0}}}}
  - id: inelastic
    op: eels.subtract_zlp
    inputs: {{image: aligned, model: zlp_model, clusters: clusters, windows: windows}}
  - {{id: bandgap, op: eels.fit_bandgap, inputs: {{inelastic: inelastic}}, params: {{window_ev: [0.5, 3.0]}}}}
  - id: dielectric
    op: eels.kramers_kronig
    inputs: {{image: aligned}}
    params: {{refractive_index: null, collection_angle_mrad: 10.0}}
outputs:
  bandgap: {{zone: derived}}
"""
DIMUON = """\
version: 1
name: calibrate
sources:
  events: {{catalog: lake, entry: raw/events, chunks: {{event: {chunk}}}}}
steps:
  - id: dimuons
    op: lhc.kinematics
    inputs: {{events: events}}
    params:
      prefix: mu
      objects:
        - {{px: px1, py: py1, pz: pz1, E: E1, charge: Q1}}
        - {{px: px2, py: py2, pz: pz2, E: E2, charge: Q2}}
  - id: selected
    op: lhc.select
    inputs: {{events: dimuons}}
    params: {{cut: "mu1_charge * mu2_charge < 0 and mu1_pt > 20 and mu2_pt > 20"}}
  - id: mass
    op: lhc.histogram
    inputs: {{events: selected}}
    params: {{axes: [{{variable: mu12_mass, bins: 60, start: 60, stop: 120}}]}}
outputs:
  mass: {{zone: derived}}
"""
# case -> (recipe template, chunk sizes, template fields); a case is an op (its first step) or a step
# id. The heap memory that preparing the inputs freed is handed back to the kernel before the block
# is computed (engine.memory.release_free_heap): glibc keeps freed chunk buffers for reuse
# (engine/memory.py), and a task reusing them would not show in the growth of resident memory.
# Kramers-Kronig holds ~60x its chunks: 64 x 64 would be 7 GiB.
EELS_STEPS = (
    "eels.align_zlp",
    "eels.thickness",
    "thickness_one_pass",
    "eels.cluster",
    "eels.zlp_windows",
    "eels.train_zlp",
    "eels.subtract_zlp",
    "eels.fit_bandgap",
)
CASES = {op: (EELS_CHAIN, (32, 64), {"replicas": 20}) for op in EELS_STEPS}
CASES["eels.kramers_kronig"] = (EELS_CHAIN, (16, 32), {"replicas": 20})
CASES.update(
    {op: (DIMUON, (100_000, 400_000), {}) for op in ("lhc.kinematics", "lhc.select", "lhc.histogram")}
)
EELS_IMAGE = (128, 128, 2048)
EVENTS = 1_600_000


def _prepare(lake, template: str) -> None:
    import numpy as np
    import xarray as xr

    from engine.ingest.synthetic_eels import ingest_synthetic_eels
    from engine.testing import put_in_lake

    if template is EELS_CHAIN:
        ingest_synthetic_eels(
            lake, "img", EELS_IMAGE, seed=5, chunks=(32, 32), progress=False, energy_range=(-5.0, 200.0)
        )
        return
    rng = np.random.default_rng(1)
    columns = {}
    for k in (1, 2):
        p = rng.normal(0, 40, (3, EVENTS)).astype(np.float32)
        columns.update(
            {
                f"px{k}": p[0],
                f"py{k}": p[1],
                f"pz{k}": p[2],
                f"E{k}": np.sqrt((p**2).sum(0) + 0.011).astype(np.float32),
                f"Q{k}": rng.choice(np.array([-1, 1], np.int32), EVENTS),
            }
        )
    put_in_lake(
        lake, "events", xr.Dataset({k: ("event", v) for k, v in columns.items()}).chunk({"event": 100_000})
    )


def measure(case: str, chunk: int) -> dict:
    """In this process: the growth of peak RSS while computing the first block of the op's step."""
    import dask
    import xarray as xr

    from engine.graph import compile_recipe
    from engine.memory import release_free_heap
    from engine.ops.needs import RuntimeNeed, chunk_bytes
    from engine.peak_rss import PeakRss
    from engine.projection import step_need
    from engine.registry import StepContext, get_op
    from engine.storage import Lake

    template, _, fields = CASES[case]
    with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
        lake = Lake(f"{tmp}/lake")
        _prepare(lake, template)
        recipe = Path(tmp) / "recipe.yaml"
        recipe.write_text(template.format(chunk=chunk, **fields))
        plan = compile_recipe(recipe, lake)
        step = next(s for s in plan.steps if case in (s.op, s.id))
        declared = step_need(plan, step)
        inputs = {}
        for name, ref in step.inputs.items():
            path = f"{tmp}/{ref}.zarr"
            with dask.config.set(scheduler="threads"):
                plan.step(ref).dataset.to_zarr(path, consolidated=False)
            chunks = {d: max(c) for d, c in plan.step(ref).dataset.chunks.items()}
            inputs[name] = xr.open_zarr(path, consolidated=False, chunks=chunks)
        spec = get_op(step.op)
        params = spec.params.model_validate(step.params)
        if spec.wants_context:
            inputs["context"] = StepContext(step.id, step.token, lake.root_url)
        output = spec.func(params, **inputs)
        first = {d: slice(0, max(c)) for d, c in output.chunks.items()}
        basis = sum(chunk_bytes(ds) for k, ds in inputs.items() if k != "context") + chunk_bytes(output)
        gc.collect()
        release_free_heap()
        with PeakRss() as peak:
            before = _resident()
            output.isel(first).compute(scheduler="synchronous")
    need = spec.memory.task if isinstance(spec.memory, RuntimeNeed) else spec.memory
    return {
        "case": case,
        "chunk": chunk,
        "basis": basis,
        "growth": peak.bytes - before,
        "declared": declared.task_bytes,
        "declared_form": "function" if callable(need) else need,
    }


def _resident() -> int:
    with open("/proc/self/statm") as statm:
        import resource

        return int(statm.read().split()[1]) * resource.getpagesize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help=f"ops (default all: {', '.join(CASES)})")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return
    print("| op | chunk | inputs + output chunk | task growth | growth / chunks | declared |")
    print("|---|---|---|---|---|---|")
    for case in args.cases or CASES:
        for chunk in CASES[case][1]:
            done = subprocess.run(
                [sys.executable, __file__, "--one", case, str(chunk)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode:
                print(f"| {case} | {chunk} | failed: {done.stderr.strip().splitlines()[-1]} |")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"| {case} | {chunk} | {row['basis'] / MIB:.1f} MiB | {row['growth'] / MIB:.1f} MiB | "
                f"{row['growth'] / row['basis']:.2f} | {row['declared'] / MIB:.1f} MiB "
                f"({row['declared_form']}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
