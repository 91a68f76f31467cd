"""Code fingerprints: content tokens follow the code that computes a step, not only its inputs.

An op's `version` is bumped by hand, and forgetting it after a kernel change lets the lake call
stale results up to date. So every step's token also holds the fingerprint of its code: a hash
of the op function's module and of every module it imports, directly or through other modules,
at top level or inside a function (ops import their torch kernels lazily), absolute or relative.

What counts: each module of the op's own top-level package and of `engine` that the op's module
reaches by imports, shared infrastructure included (`storage`, `checkpoints`, `errors`, ...):
whatever the computation imports can change its results, and a list of exceptions would rot.
A plugin op thus follows its own package and the engine kernels it calls. Third-party libraries
are not hashed here. A package's `__init__` counts only when imported by name, or every op would
depend on `engine/__init__.py` and through it on the whole engine.

What does not count: whitespace, comments and docstrings. A module's code is the dump of its
syntax tree without docstrings, so reformatting or rewording recomputes nothing. The dump's
format is Python's, so a new Python minor version may recompute outputs once.

Modules are found (importlib's path finder) and parsed, never imported: a plan must not pull in
torch to fingerprint a training op. Parsing is the cost (0.55 s for the 46 files behind all 41
ops, on a busy 2-core machine), so each file's summary (digest and import statements) is kept
on disk keyed by a hash of its bytes, like `__pycache__`; a process then only reads and hashes
the files (8-13 ms for all ops). Fingerprints are also cached for the life of the process: an
edit made while it runs is seen by the next one.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import uuid
from functools import cache
from importlib.machinery import ModuleSpec, PathFinder
from importlib.util import find_spec, resolve_name
from pathlib import Path

from .config import code_cache_dir

SearchPath = tuple[str, ...] | None  # where top-level packages are looked for; None: as imports do
ImportStatement = tuple[int, str, tuple[str, ...]]  # (level, module, names); names () for `import m`

ALWAYS_FOLLOWED = "engine"
SUMMARY_FORMAT = 1  # bump when the summary's normalisation changes


@cache
def code_fingerprint(module_name: str, path: SearchPath = None) -> str:
    """Hash of the code of `module_name` and every module it imports that counts (see above)."""
    digest = hashlib.sha256()
    for name in code_modules(module_name, path):
        digest.update(f"{name}:{_summary(name, path)[0]}\n".encode())
    return digest.hexdigest()[:32]


@cache
def code_modules(module_name: str, path: SearchPath = None) -> tuple[str, ...]:
    """The modules whose code enters `module_name`'s fingerprint, sorted: it and its imports."""
    seen = {module_name}
    pending = [module_name]
    while pending:
        for name in _imports(pending.pop(), path):
            if name not in seen:
                seen.add(name)
                pending.append(name)
    return tuple(sorted(seen))


@cache
def _find(module_name: str, path: SearchPath) -> ModuleSpec | None:
    """Where a module's file is, found package by package without importing anything."""
    parent, _, _ = module_name.rpartition(".")
    if parent:
        parent_spec = _find(parent, path)
        search = parent_spec.submodule_search_locations if parent_spec else None
        return PathFinder.find_spec(module_name, search) if search else None
    if path is not None:
        return PathFinder.find_spec(module_name, list(path))
    try:  # a top-level name: its spec when imported, else the import system's finders' answer
        return find_spec(module_name)
    except ValueError:  # a module without a spec (`__main__` of an interactive session)
        return None


def _source_file(module_name: str, path: SearchPath) -> Path | None:
    spec = _find(module_name, path)
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    return origin if origin is not None and origin.suffix == ".py" and origin.is_file() else None


@cache
def _imports(module_name: str, path: SearchPath) -> frozenset[str]:
    """Absolute names of the modules of its own top-level package and of `engine` that
    `module_name` imports anywhere in its code.

    `from package import name` imports the submodule `package.name` when there is one, else
    takes `name` from `package` itself.
    """
    spec = _find(module_name, path)
    is_package = spec is not None and spec.submodule_search_locations is not None
    package = module_name if is_package else module_name.rpartition(".")[0]
    followed = {module_name.partition(".")[0], ALWAYS_FOLLOWED}
    names: set[str] = set()
    for level, module, imported in _summary(module_name, path)[1]:
        base = resolve_name("." * level + module, package) if level else module
        if base.partition(".")[0] not in followed:
            continue
        names.update(f"{base}.{name}" if _source_file(f"{base}.{name}", path) else base
                     for name in imported)
        if not imported:
            names.add(base)
    return frozenset(names)


@cache
def _summary(module_name: str, path: SearchPath) -> tuple[str, tuple[ImportStatement, ...]]:
    """(digest of the normalised code, import statements) of a module; ("", ()) without source."""
    source = _source_file(module_name, path)
    if source is None:
        return "", ()
    data = source.read_bytes()
    stored = code_cache_dir() / f"{sys.implementation.cache_tag}-{SUMMARY_FORMAT}" / \
        f"{hashlib.sha256(data).hexdigest()}.json"
    try:
        digest, statements = json.loads(stored.read_text())
        return digest, tuple((level, module, tuple(names)) for level, module, names in statements)
    except (OSError, ValueError):
        summary = _summarise(data, str(source))
    try:
        stored.parent.mkdir(parents=True, exist_ok=True)
        partial = stored.with_suffix(f".{uuid.uuid4().hex}.tmp")
        partial.write_text(json.dumps(summary))
        partial.replace(stored)  # readers see the whole summary or none
    except OSError:
        pass  # a read-only home: fingerprints still work, each process parses again
    return summary


def _summarise(data: bytes, filename: str) -> tuple[str, tuple[ImportStatement, ...]]:
    """Parse source: the digest of its syntax tree without docstrings, and its imports."""
    tree = ast.parse(data, filename)
    statements: list[ImportStatement] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                del node.body[0]
        elif isinstance(node, ast.Import):
            statements += [(0, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            statements.append((node.level, node.module or "",
                               tuple(alias.name for alias in node.names)))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest(), tuple(statements)
