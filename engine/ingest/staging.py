"""What every ingest shares: a store laid out in `.tmp/`, filled block by block, then published.

An ingest builds a lazy template dataset (final layout, nothing computed), writes pixel blocks
into it from a few threads with a progress bar, and publishes it to raw/NAME only when every block
is in; any failure removes the staged store, so the lake never shows half an ingest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import xarray as xr
import zarr

from ..catalog import publish_entry
from ..locks import output_locks
from ..memory import limit_heap_fragmentation
from ..progress import make_progress
from ..storage import Lake
from ..zarr_io import write_template

log = logging.getLogger(__name__)
Result = TypeVar("Result")
Block = tuple[slice, slice]


def pixel_blocks(shape: tuple[int, int], block: tuple[int, int]) -> list[Block]:
    """(y, x) slices tiling an image of `shape` in blocks of at most `block` pixels."""
    return [(slice(y0, min(y0 + block[0], shape[0])), slice(x0, min(x0 + block[1], shape[1])))
            for y0 in range(0, shape[0], block[0]) for x0 in range(0, shape[1], block[1])]


class StagedEntry:
    """A store being written in `.tmp/` that becomes zone/NAME on `publish`."""

    def __init__(self, lake: Lake, zone: str, name: str):
        lake.entry_path(zone, name)  # refuse bad names before anything is written
        self.lake, self.zone, self.name = lake, zone, name
        self.path = lake.new_tmp_path(f"{zone}-{name}")  # staged_entry finds leftovers by this label

    def layout(self, template: xr.Dataset) -> zarr.Group:
        """Write the template's metadata (no data) and open the store for block writes."""
        options = None if self.lake.is_local else self.lake.storage_options
        write_template(template, self.lake.url(self.path), options, merge_small_chunks=False)
        return zarr.open_group(self.lake.url(self.path), mode="r+", storage_options=options)

    def publish(self, description: str, metadata: dict) -> str:
        return publish_entry(self.lake, self.path, self.zone, self.name, description, metadata)


@contextmanager
def staged_entry(lake: Lake, zone: str, name: str) -> Iterator[StagedEntry]:
    """Stage an entry; discard it if the block raises (published entries are left alone).

    On a local lake the staging lock of zone/NAME is held throughout: a second ingest of the same
    name waits for the first, so a staged store of that name found under .tmp/ is what a killed
    ingest (SIGKILL, power loss) left, and is removed before staging anew. Object-store lakes
    have no locks, so there such leftovers stay until removed by hand.
    """
    limit_heap_fragmentation()
    label = f"{zone}-{name}"
    with output_locks(lake, [f"staging/{zone}/{name}"], f"ingest of {zone}/{name}"):
        if lake.is_local:
            for leftover in lake.tmp_paths(label):
                log.warning("removing %s: a killed ingest of %s/%s staged it", leftover, zone, name)
                lake.discard(leftover)
        stage = StagedEntry(lake, zone, name)
        try:
            yield stage
        except BaseException:
            lake.discard(stage.path)
            raise


def write_blocks(blocks: list[Block], write: Callable[[Block], Result], label: str,
                 progress: bool = True, threads: int | None = None) -> list[Result]:
    """Run `write` on every block from a few threads, with a progress bar; results in order.

    The pool is shut down (waiting) before returning or raising, so no block is still being
    written when a failed ingest removes its staged store.
    """
    pool = ThreadPoolExecutor(threads or os.cpu_count() or 1)
    results = []
    try:
        with make_progress(disable=not progress) as bar:
            task = bar.add_task(label, total=len(blocks))
            for result in pool.map(write, blocks):
                results.append(result)
                bar.advance(task)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results
