"""Shared fixtures: a fresh lake per test, recipe files written from text, the shared data folder."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from engine import runner
from engine.storage import Lake
from engine.testing import put_in_lake, ramp_dataset, repeated_tasks

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def no_task_runs_twice(monkeypatch):
    """Every recipe run in the tests computes each task once (see engine.testing.repeated_tasks)."""
    compute = runner._compute

    def checked(writes, *args, **kwargs):
        graph = {}
        for write in writes:
            graph.update(write.__dask_graph__())
        repeated = repeated_tasks(graph)
        assert not repeated, f"tasks the run would compute more than once: {repeated}"
        return compute(writes, *args, **kwargs)

    monkeypatch.setattr(runner, "_compute", checked)


@pytest.fixture(autouse=True)
def root_logging_restored():
    """Importing prefect (engine.flows, in process) gives the root logger a console handler bound
    to the stderr pytest captured for that one test; later tests' warnings would then be written to
    a closed stream (a traceback on stderr). Each test gets the root logger back as it found it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def lake(tmp_path, monkeypatch) -> Lake:
    """An empty lake in a temp folder; also the default for code that reads the environment."""
    root = tmp_path / "lake"
    monkeypatch.setenv("REPLICALAKE_LAKE", str(root))
    monkeypatch.setenv("REPLICALAKE_CATALOGS", str(REPO / "catalogs"))
    return Lake(str(root))


@pytest.fixture
def ramp_lake(lake) -> Lake:
    """A lake holding raw/ramp: a[y, x] = 10 y + x on an 8 x 6 grid."""
    put_in_lake(lake, "ramp", ramp_dataset())
    return lake


@pytest.fixture
def write_recipe(tmp_path):
    """Write dedented YAML text to a recipe file and return its path."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED / "data"


def lake_files(lake: Lake) -> set[str]:
    """Every file under the lake root except lock files (for 'nothing was written' checks)."""
    root = Path(lake.root)
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
            and p.name != ".catalog.lock" and p.relative_to(root).parts[0] != ".locks"}
