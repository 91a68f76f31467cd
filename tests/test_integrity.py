"""Checksums recorded at publish, `replicalake verify`, damaged sources and sources changed mid-run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.errors import RunError
from engine.graph import compile_recipe
from engine.integrity import read_manifest
from engine.runner import execute
from engine.testing import put_in_lake, ramp_dataset
from tests.conftest import lake_files
from tests.test_cli import replicalake
from tests.test_graph import RECIPE


def chunk_file(lake, entry: str, chunk: str = "1/0") -> Path:
    return Path(lake.root) / entry / "a" / "c" / chunk


def test_published_entries_carry_a_manifest_that_verifies(ramp_lake, write_recipe, monkeypatch, capsys):
    engine.run(write_recipe(RECIPE), ramp_lake)
    manifest = read_manifest(ramp_lake.fs, ramp_lake.entry_path("derived", "smoke/total"))
    assert "zarr.json" in manifest and "a/c/0" in manifest
    assert {"a/c/0/0", "a/c/1/1"} <= set(read_manifest(ramp_lake.fs, ramp_lake.entry_path("raw", "ramp")))
    code, out, _ = replicalake(monkeypatch, capsys, "verify", "--json")
    reports = {r["entry"]: r for r in json.loads(out)}
    assert code == 0 and set(reports) == {"raw/ramp", "derived/smoke/total"}
    assert all(r["ok"] and r["checked_by"] == "manifest" for r in reports.values())


def test_verify_names_flipped_missing_and_unexpected_chunks(ramp_lake, monkeypatch, capsys):
    flipped = chunk_file(ramp_lake, "raw/ramp", "1/0")
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    chunk_file(ramp_lake, "raw/ramp", "0/1").unlink()
    code, out, _ = replicalake(monkeypatch, capsys, "verify", "raw/ramp")
    assert code == 1 and "DAMAGED (2 files)" in out
    assert "array 'a', chunk (1, 0): checksum differs" in out
    assert "array 'a', chunk (0, 1): missing" in out
    chunk_file(ramp_lake, "raw/ramp", "9").mkdir()
    chunk_file(ramp_lake, "raw/ramp", "9/9").write_bytes(b"stray")
    code, out, _ = replicalake(monkeypatch, capsys, "verify", "raw/ramp")
    assert code == 1 and "DAMAGED (3 files)" in out
    assert "array 'a', chunk (9, 9): not in the manifest" in out


def test_verify_unknown_entry_is_a_clear_error(ramp_lake, monkeypatch, capsys):
    code, _, err = replicalake(monkeypatch, capsys, "verify", "raw/rmap")
    assert code == 1 and "no entry 'raw/rmap' (did you mean 'raw/ramp'?)" in err


@pytest.mark.parametrize(("fault", "problem"), [("truncate", "9 bytes, "),
                                               ("delete", "missing (listed in the manifest)")])
def test_truncated_or_missing_source_chunk_fails_the_run_naming_array_and_chunk(
        fault, problem, ramp_lake, write_recipe, monkeypatch, capsys):
    target = chunk_file(ramp_lake, "raw/ramp", "1/0")
    if fault == "truncate":
        target.write_bytes(target.read_bytes()[:9])
    else:  # zarr would silently read the fill value: the run's listing check must catch it
        target.unlink()
    before = lake_files(ramp_lake)
    code, _, err = replicalake(monkeypatch, capsys, "run", write_recipe(RECIPE), "--no-progress")
    assert code == 1
    assert "failed reading damaged input data" in err
    assert f"data: array 'a', chunk (1, 0): {problem}" in " ".join(err.split())
    assert "Traceback" not in err
    assert lake_files(ramp_lake) == before


def test_undecodable_chunk_named_without_a_manifest(ramp_lake, write_recipe):
    store = Path(ramp_lake.entry_path("raw", "ramp"))
    for path in (store / "_integrity").iterdir():
        path.unlink()
    (store / "_integrity").rmdir()
    target = chunk_file(ramp_lake, "raw/ramp", "1/1")
    target.write_bytes(target.read_bytes()[:9])
    with pytest.raises(RunError, match=r"data: array 'a', chunk \(1, 1\): cannot be decoded"):
        execute(compile_recipe(write_recipe(RECIPE), ramp_lake), progress=False)


def test_source_republished_after_compile_is_not_published_under_the_old_token(ramp_lake, write_recipe):
    plan = compile_recipe(write_recipe(RECIPE), ramp_lake)
    put_in_lake(ramp_lake, "ramp", ramp_dataset() * 2)
    with pytest.raises(RunError, match="source 'data' .* was republished while this run read it"):
        execute(plan, progress=False)
    assert not ramp_lake.exists("derived", "smoke/total")
    summary = engine.run(write_recipe(RECIPE), ramp_lake)
    assert summary.outputs[0].status == "computed"
    expected = [2 * sum(10 * y + x for x in range(6)) for y in range(2, 6)]
    np.testing.assert_allclose(ramp_lake.open("derived", "smoke/total")["a"].values, expected)


def test_flipped_bit_that_still_decodes_is_caught_by_verify_inputs(ramp_lake, write_recipe, monkeypatch,
                                                                    capsys):
    """Blosc has no checksum: a flipped bit can decode to wrong numbers; --verify-inputs reads every byte."""
    target = chunk_file(ramp_lake, "raw/ramp", "1/0")
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    code, _, err = replicalake(monkeypatch, capsys, "run", write_recipe(RECIPE), "--no-progress",
                               "--verify-inputs")
    assert code == 1
    assert "data: array 'a', chunk (1, 0): checksum differs" in " ".join(err.split())
    assert not ramp_lake.exists("derived", "smoke/total")
