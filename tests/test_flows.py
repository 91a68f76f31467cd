"""Prefect flows without a server: the stages, the retry rule, the reports, schedules and the
refusals; and one real `run --prefect` on an ephemeral local API, in a subprocess.

Prefect never sees the user's profile here: subprocesses get an environment with a temporary
PREFECT_HOME and no PREFECT_* variables from outside, and in-process code runs inside
`prefect_settings`, which does the same for the environment and for Prefect's settings object
(read once when Prefect is imported, so the environment alone is not enough).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.errors import LakeError, RecipeError
from engine.recipe import load_recipe
from tests.conftest import REPO, lake_files
from tests.test_cli import replicalake
from tests.test_graph import RECIPE

PLOTTED = RECIPE.replace("total: {zone: derived}",
                         "total: {zone: derived, plots: [{variable: a, kind: line}]}")
# How long a subprocess may take before the test calls it a hang (an ephemeral API start
# included; a healthy run needs about 15 s on 2 cores).
SUBPROCESS_TIMEOUT_S = 180


def prefect_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess whose Prefect sees only `home` (no outside PREFECT_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_PROFILES_PATH=str(home / "profiles.toml"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", **extra)
    return env


@contextmanager
def prefect_settings(monkeypatch, home: Path, api_url: str | None = None):
    """Point in-process Prefect at `home` and `api_url` (None: no API); yields engine.flows."""
    for name in [k for k in os.environ if k.startswith("PREFECT_")]:
        monkeypatch.delenv(name)
    for name, value in prefect_env(home).items():
        if name.startswith("PREFECT_"):
            monkeypatch.setenv(name, value)
    if api_url:
        monkeypatch.setenv("PREFECT_API_URL", api_url)
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_PROFILES_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    from engine import flows

    updates = {PREFECT_HOME: home, PREFECT_PROFILES_PATH: home / "profiles.toml",
               PREFECT_SERVER_ANALYTICS_ENABLED: False}
    if api_url:
        updates[PREFECT_API_URL] = api_url
    with temporary_settings(updates=updates, restore_defaults=() if api_url else {PREFECT_API_URL}):
        yield flows


@pytest.fixture
def flows(tmp_path, monkeypatch):
    """engine.flows with Prefect confined to a temporary home and no API configured."""
    with prefect_settings(monkeypatch, tmp_path / "prefect-home") as module:
        yield module


def closed_port() -> int:
    """A loopback port nothing listens on (just released by the OS)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_importing_engine_and_its_cli_leaves_prefect_out():
    code = "import sys, engine, engine.cli; sys.exit('prefect' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0


def test_stages_compute_then_skip_and_report_every_plot(flows, ramp_lake, write_recipe, caplog):
    recipe = str(write_recipe(PLOTTED))
    caplog.set_level("INFO", logger="engine.flows")
    plan = flows.compile_plan.fn(recipe)
    assert "smoke: 1 of 1 outputs to compute (total)" in caplog.text
    assert [o.status for o in flows.compute_outputs.fn(plan).outputs] == ["computed"]

    again = flows.compile_plan.fn(recipe)
    summary = flows.compute_outputs.fn(again)
    assert [o.status for o in summary.outputs] == ["up to date"]
    assert summary.outputs[0].reports == []  # nothing redrawn, yet the report names the plot:
    (row,) = flows.output_rows(again, summary)
    (plot,) = row["plots"]
    assert row["output"] == "derived/smoke/total" and row["status"] == "up to date"
    assert plot.endswith("reports/derived/smoke/total/a.png") and Path(plot).is_file()
    markdown = flows.outputs_markdown(again, summary)
    assert "0 of 1 outputs computed" in markdown
    assert f"| `derived/smoke/total` | up to date | {row['bytes'] / 1024:.1f} KiB | `{plot}` |" in markdown


@pytest.mark.parametrize(("error", "retried"), [
    (OSError("connection reset by object store"), True),
    (TimeoutError("read timed out"), True),
    (FileNotFoundError("chunk vanished while its store was being replaced"), True),
    (LakeError("no entry raw/ramp in the lake"), False),
    (RecipeError([], "references"), False),
    (ValueError("bad data"), False),
])
def test_only_transient_io_errors_are_retried(flows, error, retried):
    from prefect.states import Failed

    assert flows._retry_on_io_error(None, None, Failed(data=error)) is retried


def test_artifact_keys_and_parameters_fit_prefect_and_any_working_directory(flows, tmp_path,
                                                                         monkeypatch):
    assert flows.artifact_key("eels-bandgap") == "replicalake-eels-bandgap"
    assert flows.artifact_key("My_Recipe_2") == "replicalake-my-recipe-2"
    monkeypatch.chdir(tmp_path)
    parameters = flows.flow_parameters("recipes/r.yaml", "lake", "cats")
    assert parameters == {"recipe": str(tmp_path / "recipes/r.yaml"), "lake": str(tmp_path / "lake"),
                          "catalogs": str(tmp_path / "cats")}
    assert flows.flow_parameters("r.yaml", "s3://bucket/lake")["lake"] == "s3://bucket/lake"


