"""A rich progress bar for dask's in-process schedulers.

dask.diagnostics.ProgressBar prints plain text and shows nothing for distributed clients; this
one draws a rich bar for the threaded scheduler, and `distributed_progress` covers the other case.
"""

from __future__ import annotations

from dask.callbacks import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def make_progress(console: Console | None = None, disable: bool = False) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console or Console(stderr=True),
                    disable=disable, transient=False)


class DaskProgress(Callback):
    """Advance a rich task by one per finished dask task."""

    def __init__(self, description: str = "computing", disable: bool = False):
        super().__init__()
        self.description = description
        self.disable = disable

    def _start_state(self, dsk, state):
        total = sum(len(state[key]) for key in ("ready", "waiting", "running", "finished"))
        self.progress = make_progress(disable=self.disable)
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=total)

    def _posttask(self, key, result, dsk, state, worker_id):
        self.progress.advance(self.task)

    def _finish(self, dsk, state, errored):
        self.progress.stop()
