"""`replicalake report` (one static HTML page per run) and `replicalake lineage` (raw inputs to
every output, with staleness): the page's structure with html.parser always, and its rendering
in headless Chromium where a chromium binary is installed."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from engine.testing import put_in_lake, ramp_dataset
from tests.test_cli import replicalake

REPORTED = """\
version: 1
name: reported
description: a map of part of the ramp and its row sums
sources:
  data: {catalog: lake, entry: raw/ramp}
steps:
  - id: part
    op: core.select
    inputs: {data: data}
    params: {ranges: {y: [2, 5]}}
  - id: total
    op: core.sum
    inputs: {data: part}
    params: {dims: [x]}
outputs:
  part:
    zone: derived
    plots: [{variable: a, title: "ramp part"}]
  total:
    zone: derived
    plots: [{variable: a, kind: line, title: "row sums"}]
"""

# a second recipe reading the first one's output from the lake: lineage joins them
DOWNSTREAM = """\
version: 1
name: downstream
sources:
  part: {catalog: lake, entry: derived/reported/part}
steps:
  - id: mean
    op: core.mean
    inputs: {data: part}
    params: {dims: [y]}
outputs:
  mean: {zone: derived}
"""


class Page(HTMLParser):
    """What a test checks of a page: headings, images, links, table cells, list items, text."""

    def __init__(self, text: str):
        super().__init__()
        self.headings: list[str] = []
        self.images: list[dict] = []
        self.links: list[str] = []
        self.items: list[str] = []
        self.text: list[str] = []
        self._heading = self._item = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h1", "h2", "h3"):
            self._heading = []
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "li":
            self._item = []

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data):
        self.text.append(data)
        if self._heading is not None:
            self._heading.append(data)
        if self._item is not None:
            self._item.append(data)
            if data.strip():
                self.items.append(data.strip())

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


@pytest.fixture
def reported_lake(lake):
    ramp = ramp_dataset()
    ramp["a"].attrs.update(long_name="ramp value", units="counts", key_numbers="median")
    put_in_lake(lake, "ramp", ramp)
    return lake


def run_and_report(monkeypatch, capsys, recipe) -> tuple[Path, Page]:
    code, out, err = replicalake(monkeypatch, capsys, "run", recipe, "--no-progress")
    assert code == 0, err
    code, out, err = replicalake(monkeypatch, capsys, "report", recipe, "--json")
    assert code == 0, err
    path = Path(json.loads(out)["report"])
    return path, Page(path.read_text())


def test_report_page_holds_provenance_key_numbers_plots_steps_and_lineage(
    reported_lake, write_recipe, monkeypatch, capsys
):
    recipe = write_recipe(REPORTED)
    path, page = run_and_report(monkeypatch, capsys, recipe)
    lake = reported_lake
    assert path.parent == Path(lake.root) / "reports" / "runs" / "reported" and path.suffix == ".html"
    provenance = lake.provenance("derived", "reported/part")
    assert path.stem == provenance["started"].replace("-", "").replace(":", "").replace("+0000", "Z")
    assert page.headings[:2] == ["reported", "outputs"]
    assert {"derived/reported/part", "derived/reported/total", "steps", "lineage"} <= set(page.headings)
    text = page.all_text
    for fact in (
        provenance["token"],
        provenance["code"],
        provenance["started"],
        '"ranges"',
        "core.select",
        "a median 37.5 counts",
        "ramp part",
        "row sums",
    ):
        assert fact in text, fact
    # timing: the start from the provenance, the publish from the store's manifest
    manifest = Path(lake.root) / "derived/reported/part/_integrity/zarr.json"
    published = datetime.fromtimestamp(manifest.stat().st_mtime, UTC)
    took = (published - datetime.fromisoformat(provenance["started"])).total_seconds()
    assert f"published {published.isoformat(timespec='seconds')} ({took:.1f} s later)" in text
    assert 0 <= took < 120
    # plots are inline PNGs, one per plot
    assert [image["alt"] for image in page.images] == ["ramp part", "row sums"]
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        assert base64.b64decode(image["src"][len(prefix) :])[:8] == b"\x89PNG\r\n\x1a\n"
    # links reach the lake entries and the PNG files, relative to the page
    entries = [link for link in page.links if link.endswith("derived/reported/part") and "#" not in link]
    assert entries and (path.parent / entries[0] / "zarr.json").is_file()
    pngs = [link for link in page.links if link.endswith(".png")]
    assert len(pngs) == 2 and all((path.parent / link).is_file() for link in pngs)
    # lineage from the raw input through the intermediate-free chain
    assert page.items[:3] == [
        "raw/ramp [input]: in the lake",
        "derived/reported/part [core.select, output of reported]: up to date",
        "derived/reported/total [core.sum, output of reported]: up to date",
    ]
    # reporting again without a run rewrites the same page
    code, out, _ = replicalake(monkeypatch, capsys, "report", recipe, "--json")
    assert code == 0 and Path(json.loads(out)["report"]) == path


def test_report_of_a_recipe_never_run_says_so(reported_lake, write_recipe, monkeypatch, capsys):
    code, out, err = replicalake(monkeypatch, capsys, "report", write_recipe(REPORTED))
    assert code == 0, err
    assert "runs/reported/never-run.html" in out and "`replicalake run` it first" in out
    page = Page((Path(reported_lake.root) / "reports/runs/reported/never-run.html").read_text())
    assert "not in the lake yet: run the recipe" in page.all_text and not page.images


def chromium_binary() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.mark.skipif(chromium_binary() is None, reason="no chromium binary (apt-get install chromium)")
def test_report_page_renders_in_headless_chromium(reported_lake, write_recipe, monkeypatch, capsys, tmp_path):
    """The browser loads the page: its text is there and every inline PNG decodes (a script
    added to a copy of the page records each image's natural width once the page has loaded)."""
    path, _ = run_and_report(monkeypatch, capsys, write_recipe(REPORTED))
    probe = tmp_path / "probe.html"
    probe.write_text(
        path.read_text().replace(
            "</body>",
            (
                "<script>window.addEventListener('load', () => {document.body.dataset.widths = "
                "[...document.images].map(i => i.complete ? i.naturalWidth : -1).join(',');});"
                "</script></body>"
            ),
        )
    )
    done = subprocess.run(
        [
            chromium_binary(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "derived/reported/part" in dom and "a median 37.5 counts" in dom
    widths = [int(w) for w in dom.split('data-widths="')[1].split('"')[0].split(",")]
    assert len(widths) == 2 and all(w > 100 for w in widths)


def test_lineage_joins_recipes_and_shows_staleness(reported_lake, write_recipe, monkeypatch, capsys):
    reported, downstream = write_recipe(REPORTED), write_recipe(DOWNSTREAM, "downstream.yaml")
    for recipe in (reported, downstream):
        assert replicalake(monkeypatch, capsys, "run", recipe, "--no-progress")[0] == 0
    code, out, _ = replicalake(monkeypatch, capsys, "lineage")
    assert code == 0
    assert out.splitlines() == [
        "raw/ramp [input]: in the lake",
        "  -> derived/reported/part [core.select, output of reported]: up to date",
        "    -> derived/downstream/mean [core.mean, output of downstream]: up to date",
        "    -> derived/reported/total [core.sum, output of reported]: up to date",
    ]
    # a changed param makes that output stale, with the plan's reason
    reported.write_text(REPORTED.replace("dims: [x]", "dims: [y]"))
    code, out, _ = replicalake(monkeypatch, capsys, "lineage", "derived/reported/total", "--json")
    found = json.loads(out)
    nodes = {node["key"]: node for node in found["nodes"]}
    assert code == 0 and set(nodes) == {"raw/ramp", "derived/reported/part", "derived/reported/total"}
    assert (nodes["derived/reported/total"]["status"], nodes["derived/reported/total"]["why"]) == (
        "stale",
        "params changed",
    )
    assert ["derived/reported/part", "derived/reported/total"] in found["edges"]


def test_lineage_of_an_unknown_entry_or_a_lost_recipe(reported_lake, write_recipe, monkeypatch, capsys):
    recipe = write_recipe(REPORTED)
    assert replicalake(monkeypatch, capsys, "run", recipe, "--no-progress")[0] == 0
    code, _, err = replicalake(monkeypatch, capsys, "lineage", "derived/reported/prt")
    assert code == 1 and "no lake entry 'derived/reported/prt' in the lineage" in err
    assert "did you mean 'derived/reported/part'" in " ".join(err.split())
    recipe.unlink()  # outputs stay in the lineage, joined through their provenance, with the reason
    code, out, _ = replicalake(monkeypatch, capsys, "lineage")
    assert code == 0 and "raw/ramp [input]: in the lake" in out
    assert (
        "derived/reported/part [core.select, output of reported]: unknown "
        f"(its recipe {recipe} is not a file here (moved or deleted))" in out
    )


def test_the_prefect_run_report_links_the_page(reported_lake, write_recipe, monkeypatch, capsys):
    """`run --prefect` writes the page (flows.report_outputs) and its markdown artifact links it."""
    from engine import flows
    from engine.graph import compile_recipe
    from engine.html_report import write_report
    from engine.runner import execute

    recipe = write_recipe(REPORTED)
    plan = compile_recipe(recipe, reported_lake)
    summary = execute(plan, progress=False)
    page = write_report(plan, summary)
    markdown = flows.outputs_markdown(plan, summary, page)
    assert f"[{page}](file://{page})" in markdown
    text = Page(Path(page).read_text()).all_text
    assert "this run took" in text and "computed 2 of 2 outputs" in text
    assert "computed by this run" in text