def test_schedule_comes_from_the_command_line_else_the_recipe(flows, write_recipe):
    cron = load_recipe(write_recipe(RECIPE + 'schedule: {cron: "0 3 * * *"}\n'))
    interval = load_recipe(write_recipe(RECIPE + "schedule: {interval: 90}\n"))
    bare = load_recipe(write_recipe(RECIPE))
    assert flows.schedule_options(cron) == {"cron": "0 3 * * *"}
    assert flows.schedule_options(interval) == {"interval": 90}
    assert flows.schedule_options(cron, interval=5) == {"interval": 5}
    assert flows.schedule_options(interval, cron="*/5 * * * *") == {"cron": "*/5 * * * *"}
    assert flows.schedule_options(bare) == {}
    assert flows.schedule_options(cron, use_recipe=False) == {}


@pytest.mark.parametrize(("options", "message"), [
    ({"cron": "61 * * * *"}, "invalid cron expression '61 * * * *': expected five fields "
                             "'minute hour day-of-month month day-of-week', e.g. '0 3 * * *'"),
    ({"cron": "0 3 * * *", "interval": 60}, "give --cron or --interval, not both"),
    ({"interval": 0}, "--interval must be a positive number of seconds, found 0"),
])
def test_bad_schedules_are_refused(flows, write_recipe, options, message):
    with pytest.raises(flows.ScheduleError) as caught:
        flows.schedule_options(load_recipe(write_recipe(RECIPE)), **options)
    assert str(caught.value) == message


def test_bad_cron_in_the_recipe_points_at_its_line(flows, write_recipe):
    loaded = load_recipe(write_recipe(RECIPE + 'schedule: {cron: "every night"}\n'))
    with pytest.raises(RecipeError, match=r"recipe.yaml:16: schedule.cron: invalid cron expression "
                                          r"'every night': expected five fields"):
        flows.schedule_options(loaded)


@pytest.mark.parametrize("command", ["schedule", "serve"])
def test_invalid_recipe_is_refused_before_prefect_is_contacted(flows, ramp_lake, write_recipe,
                                                               monkeypatch, capsys, command):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    recipe = write_recipe(RECIPE.replace("op: core.sum", "op: core.summ") + "schedule: {interval: 60}\n")
    # A dead API: reaching it would give a different error (and the test would see it).
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{closed_port()}/api"}):
        code, _, err = replicalake(monkeypatch, capsys, command, recipe)
    assert code == 1
    assert "recipe.yaml:11: steps[1].op: unknown op 'core.summ'" in err.replace("\n", " ")
    assert "Prefect" not in err


@pytest.mark.parametrize(("text", "args", "message"), [
    (RECIPE, ["--cron", "61 * * * *"], "invalid cron expression '61 * * * *'"),
    (RECIPE, [], "recipe.yaml has no `schedule:` block; give --cron or --interval"),
    (RECIPE + "schedule: {interval: 60}\n", [],
     "schedules need a Prefect server and PREFECT_API_URL is not set; to run one locally: "
     "`prefect server start`, then `export PREFECT_API_URL=http://127.0.0.1:4200/api`"),
])
def test_schedule_command_errors(flows, ramp_lake, write_recipe, monkeypatch, capsys, text, args,
                                 message):
    code, _, err = replicalake(monkeypatch, capsys, "schedule", write_recipe(text), *args)
    assert code == 1 and message in " ".join(err.split())


def test_unreachable_api_fails_fast_with_a_clear_message(ramp_lake, write_recipe, tmp_path):
    """The real entry point in a subprocess, so a hang would show as a timeout, not a stuck run."""
    url = f"http://127.0.0.1:{closed_port()}/api"
    env = prefect_env(tmp_path / "prefect-home", PREFECT_API_URL=url)
    result = subprocess.run([sys.executable, "-m", "engine", "schedule", str(write_recipe(RECIPE)),
                             "--interval", "60"], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT_S)
    err = " ".join(result.stderr.split())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: cannot reach the Prefect API at {url}: ConnectError: " in err
    assert "Is the server running? Or, to run one locally: `prefect server start`, then" in err


@pytest.mark.parametrize("command", [["run", "--prefect"], ["serve"]])
def test_other_commands_refuse_a_dead_api_too(flows, ramp_lake, write_recipe, monkeypatch, capsys,
                                              command):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = f"http://127.0.0.1:{closed_port()}/api"
    before = lake_files(ramp_lake)
    with temporary_settings({PREFECT_API_URL: url}):
        code, _, err = replicalake(monkeypatch, capsys, command[0], write_recipe(RECIPE), *command[1:])
    assert code == 1 and f"cannot reach the Prefect API at {url}" in " ".join(err.split())
    assert lake_files(ramp_lake) == before


def test_run_prefect_works_without_a_server(ramp_lake, write_recipe, tmp_path):
    home = tmp_path / "prefect-home"
    result = subprocess.run([sys.executable, "-m", "engine", "run", "--prefect", "--json",
                             str(write_recipe(PLOTTED))], env=prefect_env(home), cwd=REPO,
                            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [(o["step"], o["status"]) for o in summary["outputs"]] == [("total", "computed")]
    assert summary["outputs"][0]["reports"][0].endswith("reports/derived/smoke/total/a.png")
    assert "Starting temporary server" in result.stderr  # the ephemeral API, in our home:
    assert (home / "prefect.db").is_file()
    assert "Finished in state Completed()" in result.stderr
    assert "derived/smoke/total/zarr.json" in lake_files(ramp_lake)
