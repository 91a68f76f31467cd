"""Project a run's peak resident memory from what each op declares one of its tasks holds.

    peak = BASELINE_BYTES                        the process, with everything a run imports
         + RUNTIME_BYTES of torch, numba         once each, if a step that loads it runs
         + the `threads` largest tasks           what the worker threads hold at once

A step's task need is its op's multiplier x (one chunk of each input + one chunk of its output),
or what its op's function says where the need does not follow chunks (training on a sample,
reductions to one block). A step contributes at most as many tasks as it has blocks: a training
is one task, so it occupies one thread while the others stream chunks of other steps. Only the
steps that run count: an up-to-date output is read chunk by chunk by the steps after it, which
is in their input chunks, and nothing upstream of it runs.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import config
from .errors import MemoryBudgetError
from .ops.needs import RUNTIME_BYTES, RuntimeNeed, follows_chunks, task_count, task_need
from .registry import get_op

if TYPE_CHECKING:
    from .plan import Plan, PlannedStep

# Resident size of a fresh `replicalake run` process while it computes, without its tasks: Python
# with numpy, dask, xarray, zarr, matplotlib and every op module imported, the recipe compiled
# (VmRSS then: 150-160 MiB), and the worker threads started. Measured: lhc_dimuon, whose tasks
# hold KiB, peaks at 177 MiB (tests/benchmarks/bench_memory_projection.py).
BASELINE_BYTES = 176 * 2**20
# Ops registered without a memory need (third-party ops): four chunk-sized buffers per task (its
# input, its output and two temporaries), the engine's rule before ops declared their needs.
DEFAULT_MULTIPLIER = 4.0


@dataclass(frozen=True)
class StepNeed:
    """What one step that runs holds per task, and how many tasks it has."""

    step: str
    op: str
    task_bytes: int
    tasks: int
    follows_chunks: bool  # declared as a multiplier of chunk bytes: smaller chunks shrink it
    runtime: str | None  # the runtime its tasks load (RUNTIME_BYTES), if any


@dataclass(frozen=True)
class Projection:
    """The projected peak of a run on `threads` worker threads (see the module docstring)."""

    threads: int
    needs: tuple[StepNeed, ...]

    @property
    def runtime_bytes(self) -> int:
        return BASELINE_BYTES + sum(RUNTIME_BYTES[r] for r in {n.runtime for n in self.needs} - {None})

    @property
    def total_bytes(self) -> int:
        tasks = [n.task_bytes for n in self.needs for _ in range(min(self.threads, n.tasks))]
        return self.runtime_bytes + sum(heapq.nlargest(self.threads, tasks))

    def step_bytes(self, step_id: str) -> int | None:
        """The peak if this step ran alone (None for a step that does not run)."""
        need = next((n for n in self.needs if n.step == step_id), None)
        if need is None:
            return None
        runtime = RUNTIME_BYTES[need.runtime] if need.runtime else 0
        return BASELINE_BYTES + runtime + min(self.threads, need.tasks) * need.task_bytes

    @property
    def largest(self) -> StepNeed | None:
        """The step whose tasks weigh most: the one to change when the total is too much."""
        return max(self.needs, key=lambda n: min(self.threads, n.tasks) * n.task_bytes, default=None)


def project(plan: Plan, threads: int | None = None) -> Projection:
    """The projection of computing the plan's stale outputs on `threads` (default: the runner's)."""
    threads = threads or config.worker_threads()
    return Projection(threads, tuple(step_need(plan, step) for step in running_steps(plan)))


def running_steps(plan: Plan) -> list[PlannedStep]:
    """Steps a run computes: those the stale outputs depend on, stopping at sources and at
    up-to-date outputs (read from the lake, so nothing upstream of them runs), in plan order."""
    wanted: set[str] = set()
    pending = [step.id for step in plan.stale_outputs]
    while pending:
        step = plan.step(pending.pop())
        if step.id in wanted or step.op == "source" or step.read_from_store:
            continue
        wanted.add(step.id)
        pending.extend(step.inputs.values())
    return [step for step in plan.steps if step.id in wanted]


def step_need(plan: Plan, step: PlannedStep) -> StepNeed:
    """What one task of the step holds, from its op's declaration (DEFAULT_MULTIPLIER without)."""
    spec = get_op(step.op)
    inputs = {name: plan.step(ref).dataset for name, ref in step.inputs.items()}
    # the plan keeps params as JSON-ready data; a need reads them as the op's model
    params = spec.params.model_validate(step.params)
    declared = DEFAULT_MULTIPLIER if spec.memory is None else spec.memory
    return StepNeed(step.id, step.op, task_need(declared, params, inputs, step.dataset),
                    task_count(step.dataset), follows_chunks(declared),
                    declared.runtime if isinstance(declared, RuntimeNeed) else None)


def refuse_over_budget(plan: Plan, projection: Projection, budget: int) -> None:
    """Raise MemoryBudgetError naming the heaviest step and what to change, if the total is over."""
    from .plan import human_bytes

    total = projection.total_bytes
    if total <= budget or projection.largest is None:
        return
    need = projection.largest
    copies = min(projection.threads, need.tasks)
    per_task = f"{human_bytes(need.task_bytes)} per task x {copies} thread{'s' if copies > 1 else ''}"
    if need.follows_chunks:
        advice = f"give it smaller chunks: {_chunk_advice(plan, need.step)}"
    else:
        advice = ("its need follows its params and input sizes, not chunks: reduce those "
                  "(`replicalake ops` lists its params)")
    raise MemoryBudgetError(
        f"{plan.recipe.name}: projected peak memory {human_bytes(total, 2)} is above the budget of "
        f"{human_bytes(budget, 2)} (--max-memory or ${config.MAX_MEMORY_ENV}); the largest part is "
        f"step {need.step!r} ({need.op}) with {per_task}; {advice}, or raise --max-memory. "
        "Nothing was run.")


def _chunk_advice(plan: Plan, step_id: str) -> str:
    """Where the step's chunks come from: `chunks:` of the sources upstream of it, with today's."""
    sources, pending, seen = [], [step_id], set()
    while pending:
        step = plan.step(pending.pop())
        if step.id in seen:
            continue
        seen.add(step.id)
        if step.op == "source":
            sources.append(step)
        pending.extend(step.inputs.values())
    if not sources:
        return f"its chunks come from the params of the steps before {step_id!r}"
    from .plan import largest_chunks

    return "; ".join(f"set sources.{s.id}.chunks in the recipe (now "
                     + ", ".join(f"{d}: {c}" for d, c in largest_chunks(s.dataset).items()) + ")"
                     for s in sorted(sources, key=lambda s: s.id))
