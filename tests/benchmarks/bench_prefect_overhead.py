"""Benchmark: what Prefect adds to a run, start-up apart from per run.

Prints, for a small two-output recipe whose outputs are already up to date:
  - the plain `replicalake run` (wall time of the command; the engine's own compile + compute),
  - `replicalake run --prefect` on an ephemeral API, in a fresh PREFECT_HOME (SQLite migrations
    included) and again in the same home,
  - `prefect server start` until healthy (fresh home), and `run --prefect` against it,
  - runs served by `replicalake serve` on a short interval: per run, the time from the runner
    taking the run (Pending) to Completed, split into the engine's compile + compute time (from
    the run's logs) and Prefect's part (subprocess start, imports, API calls, artifacts).

    python tests/benchmarks/bench_prefect_overhead.py [--quick] [--runs 5]
        [--workdir /tmp/replicalake-prefect-bench]

--quick measures the first three only (no server, no served runs). Single runs, not best of N:
the cold start is a one-off by nature.

Everything runs in --workdir (wiped first) with its own PREFECT_HOME: no user profile is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKDIR = Path("/tmp/replicalake-prefect-bench")
sys.path.insert(0, str(REPO))
from tests.benchmarks._timing import finish, header, measure, show  # noqa: E402

RECIPE = """\
version: 1
name: bench-prefect
sources:
  ramp: {catalog: lake, entry: raw/ramp}
  other: {catalog: lake, entry: raw/other}
steps:
  - {id: from_ramp, op: core.sum, inputs: {data: ramp}, params: {dims: [x]}}
  - {id: from_other, op: core.sum, inputs: {data: other}, params: {dims: [x]}}
outputs:
  from_ramp: {zone: derived}
  from_other: {zone: derived}
schedule: {interval: 2}
"""


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_PROFILES_PATH=str(home / "profiles.toml"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        **extra,
    )
    return env


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of a command run to completion."""
    wall, cpu, _ = measure(
        lambda: subprocess.run(command, env=env, cwd=REPO, check=True, capture_output=True)
    )
    return wall, cpu


def api(url: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_healthy(url: str, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            if api(url, "/health") is True:
                return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not healthy after {timeout} s")


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def served_runs(url: str, count: int, timeout: float) -> list[dict]:
    """Wait for `count` completed runs; per run: Pending->Completed seconds and the engine's part."""
    deadline = time.monotonic() + timeout
    while True:
        runs = api(
            url,
            "/flow_runs/filter",
            {
                "sort": "START_TIME_ASC",
                "flow_runs": {
                    "deployment_id": {"is_null_": False},
                    "state": {"type": {"any_": ["COMPLETED"]}},
                },
            },
        )
        if len(runs) >= count or time.monotonic() > deadline:
            break
        time.sleep(1)
    measured = []
    for run in runs[:count]:
        history = api(url, f"/flow_run_states/?flow_run_id={run['id']}")
        states = {s["type"]: stamp(s["timestamp"]) for s in history}
        for _ in range(30):  # a run's logs reach the API shortly after its final state
            logs = " ".join(
                entry["message"]
                for entry in api(url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}})
            )
            if "engine time" in logs:
                break
            time.sleep(0.5)
        compile_s = float(re.search(r"compiled in ([\d.]+) s", logs).group(1))
        engine_s = float(re.search(r"engine time ([\d.]+) s", logs).group(1))
        measured.append(
            {
                "taken_to_done": states["COMPLETED"] - states["PENDING"],
                "running": states["COMPLETED"] - states["RUNNING"],
                "engine": compile_s + engine_s,
            }
        )
    return measured


