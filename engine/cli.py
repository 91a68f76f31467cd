"""The `replicalake` command: ingest, inspect, validate, plan and run recipes."""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cli_ingest import FormatGroup
from .config import checked_lock_timeout
from .errors import ConfigError, ReplicaLakeError

app = typer.Typer(help="ReplicaLake: declarative out-of-core physics analyses over a zarr lake.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
ingest_app = typer.Typer(cls=FormatGroup, help="Bring foreign data into the lake's raw/ zone.",
                         no_args_is_help=True)
catalog_app = typer.Typer(help="List and show catalog entries.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(catalog_app, name="catalog")
export_app = typer.Typer(help="Write lake entries out in foreign formats.", no_args_is_help=True)
app.add_typer(export_app, name="export")

out = Console()
err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"replicalake {version('replicalake')}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="print the version and exit")] = False,
             ) -> None:
    pass


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]],
                caption: str | None = None) -> None:
    """Every table of the CLI: a rich Table on a terminal; piped or redirected, plain rows a tool
    can read (`replicalake ops | grep replicas`): a tab-separated header, then one line per row,
    never wrapped (line breaks inside a cell become '; '), then the title and caption as '# '
    lines. `--json` gives every field, typed."""
    if out.is_terminal:
        table = Table(title=escape(title), caption=escape(caption) if caption else None)
        for column in columns:
            table.add_column(escape(column), overflow="fold")
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        out.print(table)
        return
    lines = ["\t".join(_plain_cell(column, " ") for column in columns)]
    lines += ["\t".join(_plain_cell(cell) for cell in row) for row in rows]
    lines += [f"# {_plain_cell(text, ' ')}" for text in (title, caption) if text]
    print("\n".join(lines), flush=True)


def _plain_cell(text: str, joiner: str = "; ") -> str:
    return joiner.join(part.strip() for part in str(text).splitlines()).replace("\t", " ") or "-"


def say(text: str, **kwargs) -> None:
    """A line of a listing (verify, doctor): wrapped on a terminal, whole when piped."""
    out.print(text, soft_wrap=not out.is_terminal, **kwargs)

LakeOption = Annotated[str | None, typer.Option(
    "--lake", help="lake root (path or fsspec URL); default $REPLICALAKE_LAKE or ./storage")]
CatalogsOption = Annotated[Path | None, typer.Option(
    "--catalogs", help="folder of Intake catalogs; default $REPLICALAKE_CATALOGS or ./catalogs")]
JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file")]


def _lake(root: str | None):
    from .storage import Lake

    store = Lake(root)
    _LAKES_USED.append(store.root_url)  # named by main() when a failed write has no file name
    return store


_LAKES_USED: list[str] = []


@app.command()
def init(lake: LakeOption = None) -> None:
    """Create an empty lake (zones raw/, derived/, models/, reports/)."""
    store = _lake(lake)
    store.ensure_zones()
    out.print(f"lake ready at {escape(store.root_url)}")


@app.command()
def ops(name: Annotated[str | None, typer.Argument(
            help="one op to show in full: inputs, every param's type, default, bounds, allowed "
            "values and description, and its whole doc")] = None,
        as_json: JsonOption = False) -> None:
    """List registered ops with their inputs, params and docs (or show one op: `ops NAME`)."""
    from .registry import get_op, list_ops

    specs = [get_op(name)] if name else list_ops()
    if as_json:
        found = [{"name": s.name, "inputs": s.inputs, "optional_inputs": s.optional_inputs,
                  "version": s.version, "doc": s.doc.strip(), "params": s.params.model_json_schema()}
                 for s in specs]
        out.print_json(json.dumps(found[0] if name else found))
        return
    if name:
        _show_op(specs[0])
        return
    rows = []
    for spec in specs:
        schema = spec.params.model_json_schema().get("properties", {})
        params = "\n".join(_param_line(param, field, schema.get(param, {}))
                           for param, field in spec.params.model_fields.items())
        rows.append((spec.name, ", ".join(spec.inputs), params or "-", spec.summary))
    print_table("ops (`replicalake ops NAME` shows one in full)",
                ("op", "inputs", "params", "what it does"), rows)


