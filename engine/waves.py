"""Split a run's stale outputs into waves, so memory stays bounded by chunks across a chain.

Computed in one dask graph, a chain such as align -> clusters -> ZLP model -> subtraction holds
every chunk of the aligned image from the moment the clustering reads it until the subtraction,
many steps later, has read it too: the whole image sits in memory (2.06 GiB against 0.70 GiB
at 1.6e5 spectra, tests/benchmarks/bench_eels_chain.py). A run therefore computes its stale
outputs in waves: wave 1 holds the outputs that need no other stale output; each later wave holds
those whose stale upstream outputs are all in earlier waves. A wave is one dask call (steps its
outputs share run once); between waves the runner compiles the recipe again reading the outputs
already computed from their staging stores, so the next wave reads them chunk by chunk and
recomputes any cheap shared intermediate (the aligned image) streaming, instead of keeping it.
Nothing is published until the last wave is written: a run is still all or nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import Plan


def output_waves(plan: Plan) -> list[list[str]]:
    """The ids of the plan's stale outputs, wave by wave, each wave in plan order."""
    depth: dict[str, int] = {}
    for step in plan.stale_outputs:  # plan order is topological: upstream depths are known
        depth[step.id] = 1 + max((depth[up] for up in stale_outputs_upstream(plan, step.id)), default=0)
    return [[step_id for step_id, d in depth.items() if d == wave]
            for wave in range(1, max(depth.values(), default=0) + 1)]


def stale_outputs_upstream(plan: Plan, step_id: str) -> set[str]:
    """Stale outputs whose data the step's graph reads, through intermediates; the walk stops at
    sources and at outputs read from a store (up to date, or staged by this run's earlier waves:
    nothing upstream of them runs)."""
    found: set[str] = set()
    seen: set[str] = set()
    pending = list(plan.step(step_id).inputs.values())
    while pending:
        step = plan.step(pending.pop())
        if step.id in seen or step.op == "source" or step.read_from_store:
            continue
        seen.add(step.id)
        if step.output is not None:
            found.add(step.id)
        pending.extend(step.inputs.values())
    return found