def run(quick: bool = False, runs: int = 5, workdir: Path = WORKDIR) -> dict:
    result = header("what Prefect adds to a run", 1, served_runs=0 if quick else runs)
    args = argparse.Namespace(runs=runs, workdir=workdir)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    lake, recipe = args.workdir / "lake", args.workdir / "recipe.yaml"
    recipe.write_text(RECIPE)
    sys.path.insert(0, str(REPO))
    from engine.graph import compile_recipe
    from engine.runner import execute
    from engine.storage import Lake
    from engine.testing import put_in_lake, ramp_dataset

    store = Lake(str(lake))
    put_in_lake(store, "ramp", ramp_dataset())
    put_in_lake(store, "other", ramp_dataset(ny=4) * 2)
    execute(compile_recipe(recipe, store, REPO / "catalogs"), progress=False)
    started = time.perf_counter()
    execute(compile_recipe(recipe, store, REPO / "catalogs"), progress=False)
    engine_s = time.perf_counter() - started

    cli = [
        sys.executable,
        "-m",
        "engine",
        "run",
        str(recipe),
        "--lake",
        str(lake),
        "--catalogs",
        str(REPO / "catalogs"),
        "--no-progress",
    ]
    plain, plain_cpu = timed(cli, environment(args.workdir / "unused-home"))
    cold, cold_cpu = timed([*cli, "--prefect"], environment(args.workdir / "ephemeral-home"))
    warm, warm_cpu = timed([*cli, "--prefect"], environment(args.workdir / "ephemeral-home"))
    print(f"unchanged recipe, in-process compile + compute:          {engine_s:6.2f} s")
    print(f"`replicalake run` (process start + imports + run):       {plain:6.2f} s")
    print(
        f"`run --prefect`, ephemeral API, fresh PREFECT_HOME:      {cold:6.2f} s "
        f"(+{cold - plain:.1f} s over plain run)"
    )
    print(
        f"`run --prefect`, ephemeral API, migrated PREFECT_HOME:   {warm:6.2f} s "
        f"(+{warm - plain:.1f} s over plain run)"
    )
    result.update(
        engine_in_process_s=round(engine_s, 3),
        plain_run_s=round(plain, 2),
        prefect_ephemeral_fresh_home_s=round(cold, 2),
        prefect_ephemeral_migrated_home_s=round(warm, 2),
        prefect_ephemeral_migrated_minus_plain_s=round(warm - plain, 2),
        plain_run_cpu_s=round(plain_cpu, 2),
        prefect_ephemeral_fresh_home_cpu_s=round(cold_cpu, 2),
        prefect_ephemeral_migrated_home_cpu_s=round(warm_cpu, 2),
    )
    if quick:  # the served part needs a server start and several scheduled runs
        return finish(result)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    server_env = environment(args.workdir / "server-home", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2")
    processes = []
    try:
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=server_env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        healthy = wait_healthy(url, 180)
        print(f"`prefect server start` healthy after (fresh home):       {healthy:6.2f} s")
        result["server_start_s"] = round(healthy, 2)
        serve_env = environment(
            args.workdir / "serve-home", PREFECT_API_URL=url, PREFECT_RUNNER_POLL_FREQUENCY="1"
        )
        on_server, _ = timed([*cli, "--prefect"], serve_env)
        print(
            f"`run --prefect` on that server (PREFECT_API_URL):        {on_server:6.2f} s "
            f"(+{on_server - plain:.1f} s over plain run)"
        )
        result["prefect_on_server_s"] = round(on_server, 2)
        serve_started = time.perf_counter()
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "engine",
                    "serve",
                    str(recipe),
                    "--lake",
                    str(lake),
                    "--catalogs",
                    str(REPO / "catalogs"),
                ],
                env=serve_env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        runs = served_runs(url, args.runs, timeout=60 + 15 * args.runs)
        first_done = time.perf_counter() - serve_started
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    if not runs:
        raise SystemExit("no served run completed")
    for key, label in (
        ("taken_to_done", "runner took run -> Completed"),
        ("running", "Running -> Completed"),
        ("engine", "engine compile + compute"),
    ):
        values = [r[key] for r in runs]
        result[f"served_{key}_median_s"] = round(statistics.median(values), 2)
        print(
            f"served run ({len(runs)} runs), {label + ':':33s} median {statistics.median(values):5.2f} s, "
            f"max {max(values):5.2f} s"
        )
    overhead = [r["taken_to_done"] - r["engine"] for r in runs]
    print(
        f"served run, Prefect's part per run:                     median {statistics.median(overhead):5.2f} s"
    )
    print(f"`serve` start -> {len(runs)} runs completed:                   {first_done:6.2f} s")
    result.update(
        served_runs=len(runs),
        served_prefect_part_median_s=round(statistics.median(overhead), 2),
        serve_start_to_runs_completed_s=round(first_done, 2),
    )
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="plain and ephemeral runs only, no server")
    parser.add_argument("--runs", type=int, default=5, help="served runs to measure")
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    args = parser.parse_args()
    show(run(args.quick, args.runs, args.workdir))


if __name__ == "__main__":
    main()
