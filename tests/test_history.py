"""Lake history: each publish keeps the previous version (`.history/`), `log` lists the versions
with their params, `--at` reads an old one exactly, `gc` drops them, and a SIGKILL at any step of
a publish leaves the old or the new version current with the history whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import engine
import replicalake as rl
from engine.catalog import LAKE_CATALOG, load_catalog
from engine.doctor import examine
from engine.errors import LakeError
from engine.history import versions
from engine.integrity import find_damage
from engine.storage import HISTORY_DIR, VERSION_ID, Lake
from engine.testing import put_in_lake, ramp_dataset
from tests.conftest import REPO
from tests.test_cli import replicalake
from tests.test_graph import RECIPE


def run_with_ranges(write_recipe, lake: Lake, low: int, high: int):
    """Run the smoke recipe with y in [low, high] (one recipe file), its selection (step `part`,
    whose params change) published as derived/smoke/part."""
    text = RECIPE.replace("[2, 5]", f"[{low}, {high}]")
    text = text.replace("total: {zone: derived}", "part: {zone: derived}")
    return engine.run(write_recipe(text), lake)


def test_reruns_with_other_params_keep_each_version_and_log_lists_them(
    ramp_lake, write_recipe, monkeypatch, capsys
):
    ranges = [(2, 5), (1, 6), (0, 3)]
    expected = []
    for low, high in ranges:
        run_with_ranges(write_recipe, ramp_lake, low, high)
        expected.append(ramp_lake.open("derived", "smoke/part")["a"].values.copy())
    code, out, err = replicalake(
        monkeypatch, capsys, "log", "derived/smoke/part", "--lake", ramp_lake.root, "--json"
    )
    assert code == 0, err
    listed = json.loads(out)
    assert [item["current"] for item in listed] == [True, False, False]
    assert [item["params"]["ranges"]["y"] for item in listed] == [list(r) for r in reversed(ranges)]
    assert all(VERSION_ID.fullmatch(item["version"]) for item in listed)
    assert [item["version"] for item in listed] == sorted((item["version"] for item in listed), reverse=True)
    assert len({item["params_digest"] for item in listed}) == 3 and all(item["code"] for item in listed)
    assert all(item["recipe"] == "smoke" and item["step"] == "part" for item in listed)
    # --at reads each old version exactly, through the Lake, the notebook API and the log
    view = rl.open_lake(ramp_lake.root)
    for item, values in zip(listed, reversed(expected)):
        np.testing.assert_array_equal(
            ramp_lake.open("derived", "smoke/part", at=item["version"])["a"].values, values
        )
        np.testing.assert_array_equal(view.open("derived/smoke/part", at=item["version"])["a"].values, values)
    assert [item["version"] for item in view.log("smoke/part")] == [item["version"] for item in listed]
    np.testing.assert_array_equal(view["smoke/part"]["a"].values, expected[-1])
    code, out, err = replicalake(
        monkeypatch,
        capsys,
        "log",
        "derived/smoke/part",
        "--lake",
        ramp_lake.root,
        "--at",
        listed[2]["version"],
    )
    assert code == 0 and '"y": [2.0, 5.0]' in out and "current: False" in out, out + err
    # the catalog lists the current version only; runs never see history
    assert list(load_catalog(LAKE_CATALOG, ramp_lake).entries) == ["derived/smoke/part", "raw/ramp"]
    assert examine(ramp_lake) == []


def test_at_an_unknown_or_malformed_version_names_what_there_is(ramp_lake, monkeypatch, capsys):
    put_in_lake(ramp_lake, "ramp", ramp_dataset() + 1)
    kept = ramp_lake.history_versions("raw", "ramp")
    unknown = "20200101T000000.000000Z-abcdef"
    with pytest.raises(LakeError, match=f"no version '{unknown}' of raw/ramp.*{kept[0]}"):
        ramp_lake.open("raw", "ramp", at=unknown)
    lake = ["--lake", ramp_lake.root]
    code, _, err = replicalake(monkeypatch, capsys, "log", "raw/ramp", *lake, "--at", "yesterday")
    assert code == 1 and "version 'yesterday': expected a version id like" in " ".join(err.split())
    code, _, err = replicalake(monkeypatch, capsys, "log", "raw/nothing", "--lake", ramp_lake.root)
    assert code == 1 and "no entry 'raw/nothing' and no history of it" in " ".join(err.split())


def test_gc_keeps_the_newest_n_and_verify_checks_history(ramp_lake, monkeypatch, capsys):
    for shift in range(1, 5):
        put_in_lake(ramp_lake, "ramp", ramp_dataset() + shift)
    kept = ramp_lake.history_versions("raw", "ramp")
    assert len(kept) == 4
    lake = ["--lake", ramp_lake.root]
    code, out, err = replicalake(monkeypatch, capsys, "gc", *lake, "--keep", "2", "--dry-run")
    assert code == 0 and "would: remove" in out, out + err
    assert ramp_lake.history_versions("raw", "ramp") == kept
    code, out, err = replicalake(monkeypatch, capsys, "verify", "raw/ramp", "--lake", ramp_lake.root)
    assert code == 0 and "4 older versions in the history not checked" in out, out + err
    code, out, err = replicalake(monkeypatch, capsys, "gc", "--lake", ramp_lake.root, "--keep", "2")
    assert code == 0 and "done: remove" in out, out + err
    assert ramp_lake.history_versions("raw", "ramp") == kept[:2]
    np.testing.assert_array_equal(
        ramp_lake.open("raw", "ramp", at=kept[1])["a"].values, ramp_dataset()["a"].values + 2
    )
    # a truncated chunk in a history version: verify --history and doctor name it; plain verify
    # does not look (it says how many versions it skipped)
    chunk = next(Path(ramp_lake.history_path("raw", "ramp", kept[1]), "a").rglob("c/*/*"))
    chunk.write_bytes(chunk.read_bytes()[:-1])
    assert replicalake(monkeypatch, capsys, "verify", "raw/ramp", "--lake", ramp_lake.root)[0] == 0
    code, out, _ = replicalake(
        monkeypatch, capsys, "verify", "raw/ramp", "--lake", ramp_lake.root, "--history", "--json"
    )
    reports = {report["entry"]: report["ok"] for report in json.loads(out)}
    assert code == 1
    assert reports == {"raw/ramp": True, f"raw/ramp@{kept[0]}": True, f"raw/ramp@{kept[1]}": False}
    assert [finding.kind for finding in examine(ramp_lake)] == ["damaged history version"]
    code, out, err = replicalake(monkeypatch, capsys, "gc", "--lake", ramp_lake.root)
    assert code == 0 and ramp_lake.history_versions("raw", "ramp") == [], out + err
    assert not (Path(ramp_lake.root) / HISTORY_DIR).exists()  # empty folders go too
    np.testing.assert_array_equal(ramp_lake.open("raw", "ramp")["a"].values, ramp_dataset()["a"].values + 4)
    code, _, err = replicalake(monkeypatch, capsys, "gc", "--lake", ramp_lake.root, "--keep", "-1")
    assert code == 2 and "--keep" in err  # typer: not in the range x>=0


def test_gc_leaves_the_history_of_an_entry_a_live_process_holds(ramp_lake, monkeypatch, capsys):
    from engine.locks import output_locks

    put_in_lake(ramp_lake, "ramp", ramp_dataset() + 1)
    kept = ramp_lake.history_versions("raw", "ramp")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from engine.locks import output_locks
        from engine.storage import Lake
        with output_locks(Lake({ramp_lake.root!r}), [], "export raw/ramp", reads=["raw/ramp"]):
            print("held", flush=True)
            time.sleep(60)
        """),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, out, err = replicalake(monkeypatch, capsys, "gc", "--lake", ramp_lake.root)
        assert code == 0 and "kept" in out and "raw/ramp" in out, out + err
        assert ramp_lake.history_versions("raw", "ramp") == kept
    finally:
        holder.kill()
        holder.wait()
    with output_locks(ramp_lake, ["raw/ramp"], "test"):  # (free again)
        pass
    assert replicalake(monkeypatch, capsys, "gc", "--lake", ramp_lake.root)[0] == 0
    assert ramp_lake.history_versions("raw", "ramp") == []


