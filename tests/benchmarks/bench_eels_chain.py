"""Benchmark: the whole EELS chain (recipes/eels_bandgap.yaml, 100 replicas) out-of-core.

Runs the recipe in stages on one synthetic image, each stage adding steps whose outputs are kept
in the lake (so a stage's time is what its new steps cost, plus re-reading and aligning the image,
which is never stored), and prints each stage's wall and CPU time and peak RSS (process +
children). Then (full mode) times ZLP subtraction on real aligned pixels of that image with the
trained model: the op's grid + fast path against the exact vectorised brute force
(`zlp.subtract_brute`), same pixels, same scope (bench_zlp_subtract.compare_paths).

    python tests/benchmarks/bench_eels_chain.py --side 1000      # 10^6 spectra (~20 min)
    python tests/benchmarks/bench_eels_chain.py --side 200       # a look
    python tests/benchmarks/bench_eels_chain.py --quick          # 32 x 32, trainings cut to 200 epochs
    python tests/benchmarks/bench_eels_chain.py --side 1000 --whole   # one run of the whole recipe

`--whole` runs the recipe once with every output, as a user would, and prints the peak of each
wave the runner computed (engine/waves.py) beside the whole run's: the run's peak must stay near
the heaviest stage's, not grow with the image.

The image is generated once into --workdir/lake and reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks._timing import finish, header, show  # noqa: E402
from tests.benchmarks.bench_eels_thickness import WORKDIR, ensure_image, replicalake, run_measured  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STAGES = [  # (label, outputs of the recipe kept at this stage)
    ("thickness", ["thickness"]),
    ("cluster_windows", ["thickness", "clusters", "windows"]),
    ("train_zlp", ["thickness", "clusters", "windows", "zlp_model"]),
    ("subtract_bandgap", ["thickness", "clusters", "windows", "zlp_model", "bandgap"]),
]
SHIPPED_TRAINING = "epochs: 5000, n_spectra: 300"


def staged_recipe(entry: str, outputs: list[str], epochs: int | None = None) -> str:
    """The shipped recipe on `entry`, keeping only `outputs` (plots left out: timing only);
    `epochs` cuts the training short, keeping every replica."""
    text = (REPO / "recipes" / "eels_bandgap.yaml").read_text()
    text = text.replace("{catalog: eels, entry: synthetic_demo}", f"{{catalog: lake, entry: raw/{entry}}}")
    if epochs is not None:
        if SHIPPED_TRAINING not in text:
            raise SystemExit(
                f"recipes/eels_bandgap.yaml no longer has '{SHIPPED_TRAINING}': update this script"
            )
        text = text.replace(
            SHIPPED_TRAINING, f"epochs: {epochs}, n_spectra: 300, stopping: {{threshold: 1.0e12}}"
        )
    head, _ = text.split("outputs:")
    zones = {"zlp_model": "models"}
    lines = [f"  {name}: {{zone: {zones.get(name, 'derived')}}}" for name in outputs]
    return head + "outputs:\n" + "\n".join(lines) + "\n"


def wave_peaks(summary_json: str) -> dict:
    """Each wave's measured peak (MiB) from `run --json`, named by the outputs it computed (the
    outputs of one wave share its memory record)."""
    waves: dict[str, list[str]] = {}
    for output in json.loads(summary_json)["outputs"]:
        if (output.get("memory") or {}).get("measured_peak_bytes"):
            waves.setdefault(json.dumps(output["memory"], sort_keys=True), []).append(output["step"])
    peaks = {}
    for record, steps in waves.items():
        mib = json.loads(record)["measured_peak_bytes"] / 2**20
        print(f"  wave computing {', '.join(steps):<40} peak {mib / 1024:5.2f} GiB", flush=True)
        peaks[f"wave_{'_'.join(steps)}_peak_mib"] = round(mib)
    return peaks


def subtraction_on_image(lake: Path, entry: str, pixels: int, repeats: int) -> dict:
    """Grid + fast path vs brute force on the image's first aligned pixels, the trained model."""
    import numpy as np
    import torch
    import xarray as xr

    from engine.kernels.eels import align_zlp
    from engine.kernels.zlp import ZlpScaling
    from tests.benchmarks.bench_zlp_subtract import compare_paths

    torch.set_num_threads(1)
    model = xr.open_zarr(str(lake / "models" / "eels-bandgap" / "zlp_model"), consolidated=False).load()
    windows = xr.open_zarr(str(lake / "derived" / "eels-bandgap" / "windows"), consolidated=False).load()
    kept = model["kept"].values
    names = [n for n in model.data_vars if n.startswith(("weight_", "bias_"))] + ["replica_id", "generation"]
    arrays = {n: model[n].values[kept] for n in names}
    architecture = json.loads(model.attrs["architecture"])
    scaling = ZlpScaling(*model["scaling"].values)
    image = xr.open_zarr(str(lake / "raw" / entry), consolidated=False)
    energy = image["energy"].values
    side = image.sizes["x"]
    rows = -(-pixels // side)
    counts = image["counts"][:rows].values.reshape(-1, energy.size)[:pixels]
    spectra, _ = align_zlp(counts, energy)
    # cluster 0's windows and a 0.5 eV FWHM for every pixel: timing only
    de_i, de_ii = float(windows["de_i"][0]), float(windows["de_ii"][0])
    return compare_paths(
        arrays, architecture, scaling, energy, np.asarray(spectra, np.float32), repeats, 0.5, de_i, de_ii
    )


def run(
    quick: bool = False,
    side: int | None = None,
    channels: int = 2048,
    workdir: Path = WORKDIR,
    subtract_pixels: int = 2048,
    repeats: int = 3,
    whole: bool = False,
    epochs: int | None = None,
) -> dict:
    side = side or (32 if quick else 1000)
    epochs = epochs or (200 if quick else None)
    result = header(
        "EELS chain in stages",
        1 if quick else repeats,
        spectra=side * side,
        channels=channels,
        epochs=epochs or "shipped",
    )
    lake = workdir / "lake"
    lake.mkdir(parents=True, exist_ok=True)
    entry = ensure_image(lake, side, channels)
    for zone in ("derived", "models"):
        shutil.rmtree(lake / zone / "eels-bandgap", ignore_errors=True)
    for label, outputs in [("whole_chain", STAGES[-1][1])] if whole else STAGES:
        recipe = workdir / "chain-stage.yaml"
        recipe.write_text(staged_recipe(entry, outputs, epochs))
        seconds, rss, out, cpu = run_measured(replicalake("run", str(recipe), "--lake", str(lake), "--json"))
        print(
            f"{label:<18} {seconds:8.1f} s wall {cpu:8.1f} s CPU   peak RSS {rss / 1024:5.2f} GiB", flush=True
        )
        result[f"{label}_s"] = round(seconds, 2)
        result[f"{label}_cpu_s"] = round(cpu, 2)
        result[f"{label}_peak_rss_mib"] = round(rss)
        if whole:
            result.update(wave_peaks(out))
    result["spectra"] = side * side
    if not quick:  # bench_zlp_subtract measures the same comparison in quick mode
        numbers = subtraction_on_image(lake, entry, min(subtract_pixels, side * side), repeats)
        result.update({f"subtract_{key}": value for key, value in numbers.items()})
        print(
            f"subtraction on {numbers['pixels']} aligned pixels: brute force {numbers['brute_us_per_pixel']} "
            f"us/pixel, fast path {numbers['fast_us_per_pixel']} us/pixel ({numbers['speedup_per_pixel']}x), "
            f"grid {numbers['grid_s']} s (pays off after {numbers['break_even_pixels']} pixels)"
        )
    return finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="32 x 32 pixels, 200 epochs, no subtraction timing"
    )
    parser.add_argument("--side", type=int, default=None, help="image side (default 1000)")
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--subtract-pixels", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--whole", action="store_true", help="one run of the whole recipe, not stages")
    parser.add_argument("--epochs", type=int, default=None, help="cut the trainings short (default: shipped)")
    args = parser.parse_args()
    show(run(args.quick, args.side, args.channels, args.workdir, args.subtract_pixels, args.repeats,
             args.whole, args.epochs))


if __name__ == "__main__":
    main()
