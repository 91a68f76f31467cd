"""Locks between processes: one writer per lake output, one writer of the lake catalog.

Local lakes use `flock` on a file under `<lake>/.locks/`: the kernel drops the lock when its
holder dies (even by SIGKILL), so a crashed run never leaves a lock behind, and the holder's PID,
host, recipe and start time written into the file let a waiting run say who it waits for (and
say so when that PID is gone: a lock held by a dead PID means a child process inherited it).
flock also works on NFS v4 (the kernel maps it to byte-range locks).

Object-store lakes (s3://, gs://) have no lock primitive: there `output_locks` does nothing and
the lake relies on publish being a move of a complete store, so readers still never see a half
written output, but two runs of the same recipe at once both compute it (last publish wins,
identical content). Run one writer per output there (e.g. one scheduled deployment).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from .errors import ReplicaLakeError
from .storage import Lake

LOCK_DIR = ".locks"
POLL_SECONDS = 0.2
log = logging.getLogger(__name__)


class LockError(ReplicaLakeError, TimeoutError):
    """Another run held an output's lock for longer than this run was willing to wait."""


def lock_path(lake: Lake, key: str) -> Path:
    return Path(lake.root) / LOCK_DIR / (key.replace("/", "__") + ".lock")


def _holder_text(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "another process"
    text = (f"pid {holder.get('pid')} on host {holder.get('host')} "
            f"(recipe {holder.get('recipe')!r}, since {holder.get('since')})")
    if holder.get("host") == platform.node() and not _pid_alive(int(holder.get("pid", 0))):
        text += "; that pid has exited, so a child process it started still holds the lock"
    return text


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


@contextmanager
def file_lock(lake: Lake, key: str, purpose: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the lock `key` of a local lake; wait up to `timeout` seconds (None: forever).

    Raises LockError naming the holder when the wait runs out.
    """
    import fcntl

    path = lock_path(lake, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = None if timeout is None else time.monotonic() + timeout
        warned = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockError(f"{key} is being written by {_holder_text(path)}; gave up after "
                                    f"{timeout:g} s (--lock-timeout); run again when it is done"
                                    ) from None
                if not warned:
                    log.warning("waiting for %s: it is being written by %s", key, _holder_text(path))
                    warned = True
                time.sleep(POLL_SECONDS)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": platform.node(), "recipe": purpose,
                                     "since": datetime.now(UTC).isoformat(timespec="seconds")}))
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def output_locks(lake: Lake, keys: list[str], purpose: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the locks of several outputs (taken in sorted order, so two runs cannot deadlock)."""
    with ExitStack() as stack:
        if lake.is_local:
            for key in sorted(set(keys)):
                stack.enter_context(file_lock(lake, key, purpose, timeout))
        yield


def catalog_lock(lake: Lake):
    """The lock serialising read-modify-write of the lake catalog (waits as long as needed)."""
    return output_locks(lake, ["catalog"], "catalog update")
