"""Fault injection: SIGKILLs at random moments, damaged chunks, and the price of resumable writes.

1. Kills: `replicalake run` (the slow test op, 16 chunks) is killed with SIGKILL at a random moment,
   rerun and killed again, until a run completes; repeated for several seeds. Checks every time that
   nothing half-written is visible, and at the end that the output's chunk bytes equal an
   uninterrupted run's. Prints kills, chunks resumed and chunks recomputed.
2. Damage: random single faults (bit flip, truncation, deletion, stray chunk) in a source's chunk
   files; prints how often `verify` names the damaged chunk and how often a run fails naming it
   (a flipped bit that still decodes is only caught by `verify`, which reads every byte).
3. Overhead: writing the same lazy output through the resumable staging (per-chunk records and a
   checksum manifest) vs a plain `da.store`, same run, one warm-up each, best of --repeats,
   interleaved; prints the ratio.

    python tests/benchmarks/bench_faults.py [--quick] [--seeds 5] [--damage 40] [--size 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import dask
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.*
from engine.catalog import LAKE_CATALOG, load_catalog  # noqa: E402
from engine.errors import RunError  # noqa: E402
from engine.graph import compile_recipe  # noqa: E402
from engine.integrity import find_damage  # noqa: E402
from engine.resume import stage_output  # noqa: E402
from engine.runner import execute  # noqa: E402
from engine.storage import Lake  # noqa: E402
from engine.testing import put_in_lake, ramp_dataset  # noqa: E402
from engine.zarr_io import write_template  # noqa: E402
from tests.benchmarks._timing import Timing, compare, finish, header, ratio, show  # noqa: E402
from tests.test_crash_resume import SLOW_RECIPE, big_lake, chunk_bytes, start_cli  # noqa: E402
from tests.test_graph import RECIPE  # noqa: E402

OUTPUT = "derived/slow/doubled"


def kill_campaign(work: Path, seed: int, reference: dict[str, bytes]) -> tuple[int, int, int]:
    """Kill runs at random moments until one completes; return (kills, resumed, recomputed)."""
    rng = random.Random(seed)
    lake = big_lake(work / f"kills-{seed}")
    recipe = work / "slow.yaml"
    kills = resumed = 0
    log = work / f"kills-{seed}.log"
    while True:
        run = start_cli(lake, log, "run", str(recipe), "--json")
        # start-up takes 2-8 s on a busy 2-core machine, then 16 chunks of 0.3 s on 2 threads ~2.4 s;
        # each retry waits longer, so a run eventually completes
        time.sleep(rng.uniform(1.0, 6.0) + 1.5 * kills)
        if run.poll() is None:
            os.kill(run.pid, signal.SIGKILL)
            run.wait()
            kills += 1
            visible = lake.exists(*OUTPUT.split("/", 1))
            listed = OUTPUT in load_catalog(LAKE_CATALOG, lake).entries
            assert visible == listed or visible, "a store was listed but not there"
            if visible:  # killed after the publish: must be complete and intact
                assert not find_damage(lake.fs, lake.path(OUTPUT))
            continue
        stdout, stderr = run.communicate()
        assert run.returncode == 0, stderr
        output = json.loads(stdout)["outputs"][0]
        resumed += output["chunks_resumed"]
        break
    assert chunk_bytes(lake, OUTPUT) == reference, "resumed output differs from an uninterrupted run"
    computed = len(log.read_text().splitlines()) if log.exists() else 0
    return kills, resumed, computed


def damage_campaign(work: Path, count: int) -> dict[str, list[int]]:
    """Inject `count` single faults; return {kind: [faults, named by verify, by a run, by a run with
    --verify-inputs]}."""
    rng = random.Random(0)
    tally: dict[str, list[int]] = {}
    recipe = work / "ramp.yaml"
    recipe.write_text(RECIPE)
    for trial in range(count):
        lake = Lake(str(work / f"damage-{trial}"))
        put_in_lake(lake, "ramp", ramp_dataset(64, 48, 16))
        store = Path(lake.entry_path("raw", "ramp"))
        chunks = sorted((store / "a" / "c").rglob("*"))
        chunks = [c for c in chunks if c.is_file()]
        target = rng.choice(chunks)
        index = "(" + ", ".join(target.relative_to(store / "a" / "c").parts) + ")"
        kind = rng.choice(["flip", "truncate", "delete", "stray"])
        data = bytearray(target.read_bytes())
        if kind == "flip":
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            target.write_bytes(bytes(data))
        elif kind == "truncate":
            target.write_bytes(bytes(data[: rng.randrange(len(data))]))
        elif kind == "delete":
            target.unlink()
        else:
            target = store / "a" / "c" / "99" / "0"
            target.parent.mkdir()
            target.write_bytes(b"\x00" * 16)
            index = "(99, 0)"
        counts = tally.setdefault(kind, [0, 0, 0, 0])
        counts[0] += 1
        counts[1] += any(f"chunk {index}" in d.location for d in find_damage(lake.fs, str(store)))
        for column, verify_inputs in ((2, False), (3, True)):
            try:
                execute(compile_recipe(recipe, lake), progress=False, verify_inputs=verify_inputs)
                lake.fs.rm(lake.entry_path("derived", "smoke/total"), recursive=True)  # stale again
            except RunError as exc:
                counts[column] += f"chunk {index}" in str(exc)
    return tally


def overhead(work: Path, size: int, repeats: int) -> tuple[Timing, Timing]:
    """Writing the same output plainly and through the resumable staging, best of `repeats`."""
    lake = Lake(str(work / "overhead"))
    data = ramp_dataset(size, size, 512).map(np.sqrt)
    names = iter(range(10**6))

    def plain():
        dask.compute(*write_template(data, lake.url(lake.new_tmp_path("plain"))))

    def resumable():
        name = f"bench{next(names)}"
        staged = stage_output(lake, data, "derived", name, "token", {"token": "token"})
        dask.compute(*staged.writes)
        lake.publish(staged.store, "derived", name, staged.digests())
        staged.remove()

    timings = compare({"plain": plain, "resumable": resumable}, repeats)
    return timings["plain"], timings["resumable"]


def run(
    quick: bool = False,
    seeds: int | None = None,
    damage: int | None = None,
    size: int | None = None,
    repeats: int = 3,
) -> dict:
    seeds = seeds or (1 if quick else 5)
    damage = damage or (8 if quick else 40)
    size = size or (2048 if quick else 4096)
    result = header(
        "fault injection: kills, damaged chunks, resumable-write overhead",
        repeats,
        seeds=seeds,
        damage=damage,
        size=size,
    )
    dask.config.set(scheduler="threads")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / "slow.yaml").write_text(SLOW_RECIPE.replace("SECONDS", "0.3"))
        reference_lake = big_lake(work / "reference")
        run_ = start_cli(reference_lake, work / "reference.log", "run", str(work / "slow.yaml"), "--json")
        if run_.wait():
            raise SystemExit("the uninterrupted reference run failed")
        reference = chunk_bytes(reference_lake, OUTPUT)
        total = [0, 0, 0]
        for seed in range(seeds):
            kills, resumed, computed = kill_campaign(work, seed, reference)
            print(
                f"seed {seed}: {kills} SIGKILLs, then a run resumed {resumed} of 16 chunks; "
                f"{computed} chunk computations in all runs (16 without faults); output identical",
                flush=True,
            )
            total = [t + v for t, v in zip(total, (kills, resumed, computed), strict=True)]
        result.update(
            kill_campaigns=seeds,
            kills=total[0],
            chunks_resumed=total[1],
            chunk_computations=total[2],
            chunks_without_faults=16 * seeds,
        )
        tally = damage_campaign(work, damage)
        for kind, (faults, by_verify, by_run, by_paranoid) in sorted(tally.items()):
            print(
                f"damage: {faults} x {kind} of a source chunk: named by verify {by_verify}/{faults}, "
                f"by a failed run {by_run}/{faults}, by run --verify-inputs {by_paranoid}/{faults}"
            )
            result.update(
                {
                    f"damage_{kind}": faults,
                    f"damage_{kind}_named_by_verify": by_verify,
                    f"damage_{kind}_named_by_run": by_run,
                    f"damage_{kind}_named_by_verify_inputs": by_paranoid,
                }
            )
        plain, resumable = overhead(work, size, repeats)
        print(
            f"overhead: {size}x{size} float32 output in 512x512 chunks: plain da.store {plain.wall:.2f} s, "
            f"resumable staging + manifest + publish {resumable.wall:.2f} s "
            f"(ratio {resumable.wall / plain.wall:.2f})"
        )
        result.update(
            plain_write_s=round(plain.wall, 3),
            plain_write_cpu_s=round(plain.cpu, 3),
            resumable_write_s=round(resumable.wall, 3),
            resumable_write_cpu_s=round(resumable.cpu, 3),
            resumable_over_plain=ratio(resumable.wall, plain.wall),
        )
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 kill campaign, 8 faults, 2048 x 2048 output")
    parser.add_argument("--seeds", type=int, default=None, help="kill campaigns (default 5)")
    parser.add_argument("--damage", type=int, default=None, help="single faults (default 40)")
    parser.add_argument("--size", type=int, default=None, help="overhead output side (default 4096)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    show(run(args.quick, args.seeds, args.damage, args.size, args.repeats))


if __name__ == "__main__":
    main()
