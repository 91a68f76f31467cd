"""Prefect flows: run a recipe as a flow, register it on a schedule, serve its runs.

This is the only module that imports Prefect (the CLI imports it lazily), so `import engine`
stays light and a user without a Prefect server can still validate, plan and run.

A flow run recompiles the recipe every time. Content tokens are therefore computed afresh from
the lake as it is now, and a scheduled run recomputes exactly the outputs whose sources, params
or ops changed (an unchanged recipe computes nothing).

Prefect tasks are the stages of a run (compile, compute, report), not outputs and not chunks:
the runner computes every stale output in one dask graph so steps they share run once, and a
task per output would compute shared upstream steps again. Only transient I/O errors are
retried; a RecipeError or a LakeError (an OSError too, but a missing entry stays missing) fails
the run at once.
"""
# ruff: noqa: E402 (Prefect's settings must be set in the environment before it is imported)

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

# Set before Prefect is imported (it reads its settings then), unless already set: no telemetry.
# Offline, the ephemeral server's heartbeat to Prefect logs "ERROR | Failed to send telemetry"
# in the middle of a run that is going fine, and the SDK's usage events try the network too.
QUIET_PREFECT = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # the server's heartbeat (the ERROR)
                 "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",  # Prefect Cloud's run spans
                 "DO_NOT_TRACK": "1"}  # the SDK's usage events (the convention Prefect follows)
for _name, _value in QUIET_PREFECT.items():
    os.environ.setdefault(_name, _value)

from prefect import flow, get_client, serve, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.settings import (
    PREFECT_API_REQUEST_TIMEOUT,
    PREFECT_API_URL,
    PREFECT_CLIENT_MAX_RETRIES,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)
from prefect.types.entrypoint import EntrypointType
from prefect.utilities.annotations import quote
from pydantic import ValidationError

from . import config
from .errors import RecipeError, ReplicaLakeError
from .graph import compile_recipe
from .plan import Plan, human_bytes
from .recipe import LoadedRecipe, load_recipe
from .reports import report_path
from .runner import RunSummary, execute
from .storage import Lake

FLOW_NAME = "replicalake"
# Waits between retries of a stage that hit a transient I/O error (object store hiccup, NFS).
RETRY_DELAYS_S = [2, 10, 30]
# A local ephemeral API first migrates a fresh SQLite database (8-24 s measured here); Prefect's
# 20 s default times out under load (see DESIGN.md).
EPHEMERAL_STARTUP_TIMEOUT_S = 120
# Timeout of each attempt to reach the API (httpx tries a refused or timed-out connection a few
# times) before `run --prefect`, `schedule` and `serve` say it is unreachable.
API_CHECK_TIMEOUT_S = 5
SERVER_HINT = ("to run one locally: `prefect server start`, then "
               "`export PREFECT_API_URL=http://127.0.0.1:4200/api`")


class PrefectAPIError(ReplicaLakeError, ConnectionError):
    """No Prefect API is configured where one is needed, or the configured one does not answer."""


class ScheduleError(ReplicaLakeError, ValueError):
    """A schedule cannot be set up: a bad cron expression or interval, or nothing to schedule."""


def is_transient(exc: BaseException) -> bool:
    """Whether a failed stage is worth retrying: OS-level I/O errors, but none of our own."""
    return isinstance(exc, OSError) and not isinstance(exc, ReplicaLakeError)


def _retry_on_io_error(_task, _task_run, state) -> bool:
    """Prefect's retry_condition_fn: the failed state's data is the exception raised."""
    return is_transient(state.result(raise_on_failure=False))


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run logger inside a run (its lines reach the Prefect UI); a module logger when a
    test calls `task.fn()` directly."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


_STAGE = {"cache_policy": NO_CACHE, "persist_result": False}
_RETRIED = {**_STAGE, "retries": len(RETRY_DELAYS_S), "retry_delay_seconds": RETRY_DELAYS_S,
            "retry_condition_fn": _retry_on_io_error}


