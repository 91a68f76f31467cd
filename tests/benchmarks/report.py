"""The README's benchmark tables, rendered from benchmarks.json (what `python -m tests.benchmarks` wrote).

    python -m tests.benchmarks.report [benchmarks.json]

Prints markdown; every row names the script that produced its numbers. A module missing from the
file (or failed) prints as such, so a table never shows a number no run produced.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _fmt(value, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        text = f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return text + unit


def _cell(wall, cpu, unit="s") -> str:
    return f"{_fmt(wall, ' ' + unit)} ({_fmt(cpu)} CPU)" if cpu is not None else _fmt(wall, " " + unit)


def comparisons(data: dict, flag: str) -> list[str]:
    """One row per fair comparison: ours, the baseline, their ratio, the command."""
    rows = [
        "| comparison | ours: wall (CPU) | baseline: wall (CPU) | baseline / ours | command |",
        "|---|---|---|---|---|",
    ]

    def module(name):
        result = data.get(name)
        return None if result is None or "error" in result else result

    def add(name, label, ours, baseline, speedup):
        command = f"`python tests/benchmarks/bench_{name}.py{flag}`"
        rows.append(f"| {label} | {ours} | {baseline} | **{_fmt(speedup, 'x')}** | {command} |")

    if r := module("eels_thickness"):
        add(
            "eels_thickness",
            f"EELS thickness, {_fmt(r['spectra'])} spectra x 2048 ch, vs exSpy "
            "`estimate_thickness` (same fixed ZLP limit; open + graph + compute in both)",
            _cell(r["ours_threshold_s"], r["ours_threshold_cpu_s"]),
            _cell(r.get("exspy_threshold_s"), r.get("exspy_threshold_cpu_s")),
            r.get("exspy_over_ours"),
        )
    if r := module("zlp_subtract"):
        add(
            "zlp_subtract",
            f"ZLP subtraction, {r['replicas']} replicas, {r['pixels']} pixels: fast path vs "
            f"vectorised `zlp.subtract_brute` (per pixel; the one-off grid {_fmt(r['grid_s'], ' s')} "
            f"pays off after {_fmt(r['break_even_pixels'])} pixels)",
            f"{_fmt(r['fast_us_per_pixel'], ' us/pixel')}",
            f"{_fmt(r['brute_us_per_pixel'], ' us/pixel')}",
            r["speedup_per_pixel"],
        )
    if r := module("lhc_select"):
        events = r.get("events")
        for name, label in (("none", "an uncompressed"), ("lz4", "an LZ4"), ("zlib", "a ZLIB")):
            add(
                "lhc_select",
                f"LHC cuts + histogram{'' if events is None else f', {events:,} events'}, 1 core, "
                f"lake (compile inside) vs uproot + numpy on {label} ROOT file "
                f"({r[f'root_{name}_mib']} MiB); "
                f"ingest from it {_fmt(r[f'ingest_from_{name}_s'], ' s')}, "
                + (
                    f"break-even after {_fmt(r[f'break_even_analyses_{name}'])} analyses"
                    if r[f"break_even_analyses_{name}"] is not None
                    else "never pays off (the lake is slower)"
                ),
                _cell(r["lake_1core_s"], r["lake_1core_cpu_s"]),
                _cell(r[f"uproot_{name}_s"], r[f"uproot_{name}_cpu_s"]),
                r[f"speedup_vs_uproot_{name}"],
            )
    if r := module("eft_training"):
        for key in sorted((k for k in r if k.startswith("speedup_b")), key=lambda k: int(k[9:])):
            b = key[9:]
            add(
                "eft_training",
                f"EFT training, {r['networks']} networks x {r['steps']} steps of {b} + {b} events: "
                "batched vs a loop of nn.Sequential + DataLoader (ms per network-step)",
                _fmt(r[f"batched_ms_per_network_step_b{b}"], " ms"),
                _fmt(r[f"loop_ms_per_network_step_b{b}"], " ms"),
                r[key],
            )
    if r := module("replica_training"):
        for name, label in (
            ("eels", "EELS ZLP net on 1000 points"),
            ("pdf_fk", "PDF net on a 50-point FK grid"),
            ("pdf_1000pts", "PDF net on 1000 points"),
        ):
            add(
                "replica_training",
                f"replica training, {r['replicas']} replicas x {r['steps']} Adam steps, "
                f"{label}: batched vs a loop of torch models",
                _cell(r[f"{name}_batched_s"], r[f"{name}_batched_cpu_s"]),
                _cell(r[f"{name}_loop_s"], r[f"{name}_loop_cpu_s"]),
                r[f"{name}_speedup"],
            )
    if r := module("pdf_fit"):
        add(
            "pdf_fit",
            f"PDF closure fit, {r['points']} points, {r['replicas']} replicas: batched vs a loop of "
            "single-replica fits (timed on a few, scaled)",
            _cell(r["batched_s"], r["batched_cpu_s"]),
            _fmt(r["loop_of_replicas_s"], " s"),
            r["speedup"],
        )
    if r := module("lhc_tagging"):
        for key in sorted((k for k in r if k.endswith("_speedup")), key=lambda k: int(k[1:].split("_")[0])):
            n = key[1:].split("_")[0]
            add(
                "lhc_tagging",
                f"jet tagger, R = {n}: batched vs a loop of single trainings",
                _cell(r[f"r{n}_batched_s"], r[f"r{n}_batched_cpu_s"]),
                _cell(r[f"r{n}_loop_s"], r[f"r{n}_loop_cpu_s"]),
                r[key],
            )
    if r := module("bandgap"):
        for name, label in (("b_fixed", "b fixed"), ("b_free", "b free")):
            add(
                "bandgap",
                f"band-gap fit, {label}: batched vs scipy `curve_fit` per pixel (us per fit)",
                _fmt(r[f"{name}_ours_us_per_fit"], " us"),
                _fmt(r[f"{name}_curve_fit_us_per_fit"], " us"),
                r[f"{name}_speedup"],
            )
    if r := module("pdf_evaluate"):
        add(
            "pdf_evaluate",
            "PDF interpolation through the op (graph inside) vs `parton` (M evaluations/s)",
            _fmt(r["op_dask_synchronous_mevals_per_s"], " M/s"),
            _fmt(r["parton_mevals_per_s"], " M/s"),
            r["op_dask_synchronous_over_parton"],
        )
    if r := module("noop"):
        rows.append(
            f'| an unchanged `replicalake run` vs `python -c "import xarray, dask.array, zarr"` | '
            f"{_cell(r['run_unchanged_s'], r['run_unchanged_cpu_s'])} | "
            f"{_cell(r['import_stack_s'], r['import_stack_cpu_s'])} | "
            f"{_fmt(r['run_unchanged_over_import_stack'], 'x')} the baseline's time | "
            f"`python tests/benchmarks/bench_noop.py{flag}` |"
        )
    if r := module("faults"):
        rows.append(
            f"| resumable write (staging + manifest + publish) vs plain `da.store` | "
            f"{_cell(r['resumable_write_s'], r['resumable_write_cpu_s'])} | "
            f"{_cell(r['plain_write_s'], r['plain_write_cpu_s'])} | "
            f"{_fmt(r['resumable_over_plain'], 'x')} the baseline's time | "
            f"`python tests/benchmarks/bench_faults.py{flag}` |"
        )
    for name, result in data.items():  # modules without a row of their own: their ratios
        if name.startswith("_") or name in KNOWN or not isinstance(result, dict):
            continue
        if "error" in result:
            rows.append(f"| bench_{name} | failed | | | `python tests/benchmarks/bench_{name}.py{flag}` |")
            continue
        for key, value in result.items():
            if key.startswith("speedup") or "_over_" in key:
                rows.append(
                    f"| bench_{name}: {key} | | | **{_fmt(value, 'x')}** | "
                    f"`python tests/benchmarks/bench_{name}.py{flag}` |"
                )
    return rows


KNOWN = {
    "eels_thickness",
    "zlp_subtract",
    "lhc_select",
    "eft_training",
    "replica_training",
    "pdf_fit",
    "lhc_tagging",
    "bandgap",
    "pdf_evaluate",
    "noop",
    "faults",
    "memory_projection",
    "eels_chain",
    "prefect_overhead",
}


def memory(data: dict, flag: str) -> list[str]:
    r = data.get("memory_projection")
    if not r or "error" in r:
        return []
    rows = [
        f"Peak memory, measured / projected (`python tests/benchmarks/bench_memory_projection.py{flag}`; "
        "goal 0.5-1.25):",
        "",
        "| recipe | projected | measured | measured / projected | wall |",
        "|---|---|---|---|---|",
    ]
    for key in (k for k in r if k.endswith("_projected_mib")):
        name = key.removesuffix("_projected_mib")
        rows.append(
            f"| {name} | {r[key]} MiB | {r[f'{name}_measured_mib']} MiB | "
            f"{r[f'{name}_measured_over_projected']} | {r[f'{name}_s']} s |"
        )
    return rows


def others(data: dict, flag: str) -> list[str]:
    """The EELS chain's stages and Prefect's overhead, where the run has them."""
    rows = []
    if (r := data.get("eels_chain")) and "error" not in r:
        rows += [
            f"The EELS chain in stages, {_fmt(r['spectra'])} spectra, trainings "
            f"{r.get('epochs', 'shipped')} epochs (`python tests/benchmarks/bench_eels_chain.py{flag}`):",
            "",
            "| stage | wall | CPU | peak RSS |",
            "|---|---|---|---|",
        ]
        for stage in ("thickness", "cluster_windows", "train_zlp", "subtract_bandgap"):
            rows.append(
                f"| {stage} | {_fmt(r[f'{stage}_s'], ' s')} | {_fmt(r[f'{stage}_cpu_s'], ' s')} | "
                f"{r[f'{stage}_peak_rss_mib']} MiB |"
            )
        rows.append("")
    if (r := data.get("prefect_overhead")) and "error" not in r:
        rows.append(
            f"Prefect (`python tests/benchmarks/bench_prefect_overhead.py{flag}`): an unchanged recipe "
            f"{_cell(r['plain_run_s'], r.get('plain_run_cpu_s'))} as a plain `replicalake run`, "
            f"{_cell(r['prefect_ephemeral_migrated_home_s'], r.get('prefect_ephemeral_migrated_home_cpu_s'))}"
            f" with `--prefect` on an ephemeral API (fresh PREFECT_HOME: "
            f"{_cell(r['prefect_ephemeral_fresh_home_s'], r.get('prefect_ephemeral_fresh_home_cpu_s'))})."
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=REPO / "benchmarks.json")
    args = parser.parse_args()
    data = json.loads(args.path.read_text())
    run = data.get("_run", {})
    flag = " --quick" if run.get("mode") == "quick" else ""
    machine = data.get("_machine", {})
    print(
        f"`{run.get('command', 'python -m tests.benchmarks')}`: {machine.get('cpu_count')} cores, "
        f"load average {machine.get('load_avg', ['?'])[0]} at the start, "
        f"{machine.get('load_avg_end', ['?'])[0]} at the end, "
        f"{run.get('total_s', '?')} s in all."
    )
    if run.get("failed"):
        print(f"Failed: {', '.join(run['failed'])}.")
    print()
    print("\n".join(comparisons(data, flag)))
    print()
    print("\n".join(memory(data, flag)))
    print()
    print("\n".join(others(data, flag)))


if __name__ == "__main__":
    main()
