"""Execute a Plan: compute stale outputs in waves, publish them atomically, draw their plots.

Stale outputs are staged in `.tmp/resume/` (engine/resume.py) and computed wave by wave
(engine/waves.py): the outputs of one wave in ONE dask call, so steps they share run once; an
output that reads another stale output waits for the next wave and reads it from its staging
store, so no intermediate is held whole between them. Only after every chunk of every wave is
written, and the sources are checked to be the ones the run started from, does a store get its
checksum manifest, move into its zone and join the lake catalog; an error discards the staging
and leaves the lake as it was, a kill leaves the chunks written so far for the next run to resume
from. Outputs are locked while being made.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

import dask
import dask.threaded

from . import config
from .catalog import (
    LAKE_CATALOG,
    CatalogEntry,
    editable_lake_catalog,
    entry_token,
    filesystem_for,
    load_catalog,
    publish_entry,
    register_entry,
)
from .errors import RunError, SchedulerError
from .graph import ENGINE_VERSION, compile_recipe, is_up_to_date
from .integrity import find_damage
from .key_numbers import summarize
from .locks import output_locks
from .memory import TrimWhenGrown, limit_heap_fragmentation
from .ownership import recipe_location, refuse_other_recipes_outputs
from .peak_rss import PeakRss
from .plan import Plan, PlannedStep
from .progress import DaskProgress
from .projection import project, refuse_over_budget
from .reports import draw_plot, report_path
from .resume import StagedOutput, discard_other_attempts, stage_output, staging_root
from .waves import output_waves
from .zarr_io import settle_background_writes

KEY_LIBRARIES = ("numpy", "dask", "xarray", "zarr")


@dataclass
class OutputResult:
    step: str
    zone: str
    name: str
    status: str  # "computed" or "up to date"
    bytes_on_disk: int
    reports: list[str] = field(default_factory=list)
    chunks_written: int = 0  # chunks this run computed and wrote
    chunks_resumed: int = 0  # chunks a killed earlier run had written and this run verified
    memory: dict[str, Any] | None = None  # its wave's projected and measured peak, when computed
    # when computed: its wave's number, the run's count of waves and the wave's wall and CPU seconds
    wave: dict[str, Any] | None = None
    # statistics of the variables the op marked (engine/key_numbers.py), read from the lake
    key_numbers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunSummary:
    recipe: str
    outputs: list[OutputResult]
    seconds: float
    scheduler: str
    # projected_bytes and measured_peak_bytes of the computation (None: nothing was computed)
    memory: dict[str, Any] | None = None

    @property
    def computed(self) -> list[OutputResult]:
        return [o for o in self.outputs if o.status == "computed"]

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "seconds": round(self.seconds, 3), "scheduler": self.scheduler,
                "memory": self.memory, "outputs": [vars(o) for o in self.outputs]}


def provenance(plan: Plan, step: PlannedStep, started: str,
               memory: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a future reader needs to know how an output was made (stored in its zarr attrs).

    `memory`: the run's projected peak and, once computed, its measured one (see execute)."""
    return {
        "token": step.token,
        "recipe": plan.recipe.name,
        "recipe_path": recipe_location(plan.path),  # absolute: a copy of the recipe is told apart
        "recipe_params": plan.overrides,  # `params=` of the Python API, merged into the recipe
        "recipe_hash": plan.recipe_hash,
        "step": step.id,
        "op": step.op,
        "op_version": step.op_version,
        "code": step.code,
        "params": step.params,
        "inputs": {name: plan.step(ref).token for name, ref in step.inputs.items()},
        "versions": {"replicalake": ENGINE_VERSION, "python": platform.python_version(),
                     **{lib: version(lib) for lib in KEY_LIBRARIES}},
        "started": started,
        "host": platform.node(),
        "memory": memory,
    }