# A publish of raw/ramp (over an older version) killed with SIGKILL just before its Nth move
# (1: old version to .history/, 2: new version into place) or just before the catalog update.
KILLED_PUBLISH = """
import os, signal, sys
import engine.catalog, engine.storage
from engine.storage import Lake
from engine.testing import put_in_lake, ramp_dataset

point = sys.argv[2]
moves = []
real_move, real_register = engine.storage.Lake.move_tree, engine.catalog.register_entry

def move_tree(self, source, target):
    moves.append(target)
    if point == f"move{len(moves)}":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_move(self, source, target)

def register_entry(*args, **kwargs):
    if point == "register":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_register(*args, **kwargs)

engine.storage.Lake.move_tree = move_tree
engine.catalog.register_entry = register_entry
put_in_lake(Lake(sys.argv[1]), "ramp", ramp_dataset() + 2)
"""


@pytest.mark.parametrize("point, current", [("move1", 1), ("move2", 1), ("register", 2)])
def test_a_publish_killed_at_any_step_leaves_old_or_new_current_and_history_whole(tmp_path, point, current):
    lake = Lake(str(tmp_path / "lake"))
    put_in_lake(lake, "ramp", ramp_dataset())
    put_in_lake(lake, "ramp", ramp_dataset() + 1)
    before = versions(lake, "raw/ramp")
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_PUBLISH, lake.root, point],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert lake.interrupted_publishes("raw/ramp")  # the record says what to finish or undo
    findings = examine(lake, repair=True)  # (any next publish or run settles it the same way)
    kinds = [finding.kind for finding in findings]  # (an undone publish leaves its staged store)
    assert kinds in (["interrupted publish"], ["interrupted publish", "leftover"]), kinds
    assert all(finding.repaired for finding in findings)
    assert examine(lake) == []
    after = versions(lake, "raw/ramp")
    values = lake.open("raw", "ramp")["a"].values
    np.testing.assert_array_equal(values, ramp_dataset()["a"].values + current)
    assert "raw/ramp" in load_catalog(LAKE_CATALOG, lake).entries
    old = [item.version for item in before]
    if current == 1:  # undone: exactly the versions there were
        assert [item.version for item in after] == old
    else:  # finished: the previous current version is now the newest in history
        assert [item.version for item in after][1:] == old and after[0].version > old[0]
    for item in after:
        assert find_damage(lake.fs, item.path) == [], item
    for shift, item in enumerate(reversed(after)):
        np.testing.assert_array_equal(
            lake.open("raw", "ramp", at=item.version)["a"].values, ramp_dataset()["a"].values + shift
        )
    assert not os.listdir(Path(lake.root) / ".tmp" / "publish")


