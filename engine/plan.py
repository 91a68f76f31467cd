"""The Plan: a compiled recipe's lazy graph plus what a person wants to see before running it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import xarray as xr

from .recipe import Output, Recipe

if TYPE_CHECKING:
    from .storage import Lake

# Resident size of a Python process with numpy, dask, xarray and zarr imported (measured ~200 MB)
# plus slack for zarr codecs' buffers; the base of every peak-memory projection.
BASELINE_BYTES = 300 * 2**20
# Buffers alive per worker thread per chunk: the input chunk, the op's output and temporaries.
BUFFERS_PER_THREAD = 4


@dataclass
class PlannedStep:
    """A source or step of the plan, with its lazy dataset and content token."""

    id: str
    op: str
    dataset: xr.Dataset
    token: str
    inputs: dict[str, str]
    params: dict[str, Any]
    output: Output | None = None
    zone: str | None = None
    name: str | None = None
    up_to_date: bool = False
    op_version: str = "1"

    @property
    def nbytes(self) -> int:
        return int(self.dataset.nbytes)

    @property
    def chunk_bytes(self) -> int:
        """Bytes of the largest chunk of any variable (its whole size when not chunked)."""
        largest = 0
        for var in self.dataset.variables.values():
            if var.chunks:
                size = math.prod(max(c) if c else 1 for c in var.chunks) * var.dtype.itemsize
            else:
                size = var.nbytes
            largest = max(largest, size)
        return largest

    @property
    def status(self) -> str:
        if self.op == "source":
            return "source"
        if self.output is None:
            return "intermediate"
        return "up to date" if self.up_to_date else "to compute"


@dataclass
class Plan:
    recipe: Recipe
    path: str
    recipe_hash: str
    lake: Lake
    steps: list[PlannedStep] = field(default_factory=list)

    def step(self, step_id: str) -> PlannedStep:
        return next(s for s in self.steps if s.id == step_id)

    @property
    def outputs(self) -> list[PlannedStep]:
        return [s for s in self.steps if s.output is not None]

    @property
    def stale_outputs(self) -> list[PlannedStep]:
        return [s for s in self.outputs if not s.up_to_date]

    def lineage_chunk_bytes(self, step_id: str) -> int:
        """Largest chunk among a step and everything upstream of it."""
        step = self.step(step_id)
        return max([step.chunk_bytes] + [self.lineage_chunk_bytes(ref) for ref in step.inputs.values()])

    def projected_peak_bytes(self, step_id: str, threads: int | None = None) -> int:
        """Rough resident-memory peak while computing a step: chunks per thread, not data size."""
        threads = threads or os.cpu_count() or 1
        return BASELINE_BYTES + threads * BUFFERS_PER_THREAD * self.lineage_chunk_bytes(step_id)

    def rows(self) -> list[dict[str, Any]]:
        """One plain-data row per step (what `plan` prints and `plan --json` returns)."""
        rows = []
        for step in self.steps:
            ds = step.dataset
            chunks = {str(d): max(c) for d, c in ds.chunks.items()} if ds.chunks else {}
            rows.append({
                "id": step.id, "op": step.op, "status": step.status,
                "dims": {str(d): int(n) for d, n in ds.sizes.items()},
                "chunks": chunks, "bytes": step.nbytes,
                "projected_peak_bytes": self.projected_peak_bytes(step.id),
                "output": f"{step.zone}/{step.name}" if step.output else None,
                "token": step.token,
            })
        return rows


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")
