"""A run computes its stale outputs in waves: an output that reads another stale output waits for
it to be published and reads it from the lake, so no intermediate is held whole between them."""

from __future__ import annotations

import re

import numpy as np
import pytest

import engine
from engine import runner
from engine.errors import RunError
from engine.graph import compile_recipe
from engine.testing import put_in_lake, ramp_dataset
from engine.waves import output_waves, stale_outputs_upstream
from tests.conftest import lake_files
from tests.test_cli import replicalake

RECIPE = """\
version: 1
name: chain
sources:
  data: {catalog: lake, entry: raw/ramp, chunks: {y: 4}}
steps:
  - id: part
    op: core.select
    inputs: {data: data}
    params: {ranges: {y: [0, 6]}}
  - id: rows
    op: core.mean
    inputs: {data: part}
    params: {dims: [x]}
  - id: total
    op: core.sum
    inputs: {data: rows}
    params: {dims: [y]}
  - id: columns
    op: core.mean
    inputs: {data: data}
    params: {dims: [y]}
outputs:
  part: {zone: derived}
  total: {zone: derived}
  columns: {zone: derived}
"""


@pytest.fixture
def chain(ramp_lake, write_recipe):
    return write_recipe(RECIPE)


def test_outputs_that_read_a_stale_output_wait_for_the_next_wave(ramp_lake, chain):
    plan = compile_recipe(chain, ramp_lake)
    # `total` reads `part` through the intermediate `rows`; `columns` needs no other output
    assert stale_outputs_upstream(plan, "total") == {"part"}
    assert stale_outputs_upstream(plan, "columns") == set()
    assert output_waves(plan) == [["part", "columns"], ["total"]]


def test_plan_shows_each_output_s_wave(ramp_lake, chain, monkeypatch, capsys):
    rows = {row["id"]: row["wave"] for row in compile_recipe(chain, ramp_lake).rows()}
    assert rows == {"data": None, "part": 1, "rows": None, "total": 2, "columns": 1}
    code, out, _ = replicalake(monkeypatch, capsys, "plan", str(chain))
    assert code == 0 and "-> derived/chain/total, wave 2 of 2" in out.replace("\n", " ").replace("  ", " ")


def test_the_run_summary_names_each_output_s_wave_and_its_time(ramp_lake, chain, monkeypatch, capsys):
    code, out, _ = replicalake(monkeypatch, capsys, "run", str(chain))
    flat = " ".join(out.split())
    assert code == 0 and re.search(r"derived/chain/total .*computed .*2 of 2, \d+\.\d s", flat), out


def test_an_up_to_date_output_ends_the_walk(ramp_lake, chain):
    engine.run(chain, ramp_lake, progress=False)
    plan = compile_recipe(chain, ramp_lake, force=["total"])
    assert stale_outputs_upstream(plan, "total") == set()
    assert output_waves(plan) == [["total"]]
    assert output_waves(compile_recipe(chain, ramp_lake)) == []