def test_export_at_an_older_version_writes_that_version_exactly(lake, tmp_path, monkeypatch, capsys):
    from engine.ingest.lhapdf import ingest_lhapdf
    from engine.ingest.lhapdf_format import read_lhapdf_set
    from tests.ingest.test_lhapdf import TOY

    ingest_lhapdf(lake, TOY, "toy", progress=False)
    first = lake.store_version(lake.entry_path("raw", "toy"))
    changed = lake.open("raw", "toy").load()
    changed["xf_1"] = changed["xf_1"] * 2
    put_in_lake(lake, "toy", changed)  # a second version (same layout, other values)
    args = ["export", "lhapdf", "toy", "--lake", lake.root]
    code, _, err = replicalake(monkeypatch, capsys, *args, str(tmp_path / "old"), "--at", first)
    assert code == 0, err
    original = read_lhapdf_set(TOY)
    xr.testing.assert_identical(read_lhapdf_set(tmp_path / "old" / "toy"), original)
    code, _, err = replicalake(monkeypatch, capsys, *args, str(tmp_path / "new"))
    assert code == 0, err
    new = read_lhapdf_set(tmp_path / "new" / "toy")
    np.testing.assert_allclose(new["xf_1"].values, 2 * original["xf_1"].values)
    code, _, err = replicalake(
        monkeypatch, capsys, *args, str(tmp_path / "x"), "--at", "20200101T000000.000000Z-abcdef"
    )
    assert code == 1 and "no version '20200101T000000.000000Z-abcdef' of raw/toy" in " ".join(err.split())
