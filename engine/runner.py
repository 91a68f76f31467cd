"""Execute a Plan: compute stale outputs together, publish them atomically, draw their plots.

All stale outputs are laid out in `.tmp/` with `to_zarr(compute=False)` and computed in ONE dask
call, so steps they share run once. Only after every chunk is written does a store move into its
zone and join the lake catalog; a failure discards the temporary stores and leaves the lake as it
was.
"""

from __future__ import annotations

import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

import dask

from . import config
from .catalog import publish_entry
from .errors import RunError
from .graph import ENGINE_VERSION
from .memory import limit_heap_fragmentation
from .plan import Plan, PlannedStep
from .progress import DaskProgress
from .reports import draw_plot, report_path
from .storage import PROVENANCE_KEY
from .zarr_io import write_template

KEY_LIBRARIES = ("numpy", "dask", "xarray", "zarr")


@dataclass
class OutputResult:
    step: str
    zone: str
    name: str
    status: str  # "computed" or "up to date"
    bytes_on_disk: int
    reports: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    recipe: str
    outputs: list[OutputResult]
    seconds: float
    scheduler: str

    @property
    def computed(self) -> list[OutputResult]:
        return [o for o in self.outputs if o.status == "computed"]

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "seconds": round(self.seconds, 3), "scheduler": self.scheduler,
                "outputs": [vars(o) for o in self.outputs]}


def provenance(plan: Plan, step: PlannedStep, started: str) -> dict[str, Any]:
    """What a future reader needs to know how an output was made (stored in its zarr attrs)."""
    return {
        "token": step.token,
        "recipe": plan.recipe.name,
        "recipe_path": plan.path,
        "recipe_hash": plan.recipe_hash,
        "step": step.id,
        "op": step.op,
        "op_version": step.op_version,
        "params": step.params,
        "inputs": {name: plan.step(ref).token for name, ref in step.inputs.items()},
        "versions": {"replicalake": ENGINE_VERSION, "python": platform.python_version(),
                     **{lib: version(lib) for lib in KEY_LIBRARIES}},
        "started": started,
        "host": platform.node(),
    }


def execute(plan: Plan, scheduler: str | None = None, progress: bool = True) -> RunSummary:
    """Compute and publish every stale output of `plan`; up-to-date outputs are left alone."""
    limit_heap_fragmentation()
    started_clock = time.perf_counter()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    lake = plan.lake
    address = config.scheduler_address(scheduler)
    stale = plan.stale_outputs
    pending: list[tuple[PlannedStep, str]] = []
    try:
        writes = []
        for step in stale:
            tmp = lake.new_tmp_path(f"{step.zone}-{step.name}")
            pending.append((step, tmp))
            dataset = step.dataset.copy()
            dataset.attrs[PROVENANCE_KEY] = provenance(plan, step, started)
            writes += write_template(dataset, lake.url(tmp),
                                     None if lake.is_local else lake.storage_options)
        if stale:
            try:
                _compute(writes, address, progress)
            except (ValueError, FloatingPointError, ArithmeticError) as exc:
                steps = ", ".join(step.id for step in stale)
                raise RunError(f"computing {plan.recipe.name} ({steps}) failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        for step, tmp in pending:
            publish_entry(lake, tmp, step.zone, step.name,
                          description=f"{plan.recipe.name}: step {step.id} ({step.op})",
                          metadata={"token": step.token, "recipe": plan.recipe.name})
        pending = []
    finally:
        for _, tmp in pending:
            lake.discard(tmp)
    results = []
    for step in plan.outputs:
        reports = []
        if not step.up_to_date or not all(lake.fs.exists(p) for p in _report_paths(plan, step)):
            reports = [draw_plot(lake, step.zone, step.name, plot) for plot in step.output.plots]
        results.append(OutputResult(step.id, step.zone, step.name,
                                    "up to date" if step.up_to_date else "computed",
                                    lake.size(lake.entry_path(step.zone, step.name)), reports))
    return RunSummary(plan.recipe.name, results, time.perf_counter() - started_clock,
                      address or "threads")


def _report_paths(plan: Plan, step: PlannedStep) -> list[str]:
    return [report_path(plan.lake, step.zone, step.name, p) for p in step.output.plots]


def _compute(writes: list, address: str | None, progress: bool) -> None:
    if address is None:
        # Our own pool, shut down (waiting) on the way out: after a failed task no other
        # thread may still be writing chunks while the temporary stores are removed.
        pool = ThreadPoolExecutor(os.cpu_count() or 1)
        try:
            with DaskProgress("computing outputs", disable=not progress):
                dask.compute(*writes, scheduler="threads", pool=pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return
    from distributed import Client
    from distributed import progress as distributed_progress

    with Client(address, set_as_default=False) as client:
        futures = client.compute(writes)
        if progress:
            distributed_progress(futures)
        client.gather(futures)