def _show_op(spec) -> None:
    """`ops NAME`: everything about one op, as plain lines."""
    import inspect

    schema = spec.params.model_json_schema().get("properties", {})
    lines = [f"{spec.name} (version {spec.version})", f"inputs: {', '.join(spec.inputs) or 'none'}"]
    if spec.optional_inputs:
        lines.append(f"optional inputs: {', '.join(spec.optional_inputs)}")
    lines.append("params:" if spec.params.model_fields else "params: none")
    for param, field in spec.params.model_fields.items():
        lines.append("  " + _param_line(param, field, schema.get(param, {})))
        description = schema.get(param, {}).get("description") or field.description
        if description:
            lines.append(f"      {description}")
    lines += ["", *(f"  {line}".rstrip() for line in inspect.cleandoc(spec.doc or "(no doc)").splitlines())]
    for line in lines:
        say(escape(line), highlight=False)


def _param_line(name: str, field, schema: dict) -> str:
    """'replicas: int = 100 (> 0, <= 10000)': type, default, the bounds of its JSON schema and,
    for a Literal, the values it allows ("device: Literal = 'auto' (one of 'auto', 'cpu', 'cuda')")."""
    from .bounds import limits_text

    kind = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
    default = "required" if field.is_required() else f"= {field.get_default(call_default_factory=True)!r}"
    notes = ", ".join(part for part in (limits_text(schema), _choices_text(schema)) if part)
    return f"{name}: {kind} {default}" + (f" ({notes})" if notes else "")


def _choices_text(schema: dict) -> str:
    """"one of 'a', 'b'" for a field whose JSON schema lists its values (a Literal), '' for others;
    "each one of ..." for a list of them."""
    for branch in [schema, *schema.get("anyOf", [])]:
        items = branch.get("items") if isinstance(branch.get("items"), dict) else {}
        for where, prefix in ((branch, ""), (items, "each ")):
            values = where.get("enum") or ([where["const"]] if "const" in where else None)
            if values:
                return prefix + "one of " + ", ".join(map(repr, values))
    return ""


@app.command()
def schema(output: Annotated[Path | None, typer.Option("-o", "--output")] = None) -> None:
    """Print (or write) the JSON Schema of recipes, for editor completion."""
    from .recipe import recipe_json_schema

    text = json.dumps(recipe_json_schema(), indent=2)
    if output:
        if output.is_dir():
            raise ConfigError(f"-o {output}: that is a folder; expected a file name "
                              f"(e.g. {output / 'recipe.schema.json'})")
        if output.parent.exists() and not output.parent.is_dir():
            raise ConfigError(f"-o {output}: {output.parent} is a file, not a folder; write the schema "
                              "elsewhere")
        if not output.parent.is_dir():
            raise ConfigError(f"-o {output}: the folder {output.parent} does not exist; create it first "
                              "or write the schema elsewhere")
        output.write_text(text + "\n")
        out.print(f"wrote {output}")
    else:
        print(text)


@app.command()
def validate(recipe: RecipeArg, lake: LakeOption = None, catalogs: CatalogsOption = None) -> None:
    """Check a recipe completely (structure, references, params, sources, ops); compute nothing."""
    from .graph import compile_recipe

    plan = compile_recipe(recipe, _lake(lake), catalogs)
    out.print(f"[green]ok[/green] {escape(str(recipe))}: {len(plan.recipe.steps)} steps, "
              f"{len(plan.outputs)} outputs ({len(plan.stale_outputs)} to compute)")


MaxMemoryOption = Annotated[str | None, typer.Option(
    "--max-memory", help="memory budget, e.g. 4GiB, 500MB or bytes: a run projected above it is "
    "refused; default $REPLICALAKE_MAX_MEMORY, else 75% of the machine's RAM")]


ForceOption = Annotated[list[str] | None, typer.Option(
    "--force", metavar="STEP", help="recompute this step's outputs (and those of every step after "
    "it) although they are up to date; repeatable")]