def execute(plan: Plan, scheduler: str | None = None, progress: bool = True,
            lock_timeout: float | None = None, verify_inputs: bool = False,
            max_memory: int | str | None = None, replace: bool = False) -> RunSummary:
    """Compute and publish every stale output of `plan`; up-to-date outputs are left alone.

    Each stale output is locked for the whole run (a second run of the same recipe waits up to
    `lock_timeout` seconds, None: forever) and staged where a killed run can resume it. Inputs
    are checked against their manifests first: by listing (names and sizes), or with
    `verify_inputs` by every byte's digest, which also catches a flipped bit that still decodes.

    On the threaded scheduler a plan whose projected peak memory (engine/projection.py) is above
    `max_memory` (bytes or '4GiB'; default config.max_memory) is refused before the lake is
    touched, and the measured peak is recorded beside the projection (summary and provenance).

    A stale output whose store another recipe published is refused (OutputConflictError, nothing
    staged) unless `replace` (engine/ownership.py); outputs `--force`d at compile time are
    computed although their tokens are in the lake.
    """
    limit_heap_fragmentation()
    started_clock = time.perf_counter()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    lake = plan.lake
    address = config.scheduler_address(scheduler)
    projection = project(plan)
    if address is None:  # a cluster's workers are other processes, with their own memory limits
        refuse_over_budget(plan, projection, config.max_memory(max_memory))
    elif plan.stale_outputs:  # before any lock or staging: an unreachable scheduler changes nothing
        check_scheduler(address)
    keys = [f"{step.zone}/{step.name}" for step in plan.stale_outputs]
    _refuse_unwritable_lake(plan)
    with output_locks(lake, keys, plan.recipe.name, lock_timeout, reads=_lake_entries_read(plan)):
        staged, memory_of, wave_of = _stage_and_compute(plan, started, address, progress, verify_inputs,
                                                        projection.total_bytes, replace)
    _list_in_catalog(plan)
    results = []
    for step in plan.outputs:
        reports = []
        if not step.up_to_date or not all(lake.fs.exists(p) for p in _report_paths(plan, step)):
            reports = [draw_plot(lake, step.zone, step.name, plot) for plot in step.output.plots]
        written = staged.get(step.id)
        results.append(OutputResult(step.id, step.zone, step.name,
                                    "computed" if written else "up to date",
                                    lake.size(lake.entry_path(step.zone, step.name)), reports,
                                    written.chunks_written if written else 0,
                                    written.chunks_resumed if written else 0,
                                    memory_of.get(step.id), wave_of.get(step.id),
                                    _key_numbers(plan, step)))
    return RunSummary(plan.recipe.name, results, time.perf_counter() - started_clock,
                      address or "threads", _largest_peak(memory_of.values()))


def _largest_peak(memories: Iterable[dict]) -> dict | None:
    """The run's memory: that of its wave with the highest measured peak (None: none computed)."""
    return max(memories, key=lambda m: m["measured_peak_bytes"] or 0, default=None)


def _key_numbers(plan: Plan, step: PlannedStep) -> list[dict[str, Any]]:
    """The key numbers of a published output (engine/key_numbers.py); a failure to read them is
    reported in their place, never a failed run: the output is already published."""
    try:
        return summarize(plan.lake.open(step.zone, step.name))
    except Exception as exc:  # noqa: BLE001 - the summary must not undo a published run
        return [{"variable": "-", "statistic": "skipped", "size": 0,
                 "note": f"key numbers unreadable: {type(exc).__name__}: {exc}"}]


def _refuse_unwritable_lake(plan: Plan) -> None:
    """Before any lock, staging or computing: refuse outputs whose store, staging area or plots
    would be written through a link out of the lake, and a lake catalog that could not list them
    (a CatalogError naming it). Locks check their own folder before they create anything."""
    lake = plan.lake
    for step in plan.stale_outputs:
        lake.new_entry_path(step.zone, step.name)
        staging_root(lake, step.zone, step.name, step.token)
        for path in _report_paths(plan, step):
            lake.writable(path)
    if plan.stale_outputs:
        editable_lake_catalog(lake)


