"""`import engine` stays light: a CPU user without torch, cupy or prefect can validate and plan."""

from __future__ import annotations

import subprocess
import sys


def test_engine_and_its_ops_import_neither_torch_nor_cupy_nor_prefect():
    code = ("import sys, engine, engine.cli, engine.runner; from engine.registry import list_ops; "
            "list_ops(); heavy = {'torch', 'cupy', 'prefect'} & set(sys.modules); "
            "print(sorted(heavy)); sys.exit(bool(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
