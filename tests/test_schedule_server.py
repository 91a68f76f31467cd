"""Against a real Prefect server on loopback: register deployments, serve a recipe on a
few-second interval and watch each run recompute only what changed, and retry a transient I/O
error inside a real flow run.

The server and every `serve` process run in their own temporary PREFECT_HOME and are stopped
at the end whatever happens. Runs are judged by their table artifacts, which list each output
with the status the run gave it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engine.errors import LakeError
from engine.testing import put_in_lake, ramp_dataset
from tests.conftest import REPO
from tests.test_cli import replicalake
from tests.test_flows import closed_port, prefect_env, prefect_settings
from tests.test_graph import RECIPE

SERVER_START_TIMEOUT_S = 180
RUNS_TIMEOUT_S = 180
API_REQUEST_TIMEOUT_S = 30  # one request to the server
API_PATIENCE_S = 180  # how long a read is retried (api)
# Two outputs over two sources: changing raw/ramp must recompute from_ramp and never from_other.
TWO_SOURCES = """\
version: 1
name: two
sources:
  ramp: {catalog: lake, entry: raw/ramp}
  other: {catalog: lake, entry: raw/other}
steps:
  - id: from_ramp
    op: core.sum
    inputs: {data: ramp}
    params: {dims: [x]}
  - id: from_other
    op: core.sum
    inputs: {data: other}
    params: {dims: [x]}
outputs:
  from_ramp: {zone: derived, plots: [{variable: a, kind: line}]}
  from_other: {zone: derived}
