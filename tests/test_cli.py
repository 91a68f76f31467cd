"""The `replicalake` command: exit codes, messages, JSON output (run in-process through main())."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine import cli
from tests.conftest import REPO, lake_files
from tests.test_graph import RECIPE


def replicalake(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["replicalake", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_validate_plan_run_and_rerun(ramp_lake, write_recipe, monkeypatch, capsys):
    recipe = write_recipe(RECIPE)
    code, out, _ = replicalake(monkeypatch, capsys, "validate", recipe)
    assert code == 0 and "ok" in out and "1 outputs (1 to compute)" in out
    code, out, _ = replicalake(monkeypatch, capsys, "plan", recipe, "--json")
    rows = json.loads(out)["steps"]
    assert code == 0 and rows[-1]["status"] == "to compute (missing output)"
    code, out, _ = replicalake(monkeypatch, capsys, "run", recipe, "--json")
    assert code == 0 and json.loads(out)["outputs"][0]["status"] == "computed"
    code, out, _ = replicalake(monkeypatch, capsys, "run", recipe, "--no-progress")
    assert code == 0 and "nothing to compute: every output is up to date" in out
    code, out, _ = replicalake(monkeypatch, capsys, "plan", recipe)
    assert "up to date" in out


def test_errors_exit_nonzero_with_file_line_and_key(ramp_lake, write_recipe, monkeypatch, capsys):
    recipe = write_recipe(RECIPE.replace("op: core.sum", "op: core.summ"))
    before = lake_files(ramp_lake)
    for command in ("validate", "plan", "run"):
        code, _, err = replicalake(monkeypatch, capsys, command, recipe)
        assert code == 1
        assert "recipe.yaml:11: steps[1].op: unknown op 'core.summ'" in err.replace("\n", " ")
    assert lake_files(ramp_lake) == before


def test_lake_option_overrides_environment(ramp_lake, write_recipe, tmp_path, monkeypatch, capsys):
    other = tmp_path / "other-lake"
    code, _, err = replicalake(monkeypatch, capsys, "validate", write_recipe(RECIPE), "--lake", other)
    assert code == 1 and "no entry 'raw/ramp'" in err


def test_ops_lists_params_and_docs(monkeypatch, capsys):
    code, out, _ = replicalake(monkeypatch, capsys, "ops", "--json")
    ops = {op["name"]: op for op in json.loads(out)}
    assert code == 0 and {"core.select", "core.sum", "core.mean", "core.rechunk"} <= set(ops)
    assert "dims" in ops["core.sum"]["params"]["properties"] and ops["core.sum"]["doc"]
    code, out, _ = replicalake(monkeypatch, capsys, "ops")
    assert "core.rechunk" in out and "chunks" in out


def test_schema_and_catalog_listing(ramp_lake, tmp_path, monkeypatch, capsys):
    target = tmp_path / "schema.json"
    code, _, _ = replicalake(monkeypatch, capsys, "schema", "--output", target)
    assert code == 0 and json.loads(target.read_text())["title"] == "ReplicaLake recipe"
    code, out, _ = replicalake(monkeypatch, capsys, "catalog", "list", "--json")
    assert code == 0 and "raw/ramp" in json.loads(out)
    code, out, _ = replicalake(monkeypatch, capsys, "catalog", "list", "eels", "--json")
    assert "synthetic_demo" in json.loads(out)


def test_console_script_is_installed(ramp_lake, write_recipe):
    """The real entry point, in a subprocess: exit code 1 and the message on stderr."""
    result = subprocess.run([sys.executable, "-m", "engine", "validate",
                             str(write_recipe(RECIPE.replace("raw/ramp", "raw/nope")))],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "no entry 'raw/nope'" in result.stderr


@pytest.mark.parametrize("args", [["ingest", "synthetic-eels", "x", "--shape", "4", "4", "8"],
                                  ["ingest", "synthetic-eels", "x", "--chunks", "0", "4"]])
def test_bad_ingest_requests(lake, monkeypatch, capsys, args):
    code, _, err = replicalake(monkeypatch, capsys, *args)
    assert code == 1 and "error:" in err
    assert lake_files(lake) == set()


def test_demo_ingests_and_maps_thickness(lake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo must not depend on the working directory
    code, out, _ = replicalake(monkeypatch, capsys, "demo", "--shape", "24", "20", "512")
    assert code == 0 and "derived/eels-thickness/thickness" in out and "computed" in out
    assert lake.exists("raw", "eels_demo") and lake.exists("derived", "eels-thickness/thickness")
    code, out, _ = replicalake(monkeypatch, capsys, "demo")
    assert code == 0 and "nothing to compute" in out


@pytest.mark.parametrize("package, argv, extra", [
    ("uproot", ["ingest", "root", "missing.root", "x", "--tree", "t"], "lhc"),
    ("s3fs", ["validate", "recipes/eels_thickness.yaml", "--lake", "s3://bucket/lake"], "cloud"),
])
def test_a_missing_extra_names_the_install_command(package, argv, extra):
    code = (f"import sys; sys.modules[{package!r}] = None; sys.argv = ['replicalake', *{argv!r}]; "
            "from engine.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert f"pip install 'replicalake[{extra}]'" in " ".join(done.stderr.split()), done.stderr
