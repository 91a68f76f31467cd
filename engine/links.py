"""Symbolic links that lead out of a local lake, found before anything is written through one.

Why: a zone, `.tmp/` or `.locks/` that is a link to a folder elsewhere makes publishes, staging
and locks land outside the lake, where its catalog, manifests and locks do not reach and where a
person cleaning "the lake" will not look. Links that stay inside the lake's real root are fine,
and so is a lake root that is itself a link (`storage -> /data/lake`): what counts is whether
the real path of what is written lies inside the real path of the root.
"""

from __future__ import annotations

import os

from .errors import LakeError


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def link_out_of(root: str, path: str) -> tuple[str, str] | None:
    """(link, its real target) of the first link between `root` and `path` that leads out of the
    root, or None when the real path of `path` (existing or not) lies inside the root's."""
    real_root = os.path.realpath(root)
    if _inside(os.path.realpath(path), real_root):
        return None
    current = root
    for part in os.path.relpath(path, root).split(os.sep):
        current = os.path.join(current, part)
        if os.path.islink(current) and not _inside(os.path.realpath(current), real_root):
            return current, os.path.realpath(current)
    return path, os.path.realpath(path)  # `path` does not lie under `root` at all


def refuse_link_out(root: str, path: str) -> str:
    """Return `path`, or raise LakeError naming the link through which writing it would leave `root`."""
    found = link_out_of(root, path)
    if found is None:
        return path
    link, target = found
    raise LakeError(
        f"the lake {root!r} holds a symbolic link {os.path.relpath(link, root)!r} to {target}, outside "
        f"the lake root; refusing to write {os.path.relpath(path, root)!r} through it (expected every "
        "folder the lake writes to inside its root: replace the link with a folder, or use the "
        "linked folder's own lake with --lake)")


def links_out(root: str) -> list[tuple[str, str]]:
    """Every link under `root` whose real target lies outside the root's real path: (link, target),
    with the link relative to the root. Links are reported, never followed (os.walk does not)."""
    real_root = os.path.realpath(root)
    found = []
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(folder, name)
            if os.path.islink(path) and not _inside(os.path.realpath(path), real_root):
                found.append((os.path.relpath(path, root), os.path.realpath(path)))
    return found