@task(name="compile", **_RETRIED)
def compile_plan(recipe: str, lake: str | None = None, catalogs: str | None = None,
                 force: list[str] | None = None) -> Plan:
    """Compile the recipe against the lake as it is now, so this run sees current tokens
    (`force`: steps to recompute although up to date, as `run --force`)."""
    started = time.perf_counter()
    plan = compile_recipe(recipe, Lake(lake), catalogs, force=force or ())
    stale = [step.id for step in plan.stale_outputs]
    _logger().info("%s: %d of %d outputs to compute%s; compiled in %.2f s", plan.recipe.name,
                   len(stale), len(plan.outputs), f" ({', '.join(stale)})" if stale else "",
                   time.perf_counter() - started)
    return plan


@task(name="compute", **_RETRIED)
def compute_outputs(plan: Plan, scheduler: str | None = None, max_memory: str | None = None,
                    replace: bool = False) -> RunSummary:
    """Compute and publish the stale outputs of `plan` (the runner skips up-to-date ones)."""
    summary = execute(plan, scheduler=scheduler, progress=False, max_memory=max_memory, replace=replace)
    log = _logger()
    for item in summary.outputs:
        log.info("%s/%s: %s", item.zone, item.name, item.status)
    log.info("engine time %.2f s on %s", summary.seconds, summary.scheduler)
    return summary


def output_rows(plan: Plan, summary: RunSummary) -> list[dict[str, Any]]:
    """One row per output: where it is, whether this run computed it, its size and plots.

    Plots are listed for every output, also those left up to date (whose plots this run did
    not redraw), so the latest report names every picture."""
    rows = []
    for item in summary.outputs:
        plots = plan.step(item.step).output.plots
        rows.append({"output": f"{item.zone}/{item.name}", "step": item.step, "status": item.status,
                     "bytes": item.bytes_on_disk,
                     "plots": [report_path(plan.lake, item.zone, item.name, p) for p in plots]})
    return rows


def outputs_markdown(plan: Plan, summary: RunSummary, page: str | None = None) -> str:
    """The run report a person reads in the Prefect UI; `page`: the run's HTML page
    (engine/html_report.py) in the lake, linked at the top."""
    computed = len(summary.computed)
    lines = [f"# {plan.recipe.name}", "",
             f"{computed} of {len(summary.outputs)} outputs computed in {summary.seconds:.2f} s "
             f"on {summary.scheduler}; lake `{plan.lake.root_url}`, recipe `{plan.path}`.", ""]
    if page is not None:
        url = plan.lake.url(page)
        link = f"file://{url}" if plan.lake.is_local else url
        lines += [f"Full report (provenance, key numbers, plots, lineage): [{page}]({link})", ""]
    lines += ["| output | status | size | plots |", "|---|---|---|---|"]
    for row in output_rows(plan, summary):
        plots = "<br>".join(f"`{p}`" for p in row["plots"]) or "-"
        lines.append(f"| `{row['output']}` | {row['status']} | {human_bytes(row['bytes'])} | {plots} |")
    return "\n".join(lines) + "\n"


