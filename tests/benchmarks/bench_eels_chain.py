"""Benchmark: the whole EELS chain (recipes/eels_bandgap.yaml, 100 replicas) out-of-core.

Runs the recipe in stages on one synthetic image, each stage adding steps whose outputs are kept
in the lake (so a stage's time is what its new steps cost, plus re-reading and aligning the image,
which is never stored), and prints each stage's wall time and peak RSS (process + children).
Then compares eels.subtract_zlp's throughput with a per-pixel, per-replica reference
implementation of the same algorithm (EELSfitter's loop structure), measured in the same run.

    python tests/benchmarks/bench_eels_chain.py --side 1000      # 10^6 spectra (~20 min)
    python tests/benchmarks/bench_eels_chain.py --side 200       # quick look

The image is generated once into --workdir/lake and reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks.bench_eels_thickness import ensure_image, replicalake, run_measured  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STAGES = [  # (label, outputs of the recipe kept at this stage)
    ("thickness", ["thickness"]),
    ("cluster + windows", ["thickness", "clusters", "windows"]),
    ("train 100 ZLP replicas", ["thickness", "clusters", "windows", "zlp_model"]),
    ("subtract ZLP + band gap", ["thickness", "clusters", "windows", "zlp_model", "bandgap"]),
]


def staged_recipe(entry: str, outputs: list[str]) -> str:
    """The shipped recipe on `entry`, keeping only `outputs` (plots left out: timing only)."""
    text = (REPO / "recipes" / "eels_bandgap.yaml").read_text()
    text = text.replace("{catalog: eels, entry: synthetic_demo}", f"{{catalog: lake, entry: raw/{entry}}}")
    head, _ = text.split("outputs:")
    zones = {"zlp_model": "models"}
    lines = [f"  {name}: {{zone: {zones.get(name, 'derived')}}}" for name in outputs]
    return head + "outputs:\n" + "\n".join(lines) + "\n"


def reference_rate(lake: Path, entry: str, n_pixels: int = 3) -> float:
    """Seconds per pixel of the loop reference on the trained model and real pixels."""
    import xarray as xr

    from engine.kernels.eels import align_zlp
    from engine.kernels.zlp import ZlpScaling
    from tests.kernels.test_zlp import reference_subtract_loop

    model = xr.open_zarr(str(lake / "models" / "eels-bandgap" / "zlp_model"), consolidated=False).load()
    windows = xr.open_zarr(str(lake / "derived" / "eels-bandgap" / "windows"), consolidated=False).load()
    kept = model["kept"].values
    names = [n for n in model.data_vars if n.startswith(("weight_", "bias_"))] + ["replica_id", "generation"]
    arrays = {n: model[n].values[kept] for n in names}
    architecture = json.loads(model.attrs["architecture"])
    scaling = ZlpScaling(*model["scaling"].values)
    image = xr.open_zarr(str(lake / "raw" / entry), consolidated=False)
    energy = image["energy"].values
    spectra, _ = align_zlp(image["counts"][0, :n_pixels].values, energy)
    de_i, de_ii = float(windows["de_i"][0]), float(windows["de_ii"][0])
    start = time.perf_counter()
    for pixel in spectra:
        reference_subtract_loop(pixel, arrays, architecture, scaling, energy, 0.5, de_i, de_ii,
                                [0.16, 0.5, 0.84])
    return (time.perf_counter() - start) / n_pixels


def subtraction_seconds(lake: Path, recipe: Path) -> float:
    """eels.subtract_zlp alone (plus the read and alignment it needs), reduced over energy so
    nothing is stored: the trained model and windows come from the lake."""
    import dask

    from engine.graph import compile_recipe
    from engine.storage import Lake

    plan = compile_recipe(recipe, Lake(str(lake)))
    bands = plan.step("inelastic").dataset["inelastic_quantile"].sum("energy")
    start = time.perf_counter()
    dask.compute(bands.data, scheduler="threads")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/replicalake-bench"))
    args = parser.parse_args()
    lake = args.workdir / "lake"
    lake.mkdir(parents=True, exist_ok=True)
    entry = ensure_image(lake, args.side, args.channels)
    for zone in ("derived", "models"):
        target = lake / zone / "eels-bandgap"
        if target.exists():
            shutil.rmtree(target)
    n = args.side * args.side
    print(f"== {n} spectra x {args.channels} channels, recipes/eels_bandgap.yaml in stages ==")
    times = {}
    for label, outputs in STAGES:
        recipe = args.workdir / "chain-stage.yaml"
        recipe.write_text(staged_recipe(entry, outputs))
        seconds, rss, _ = run_measured(replicalake("run", str(recipe), "--lake", str(lake), "--json"))
        times[label] = seconds
        print(f"{label:<26} {seconds:8.1f} s   peak RSS {rss / 1024:5.2f} GiB")
    subtract_rate = n / subtraction_seconds(lake, recipe) / 2
    per_pixel = reference_rate(lake, entry)
    print(f"\neels.subtract_zlp (100 replicas, 3 bands, incl. read + align): "
          f"{subtract_rate:,.0f} spectra/s/core")
    print(f"per-pixel reference loop:  {per_pixel * 1e3:.0f} ms/pixel = {1 / per_pixel:.1f} spectra/s/core;"
          f" ratio {subtract_rate * per_pixel:,.0f}x")


if __name__ == "__main__":
    main()