@app.command()
def plan(recipe: RecipeArg, lake: LakeOption = None, catalogs: CatalogsOption = None,
         max_memory: MaxMemoryOption = None, force: ForceOption = None, as_json: JsonOption = False) -> None:
    """Show the steps: dims, chunks, bytes, projected peak memory, what is up to date.

    Exits 1, after the table, when the run's projected peak is above the memory budget."""
    from .config import max_memory as memory_budget
    from .graph import compile_recipe
    from .plan import human_bytes
    from .projection import refuse_over_budget

    budget = memory_budget(max_memory)
    compiled = compile_recipe(recipe, _lake(lake), catalogs, force=force or ())
    projection = compiled.projection()
    rows = compiled.rows(projection)
    if as_json:
        out.print_json(json.dumps({"recipe": compiled.recipe.name, "steps": rows, "memory": {
            "projected_bytes": projection.total_bytes, "threads": projection.threads,
            "max_memory_bytes": budget}}))
    else:
        cells = []
        waves = max((row["wave"] or 0 for row in rows), default=0)
        for row in rows:
            peak = row["projected_peak_bytes"]
            wave = f", wave {row['wave']} of {waves}" if row["wave"] and waves > 1 else ""
            cells.append((row["id"], row["op"], _dims_text(row["dims"]), _dims_text(row["chunks"]),
                          human_bytes(row["bytes"]), "-" if peak is None else human_bytes(peak),
                          row["status"] + (f"\n-> {row['output']}{wave}" if row["output"] else "")))
        print_table(f"plan of {compiled.recipe.name} ({recipe})",
                    ("step", "op", "dims", "chunks", "size", "est. peak", "status"), cells,
                    caption=f"projected peak of the run: {human_bytes(projection.total_bytes)} on "
                    f"{projection.threads} threads (budget {human_bytes(budget)}); "
                    "est. peak: a step run alone")
    refuse_over_budget(compiled, projection, budget)


def _dims_text(sizes: dict[str, int]) -> str:
    return " ".join(f"{d}:{n}" for d, n in sizes.items()) or "-"


@app.command()
def run(recipe: RecipeArg, lake: LakeOption = None, catalogs: CatalogsOption = None,
        scheduler: Annotated[str | None, typer.Option(
            "--scheduler", help="dask.distributed scheduler address (default: local threads)")] = None,
        progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
        prefect: Annotated[bool, typer.Option(
            "--prefect", help="run as a Prefect flow (on $PREFECT_API_URL, else a local ephemeral "
            "API): logs, retries and a report artifact")] = False,
        lock_timeout: Annotated[float | None, typer.Option(
            "--lock-timeout", callback=checked_lock_timeout,
            help="seconds to wait for another run writing the same outputs "
            "(default: wait until it is done; 0: fail at once)")] = None,
        verify_inputs: Annotated[bool, typer.Option(
            "--verify-inputs", help="check every byte of the inputs against their checksums first "
            "(reads them twice; default: a listing check of names and sizes)")] = False,
        replace: Annotated[bool, typer.Option(
            "--replace", help="publish over outputs another recipe made (refused otherwise: a copied "
            "recipe keeps the original's output names)")] = False,
        force: ForceOption = None,
        max_memory: MaxMemoryOption = None, as_json: JsonOption = False) -> None:
    """Compute the recipe's stale outputs and publish them to the lake (resuming a killed run)."""
    if prefect:
        from .flows import run_once

        summary = run_once(recipe, lake, catalogs, scheduler, max_memory, replace=replace, force=force)
    else:
        from .graph import compile_recipe
        from .runner import execute

        compiled = compile_recipe(recipe, _lake(lake), catalogs, force=force or ())
        summary = execute(compiled, scheduler=scheduler, progress=progress and not as_json,
                          lock_timeout=lock_timeout, verify_inputs=verify_inputs,
                          max_memory=max_memory, replace=replace)
    if as_json:
        out.print_json(json.dumps(summary.to_dict()))
        return
    _print_summary(summary)


def _print_summary(summary) -> None:
    from .key_numbers import describe
    from .plan import human_bytes

    rows = []
    for item in summary.outputs:
        status = item.status + (f"\n({item.chunks_resumed} chunks resumed from a killed run)"
                                if item.chunks_resumed else "")
        rows.append((f"{item.zone}/{item.name}", status, _wave_text(item.wave),
                     human_bytes(item.bytes_on_disk), _memory_text(item.memory),
                     "\n".join(item.reports) or "-"))
    columns = ("output", "status", "wave, time", "size", "peak memory\nmeasured / projected", "reports")
    print_table(f"{summary.recipe}: done in {summary.seconds:.1f} s on {summary.scheduler}", columns, rows)
    for item in summary.outputs:  # key numbers (engine/key_numbers.py), one line per output
        if item.key_numbers:
            say(f"{item.zone}/{item.name}: " + "; ".join(map(describe, item.key_numbers)),
                markup=False, highlight=False)
    if not summary.computed:
        out.print("nothing to compute: every output is up to date")


