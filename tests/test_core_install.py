"""The core install (`pip install -e .`, the quick start's) must import every module the demo needs.

Optional packages belong to extras (pyproject.toml); a top-level import of one in an op module
would break `replicalake demo` on a core install. The test hides every extra's packages.
"""

from __future__ import annotations

import subprocess
import sys

from engine.cli import EXTRA_OF_PACKAGE
from tests.conftest import REPO

HIDDEN = sorted({*EXTRA_OF_PACKAGE, "tables", "moto", "skhep_testdata"})

PROGRAM = f"""
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {HIDDEN!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hide())
import engine.cli, engine.ops
from engine.registry import list_ops
print(len(list_ops()))
"""


def test_engine_and_every_op_import_without_the_extras():
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 30
