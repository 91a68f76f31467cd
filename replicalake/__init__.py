"""ReplicaLake in Python, under the name it is installed as: `import replicalake as rl`.

The package is `engine` (recipes, ops, the `replicalake` command); this name re-exports its
notebook API, engine/api.py, and nothing else:

    lake = rl.open_lake("storage")              # lake.entries(), lake["ZONE/NAME"] (lazy xarray)
    rl.plan(recipe, params={...})               # steps, staleness and why, projected memory
    rl.run(recipe, params={...}, lake=lake)     # compute and publish stale outputs
    rl.ingest.synthetic_eels("demo", shape=(64, 64, 512), lake=lake)
    rl.report(recipe, lake)                     # the run's static HTML page (its URL)
    rl.lineage(lake)                            # raw inputs -> every output, with staleness

Importing it imports neither xarray, dask, torch nor prefect (each function imports what it needs).
"""

from engine.api import (
                        LakeView,
                        __version__,
                        ingest,
                        lineage,
                        load,
                        merge_params,
                        open_lake,
                        plan,
                        report,
                        run,
)
from engine.errors import RecipeError, ReplicaLakeError

__all__ = ["LakeView", "RecipeError", "ReplicaLakeError", "__version__", "ingest", "lineage", "load",
           "merge_params", "open_lake", "plan", "report", "run"]