def _wave_text(wave: dict | None) -> str:
    """'k of n, 12.3 s' for a computed output: its wave and that wave's compute time, so a chain's
    slow link is named ('-': not computed by this run)."""
    if wave is None:
        return "-"
    return f"{wave['number']} of {wave['of']}, {wave['seconds']:.1f} s"


def _memory_text(memory: dict | None) -> str:
    """'measured / projected' peak of the run that computed an output ('-' where unknown)."""
    from .plan import human_bytes

    if memory is None:
        return "-"
    measured = memory["measured_peak_bytes"]
    return f"{'-' if measured is None else human_bytes(measured)} / {human_bytes(memory['projected_bytes'])}"


@app.command()
def report(recipe: RecipeArg, lake: LakeOption = None, catalogs: CatalogsOption = None,
           as_json: JsonOption = False) -> None:
    """Write the static HTML page of the recipe's latest run (reports/runs/RECIPE/RUN.html in the
    lake): outputs with provenance, key numbers, plots inline, steps and lineage."""
    from .graph import compile_recipe
    from .html_report import recipe_lineage, write_report

    compiled = compile_recipe(recipe, _lake(lake), catalogs)
    path = write_report(compiled, lineage=recipe_lineage(compiled, catalogs))
    url = compiled.lake.url(path)
    if as_json:
        out.print_json(json.dumps({"recipe": compiled.recipe.name, "report": url}))
        return
    say(f"wrote {escape(url)}", highlight=False)
    if not any(compiled.lake.exists(step.zone, step.name) for step in compiled.outputs):
        say("(no output of this recipe is in the lake yet: `replicalake run` it first)", highlight=False)


@app.command()
def lineage(entry: Annotated[str | None, typer.Argument(
                help="a lake entry (zone/name): show only what it was made from and what is made from "
                "it (default: every entry)")] = None,
            lake: LakeOption = None, catalogs: CatalogsOption = None,
            recipes: Annotated[list[Path] | None, typer.Option(
                "--recipe", help="also show this recipe's chain (repeatable), run or not")] = None,
            as_json: JsonOption = False) -> None:
    """The graph from raw inputs through every step to every output, with staleness and why."""
    from .graph import compile_recipe
    from .lineage import lake_lineage

    store = _lake(lake)
    plans = [compile_recipe(path, store, catalogs) for path in recipes or []]
    graph = lake_lineage(store, catalogs, plans)
    if entry is not None:
        graph = graph.around(entry)
    if as_json:
        out.print_json(json.dumps(graph.to_dict()))
        return
    if not graph.nodes:
        say("the lake has no entries yet (`replicalake ingest`, then `replicalake run`)")
    for line in graph.lines():
        colour = "red" if ": stale" in line else ("green" if ": up to date" in line else None)
        say(f"[{colour}]{escape(line)}[/{colour}]" if colour else escape(line), highlight=False)


@app.command()
def verify(names: Annotated[list[str] | None, typer.Argument(
               help="lake entries (zone/name) to check (default: every entry of the lake catalog)")] = None,
           lake: LakeOption = None,
           history: Annotated[bool, typer.Option(
               "--history", help="also check the older versions of these entries kept in the lake's "
               "history (ZONE/NAME@VERSION; `replicalake log`)")] = False,
           as_json: JsonOption = False) -> None:
    """Check entries against the checksums recorded when they were published; name damaged chunks."""
    from .verify import skipped_history, verify_entries

    store = _lake(lake)
    reports = verify_entries(store, names or [], history=history)
    if as_json:
        out.print_json(json.dumps([report.to_dict() for report in reports]))
    else:
        for report in reports:
            colour = "green" if report.ok else "red"
            say(f"[{colour}]{report.status}[/{colour}] {escape(report.entry)} ({report.files} files)")
            for damage in report.damage:
                say(f"  {escape(damage.location)}: {escape(damage.problem)}", highlight=False)
        skipped = 0 if history else skipped_history(store, reports)
        if skipped:
            say(f"({skipped} older version{'s' if skipped > 1 else ''} in the history not checked: "
                "--history checks them)", highlight=False)
    if any(not report.ok for report in reports):
        raise typer.Exit(1)


