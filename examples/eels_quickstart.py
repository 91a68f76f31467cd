# %% [markdown]
# # EELS quick start in Python
#
# The notebook version of `replicalake demo`: ingest a synthetic EELS spectral image, look at the
# plan of `recipes/eels_thickness.yaml`, run it, read the thickness map back, then try a variant
# of the recipe without touching the original's output. Run it as a script from the checkout
# (`python examples/eels_quickstart.py`) or cell by cell in Jupyter / VS Code (`# %%` cells).
# `REPLICALAKE_LAKE` picks the lake (default ./storage); `QUICKSTART_SHAPE="NY NX NE"` the size.

# %%
import os
from pathlib import Path

import replicalake as rl

CHECKOUT = Path(__file__).resolve().parent.parent if "__file__" in globals() else Path.cwd()
RECIPE = CHECKOUT / "recipes" / "eels_thickness.yaml"
CATALOGS = CHECKOUT / "catalogs"  # the recipe reads catalog `eels`, entry `synthetic_demo`
SHAPE = tuple(int(n) for n in os.environ.get("QUICKSTART_SHAPE", "64 64 1024").split())

lake = rl.open_lake(os.environ.get("REPLICALAKE_LAKE", "storage"))
lake  # noqa: B018 (a notebook shows the cell's last value)

# %% [markdown]
# Every ingest format is a function (`dir(rl.ingest)`); `synthetic_demo` is `raw/eels_demo`.

# %%
if "raw/eels_demo" not in lake:
    print(rl.ingest.synthetic_eels("eels_demo", shape=SHAPE, chunks=(16, 16), progress=False, lake=lake))
image = lake["raw/eels_demo"]  # lazy: nothing is read yet
image  # noqa: B018 (a notebook shows the cell's last value)

# %% [markdown]
# The plan: each step's status and why, sizes and projected peak memory. Nothing is computed.

# %%
plan = rl.plan(RECIPE, lake, catalogs=CATALOGS)
plan  # noqa: B018 (a notebook shows the cell's last value)

# %%
summary = rl.run(RECIPE, lake, catalogs=CATALOGS)
print([(o.name, o.status) for o in summary.outputs])
thickness = lake["derived/eels-thickness/thickness"]
print(f"mean t/lambda {float(thickness['t_over_lambda'].mean()):.3f}")

# %% [markdown]
# A variant: end the ZLP integral at 1.5 eV instead of at its first minimum. `params=` is
# merged into the recipe (steps keyed by id) and checked like the YAML file. The variant writes
# its own output name; publishing over the file's output would need `replace=True`.

# %%
variant = {"steps": {"thickness": {"params": {"zlp_end": "threshold", "threshold_ev": 1.5}}},
           "outputs": {"thickness": {"name": "eels-thickness/thickness_threshold"}}}
rl.plan(RECIPE, lake, catalogs=CATALOGS, params=variant)

# %%
rl.run(RECIPE, lake, catalogs=CATALOGS, params=variant)
other = lake["derived/eels-thickness/thickness_threshold"]
print(f"mean t/lambda, fixed ZLP end {float(other['t_over_lambda'].mean()):.3f}")
print(lake.provenance("derived/eels-thickness/thickness_threshold")["recipe_params"])
