"""One exception hierarchy for everything a user can get wrong.

Each error also subclasses the builtin a Python caller would expect (KeyError for an unknown
name, ValueError for a bad value, FileNotFoundError for a missing file), so library users can
catch either. Messages name the file, line and key, what was expected and what was found,
because the person reading them is editing a YAML file, not a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file: where it is and what is wrong."""

    message: str
    file: str | None = None
    line: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = self.file or "<recipe>"
        if self.line is not None:
            where += f":{self.line}"
        if self.key:
            where += f": {self.key}"
        return f"{where}: {self.message}"


class ReplicaLakeError(Exception):
    """Base of every error the engine raises on purpose; the CLI turns these into exit code 1."""

    def __str__(self) -> str:  # KeyError quotes its message; keep ours readable.
        return str(self.args[0]) if self.args else ""


class ProblemsError(ReplicaLakeError):
    """An error that carries every problem found in one phase, so users fix them all at once."""

    def __init__(self, problems: list[Problem], phase: str):
        self.problems = list(problems)
        self.phase = phase
        count = len(self.problems)
        header = f"{count} problem{'s' if count != 1 else ''} found while checking {phase}:"
        super().__init__("\n".join([header, *("  " + str(p) for p in self.problems)]))


class RecipeError(ProblemsError, ValueError):
    """A recipe is not valid: structure, references, params, sources or op checks."""


class CatalogError(ProblemsError, ValueError):
    """A catalog file is malformed or does not name what a recipe asks for."""


class UnknownOpError(ReplicaLakeError, KeyError):
    """An op name is not in the registry."""


class OpError(ReplicaLakeError, ValueError):
    """An op was given inputs it cannot work on (wrong dims, units, ranges)."""


class IngestError(ReplicaLakeError, ValueError):
    """A foreign file or generator request could not be turned into a lake entry."""


class RunError(ReplicaLakeError, RuntimeError):
    """Computing a plan failed (bad data found at run time, a kernel refused its input)."""


class MemoryBudgetError(RunError):
    """A plan's projected peak memory is above the budget (--max-memory); nothing was run."""


class ConfigError(ReplicaLakeError, ValueError):
    """A setting (command-line option or environment variable) has a value the engine cannot use."""


class LakeError(ReplicaLakeError, OSError):
    """The lake is missing something, or a path would leave the lake root."""


class OutputConflictError(ReplicaLakeError, FileExistsError):
    """A run would publish over an output another recipe made (refused unless asked to replace)."""


class UnknownEntryError(ReplicaLakeError, KeyError):
    """A lake entry name that the lake catalog does not list."""


class SchedulerError(ReplicaLakeError, ConnectionError):
    """The dask.distributed scheduler a run was pointed at (--scheduler) cannot be reached."""