@app.command()
def doctor(lake: LakeOption = None,
           repair: Annotated[bool, typer.Option(
               "--repair", help="restore consistency: finish or undo interrupted publishes, list whole "
               "stores the catalog misses, unlist entries whose store is gone, put back or remove retired "
               "copies, remove leftovers no live process holds; never deletes a complete output")] = False,
           as_json: JsonOption = False) -> None:
    """Find every inconsistency between the lake's stores, manifests and catalog; exit 1 while any is left."""
    from .doctor import examine

    findings = examine(_lake(lake), repair)
    if as_json:
        out.print_json(json.dumps([finding.to_dict() for finding in findings]))
    else:
        for finding in findings:
            colour, label = (("green", "repaired") if finding.repaired else
                             ("red", "--repair would" if finding.repairable and not repair else "to fix"))
            say(f"[{colour}]{escape(finding.kind)}[/{colour}] {escape(finding.where)}: "
                f"{escape(finding.problem)}\n  {label}: {escape(finding.remedy)}", highlight=False)
        left = sum(not finding.repaired for finding in findings)
        out.print(f"{left} of {len(findings)} problems left" if left else
                  f"the lake is consistent{f' ({len(findings)} problems repaired)' if findings else ''}")
    if any(not finding.repaired for finding in findings):
        raise typer.Exit(1)


AtOption = Annotated[str | None, typer.Option(
    "--at", help="read this version of the entry (an id `replicalake log ENTRY` lists) instead of the "
    "current one")]


@app.command()
def log(entry: Annotated[str, typer.Argument(help="a lake entry (zone/name)")],
        lake: LakeOption = None, at: AtOption = None, as_json: JsonOption = False) -> None:
    """List the versions of an entry kept in the lake, newest first (the current one marked), with
    the recipe, params and code fingerprints each was made with; `--at VERSION` shows one in full."""
    from .history import versions

    store = _lake(lake)
    found = versions(store, entry)
    if at is not None:
        store.check_version_id(at)
        chosen = [item for item in found if item.version == at]
        if not chosen:
            store.version_path(*entry.split("/", 1), at)  # the error naming the versions there are
        found = chosen
    if as_json:
        out.print_json(json.dumps([item.to_dict() for item in found]))
        return
    if at is not None:
        for name, value in found[0].to_dict().items():
            say(f"{name}: {escape(json.dumps(value) if isinstance(value, dict | list) else str(value))}",
                highlight=False)
        return
    rows = [(item.version + (" (current)" if item.current else ""), item.published, item.made_by,
             item.params_digest or "-", (item.provenance.get("token") or "-")[:16],
             _code_text(item.provenance.get("code")), item.problem or "")
            for item in found]
    print_table(f"{entry}: {len(found)} version{'s' if len(found) > 1 else ''} (`replicalake log {entry} "
                "--at VERSION` shows one in full; `replicalake gc` drops older ones)",
                ("version", "published (UTC)", "made by", "params digest", "token", "code", "problem"), rows)


def _code_text(code) -> str:
    """The code fingerprint(s) a version was computed with, short."""
    if isinstance(code, dict):
        return "\n".join(f"{name}: {str(value)[:12]}" for name, value in code.items()) or "-"
    return str(code)[:16] if code else "-"


@app.command()
def gc(lake: LakeOption = None,
       keep: Annotated[int, typer.Option(
           "--keep", min=0, help="older versions to keep per entry (0: drop all history)")] = 0,
       dry_run: Annotated[bool, typer.Option(
           "--dry-run", help="say what would be removed, remove nothing")] = False,
       as_json: JsonOption = False) -> None:
    """Drop each entry's history beyond its newest --keep versions, and leftovers in .tmp/ that
    no live process holds; entries a live process holds are left alone (and named)."""
    from .doctor import collect_garbage

    findings = collect_garbage(_lake(lake), keep, dry_run)
    if as_json:
        out.print_json(json.dumps([finding.to_dict() for finding in findings]))
        return
    for finding in findings:
        label = "done" if finding.repaired else "would" if dry_run and finding.repairable else "kept"
        say(f"{escape(finding.kind)} {escape(finding.where)}: {escape(finding.problem)}\n  {label}: "
            f"{escape(finding.remedy)}", highlight=False)
    if not findings:
        out.print("nothing to collect")


CronOption = Annotated[str | None, typer.Option(
    "--cron", help="cron expression, e.g. '0 3 * * *' (default: the recipe's schedule: block)")]
IntervalOption = Annotated[float | None, typer.Option(
    "--interval", help="seconds between runs (default: the recipe's schedule: block)")]


