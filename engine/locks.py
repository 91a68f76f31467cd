"""Locks between processes: one writer per lake entry, readers pin what they read, one catalog writer.

A run holds an exclusive lock on each output it computes and a shared lock on each lake entry it
reads; publishing an entry (ingest or run) takes its exclusive lock. So an entry is never
replaced while a run reads its chunks: the re-ingest waits for the run (reads are pinned).

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

import errno
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from .config import checked_lock_timeout
from .errors import ReplicaLakeError
from .storage import Lake

LOCK_DIR = ".locks"
POLL_SECONDS = 0.2
log = logging.getLogger(__name__)
_LOCAL = threading.local()


class LockError(ReplicaLakeError, TimeoutError):
    """Another run held an output's lock for longer than this run was willing to wait."""


def lock_path(lake: Lake, key: str) -> Path:
    return Path(lake.writable(lake.path(LOCK_DIR, key.replace("/", "__") + ".lock")))


def is_held(path: Path) -> bool:
    """Whether a live process holds the lock file `path` exclusively (a writer), asked without
    creating the file or waiting: for reports that must change nothing (`replicalake doctor`)."""
    import fcntl

    try:
        handle = open(path)
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _holder_text(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:  # exclusive holders write their names, readers do not
        return "read by another run"
    text = (f"written by pid {holder.get('pid')} on host {holder.get('host')} "
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
def file_lock(lake: Lake, key: str, purpose: str, timeout: float | None = None,
              shared: bool = False) -> Iterator[None]:
    """Hold the lock `key` of a local lake; wait up to `timeout` seconds (None: forever).

    Exclusive for writers; `shared` for runs reading an entry, so it is not republished under
    them (readers do not write their names: many hold the lock at once). Raises LockError
    naming the holder when the wait runs out.
    """
    import fcntl

    path = lock_path(lake, key)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    handle = _open_lock_file(path, shared)
    if handle is None:  # a reader on a lake it may not write: see _open_lock_file
        yield
        return
    with handle:
        deadline = None if timeout is None else time.monotonic() + timeout
        warned = False
        while True:
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockError(f"{key} is being {_holder_text(path)}; gave up after "
                                    f"{timeout:g} s (--lock-timeout); run again when it is done"
                                    ) from None
                if not warned:
                    log.warning("waiting for %s: it is being %s", key, _holder_text(path))
                    warned = True
                time.sleep(POLL_SECONDS)
        _held().add(key)
        try:
            if not shared:
                _write_holder(handle, purpose)
            yield
        finally:
            _held().discard(key)
            if not shared:
                _write_holder(handle, None)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_lock_file(path: Path, shared: bool):
    """The lock file, opened for flock; None for a reader on a lake it cannot write without one.

    flock needs no write access, so a reader (shared) on a read-only lake, or one whose lock
    folder it may not write, opens the lock file read-only; only where no lock file exists and
    none can be made does it read unlocked (a writer cannot create one there either, unless it
    writes through another mount).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+")
    except OSError as exc:
        if not shared or exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
    try:
        return open(path)
    except FileNotFoundError:
        log.debug("reading %s unlocked: %s cannot be created", path.stem, path)
        return None


def _write_holder(handle, purpose: str | None) -> None:
    handle.seek(0)
    handle.truncate()
    if purpose is not None:
        handle.write(json.dumps({"pid": os.getpid(), "host": platform.node(), "recipe": purpose,
                                 "since": datetime.now(UTC).isoformat(timespec="seconds")}))
    handle.flush()


def _held() -> set[str]:
    """Keys this thread holds: taking one again (publish inside a run) must not wait on itself."""
    if not hasattr(_LOCAL, "held"):
        _LOCAL.held = set()
    return _LOCAL.held


@contextmanager
def output_locks(lake: Lake, keys: list[str], purpose: str, timeout: float | None = None,
                 reads: list[str] = ()) -> Iterator[None]:
    """Hold exclusive locks on the entries `keys` and shared locks on the entries `reads`.

    All are taken in one sorted order (so two runs, each reading what the other writes, cannot
    deadlock); keys this thread holds already are skipped (a run's publish inside its lock).
    """
    timeout = checked_lock_timeout(timeout)  # a NaN deadline never passes: it waited forever
    shared = {key: True for key in reads}
    shared.update({key: False for key in keys})
    with ExitStack() as stack:
        if lake.is_local:
            for key in sorted(set(shared) - _held()):
                stack.enter_context(file_lock(lake, key, purpose, timeout, shared[key]))
        yield


def catalog_lock(lake: Lake):
    """The lock serialising read-modify-write of the lake catalog (waits as long as needed)."""
    return output_locks(lake, ["catalog"], "catalog update")