def _stage_and_compute(plan: Plan, started: str, address: str | None, progress: bool,
                       verify_inputs: bool, projected: int, replace: bool = False,
                       ) -> tuple[dict[str, StagedOutput], dict[str, dict], dict[str, dict]]:
    """Stage and compute the stale outputs (the caller holds their locks) wave by wave
    (engine/waves.py), then publish them all; return them with each one's wave's projected and
    measured peak memory, and its wave's number and times (a chain's slow link is named there).

    An ordinary error discards every staging area (the same inputs would fail the same way) and
    publishes nothing; an interrupt or a kill leaves them, so the next run resumes from the
    chunks already written, whole waves included.
    """
    lake = plan.lake
    for step in plan.stale_outputs:  # a run we waited for may have published the same content
        step.up_to_date = not step.forced and is_up_to_date(lake, step.zone, step.name, step.token)
    refuse_other_recipes_outputs(plan, replace)  # under the locks: no run publishes meanwhile
    if plan.stale_outputs:  # one listing per input: missing, truncated or stray chunks stop the run
        _check_inputs_unchanged(plan)  # republished after compile, before our shared locks
        _refuse_damaged_inputs(plan, _damaged_inputs(plan, quick=not verify_inputs))
    waves = output_waves(plan)
    staged: dict[str, StagedOutput] = {}
    memory_of: dict[str, dict] = {}
    wave_of: dict[str, dict] = {}
    try:
        for number, wave in enumerate(waves, start=1):
            current = _compile_again(plan, wave, staged) if number > 1 else plan
            label = f"computing {', '.join(wave)}" + (f" (wave {number} of {len(waves)})" * (len(waves) > 1))
            outputs = [current.step(step_id) for step_id in wave]
            for step in outputs:
                discard_other_attempts(lake, step.zone, step.name, step.token)
                record = provenance(current, step, started,
                                    {"projected_bytes": projected, "measured_peak_bytes": None})
                staged[step.id] = stage_output(lake, step.dataset, step.zone, step.name, step.token, record)
            writes = [write for step in outputs for write in staged[step.id].writes]
            if writes:
                wall, cpu = time.perf_counter(), time.process_time()
                memory = _compute_measured(current, outputs, writes, address, progress, projected, label)
                memory_of.update(dict.fromkeys(wave, memory))
                wave_of.update(dict.fromkeys(wave, {
                    "number": number, "of": len(waves), "seconds": round(time.perf_counter() - wall, 3),
                    # a cluster's workers spend their CPU in other processes
                    "cpu_seconds": None if address else round(time.process_time() - cpu, 3)}))
        _check_inputs_unchanged(plan)
        for step in plan.stale_outputs:
            item = staged[step.id]
            if step.id in memory_of:
                item.add_provenance(memory=memory_of[step.id], wave=wave_of[step.id])
            publish_entry(lake, item.store, step.zone, step.name,
                          description=f"{plan.recipe.name}: step {step.id} ({step.op})",
                          metadata={"token": step.token, "recipe": plan.recipe.name},
                          known_digests=item.digests())
            item.remove()
    except Exception:
        settle_background_writes()
        for step in plan.stale_outputs:  # (and one whose layout failed half way: not in `staged`)
            lake.discard(staging_root(lake, step.zone, step.name, step.token))
        raise
    return staged, memory_of, wave_of


def _compile_again(plan: Plan, wave: list[str], staged: dict[str, StagedOutput]) -> Plan:
    """The recipe compiled again for computing `wave`, reading what earlier waves computed from
    their staging stores.

    Outputs still to come that were forced stay forced. Their tokens must be the ones the run
    started with: a source republished or an op's code edited meanwhile stops the run."""
    force = [step.id for step in plan.stale_outputs if step.forced and step.id in wave]
    again = compile_recipe(plan.loaded, plan.lake, plan.catalogs, force=force,
                           staged={step_id: item.store for step_id, item in staged.items()})
    changed = [step_id for step_id in wave if again.step(step_id).token != plan.step(step_id).token]
    if changed:
        raise RunError(f"{plan.recipe.name}: a source or an op's code changed while this run ran, "
                       f"so {', '.join(changed)} would no longer be what was planned; nothing was "
                       "published; run the recipe again")
    return again


def _compute_measured(plan: Plan, outputs: list[PlannedStep], writes: list, address: str | None,
                      progress: bool, projected: int, label: str) -> dict[str, Any]:
    """Compute the writes; return the projected and the measured peak resident memory."""
    with PeakRss() as peak:
        _compute_or_explain(plan, outputs, writes, address, progress, label)
    if address is not None:
        return {"projected_bytes": projected, "measured_peak_bytes": None,
                "note": "computed by dask.distributed workers, whose memory is not measured here"}
    return {"projected_bytes": projected, "measured_peak_bytes": peak.bytes}


def _compute_or_explain(plan: Plan, outputs: list[PlannedStep], writes: list, address: str | None,
                        progress: bool, label: str) -> None:
    """Compute the writes; on failure, name damaged input chunks rather than a codec traceback."""
    try:
        _compute(writes, address, progress, label)
    except Exception as exc:
        _refuse_damaged_inputs(plan, _damaged_inputs(plan), exc)
        steps = ", ".join(step.id for step in outputs)
        if isinstance(exc, ValueError | FloatingPointError | ArithmeticError):
            raise RunError(f"computing {plan.recipe.name} ({steps}) failed: "
                           f"{type(exc).__name__}: {exc}") from exc
        raise


def _inputs(plan: Plan) -> list[tuple[str, str]]:
    """(label, url) of every store the plan reads: its sources and the up-to-date outputs."""
    lake = plan.lake
    found = [(step.id, step.params["url"]) for step in plan.steps if step.op == "source"]
    return found + [(f"{step.zone}/{step.name}", lake.entry_url(step.zone, step.name))
                    for step in plan.outputs if step.up_to_date]


def _lake_entries_read(plan: Plan) -> list[str]:
    """Keys (zone/name) of the lake entries the plan reads, pinned by shared locks while it runs."""
    root = plan.lake.url(plan.lake.root).rstrip("/") + "/"
    return [url[len(root):].strip("/") for _, url in _inputs(plan) if url.startswith(root)]