@app.command()
def schedule(recipe: RecipeArg, cron: CronOption = None, interval: IntervalOption = None,
             lake: LakeOption = None, catalogs: CatalogsOption = None) -> None:
    """Register the recipe as a Prefect deployment on a schedule ($PREFECT_API_URL's server)."""
    from .flows import FLOW_NAME, describe_schedules, register

    deployment = register(recipe, lake, catalogs, cron=cron, interval=interval)
    out.print(f"registered deployment {FLOW_NAME}/{deployment.name} ({describe_schedules(deployment)}), "
              "paused until `replicalake serve` executes its runs")


@app.command()
def serve(recipes: Annotated[list[Path] | None, typer.Argument(
              help="recipe YAML files (default: every recipe registered with `schedule`)")] = None,
          cron: CronOption = None, interval: IntervalOption = None,
          lake: LakeOption = None, catalogs: CatalogsOption = None) -> None:
    """Execute the recipes' scheduled runs until stopped (Ctrl-C); each run computes only what is stale."""
    from .flows import serve_recipes

    serve_recipes(recipes or [], lake, catalogs, cron=cron, interval=interval)


@catalog_app.command("list")
def catalog_list(name: Annotated[str, typer.Argument(help="catalog stem or 'lake'")] = "lake",
                 lake: LakeOption = None, catalogs: CatalogsOption = None,
                 as_json: JsonOption = False) -> None:
    """List the entries of a catalog (default: the lake's own)."""
    from .catalog import load_catalog

    loaded = load_catalog(name, _lake(lake), catalogs)
    if as_json:
        out.print_json(json.dumps({n: {"url": e.url, "description": e.description}
                                   for n, e in loaded.entries.items()}))
        return
    print_table(f"catalog {name} ({loaded.path})", ("entry", "url", "description"),
                [(entry.name, entry.url, entry.description) for entry in loaded.entries.values()])


@catalog_app.command("show")
def catalog_show(entry: Annotated[str, typer.Argument(help="entry name")],
                 name: Annotated[str, typer.Option("--catalog", help="catalog stem or 'lake'")] = "lake",
                 lake: LakeOption = None, catalogs: CatalogsOption = None) -> None:
    """Show one entry: its dataset summary and provenance."""
    from .catalog import load_catalog, open_entry

    store = _lake(lake)
    found = load_catalog(name, store, catalogs).entry(entry)
    dataset = open_entry(found, store)
    out.print(dataset)


@export_app.command("lhapdf")
def export_lhapdf(
    name: Annotated[str, typer.Argument(help="PDF set in the lake (raw/ or derived/)")],
    outdir: Annotated[Path, typer.Argument(help="folder to write OUTDIR/NAME/ into")],
    lake: LakeOption = None,
    at: AtOption = None,
) -> None:
    """Write a PDF set as an LHAPDF lhagrid1 set (member 0 = replica average for MC fits)."""
    from .ingest.lhapdf import export_lhapdf as export
    from .locks import output_locks

    store = _lake(lake)
    zones = [zone for zone in ("raw", "derived") if store.exists(zone, name)]
    # A shared lock on the entry while it is read: `gc` leaves its history alone meanwhile.
    with output_locks(store, [], f"export {name}", reads=[f"{zone}/{name}" for zone in zones]):
        setdir = export(store.at(at) if at else store, name, outdir)
    out.print(f"wrote {setdir}")


@app.command()
def demo(lake: LakeOption = None,
         shape: Annotated[tuple[int, int, int], typer.Option(help="NY NX NE")] = (256, 256, 2048)) -> None:
    """Ingest a synthetic EELS image (if absent) and run recipes/eels_thickness.yaml on it."""
    from .graph import compile_recipe
    from .ingest.synthetic_eels import DEMO_NAME
    from .ingest.synthetic_eels import ingest_synthetic_eels as ingest
    from .runner import execute

    store = _lake(lake)
    if not store.exists("raw", DEMO_NAME):
        out.print(f"ingesting a {shape[0]}x{shape[1]}x{shape[2]} synthetic EELS image as raw/{DEMO_NAME}")
        ingest(store, DEMO_NAME, shape)
    project = Path(__file__).resolve().parent.parent  # the checkout (editable install)
    recipe = project / "recipes" / "eels_thickness.yaml"
    if not recipe.is_file():
        raise ReplicaLakeError(f"the demo recipe is not at {recipe}; run the demo from a checkout")
    _print_summary(execute(compile_recipe(recipe, store, project / "catalogs")))


