"""Benchmark: lake history by extending the publish (ours) vs an Icechunk repository, local disk.

One float32 cube (256 x 256 x 2048 = 512 MiB in 64 chunks of 64 x 64 x 512; --quick: 64 x 64 x
512 in 8 chunks), published as a new version `repeats` times on each side, interleaved:

- ours: xarray writes the store under .tmp/ (write), `Lake.publish` checksums it (the manifest:
  every file read back, as an ingest does; a run passes the digests taken while writing), moves the
  previous version to .history/ and the new one into place (publish).
- icechunk: xarray writes into a writable session of branch main (write), `session.commit` (publish).

Then: reading the whole cube (the current version and the oldest one), checking it (ours: `verify`,
every file against its manifest digest; icechunk has no checksum of native chunks, so the closest
check is reading every chunk back), a flipped byte in one chunk file (which side notices), and
SIGKILL of a writer subprocess at several points of write + publish (what each lake shows after:
the old version, the new one or neither; bytes left that no version uses). Times are best-of-N
wall and the CPU seconds of that round; the machine is shared, so CPU seconds are the steadier
number. Icechunk is imported only here (it is not a dependency of the engine).

    python tests/benchmarks/bench_history.py [--quick] [--repeats 2] [--kills 6]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from engine.catalog import finish_interrupted_publishes  # noqa: E402
from engine.doctor import collect_garbage  # noqa: E402
from engine.integrity import find_damage  # noqa: E402
from engine.storage import Lake  # noqa: E402
from tests.benchmarks._timing import finish, header, measure, ratio, show  # noqa: E402

FULL = ((256, 256, 2048), (64, 64, 512))
QUICK = ((64, 64, 512), (32, 32, 256))
NAME = "cube"


def cube(shape: tuple[int, ...], chunks: tuple[int, ...], version: int) -> xr.Dataset:
    """A smooth spectrum per pixel plus seeded noise (compresses like measured data), + version."""
    rng = np.random.default_rng(version)
    energy = np.linspace(0.0, 8.0, shape[2], dtype=np.float32)
    values = np.exp(-energy)[None, None, :] * 100 + rng.normal(0, 1, shape).astype(np.float32)
    values[0, 0, 0] = version  # which version a reader sees
    return xr.Dataset({"a": (("y", "x", "e"), values)}, attrs={"version_index": version}).chunk(
        dict(zip(("y", "x", "e"), chunks))
    )


def icechunk_repo(path: Path, create: bool = False):
    import icechunk

    storage = icechunk.local_filesystem_storage(str(path))
    return icechunk.Repository.create(storage) if create else icechunk.Repository.open(storage)


def write_ours(lake: Lake, data: xr.Dataset) -> str:
    tmp = lake.new_tmp_path(NAME)
    data.to_zarr(lake.url(tmp), zarr_format=3, consolidated=False, mode="w")
    return tmp


def write_icechunk(repo, data: xr.Dataset):
    session = repo.writable_session("main")
    data.to_zarr(session.store, zarr_format=3, consolidated=False, mode="w")
    return session


def read_ours(lake: Lake, at: str | None = None) -> float:
    return float(lake.open("raw", NAME, at=at)["a"].values[0, 0, 0])


def read_icechunk(repo, snapshot: str | None = None) -> float:
    session = repo.readonly_session(snapshot_id=snapshot) if snapshot else repo.readonly_session("main")
    return float(xr.open_zarr(session.store, consolidated=False)["a"].values[0, 0, 0])


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# The killed writer: prints "go" once its data is in memory, then writes and publishes version N.
WRITER = """
import sys
sys.path.insert(0, {repo!r})
from tests.benchmarks.bench_history import *
side, root, version = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
shape, chunks = json.loads(sys.argv[4])
data = cube(tuple(shape), tuple(chunks), version)
data["a"] = data["a"].persist()
print("go", flush=True)
if side == "ours":
    lake = Lake(str(root))
    tmp = write_ours(lake, data)
    print("publish", flush=True)
    lake.publish(tmp, "raw", NAME)
else:
    session = write_icechunk(icechunk_repo(root), data)
    print("publish", flush=True)
    session.commit(f"version {{version}}")
