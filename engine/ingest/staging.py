"""What every ingest shares: a store laid out in `.tmp/`, filled block by block, then published.

An ingest builds a lazy template dataset (final layout, nothing computed), writes pixel blocks
into it from a few threads with a progress bar, and publishes it to raw/NAME only when every block
is in; any failure removes the staged store, so the lake never shows half an ingest. Publishing is
`catalog.publish_entry`, the recorded publish a run uses too: a kill between its steps (old version
moved aside, new one moved in, catalog updated) is finished or undone by the next command.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TypeVar

import xarray as xr
import zarr

from ..catalog import editable_lake_catalog, publish_entry
from ..memory import limit_heap_fragmentation
from ..progress import make_progress
from ..storage import Lake
from ..zarr_io import settle_background_writes, write_template

log = logging.getLogger(__name__)
Result = TypeVar("Result")
Block = tuple[slice, slice]


def pixel_blocks(shape: tuple[int, int], block: tuple[int, int]) -> list[Block]:
    """(y, x) slices tiling an image of `shape` in blocks of at most `block` pixels."""
    return [(slice(y0, min(y0 + block[0], shape[0])), slice(x0, min(x0 + block[1], shape[1])))
            for y0 in range(0, shape[0], block[0]) for x0 in range(0, shape[1], block[1])]


class StagedEntry:
    """A store being written in `.tmp/` that becomes zone/NAME on `publish`.

    Why staging folders on local lakes carry a lock: a killed ingest (SIGKILL, power loss) cannot
    remove what it staged. Each staging folder has a sibling `<folder>.lock` that its ingest holds
    (flock, freed by the kernel when the process dies) from before the folder exists, so the next
    ingest of the same name can tell a leftover (lock free) from a live ingest (lock held) and
    removes only leftovers. Object-store lakes have no locks: there leftovers stay until removed
    by hand.
    """

    def __init__(self, lake: Lake, zone: str, name: str, stack: ExitStack):
        lake.new_entry_path(zone, name)  # refuse bad names and links out before anything is written
        editable_lake_catalog(lake)  # and a catalog that could not list the entry once published
        self.lake, self.zone, self.name = lake, zone, name
        self.label = f"{zone}-{name}"
        self._stack = stack  # closes the staging lock when staged_entry ends
        self._path: str | None = None

    @property
    def started(self) -> bool:
        return self._path is not None

    @property
    def path(self) -> str:
        """The staging folder, made on first use: input rejected before that touches nothing."""
        if self._path is None:
            if self.lake.is_local:
                self._remove_leftovers()
                self._path = self._claim_locked_folder()
            else:
                self._path = self.lake.new_tmp_path(self.label)
        return self._path

    def _claim_locked_folder(self) -> str:
        path = self.lake.new_tmp_path(self.label)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle = _open_lock(path)
        fcntl.flock(handle, fcntl.LOCK_EX)
        self._stack.callback(_close_and_remove, handle)
        os.makedirs(path)
        return path

    def _remove_leftovers(self) -> None:
        for path in self.lake.tmp_paths(self.label):
            with _open_lock(path) as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live ingest of the same name
                log.warning("removing %s: a killed ingest of %s/%s staged it", path, self.zone, self.name)
                self.lake.discard(path)
                Path(handle.name).unlink(missing_ok=True)  # a third ingest may have been quicker

    def layout(self, template: xr.Dataset, codecs: dict | None = None) -> zarr.Group:
        """Write the template's metadata (no data) and open the store for block writes;
        `codecs` names variables stored with another codec than the lake's (zarr_io.encoding_for)."""
        options = None if self.lake.is_local else self.lake.storage_options
        write_template(template, self.lake.url(self.path), options, merge_small_chunks=False, codecs=codecs)
        return zarr.open_group(self.lake.url(self.path), mode="r+", storage_options=options)

    def publish(self, description: str, metadata: dict) -> str:
        return publish_entry(self.lake, self.path, self.zone, self.name, description, metadata)


def _open_lock(folder: str):
    return open(f"{folder}.lock", "a")


def _close_and_remove(handle) -> None:
    """Release a staging lock once its folder is published or discarded, and remove its file."""
    Path(handle.name).unlink()
    handle.close()


@contextmanager
def staged_entry(lake: Lake, zone: str, name: str) -> Iterator[StagedEntry]:
    """Stage an entry; discard it if the block raises (published entries are left alone)."""
    limit_heap_fragmentation()
    with ExitStack() as stack:
        stage = StagedEntry(lake, zone, name, stack)
        try:
            yield stage
        except BaseException:
            if stage.started:
                settle_background_writes()
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
