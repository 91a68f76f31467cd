"""Run every benchmark and write their numbers to benchmarks.json.

    python -m tests.benchmarks [--quick] [--out benchmarks.json] [--only lhc_select eft_training]

The interface of a benchmark module, tests/benchmarks/bench_<name>.py:

    def run(quick: bool = False) -> dict
        Measures and returns a flat JSON-able dict of named numbers: times in seconds (suffix _s),
        ratios, sizes, counts, and always "load_avg" (1-minute load average, the larger of start
        and end) and "repeats" (the best-of-N of its timings). quick=True must finish in well
        under a minute on the 2-core machine; quick=False is the full, possibly long, benchmark.
    if __name__ == "__main__":  parses its own options, runs, prints the dict.

The runner finds every bench_*.py that defines a top-level `run` (read from its source, nothing
imported), and runs each in its own Python process (import side effects such as thread settings
stay in it) that imports the module and calls run(quick=...). A module that fails or times out is
recorded as {"error": ...} and the runner goes on. benchmarks.json holds {module: result, ...,
"_machine": {cores, load, versions, ...}, "_run": {mode, command, seconds per module}}.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from tests.benchmarks._timing import machine  # noqa: E402

_CHILD = """\
import importlib, json, sys
module = importlib.import_module(sys.argv[1])
result = module.run(quick=sys.argv[2] == "quick")
with open(sys.argv[3], "w") as handle:
    json.dump(result, handle)
"""


def discover() -> list[str]:
    """Names (without bench_) of the modules that define a top-level run()."""
    names = []
    for path in sorted(HERE.glob("bench_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        if any(isinstance(node, ast.FunctionDef) and node.name == "run" for node in tree.body):
            names.append(path.stem.removeprefix("bench_"))
    return names


def run_one(name: str, quick: bool, timeout: float) -> tuple[dict, float]:
    """Run bench_<name>.run(quick) in a child process; its prints go to our stdout."""
    started = time.perf_counter()
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHILD,
                f"tests.benchmarks.bench_{name}",
                "quick" if quick else "full",
                str(out),
            ],
            cwd=REPO,
            timeout=timeout,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        if done.returncode:
            tail = done.stderr.strip().splitlines()[-12:]
            return {"error": f"exit code {done.returncode}: " + "\n".join(tail)}, seconds
        result = json.loads(out.read_text())
        if not isinstance(result, dict):
            return {"error": f"run() returned {type(result).__name__}, expected dict"}, seconds
        return result, seconds
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}, time.perf_counter() - started
    finally:
        out.unlink(missing_ok=True)


def finite(value):
    """NaN and infinities as null (strict JSON)."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def merge(previous: dict, new: dict) -> dict:
    """A partial run (--only) over the previous file: its modules replaced, the rest kept (and the
    first run's machine record: each module's result holds its own load average)."""
    merged = {**previous, **{k: v for k, v in new.items() if not k.startswith("_")}}
    run = dict(previous.get("_run", {}))
    if run.get("mode") != new["_run"]["mode"]:
        run["mode"] = "mixed"
    run["seconds"] = {**run.get("seconds", {}), **new["_run"]["seconds"]}
    run["failed"] = sorted(name for name in run["seconds"] if "error" in merged.get(name, {}))
    run["reruns"] = [*run.get("reruns", []), new["_run"]["command"]]
    merged["_run"] = run
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's quick mode")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks.json")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these modules (bench_NAME.py) only")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per module (default: 600 quick, none full)"
    )
    args = parser.parse_args()
    names = discover()
    without = sorted(p.stem for p in HERE.glob("bench_*.py") if p.stem.removeprefix("bench_") not in names)
    if without:
        print(f"skipped (no run()): {', '.join(without)}")
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"no benchmark module with run() named {unknown}; expected one of {names}")
        names = [name for name in names if name in args.only]
    timeout = args.timeout or (600.0 if args.quick else None)
    results: dict = {"_machine": machine()}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    for name in names:
        print(f"\n### bench_{name} ({'quick' if args.quick else 'full'})", flush=True)
        results[name], seconds[name] = run_one(name, args.quick, timeout)
        if "error" in results[name]:
            print(f"FAILED: {results[name]['error']}", flush=True)
        print(f"### bench_{name}: {seconds[name]:.1f} s", flush=True)
    results["_machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["_run"] = {
        "mode": "quick" if args.quick else "full",
        "command": " ".join(["python -m tests.benchmarks", *sys.argv[1:]]),
        "seconds": {name: round(s, 1) for name, s in seconds.items()},
        "total_s": round(time.perf_counter() - started, 1),
        "failed": [name for name in names if "error" in results[name]],
    }
    if args.only and args.out.exists():  # keep the other modules' last results
        results = merge(json.loads(args.out.read_text()), results)
    args.out.write_text(json.dumps(finite(results), indent=1, allow_nan=False) + "\n")
    failed = [name for name in names if "error" in results[name]]
    print(
        f"\nwrote {args.out} ({len(names)} modules, {time.perf_counter() - started:.0f} s"
        + (f"; failed: {', '.join(failed)})" if failed else ")")
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