print("done", flush=True)
"""


def kill_writer(side: str, root: Path, version: int, shape, chunks, phase: str, delay: float) -> bool:
    """Start a writer of `version`, SIGKILL it `delay` s after it starts `phase` (write or
    publish); True if it was killed (not finished first)."""
    code = WRITER.format(repo=str(Path(__file__).resolve().parents[2]))
    writer = subprocess.Popen(
        [sys.executable, "-c", code, side, str(root), str(version), json.dumps([shape, chunks])],
        stdout=subprocess.PIPE,
        text=True,
    )
    _wait_for(writer, "go")
    if phase == "publish":
        _wait_for(writer, "publish")
    time.sleep(delay)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    return writer.returncode == -signal.SIGKILL


def _wait_for(writer: subprocess.Popen, word: str) -> None:
    """Read the writer's stdout up to the line `word` (icechunk logs warnings there too)."""
    for line in writer.stdout:
        if line.strip() == word:
            return
    raise RuntimeError(f"the writer ended (exit {writer.wait()}) before saying {word!r}")


def after_kill(side: str, root: Path, old: int, new: int) -> tuple[str, int]:
    """('old' | 'new' | 'broken', bytes left that no version uses) once the next command ran."""
    if side == "ours":
        lake = Lake(str(root))
        finish_interrupted_publishes(lake)  # what any next ingest, run or verify does first
        seen = read_ours(lake)
        whole = not find_damage(lake.fs, lake.entry_path("raw", NAME), quick=True, require_manifest=True)
        left = folder_bytes(root / ".tmp")
        collect_garbage(lake, keep=1000)  # `replicalake gc`: the leftovers, not the history
    else:
        repo = icechunk_repo(root)
        seen = read_icechunk(repo)
        whole = True
        cutoff = datetime.now(UTC) + timedelta(seconds=1)  # unreachable objects only
        left = repo.garbage_collect(cutoff).bytes_deleted
    state = {old: "old", new: "new"}.get(int(seen), "broken") if whole else "broken"
    return state, int(left)