# Optional packages and the pyproject extra that installs each (the core install runs the demo).
EXTRA_OF_PACKAGE = {
    "rsciio": "eels", "hyperspy": "eels", "exspy": "eels",
    "uproot": "lhc", "hist": "lhc", "h5py": "lhc",
    "nnpdf_data": "pdf", "parton": "pdf", "lhapdf_management": "pdf",
    "s3fs": "cloud", "dask_jobqueue": "cloud",
}


def main() -> None:
    """Console entry point: run the app, turning our errors, and the machine's (MACHINE_ERRORS: a
    read-only or full disk), into one line and exit code 1."""
    import logging

    from rich.logging import RichHandler

    engine_log = logging.getLogger("engine")
    if not engine_log.handlers:  # progress of long steps (training) goes to stderr
        engine_log.addHandler(RichHandler(console=err, show_path=False))
        engine_log.setLevel(logging.INFO)
    _LAKES_USED.clear()
    try:
        app()
    except KeyboardInterrupt:  # outside a command (typer ends one inside with exit 130, silently)
        _interrupted()
    except SystemExit as exc:
        if exc.code == 130 and _caused_by(exc, KeyboardInterrupt):
            _interrupted()
        raise
    except ReplicaLakeError as exc:
        err.print("[bold red]error:[/bold red] " + escape(str(exc)), highlight=False)
        sys.exit(1)
    except ImportError as exc:
        package = _missing_extra_package(exc)
        if package is None:
            raise
        extra = EXTRA_OF_PACKAGE[package]
        err.print("[bold red]error:[/bold red] " + escape(
            f"this needs the optional package {package!r}; install it with: pip install "
            f"'replicalake[{extra}]' (or '.[{extra}]' in a checkout)"), highlight=False)
        sys.exit(1)
    except Exception as exc:
        message = _machine_error_message(exc)
        if message is None:
            raise
        err.print("[bold red]error:[/bold red] " + escape(message), highlight=False)
        sys.exit(1)


def _interrupted() -> None:
    """Ctrl-C (SIGINT): one line and exit 130, the shell's code for it. A run leaves the chunks it
    wrote staged (engine/resume.py), so running the same command again resumes from them."""
    err.print("interrupted; rerun to resume", highlight=False)
    sys.exit(130)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `exc` or an exception it was raised from or during is a `kind`."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


# OSErrors about the machine, not the input: errno -> (what happened, what to do). main() says
# them in one line (exit 1) wherever they are raised; runs and ingests discard what they staged.
MACHINE_ERRORS = {
    errno.EROFS: ("the file system is read-only",
                  "use a lake you can write (--lake, $REPLICALAKE_LAKE) or remount it read-write"),
    errno.ENOSPC: ("no space left on the device",
                   "free some space, or use a lake on a larger disk, then run the command again"),
    errno.EDQUOT: ("the disk quota is exceeded",
                   "free some space within your quota, or use another lake, then run the command again"),
    errno.EACCES: ("permission denied",
                   "check the owner and mode of the folder, or use a lake you may write"),
    errno.EPERM: ("operation not permitted",
                  "check the owner and mode of the folder, or use a lake you may write"),
}


def _machine_error_message(exc: BaseException) -> str | None:
    """One line for an OSError in MACHINE_ERRORS (raised, or the cause of what was raised) naming
    the file, what happened and what to do; None for any other exception (a traceback: a bug)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in MACHINE_ERRORS:
            break
        exc = exc.__cause__ or exc.__context__
    else:
        return None
    what, todo = MACHINE_ERRORS[exc.errno]
    if exc.filename is not None:  # (a write that fails half way has none)
        where = str(exc.filename)
    elif _LAKES_USED:
        where = f"to the lake at {_LAKES_USED[-1]}"
    else:
        where = "a file"
    verb = "access" if exc.errno in (errno.EACCES, errno.EPERM) else "write"
    return (f"cannot {verb} {where}: {what} ({errno.errorcode[exc.errno]}); nothing half-written "
            f"was kept; {todo}")


def _missing_extra_package(exc: ImportError) -> str | None:
    """The optional package an ImportError is about: its module name, or named in its message
    (fsspec says "Install s3fs to access S3")."""
    name = (exc.name or "").split(".")[0]
    if name in EXTRA_OF_PACKAGE:
        return name
    return next((p for p in EXTRA_OF_PACKAGE if p in str(exc).split()), None)
