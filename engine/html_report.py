"""One static HTML page per run of a recipe, in the lake's reports/ zone.

What it holds is what the lake holds: each output's provenance as stored with it (inputs and
their tokens, params, op and code fingerprint, library versions, when it started and on which
host, projected and measured peak memory), when it was published (its checksum manifest's
time), its key numbers (engine/key_numbers.py), its plots inlined as PNG data (the page is one
file: copy it, mail it, open it offline), links to the lake entries, every step of the plan
with its staleness, and the lineage from the raw inputs (engine/lineage.py). A run is named by
the latest start time recorded among the recipe's outputs, so reporting again without a new
run rewrites the same page; the run's wall time is added when the page is written right after
the run (`run --prefect`, whose artifact links it).
"""

from __future__ import annotations

import base64
import json
import posixpath
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .key_numbers import describe, summarize
from .lineage import Lineage, add_plan, lake_lineage
from .ownership import recipe_location
from .plan import human_bytes
from .reports import report_path

if TYPE_CHECKING:
    from .plan import Plan, PlannedStep

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:left;vertical-align:top}
th{background:#f3f3f3} code{font-size:90%} .stale{color:#b00} .fresh{color:#070}
img{max-width:100%;border:1px solid #ddd;margin:0.3em 0} ul.lineage{font-family:monospace}
details{margin:0.3em 0 1em}
"""


def report_page_path(plan: Plan, run_id: str) -> str:
    """reports/runs/RECIPE/RUN.html in the lake."""
    return plan.lake.entry_path("reports", f"runs/{plan.recipe.name}/{run_id}.html")


def run_id(plan: Plan) -> str:
    """The run a page reports: the latest start recorded among the outputs ('never-run' if none)."""
    starts = [
        p.get("started") for p in (_provenance(plan, s) for s in plan.outputs) if p and p.get("started")
    ]
    if not starts:
        return "never-run"
    return datetime.fromisoformat(max(starts)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def write_report(plan: Plan, summary: Any = None, lineage: Lineage | None = None) -> str:
    """Render the page for `plan` (a RunSummary `summary` adds the run's wall time and which
    outputs it computed) and write it atomically; return its path in the lake."""
    path = report_page_path(plan, run_id(plan))
    if lineage is None:
        lineage = recipe_lineage(plan)
    page = render_report(plan, summary, lineage, page_dir=posixpath.dirname(path))
    plan.lake.write_bytes_atomic(path, page.encode())
    return path


def recipe_lineage(plan: Plan, catalogs: str | Path | None = None) -> Lineage:
    """The lineage of the recipe's outputs: its own chain, extended upstream through inputs that
    other recipes published (their recipes compiled from the lake's provenance)."""
    whole = lake_lineage(plan.lake, catalogs, plans=[plan])
    part = Lineage()
    add_plan(part, plan)
    for key in list(part.nodes):
        if key in whole.nodes:
            around = whole.around(key)
            upstream = {key} | around.upstream(key)
            part.nodes.update(
                {k: n for k, n in around.nodes.items() if k in upstream and k not in part.nodes}
            )
            part.edges |= {(a, b) for a, b in around.edges if a in upstream and b in upstream}
    return part


def _provenance(plan: Plan, step: PlannedStep) -> dict[str, Any] | None:
    lake = plan.lake
    return lake.provenance(step.zone, step.name) if lake.exists(step.zone, step.name) else None


def _link(lake, target: str, page_dir: str) -> str:
    """A link from the page to a lake path: relative on a local lake (the lake can move), the
    object store's URL otherwise."""
    if lake.is_local:
        return escape(posixpath.relpath(target, page_dir))
    return escape(lake.url(target))


def _table(head: list[str] | None, rows: list[list[str]]) -> str:
    """Cells are HTML already (escaped by the caller); no header row without `head`."""
    header = "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>" if head else ""
    return (
        f"<table>{header}<tbody>"
        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
        + "</tbody></table>"
    )


def _timing(lake, entry: str, provenance: dict[str, Any]) -> str:
    """'STARTED on HOST, published PUBLISHED (T s later)': the run's start from the provenance,
    the publish time from the store's checksum manifest (written last, when it was published)."""
    text = f"{provenance.get('started', '-')} on {provenance.get('host', '-')}"
    try:
        info = lake.fs.info(f"{entry}/_integrity/zarr.json")
        stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
        published = stamp if isinstance(stamp, datetime) else datetime.fromtimestamp(float(stamp), UTC)
        started = datetime.fromisoformat(str(provenance["started"]))
    except (OSError, KeyError, TypeError, ValueError):  # no manifest, no time, or no start recorded
        return text
    seconds = (published - started).total_seconds()
    return text + f", published {published.isoformat(timespec='seconds')} ({seconds:.1f} s later)"


def _memory(provenance: dict[str, Any]) -> str:
    memory = provenance.get("memory") or {}
    measured, projected = memory.get("measured_peak_bytes"), memory.get("projected_bytes")
    if measured is None and projected is None:
        return "-"
    return (
        f"{'-' if measured is None else human_bytes(measured)} measured / "
        f"{'-' if projected is None else human_bytes(projected)} projected"
    )


def _output_section(plan: Plan, step: PlannedStep, page_dir: str, computed: set[str]) -> str:
    lake = plan.lake
    key = f"{step.zone}/{step.name}"
    entry = lake.entry_path(step.zone, step.name)
    provenance = _provenance(plan, step)
    parts = [f"<h2 id='{escape(key)}'>{escape(key)}</h2>"]
    if provenance is None:
        return parts[0] + "<p class='stale'>not in the lake yet: run the recipe</p>"
    status = (
        "computed by this run"
        if key in computed
        else ("up to date" if step.up_to_date else f"stale ({step.stale_reason})")
    )
    inputs = provenance.get("inputs") or {}
    input_rows = [
        [
            escape(name),
            f"<code>{escape(str(token))}</code>",
            escape(", ".join(f"{ref} ({plan.step(ref).op})" for n, ref in step.inputs.items() if n == name)),
        ]
        for name, token in inputs.items()
    ]
    versions = ", ".join(f"{k} {v}" for k, v in (provenance.get("versions") or {}).items())
    facts = [
        [
            "entry",
            f"<a href='{_link(lake, entry, page_dir)}'>{escape(key)}</a> ({human_bytes(lake.size(entry))})",
        ],
        [
            "status",
            f"<span class='{'stale' if status.startswith('stale') else 'fresh'}'>{escape(status)}</span>",
        ],
        [
            "step / op",
            escape(
                f"{provenance.get('step')} / {provenance.get('op')} (version {provenance.get('op_version')})"
            ),
        ],
        ["token", f"<code>{escape(str(provenance.get('token')))}</code>"],
        ["code fingerprint", f"<code>{escape(str(provenance.get('code', '')))}</code>"],
        [
            "recipe",
            escape(
                f"{provenance.get('recipe')} ({provenance.get('recipe_path')}, "
                f"hash {provenance.get('recipe_hash')})"
            ),
        ],
        ["timing", escape(_timing(lake, entry, provenance))],
        ["peak memory of its run", escape(_memory(provenance))],
        ["versions", escape(versions)],
    ]
    parts.append(_table(None, facts))
    parts.append("<h3>params</h3><pre>" + escape(json.dumps(provenance.get("params"), indent=1)) + "</pre>")
    if input_rows:
        parts.append("<h3>inputs</h3>" + _table(["input", "token", "step"], input_rows))
    try:
        numbers = summarize(lake.open(step.zone, step.name))
    except Exception as exc:  # noqa: BLE001 - the page must not fail on one unreadable output
        numbers = [
            {
                "variable": "-",
                "statistic": "skipped",
                "size": 0,
                "note": f"key numbers unreadable: {type(exc).__name__}: {exc}",
            }
        ]
    if numbers:
        rows = [[escape(n["variable"]), escape(n["statistic"]), escape(describe(n))] for n in numbers]
        parts.append("<h3>key numbers</h3>" + _table(["variable", "statistic", "value"], rows))
    for plot in step.output.plots:
        png = report_path(lake, step.zone, step.name, plot)
        title = escape(plot.title or plot.variable)
        if lake.fs.exists(png):
            data = base64.b64encode(lake.fs.cat_file(png)).decode()
            parts.append(
                f"<figure><img alt='{title}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{title} (<a href='{_link(lake, png, page_dir)}'>PNG</a>)"
                "</figcaption></figure>"
            )
        else:
            parts.append(f"<p class='stale'>plot {title}: not drawn yet</p>")
    return "\n".join(parts)


def render_report(
    plan: Plan, summary: Any = None, lineage: Lineage | None = None, page_dir: str | None = None
) -> str:
    """The page as text (see the module docstring)."""
    lake = plan.lake
    page_dir = page_dir or posixpath.dirname(report_page_path(plan, run_id(plan)))
    computed = {f"{o.zone}/{o.name}" for o in summary.computed} if summary is not None else set()
    name = escape(plan.recipe.name)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    head = [
        f"<h1>{name}</h1>",
        f"<p>{escape(plan.recipe.description or '')}</p>",
        f"<p>recipe <code>{escape(recipe_location(str(plan.path)))}"
        f"</code>; lake <code>{escape(lake.root_url)}</code>; run {escape(run_id(plan))}; page written {when}"
        + (
            f"; this run took {summary.seconds:.1f} s on {escape(summary.scheduler)} and computed "
            f"{len(summary.computed)} of {len(summary.outputs)} outputs"
            if summary is not None
            else ""
        )
        + "</p>",
    ]
    outputs = []
    for step in plan.outputs:
        key = f"{step.zone}/{step.name}"
        provenance = _provenance(plan, step) or {}
        status = (
            "computed by this run"
            if key in computed
            else step.status + (f" ({step.stale_reason})" if step.stale_reason else "")
        )
        outputs.append(
            [
                f"<a href='#{escape(key)}'>{escape(key)}</a>",
                escape(step.op),
                escape(status),
                escape(str(provenance.get("started", "-"))),
                escape(_memory(provenance)),
            ]
        )
    steps = [
        [
            escape(r["id"]),
            escape(r["op"]),
            escape(r["status"]),
            escape(" ".join(f"{d}:{n}" for d, n in r["dims"].items())),
            escape(" ".join(f"{d}:{n}" for d, n in r["chunks"].items())),
            escape(human_bytes(r["bytes"])),
            f"<code>{escape(r['token'][:16])}</code>",
        ]
        for r in plan.rows()
    ]
    body = [
        *head,
        "<h2>outputs</h2>",
        _table(["output", "op", "status", "started", "peak memory"], outputs),
        *(_output_section(plan, step, page_dir, computed) for step in plan.outputs),
        "<h2>steps</h2>",
        _table(["step", "op", "status", "dims", "chunks", "size", "token"], steps),
        "<h2>lineage</h2>",
        (lineage if lineage is not None else recipe_lineage(plan)).to_html(),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{name}: run {escape(run_id(plan))}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