def artifact_key(recipe_name: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    return "replicalake-" + re.sub(r"[^a-z0-9-]+", "-", recipe_name.lower()).strip("-")


@task(name="report", **_STAGE)
def report_outputs(plan: Plan, summary: RunSummary, catalogs: str | None = None) -> str:
    """Write the run's HTML page (engine/html_report.py) and attach the outputs, their status,
    plot paths and a link to the page to the run as artifacts; return the page's path."""
    from .html_report import recipe_lineage, write_report

    page = write_report(plan, summary, recipe_lineage(plan, catalogs))
    key = artifact_key(plan.recipe.name)
    table = [{**row, "plots": "\n".join(row["plots"])} for row in output_rows(plan, summary)]
    create_table_artifact(table, key=key, description=f"{plan.recipe.name}: outputs of this run")
    create_markdown_artifact(outputs_markdown(plan, summary, page), key=f"{key}-report",
                             description=f"{plan.recipe.name}: run report")
    _logger().info("report: %s", plan.lake.url(page))
    return page


# The summary goes back to an in-process caller (`run --prefect`) only; persisting it would
# pickle one file per run into PREFECT_HOME for nobody.
@flow(name=FLOW_NAME, persist_result=False)
def recipe_flow(recipe: str, lake: str | None = None, catalogs: str | None = None,
                scheduler: str | None = None, max_memory: str | None = None,
                replace: bool = False, force: list[str] | None = None) -> RunSummary:
    """Recompile a recipe, compute its stale outputs, publish a report of them."""
    plan = compile_plan(recipe, lake, catalogs, force)
    # quote(): Prefect would otherwise walk the plan's lazy datasets looking for futures.
    summary = compute_outputs(quote(plan), scheduler, max_memory, replace)
    report_outputs(quote(plan), quote(summary), catalogs)
    return summary


def flow_parameters(recipe: str | Path, lake: str | None = None,
                    catalogs: str | Path | None = None) -> dict[str, str]:
    """Flow parameters that mean the same from any working directory (a served run's may
    differ from the one `schedule` ran in): absolute recipe, lake and catalogs paths."""
    root = config.lake_root(lake)
    if "://" not in root:
        root = str(Path(root).resolve())
    return {"recipe": str(Path(recipe).resolve()), "lake": root,
            "catalogs": str(config.catalog_dir(catalogs).resolve())}


def check_api(required: bool) -> str | None:
    """Return the configured API URL after checking, with a short timeout, that it answers.

    None when no URL is configured and none is `required` (a one-off run then starts a local
    ephemeral API). A configured but dead URL would otherwise stall every client call for
    minutes of retries."""
    url = PREFECT_API_URL.value()
    if not url:
        if required:
            raise PrefectAPIError(f"schedules need a Prefect server and PREFECT_API_URL is not set; "
                                  f"{SERVER_HINT}")
        return None
    with temporary_settings({PREFECT_API_REQUEST_TIMEOUT: API_CHECK_TIMEOUT_S,
                             PREFECT_CLIENT_MAX_RETRIES: 0}):
        with get_client(sync_client=True) as client:
            problem = client.api_healthcheck()
    if problem is not None:
        raise PrefectAPIError(f"cannot reach the Prefect API at {url}: {type(problem).__name__}: "
                              f"{problem}. Is the server running? Or, {SERVER_HINT}")
    return url


def run_once(recipe: str | Path, lake: str | None = None, catalogs: str | Path | None = None,
             scheduler: str | None = None, max_memory: str | None = None, replace: bool = False,
             force: list[str] | None = None) -> RunSummary:
    """Run a recipe once as a flow: on PREFECT_API_URL if set, else on an ephemeral local API
    (`replace`, `force`: as `run --replace --force STEP`)."""
    # Checked before Prefect starts: a bad recipe costs no API start-up and no Prefect traceback.
    parameters, _ = _checked(recipe, lake, catalogs, force)
    check_api(required=False)
    timeout = max(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), EPHEMERAL_STARTUP_TIMEOUT_S)
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: timeout}):
        return recipe_flow(**parameters, scheduler=scheduler, max_memory=max_memory, replace=replace,
                           force=list(force) if force else None)


def schedule_options(loaded: LoadedRecipe, cron: str | None = None, interval: float | None = None,
                     use_recipe: bool = True) -> dict[str, Any]:
    """`to_deployment` keywords for `--cron`/`--interval`, else (when `use_recipe`) for the
    recipe's `schedule:` block; {} when neither gives a schedule."""
    if cron is not None and interval is not None:
        raise ScheduleError("give --cron or --interval, not both")
    from_recipe = use_recipe and cron is None and interval is None and loaded.recipe.schedule is not None
    if from_recipe:
        cron, interval = loaded.recipe.schedule.cron, loaded.recipe.schedule.interval
    if interval is not None:
        if not interval > 0:
            raise ScheduleError(f"--interval must be a positive number of seconds, found {interval}")
        return {"interval": interval}
    if cron is None:
        return {}
    try:
        CronSchedule(cron=cron)
    except ValidationError:
        message = (f"invalid cron expression {cron!r}: expected five fields "
                   "'minute hour day-of-month month day-of-week', e.g. '0 3 * * *'")
        if from_recipe:
            raise RecipeError([loaded.problem(message, "schedule", "cron")], "schedule") from None
        raise ScheduleError(message) from None
    return {"cron": cron}