def _damaged_inputs(plan: Plan, quick: bool = False) -> list:
    damage = []
    for label, url in _inputs(plan):
        fs, path = filesystem_for(url, plan.lake)
        damage += find_damage(fs, path, label, quick)
    return damage


def _refuse_damaged_inputs(plan: Plan, damage: list, cause: Exception | None = None) -> None:
    """Raise a RunError naming each damaged input chunk (nothing when there is none)."""
    if damage:
        steps = ", ".join(step.id for step in plan.stale_outputs)
        raise RunError(f"computing {plan.recipe.name} ({steps}) failed reading damaged input data:\n  "
                       + "\n  ".join(map(str, damage)) + "\nre-ingest or recompute those entries "
                       "(`replicalake verify` checks the whole lake)") from cause


def _check_inputs_unchanged(plan: Plan) -> None:
    """Refuse to compute or publish when a source changed since the plan was compiled.

    The outputs would be stored under a token naming the old source, yet computed from a mix
    of old and new chunks; the run is discarded instead, and rerunning computes from the new one.
    Local lakes pin the entries a run reads with shared locks; this check also covers sources
    outside the lake and object-store lakes, which have no locks.
    """
    for step in plan.steps:
        if step.op == "source":
            now = entry_token(CatalogEntry(step.id, step.params["url"]), plan.lake)
            if now != step.token:
                raise RunError(f"source {step.id!r} ({step.params['url']}) was republished while "
                               "this run read it; nothing was published; run the recipe again")


def _list_in_catalog(plan: Plan) -> None:
    """Re-list up-to-date outputs a run killed between publish and catalog update left unlisted."""
    listed = load_catalog(LAKE_CATALOG, plan.lake).entries
    for step in plan.outputs:
        if not step.up_to_date or f"{step.zone}/{step.name}" in listed:
            continue
        register_entry(plan.lake, step.zone, step.name, f"{plan.recipe.name}: step {step.id} ({step.op})",
                       {"token": step.token, "recipe": plan.recipe.name})


def _report_paths(plan: Plan, step: PlannedStep) -> list[str]:
    return [report_path(plan.lake, step.zone, step.name, p) for p in step.output.plots]


def _compute(writes: list, address: str | None, progress: bool, label: str) -> None:
    if address is None:
        # Our own pool, shut down (waiting) on the way out: after a failed task no other
        # thread may still be writing chunks while the temporary stores are removed.
        pool = ThreadPoolExecutor(config.worker_threads())
        try:
            with DaskProgress(label, disable=not progress), TrimWhenGrown():
                # the threaded get itself: a scheduler named by a string makes dask import
                # distributed to look for a client (+13 MiB resident, ~0.4 CPU-s a run)
                dask.compute(*writes, scheduler=dask.threaded.get, pool=pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return
    from distributed import Client
    from distributed import progress as distributed_progress

    try:
        client = Client(address, set_as_default=False)
    except OSError as exc:  # it answered check_scheduler, then went away or never said hello
        raise SchedulerError(f"cannot reach the dask scheduler at {address}: {exc}") from exc
    with client:
        futures = client.compute(writes)
        if progress:
            distributed_progress(futures)
        client.gather(futures)


def check_scheduler(address: str) -> None:
    """Refuse a run whose dask.distributed scheduler does not answer, in config.scheduler_timeout()
    seconds (dask itself retries for 30 s, then gives a traceback), with one line saying why.

    A tcp:// address is first connected to plainly, so a refused one fails at once (a dask comm
    retries until the timeout); then the scheduler must complete dask's handshake, which a wrong
    port (the dashboard's, any HTTP server) does not.
    """
    import asyncio
    import socket

    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    timeout = config.scheduler_timeout()

    async def hello() -> None:
        comm = await asyncio.wait_for(connect(address, timeout=timeout), timeout)
        await comm.close()

    try:
        scheme, location = parse_address(address)
        if scheme == "tcp":
            socket.create_connection(parse_host_port(location), timeout=timeout).close()
        with ThreadPoolExecutor(1) as pool:  # a thread of its own: the caller may run an event loop
            pool.submit(asyncio.run, hello()).result()
    except (OSError, ValueError, TypeError) as exc:
        why = (f"no answer in {timeout:g} s (${config.SCHEDULER_TIMEOUT_ENV} sets the wait)"
               if isinstance(exc, TimeoutError) else getattr(exc, "strerror", None) or str(exc))
    except Exception:  # garbage where the handshake's frame sizes should be (MemoryError, msgpack)
        why = ("what answered there is not a dask scheduler (a scheduler listens on 8786 by default, "
               "its dashboard on 8787)")
    else:
        return
    raise SchedulerError(f"cannot reach the dask scheduler at {address}: {why}; check the address "
                         f"(--scheduler or ${config.SCHEDULER_ENV}) and that the scheduler is running; "
                         "nothing was computed")