schedule: {interval: 2}
"""


def api(url: str, path: str, body: dict | None = None, patience: float = API_PATIENCE_S):
    """GET (or POST `body` as JSON to) the Prefect REST API; the decoded JSON answer.

    Every call here only reads (filters are POSTs that change nothing), so a request that times
    out or loses its connection (a server stalled by a loaded machine) is sent again until
    `patience` seconds have passed; an HTTP error is the server's answer and is raised at once.
    """
    data = None if body is None else json.dumps(body).encode()
    deadline = time.monotonic() + patience
    while True:
        request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=API_REQUEST_TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError:
            raise
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def wait_for(condition, timeout: float, what: str, log: Path | None = None):
    """Poll `condition` until it returns something truthy; fail naming `what` (and the log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log and log.exists() else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{tail}")
        time.sleep(0.5)


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start `command` in its own process group, output to `log`."""
    with open(log, "wb") as handle:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group we started (with any run subprocesses), SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


def healthy(url: str) -> bool:
    try:
        return api(url, "/health", patience=0) is True  # (one try: wait_for polls it)
    except (OSError, ValueError, http.client.HTTPException):
        return False


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` on a free loopback port; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = closed_port()
    url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(home, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
                      PREFECT_SERVER_UI_ENABLED="false")
    log = home / "server.log"
    server = start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                    "--port", str(port)], env, log)
    try:
        wait_for(lambda: healthy(url) or server.poll() is not None, SERVER_START_TIMEOUT_S,
                 "the Prefect server", log)
        assert server.poll() is None, log.read_text()
        yield url
    finally:
        stop(server)


@pytest.fixture
def on_server(prefect_server, tmp_path, monkeypatch):
    """engine.flows with in-process Prefect pointed at the test server."""
    with prefect_settings(monkeypatch, tmp_path / "prefect-home", prefect_server) as module:
        yield module


def test_schedule_registers_the_recipe_schedule_or_the_given_one(on_server, prefect_server, ramp_lake,
                                                                write_recipe, monkeypatch, capsys):
    recipe = write_recipe(RECIPE + 'schedule: {cron: "0 3 * * *"}\n')
    code, out, err = replicalake(monkeypatch, capsys, "schedule", recipe)
    assert code == 0, err
    assert "registered deployment replicalake/smoke (cron '0 3 * * *')" in " ".join(out.split())
    deployment = api(prefect_server, "/deployments/name/replicalake/smoke")
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * *"]
    assert deployment["parameters"]["recipe"] == str(recipe)
    assert deployment["parameters"]["lake"] == str(ramp_lake.root)
    assert deployment["entrypoint"] == "engine.flows.recipe_flow"
    assert deployment["paused"], "no runs should pile up before something serves them"

    code, out, _ = replicalake(monkeypatch, capsys, "schedule", recipe, "--interval", "3600")
    assert code == 0 and "(every 3600 s)" in out
    deployment = api(prefect_server, "/deployments/name/replicalake/smoke")
    assert [s["schedule"]["interval"] for s in deployment["schedules"]] == [3600.0]

    # What `serve` with no recipe named would serve: the registered schedule, not the recipe's.
    (found,) = [d for d in on_server.registered_deployments() if d.name == "smoke"]
    assert on_server.describe_schedules(found) == "every 3600 s"
    assert found.parameters == deployment["parameters"] and not found.paused


def test_transient_io_errors_are_retried_in_a_real_run_and_ours_are_not(on_server, ramp_lake,
                                                                        write_recipe, monkeypatch):
    flows = on_server
    for stage in ("compile_plan", "compute_outputs"):
        monkeypatch.setattr(flows, stage, getattr(flows, stage).with_options(retry_delay_seconds=0))
    calls = []
    real_execute = flows.execute

    def flaky_execute(plan, **options):
        calls.append("execute")
        if len(calls) == 1:
            raise OSError("simulated object-store hiccup")
        return real_execute(plan, **options)

    monkeypatch.setattr(flows, "execute", flaky_execute)
    parameters = flows.flow_parameters(write_recipe(RECIPE))
    summary = flows.recipe_flow(**parameters)
    assert calls == ["execute", "execute"]
    assert [o.status for o in summary.outputs] == ["computed"]

    def missing_entry(*args, **kwargs):
        calls.append("compile")
        raise LakeError("no entry raw/ramp in the lake")

    monkeypatch.setattr(flows, "compile_recipe", missing_entry)
    with pytest.raises(LakeError, match="no entry raw/ramp"):
        flows.recipe_flow(**parameters)
    assert calls.count("compile") == 1


def runs_with_statuses(url: str, deployment_id: str) -> list[tuple[str, dict[str, str]]]:
    """(state, {step: status}) of every run of the deployment that has finished, oldest first;
    statuses come from the run's table artifact ({} for a run that published none)."""
    runs = api(url, "/flow_runs/filter", {
        "flow_runs": {"deployment_id": {"any_": [deployment_id]},
                      "state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}},
        "sort": "START_TIME_ASC"})
    artifacts = api(url, "/artifacts/filter", {
        "artifacts": {"flow_run_id": {"any_": [r["id"] for r in runs]}, "type": {"any_": ["table"]}}})
    tables = {a["flow_run_id"]: json.loads(a["data"]) for a in artifacts}
    return [(r["state_type"], {row["step"]: row["status"] for row in tables.get(r["id"], [])})
            for r in runs]


def computed(statuses: dict[str, str]) -> set[str]:
    return {step for step, status in statuses.items() if status == "computed"}


def test_served_recipe_recomputes_only_what_changed(prefect_server, ramp_lake, write_recipe, tmp_path):
    put_in_lake(ramp_lake, "other", ramp_dataset(ny=4) * 2)
    recipe = write_recipe(TWO_SOURCES)
    env = prefect_env(tmp_path / "serve-home", PREFECT_API_URL=prefect_server,
                      PREFECT_RUNNER_POLL_FREQUENCY="1")
    log = tmp_path / "serve.log"
    serving = start([sys.executable, "-m", "engine", "serve", str(recipe), "--lake", ramp_lake.root,
                     "--catalogs", str(REPO / "catalogs")], env, log)
    try:
        def deployment_id():
            try:
                return api(prefect_server, "/deployments/name/replicalake/two")["id"]
            except urllib.error.HTTPError:
                return None

        identifier = wait_for(deployment_id, RUNS_TIMEOUT_S, "the deployment", log)

        def finished(count: int):
            runs = runs_with_statuses(prefect_server, identifier)
            return runs if len(runs) >= count else None

        first, second = wait_for(lambda: finished(2), RUNS_TIMEOUT_S, "two scheduled runs", log)[:2]
        assert first == ("COMPLETED", {"from_ramp": "computed", "from_other": "computed"})
        assert second == ("COMPLETED", {"from_ramp": "up to date", "from_other": "up to date"})

        done = len(finished(0))
        put_in_lake(ramp_lake, "ramp", ramp_dataset() + 1)  # new values, so a new token

        def recomputed_then_one_more():
            after = finished(0)[done:]
            first_work = next((i for i, (_, s) in enumerate(after) if computed(s)), None)
            return after if first_work is not None and len(after) > first_work + 1 else None

        after = wait_for(recomputed_then_one_more, RUNS_TIMEOUT_S, "a run after the change", log)
        assert {state for state, _ in after} == {"COMPLETED"}, after
        working = [statuses for _, statuses in after if computed(statuses)]
        assert computed(working[0]) == {"from_ramp"}, after
        assert set().union(*map(computed, working)) == {"from_ramp"}, after
        assert computed(after[-1][1]) == set(), after
    finally:
        stop(serving)
    assert serving.returncode is not None