def _checked(recipe: str | Path, lake: str | None, catalogs: str | Path | None,
             force: list[str] | None = None) -> tuple[dict[str, str], LoadedRecipe]:
    """Flow parameters of a recipe that compiles; a RecipeError refuses the deployment."""
    parameters = flow_parameters(recipe, lake, catalogs)
    loaded = load_recipe(parameters["recipe"])
    compile_recipe(loaded, Lake(parameters["lake"]), parameters["catalogs"], force=force or ())
    return parameters, loaded


def _deployment(loaded: LoadedRecipe, parameters: dict[str, str], when: dict[str, Any]) -> RunnerDeployment:
    """The recipe's deployment, named after the recipe. Its entrypoint is the module path, so
    a served run imports `engine.flows` as part of the package (a file path would load it as a
    stray top-level module with an empty op registry)."""
    return recipe_flow.to_deployment(
        name=loaded.recipe.name, parameters=parameters, description=loaded.recipe.description or None,
        tags=[FLOW_NAME], entrypoint_type=EntrypointType.MODULE_PATH, **when)


def recipe_deployment(recipe: str | Path, lake: str | None = None, catalogs: str | Path | None = None,
                      cron: str | None = None, interval: float | None = None) -> RunnerDeployment:
    """A deployment of the recipe's flow on the given schedule, else the recipe's own."""
    parameters, loaded = _checked(recipe, lake, catalogs)
    return _deployment(loaded, parameters, schedule_options(loaded, cron, interval))


def describe_schedules(planned: RunnerDeployment) -> str:
    """'every 60 s' / "cron '0 3 * * *'" / 'no schedule' for messages."""
    texts = []
    for item in planned.schedules or []:
        schedule = item.schedule
        if isinstance(schedule, CronSchedule):
            texts.append(f"cron {schedule.cron!r}")
        else:
            texts.append(f"every {schedule.interval.total_seconds():g} s")
    return ", ".join(texts) or "no schedule"


def register(recipe: str | Path, lake: str | None = None, catalogs: str | Path | None = None,
             cron: str | None = None, interval: float | None = None) -> RunnerDeployment:
    """Create or update the recipe's deployment on the Prefect server, paused: `serve` resumes
    it and executes its runs. (Unpaused, the server would pile up runs until something serves
    them, and `serve` would then work through that backlog one run at a time.)"""
    planned = recipe_deployment(recipe, lake, catalogs, cron, interval)
    if not planned.schedules:
        raise ScheduleError(f"{recipe} has no `schedule:` block; give --cron or --interval")
    check_api(required=True)
    planned.paused = True
    planned.apply()
    return planned


def registered_deployments(cron: str | None = None, interval: float | None = None) -> list[RunnerDeployment]:
    """Every deployment `register` left on the server, on its registered schedule (or the one
    given here), each refused unless its recipe still compiles."""
    with get_client(sync_client=True) as client:
        found = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])))
    deployments = []
    for registered in found:
        stored = registered.parameters
        parameters, loaded = _checked(stored["recipe"], stored.get("lake"), stored.get("catalogs"))
        when = (schedule_options(loaded, cron, interval, use_recipe=False)
                or {"schedules": [item.schedule for item in registered.schedules]})
        deployments.append(_deployment(loaded, parameters, when))
    return deployments


def serve_recipes(recipes: list[Path], lake: str | None = None, catalogs: str | Path | None = None,
                  cron: str | None = None, interval: float | None = None) -> None:
    """Serve the recipes' deployments (with none named, every registered one) until stopped.

    Runs execute in subprocesses of this process, one at a time: each already uses every core
    through dask, and a run that comes due meanwhile waits, then finds little left to do. (A
    per-deployment concurrency limit would also hold off other serve processes, but a run killed
    along with its serve process keeps the slot for minutes, and every tick is cancelled until
    then.)
    Stopping (Ctrl-C, SIGTERM) pauses the deployments, so the server does not pile up runs
    nobody executes; the next `serve` resumes them."""
    deployments = [recipe_deployment(r, lake, catalogs, cron, interval) for r in recipes]
    url = check_api(required=True)
    if not recipes:
        deployments = registered_deployments(cron, interval)
        if not deployments:
            raise ScheduleError(f"no recipe given and none registered on {url}: name recipes "
                                "or register them first with `replicalake schedule RECIPE`")
    serve(*deployments, limit=1)