def flipped_byte_noticed(side: str, root: Path) -> bool:
    """Flip one byte in the middle of the largest chunk file: does that side's check notice?"""
    chunk_root = root / "raw" / NAME / "a" if side == "ours" else root / "chunks"
    victim = max((p for p in chunk_root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    if side == "ours":
        lake = Lake(str(root))
        return bool(find_damage(lake.fs, lake.entry_path("raw", NAME)))
    try:  # no checksums: only a chunk that no longer decodes is noticed
        session = icechunk_repo(root).readonly_session("main")
        xr.open_zarr(session.store, consolidated=False)["a"].values.sum()
    except Exception:
        return True
    return False


def run(quick: bool = False, repeats: int | None = None, kills: int | None = None) -> dict:
    try:
        import icechunk  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "bench_history compares with Icechunk: `pip install icechunk` first (it is "
            "not a dependency of replicalake)"
        ) from None
    shape, chunks = QUICK if quick else FULL
    repeats = repeats or 2
    kills = kills or (2 if quick else 6)
    nbytes = int(np.prod(shape)) * 4
    result = header(
        "lake history: extended publish vs icechunk",
        repeats,
        mib=nbytes // 2**20,
        chunks=int(np.prod([s // c for s, c in zip(shape, chunks)])),
    )
    work = Path(tempfile.mkdtemp(prefix="bench_history-"))
    try:
        lake = Lake(str(work / "lake"))
        lake.ensure_zones()
        repo = icechunk_repo(work / "icechunk", create=True)
        timings: dict[str, list[tuple[float, float]]] = {}
        snapshots, versions = [], []
        for round_ in range(repeats + 1):  # round 0: both hold a first version (warm-up, untimed)
            data = cube(shape, chunks, round_)
            data["a"] = data["a"].persist()
            order = ["ours", "icechunk"] if round_ % 2 else ["icechunk", "ours"]
            for side in order:
                if side == "ours":
                    wall_w, cpu_w, tmp = measure(lambda d=data: write_ours(lake, d))
                    wall_p, cpu_p, _ = measure(lambda t=tmp: lake.publish(t, "raw", NAME))
                    versions.append(lake.store_version(lake.entry_path("raw", NAME)))
                else:
                    wall_w, cpu_w, session = measure(lambda d=data: write_icechunk(repo, d))
                    wall_p, cpu_p, snap = measure(lambda s=session, r=round_: s.commit(f"version {r}"))
                    snapshots.append(snap)
                if round_:
                    timings.setdefault(f"{side}_write", []).append((wall_w, cpu_w))
                    timings.setdefault(f"{side}_publish", []).append((wall_p, cpu_p))
        readers = (
            ("ours", lambda: read_ours(lake), lambda: read_ours(lake, versions[0])),
            ("icechunk", lambda: read_icechunk(repo), lambda: read_icechunk(repo, snapshots[0])),
        )
        for _ in range(repeats):
            for side, current, oldest in readers:
                wall, cpu, seen = measure(current)
                assert int(seen) == repeats, (side, seen)
                timings.setdefault(f"{side}_read", []).append((wall, cpu))
                wall, cpu, seen = measure(oldest)
                assert int(seen) == 0, (side, seen)
                timings.setdefault(f"{side}_read_oldest", []).append((wall, cpu))
            path = lake.entry_path("raw", NAME)
            wall, cpu, damage = measure(lambda p=path: find_damage(lake.fs, p))
            assert damage == []
            timings.setdefault("ours_verify", []).append((wall, cpu))
            timings.setdefault("icechunk_verify", []).append(timings["icechunk_read"][-1])  # = read all
        for key, rounds in timings.items():
            wall, cpu = min(rounds)
            result[f"{key}_s"], result[f"{key}_cpu_s"] = round(wall, 3), round(cpu, 3)
        for phase in ("write", "publish", "read", "read_oldest", "verify"):
            result[f"{phase}_ratio_ours_over_icechunk"] = ratio(
                result[f"ours_{phase}_s"], result[f"icechunk_{phase}_s"]
            )
        result["ours_disk_mib"] = round(folder_bytes(work / "lake") / 2**20, 1)
        result["icechunk_disk_mib"] = round(folder_bytes(work / "icechunk") / 2**20, 1)
        # SIGKILL mid write, and mid publish (commit), at points spread over the phase's measured
        # duration (the same fractions for both sides)
        for side in ("ours", "icechunk"):
            states, left = [], 0
            for k in range(kills):
                old = repeats + k
                phase, share = (
                    ("write", (k // 2 + 0.5) / ((kills + 1) // 2))
                    if k % 2 == 0
                    else ("publish", (k // 2 + 0.5) / (kills // 2))
                )
                killed = kill_writer(
                    side,
                    work / ("lake" if side == "ours" else "icechunk"),
                    old + 1,
                    shape,
                    chunks,
                    phase,
                    result[f"{side}_{phase}_s"] * share,
                )
                state, leftover = after_kill(
                    side, work / ("lake" if side == "ours" else "icechunk"), old, old + 1
                )
                if state == "new" or not killed:  # the next kill starts from the version shown
                    state = state if killed else "finished before the kill"
                else:  # back to a known current version for the next kill: publish old+1 whole
                    if side == "ours":
                        lake.publish(write_ours(lake, cube(shape, chunks, old + 1)), "raw", NAME)
                    else:
                        write_icechunk(repo, cube(shape, chunks, old + 1)).commit("redo")
                states.append((phase, state))
                left = max(left, leftover)
            for phase in ("write", "publish"):
                for state in ("old", "new", "broken", "finished before the kill"):
                    label = "unkilled" if state.startswith("finished") else state
                    result[f"{side}_{phase}_kills_{label}"] = states.count((phase, state))
            result[f"{side}_kill_leftover_mib"] = round(left / 2**20, 1)
        for side in ("ours", "icechunk"):
            result[f"{side}_flipped_byte_noticed"] = int(
                flipped_byte_noticed(side, work / ("lake" if side == "ours" else "icechunk"))
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--kills", type=int, default=None)
    args = parser.parse_args()
    show(run(args.quick, args.repeats, args.kills))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
