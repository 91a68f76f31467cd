"""The Plan: a compiled recipe's lazy graph plus what a person wants to see before running it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xarray as xr

from .recipe import LoadedRecipe, Output, Recipe
from .waves import output_waves

if TYPE_CHECKING:
    from .projection import Projection
    from .storage import Lake


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
    code: str = ""  # fingerprint of the op's code (engine/fingerprint.py)
    # Why a stale output must be computed: "missing output", "new input", "params changed",
    # "code changed" or several of them, comma-separated, or "damaged output: <what>" (its token
    # is current but its store is incomplete or lost its manifest), or "forced" (`--force` named
    # it or a step upstream of it); "" for everything else.
    stale_reason: str = ""
    forced: bool = False  # recomputed on request even where its token is in the lake (--force)
    # computed by the running run into its staging store, read from there by its later waves
    # (engine/runner.py); still stale until the run publishes it
    staged: bool = False

    @property
    def read_from_store(self) -> bool:
        """Its data is read from a zarr store (an up-to-date output, or one this run staged), so
        nothing upstream of it runs."""
        return self.output is not None and (self.up_to_date or self.staged)

    @property
    def nbytes(self) -> int:
        return int(self.dataset.nbytes)

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
    # `params=` the Python API merged into the recipe (engine/api.py); recorded in provenance
    overrides: dict[str, Any] | None = None
    # what it was compiled from, so a run can compile it again for each later wave, reading the
    # outputs of earlier waves from their staging stores (engine/runner.py, engine/waves.py)
    loaded: LoadedRecipe | None = None
    catalogs: str | Path | None = None

    def step(self, step_id: str) -> PlannedStep:
        return next(s for s in self.steps if s.id == step_id)

    @property
    def outputs(self) -> list[PlannedStep]:
        return [s for s in self.steps if s.output is not None]

    @property
    def stale_outputs(self) -> list[PlannedStep]:
        return [s for s in self.outputs if not s.up_to_date]

    def projection(self, threads: int | None = None) -> Projection:
        """Projected peak memory of running this plan (engine/projection.py)."""
        from .projection import project

        return project(self, threads)

    def rows(self, projection: Projection | None = None) -> list[dict[str, Any]]:
        """One plain-data row per step (what `plan` prints and `plan --json` returns).

        `projected_peak_bytes` is the peak if that step ran alone, None for a step that does
        not run (a source, an up-to-date output and what only it needs). `wave`: for an output to
        compute, the wave of the run that computes it (engine/waves.py).
        """
        projection = projection or self.projection()
        wave_of = {step_id: number for number, wave in enumerate(output_waves(self), start=1)
                   for step_id in wave}
        rows = []
        for step in self.steps:
            ds = step.dataset
            chunks = largest_chunks(ds)
            rows.append({
                "id": step.id, "op": step.op,
                "status": step.status + (f" ({step.stale_reason})" if step.stale_reason else ""),
                "why": step.stale_reason,
                "dims": {str(d): int(n) for d, n in ds.sizes.items()},
                "chunks": chunks, "bytes": step.nbytes,
                "projected_peak_bytes": projection.step_bytes(step.id),
                "output": f"{step.zone}/{step.name}" if step.output else None,
                # the run's wave computing it (engine/waves.py); None: not computed
                "wave": wave_of.get(step.id),
                "token": step.token,
            })
        return rows

    def __repr__(self) -> str:  # (the dataclass's would print every lazy dataset)
        return (f"<Plan of {self.recipe.name!r}: {len(self.steps)} steps, {len(self.stale_outputs)} of "
                f"{len(self.outputs)} outputs to compute>")

    def _repr_html_(self) -> str:
        """The plan as a notebook shows it: each step's status and why, sizes and projected peak."""
        from html import escape

        projection = self.projection()
        head = ("step", "op", "status", "why", "dims", "chunks", "size", "est. peak", "output")
        body = []
        for row in self.rows(projection):
            peak = row["projected_peak_bytes"]
            cells = (row["id"], row["op"], row["status"].split(" (")[0], row["why"] or "",
                     _sizes(row["dims"]), _sizes(row["chunks"]), human_bytes(row["bytes"]),
                     "-" if peak is None else human_bytes(peak), row["output"] or "")
            body.append("<tr>" + "".join(f"<td style='text-align:left'>{escape(str(c))}</td>"
                                         for c in cells) + "</tr>")
        title = (f"<b>plan of {escape(self.recipe.name)}</b> ({escape(str(self.path))}): "
                 f"{len(self.stale_outputs)} of {len(self.outputs)} outputs to compute; projected peak "
                 f"of the run {human_bytes(projection.total_bytes)} on {projection.threads} threads")
        return (f"<div>{title}<table><thead><tr>"
                + "".join(f"<th style='text-align:left'>{h}</th>" for h in head)
                + "</tr></thead><tbody>" + "".join(body) + "</tbody></table></div>")


def largest_chunks(dataset: xr.Dataset) -> dict[str, int]:
    """The largest chunk along each dim over all variables. `Dataset.chunks` raises where variables
    are chunked differently along a dim, which a published output may well be (each variable keeps
    its own zarr chunks: a per-pixel map beside a per-pixel spectrum), so read every variable."""
    largest: dict[str, int] = {}
    for var in dataset.variables.values():
        if var.chunks is None:  # in memory (a coordinate): not chunked
            continue
        for dim, sizes in zip(var.dims, var.chunks, strict=True):
            largest[str(dim)] = max(largest.get(str(dim), 0), *sizes)
    return largest


def _sizes(sizes: dict[str, int]) -> str:
    return " ".join(f"{d}:{n}" for d, n in sizes.items()) or "-"


def human_bytes(count: float, digits: int = 1) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.{digits}f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")