def test_a_chain_run_publishes_each_wave_and_the_next_reads_it_from_the_lake(ramp_lake, chain, monkeypatch):
    computed = []
    compute = runner._compute

    def recorded(writes, address, progress, label):
        computed.append(label)
        return compute(writes, address, progress, label)

    monkeypatch.setattr(runner, "_compute", recorded)
    summary = engine.run(chain, ramp_lake, progress=False)
    assert computed == ["computing part, columns (wave 1 of 2)", "computing total (wave 2 of 2)"]
    ramp = ramp_dataset()["a"]
    np.testing.assert_allclose(ramp_lake.open("derived", "chain/total")["a"].values,
                               ramp.sel(y=slice(0, 6)).mean("x").sum("y"))  # ranges are inclusive
    np.testing.assert_allclose(ramp_lake.open("derived", "chain/columns")["a"].values, ramp.mean("y"))
    # each output records its own wave's measured peak; the run's is the larger of the two
    memory = {o.step: o.memory for o in summary.outputs}
    assert memory["part"] == memory["columns"] and memory["total"] is not memory["part"]
    assert summary.memory["measured_peak_bytes"] == max(m["measured_peak_bytes"] for m in memory.values())
    assert ramp_lake.provenance("derived", "chain/total")["memory"] == memory["total"]
    # and its wave's number and times, which sum to no more than the run's
    waves = {o.step: o.wave for o in summary.outputs}
    assert [waves[step]["number"] for step in ("part", "columns", "total")] == [1, 1, 2]
    assert all(w["of"] == 2 and 0 < w["seconds"] and 0 <= w["cpu_seconds"] for w in waves.values())
    assert waves["part"]["seconds"] + waves["total"]["seconds"] <= summary.seconds
    assert ramp_lake.provenance("derived", "chain/total")["wave"] == waves["total"]
    # forced again, the run forces `total` in its second wave although `part` is up to date by then
    computed.clear()
    again = engine.run(chain, ramp_lake, progress=False, force=["part"])
    assert computed == ["computing part (wave 1 of 2)", "computing total (wave 2 of 2)"]
    assert {o.step: o.status for o in again.outputs} == {
        "part": "computed", "total": "computed", "columns": "up to date"}


def test_a_source_changed_between_waves_stops_the_run_and_publishes_nothing(ramp_lake, chain, monkeypatch):
    compile_again = runner.compile_recipe

    def republished_first(*args, **kwargs):
        put_in_lake(ramp_lake, "ramp", ramp_dataset() * 2)
        return compile_again(*args, **kwargs)

    monkeypatch.setattr(runner, "compile_recipe", republished_first)
    with pytest.raises(RunError, match="changed while this run ran, so total would no longer"):
        engine.run(chain, ramp_lake, progress=False)
    assert not [path for path in lake_files(ramp_lake) if path.startswith(("derived/", ".tmp/resume"))]


def test_a_later_wave_reads_the_earlier_ones_from_their_staging_stores(ramp_lake, chain, monkeypatch):
    """Nothing is published before the last wave is written: wave 2 compiles against wave 1's
    staged stores (still in .tmp/resume/), and a failure there leaves the lake as it was."""
    compile_again = runner.compile_recipe
    seen = {}

    def failing_second_wave(*args, staged, **kwargs):
        again = compile_again(*args, staged=staged, **kwargs)
        seen.update(staged=dict(staged), part=again.step("part"),
                    published=ramp_lake.exists("derived", "chain/part"))
        raise ValueError("the second wave fails")

    monkeypatch.setattr(runner, "compile_recipe", failing_second_wave)
    with pytest.raises(ValueError, match="the second wave fails"):
        engine.run(chain, ramp_lake, progress=False)
    assert set(seen["staged"]) == {"part", "columns"} and "/.tmp/resume/" in seen["staged"]["part"]
    assert seen["part"].staged and seen["part"].read_from_store and not seen["published"]
    assert not ramp_lake.exists("derived", "chain/part")
    assert not [path for path in lake_files(ramp_lake) if path.startswith(".tmp/resume")]


def test_an_interrupted_chain_resumes_its_staged_waves(ramp_lake, chain, monkeypatch):
    """An interrupt (or a kill) between waves keeps wave 1's staging: the rerun verifies its
    chunks instead of computing them, then computes wave 2."""
    compile_again = runner.compile_recipe

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "compile_recipe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.run(chain, ramp_lake, progress=False)
    assert not ramp_lake.exists("derived", "chain/part")
    monkeypatch.setattr(runner, "compile_recipe", compile_again)
    summary = {o.step: o for o in engine.run(chain, ramp_lake, progress=False).outputs}
    assert summary["part"].chunks_written == 0 and summary["part"].chunks_resumed > 0
    assert summary["total"].chunks_written > 0 and summary["total"].chunks_resumed == 0
