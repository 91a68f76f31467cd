"""Damaged lakes, links out of the lake, interrupted publishes and `replicalake doctor`.

Each kind of damage is made by hand on a small lake, then: found by `verify` or `doctor`, never
served as up to date, recomputed by `run` where it is an output, refused (exit 1, a message
naming the file) where it is input or lake metadata; and `doctor --repair` restores consistency
without deleting a complete output. Kills between publish steps are simulated in-process (a step
raises SystemExit: locks are released as a dying process's are, nothing else is cleaned up) and,
for an ingest, with a real SIGKILL of a subprocess at the step.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import catalog
from engine.catalog import read_lake_catalog
from engine.doctor import examine
from engine.errors import CatalogError, LakeError
from engine.ingest.synthetic_eels import ingest_synthetic_eels
from engine.integrity import find_damage
from engine.locks import output_locks
from engine.storage import PUBLISH_DIR, TMP_DIR, Lake
from engine.testing import put_in_lake, ramp_dataset
from tests.conftest import REPO, lake_files
from tests.test_cli import replicalake
from tests.test_corpus import CASES, command_line, tree_hash
from tests.test_graph import RECIPE
from tests.test_integrity import chunk_file

TOTALS = [sum(10 * y + x for x in range(6)) for y in range(2, 6)]  # what RECIPE computes from raw/ramp


def message(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def store_digests(lake: Lake, entry: str) -> dict[str, str]:
    root = Path(lake.root) / entry
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def ran_lake(ramp_lake, write_recipe) -> Lake:
    """raw/ramp and derived/smoke/total, both published and listed."""
    engine.run(write_recipe(RECIPE), ramp_lake)
    return ramp_lake


def plan_status(monkeypatch, capsys, recipe: Path) -> str:
    code, out, _ = replicalake(monkeypatch, capsys, "plan", recipe, "--json")
    assert code == 0
    return json.loads(out)["steps"][-1]["status"]


# -- damaged outputs are not up to date --------------------------------------------------------
@pytest.mark.parametrize(("damage", "reason"), [
    ("chunk", "damaged output: array 'a', chunk (0): missing (listed in the manifest)"),
    ("manifest", "damaged output: metadata file '_integrity/zarr.json': missing: no checksum manifest"),
    ("chunk and manifest", "damaged output: metadata file '_integrity/zarr.json': missing: no checksum"),
    ("metadata", "zarr.json: expected a zarr store's metadata (a JSON object with an 'attributes' object), "
                 "found a JSON list"),
])
def test_a_damaged_up_to_date_output_is_stale_and_run_recomputes_it(damage, reason, ran_lake, write_recipe,
                                                                    monkeypatch, capsys):
    recipe = write_recipe(RECIPE)
    store = Path(ran_lake.entry_path("derived", "smoke/total"))
    if "chunk" in damage:
        (store / "a" / "c" / "0").unlink()
    if "manifest" in damage:
        shutil.rmtree(store / "_integrity")
    if damage == "metadata":
        (store / "zarr.json").write_text("[1, 2]")
    assert reason in plan_status(monkeypatch, capsys, recipe)
    code, out, err = replicalake(monkeypatch, capsys, "run", recipe, "--json")
    assert code == 0, err
    assert json.loads(out)["outputs"][0]["status"] == "computed"
    np.testing.assert_array_equal(ran_lake.open("derived", "smoke/total")["a"].values, TOTALS)
    assert plan_status(monkeypatch, capsys, recipe) == "up to date"
    assert replicalake(monkeypatch, capsys, "verify")[0] == 0


def test_a_source_missing_a_chunk_and_its_manifest_is_refused(ramp_lake, write_recipe, monkeypatch, capsys):
    chunk_file(ramp_lake, "raw/ramp", "1/0").unlink()
    shutil.rmtree(Path(ramp_lake.entry_path("raw", "ramp")) / "_integrity")
    before = lake_files(ramp_lake)
    code, _, err = replicalake(monkeypatch, capsys, "run", write_recipe(RECIPE), "--no-progress")
    assert code == 1 and "failed reading damaged input data" in err
    assert "data: array 'a', chunk (1, 0): missing (its array's metadata implies it" in message(err)
    assert lake_files(ramp_lake) == before
    code, out, _ = replicalake(monkeypatch, capsys, "verify", "raw/ramp")
    assert code == 1 and "DAMAGED (2 files)" in out
    assert "'_integrity/zarr.json': missing: no checksum manifest" in message(out)
    assert "array 'a', chunk (1, 0): missing" in message(out)


# -- verify on a lake that lost its catalog or a store -----------------------------------------
@pytest.mark.parametrize("names", [[], ["raw/ramp"]], ids=["whole lake", "one entry"])
def test_verify_without_a_catalog_says_so_and_exits_1(names, ramp_lake, monkeypatch, capsys):
    Path(ramp_lake.path("catalog.yaml")).unlink()
    code, _, err = replicalake(monkeypatch, capsys, "verify", *names)
    assert code == 1
    assert f"no lake catalog at {ramp_lake.path('catalog.yaml')}: the lake lists no entries" in message(err)


def test_verify_names_a_listed_entry_whose_store_is_gone(ran_lake, monkeypatch, capsys):
    shutil.rmtree(ran_lake.entry_path("derived", "smoke/total"))
    code, out, _ = replicalake(monkeypatch, capsys, "verify")
    assert code == 1
    assert "derived/smoke/total (0 files)" in out and "the catalog lists this entry, but" in message(out)


# -- malformed lake files: a clear error naming the file, the lake unchanged ------------------------
BAD_CATALOGS = {  # what is in the lake's catalog.yaml, and what the error says of it
    "not UTF-8": (b"\xff\xfeversion: 2\n", "expected UTF-8 text (a YAML catalog), found byte 0xff at "
                                           "offset 0"),
    "not a catalog": (b"just some words\n", "expected an Intake 2 catalog ('version: 2'), found 'str'"),
    "entries a list": (b"version: 2\nentries: [raw/ramp]\n", "expected a mapping of names, found "
                                                             "[\"raw/ramp\"]"),
    "data a number": (b"version: 2\ndata: 5\nentries: {}\n", "expected a mapping of names, found 5"),
    "python tag": (b"version: 2\nentries: !!python/name:os.system\n", "is not allowed"),
}


RAMP_CATALOG = """\
version: 2
data:
  ramp: {datatype: "intake.readers.datatypes:Zarr", kwargs: {url: "{lake}/raw/ramp"}}
entries:
  ramp:
    reader: intake.readers.readers:XArrayDatasetReader
    kwargs: {args: ["{data(ramp)}"]}
"""


@pytest.mark.parametrize("kind", BAD_CATALOGS)
@pytest.mark.parametrize("command", ["verify", "run", "catalog list", "doctor"])
def test_a_malformed_lake_catalog_is_an_error_naming_it(kind, command, ramp_lake, write_recipe, monkeypatch,
                                                        capsys):
    text, expected = BAD_CATALOGS[kind]
    Path(ramp_lake.path("catalog.yaml")).write_bytes(text)
    before = tree_hash(Path(ramp_lake.root))
    args = {"run": ["run", write_recipe(RECIPE), "--no-progress"],
            "catalog list": ["catalog", "list"]}.get(command, [command])
    code, out, err = replicalake(monkeypatch, capsys, *args)
    assert code == 1 and "Traceback" not in err
    said = message(out if command == "doctor" else err)
    assert expected in said and f"{ramp_lake.path('catalog.yaml')}" in said
    assert tree_hash(Path(ramp_lake.root)) == before


@pytest.mark.parametrize("kind", BAD_CATALOGS)
def test_an_ingest_or_run_into_a_lake_with_a_malformed_catalog_publishes_nothing(
        kind, ramp_lake, tmp_path, write_recipe, monkeypatch, capsys):
    """Before: the store was published, then listing it failed with a traceback."""
    text, expected = BAD_CATALOGS[kind]
    Path(ramp_lake.path("catalog.yaml")).write_bytes(text)
    before = tree_hash(Path(ramp_lake.root))
    with pytest.raises(CatalogError) as caught:
        ingest_synthetic_eels(ramp_lake, "img", (4, 4, 64), progress=False)
    assert expected in message(str(caught.value)) and "catalog.yaml" in str(caught.value)
    catalogs = tmp_path / "catalogs"  # a recipe whose source is not read through the lake catalog
    catalogs.mkdir()
    (catalogs / "ramp.yaml").write_text(RAMP_CATALOG)
    recipe = write_recipe(RECIPE.replace("{catalog: lake, entry: raw/ramp}", "{catalog: ramp, entry: ramp}"))
    code, _, err = replicalake(monkeypatch, capsys, "run", recipe, "--catalogs", catalogs, "--no-progress")
    assert code == 1 and expected in message(err)
    assert tree_hash(Path(ramp_lake.root)) == before


@pytest.mark.parametrize(("content", "found"), [("[1, 2]", "found a JSON list"),
                                                ("\x00garbage", "found 8 bytes that are not JSON")])
def test_a_source_whose_root_metadata_is_not_an_object_is_an_error_naming_it(
        content, found, ramp_lake, write_recipe, monkeypatch, capsys):
    metadata = Path(ramp_lake.entry_path("raw", "ramp")) / "zarr.json"
    metadata.write_text(content)
    before = tree_hash(Path(ramp_lake.root))
    for command in ("validate", "run"):
        code, _, err = replicalake(monkeypatch, capsys, command, write_recipe(RECIPE))
        assert code == 1 and "Traceback" not in err
        assert f"sources.data: cannot open: {metadata}: expected a zarr store's metadata" in message(err)
        assert found in message(err)
    assert tree_hash(Path(ramp_lake.root)) == before


def test_a_manifest_that_is_not_one_is_damage_naming_it(ramp_lake, write_recipe, monkeypatch, capsys):
    (Path(ramp_lake.entry_path("raw", "ramp")) / "_integrity" / "zarr.json").write_text("{]")
    code, out, _ = replicalake(monkeypatch, capsys, "verify")
    assert code == 1 and "metadata file '_integrity/zarr.json': expected a checksum manifest" in message(out)
    code, _, err = replicalake(monkeypatch, capsys, "run", write_recipe(RECIPE), "--no-progress")
    assert code == 1
    assert "sources.data: cannot open: " in message(err)
    assert "raw/ramp/_integrity/zarr.json: expected a checksum manifest" in message(err)


# -- links out of the lake -----------------------------------------------------------------------
@pytest.mark.parametrize("link", ["derived", ".tmp", ".locks", "catalog.yaml"])
def test_a_run_refuses_to_write_through_a_link_out_of_the_lake(link, ramp_lake, tmp_path, write_recipe,
                                                              monkeypatch, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = Path(ramp_lake.path(link))
    if target.is_file():  # the catalog: a link to a copy outside
        shutil.move(target, outside / link)
        target.symlink_to(outside / link)
    else:
        shutil.rmtree(target, ignore_errors=True)
        target.symlink_to(outside, target_is_directory=True)
    before, outside_before = tree_hash(Path(ramp_lake.root)), tree_hash(outside)
    code, _, err = replicalake(monkeypatch, capsys, "run", write_recipe(RECIPE), "--no-progress")
    assert code == 1 and "Traceback" not in err
    linked = outside / link if link == "catalog.yaml" else outside
    assert (f"the lake {ramp_lake.root!r} holds a symbolic link {link!r} to {linked}, outside the lake root; "
            "refusing to write") in message(err)
    assert tree_hash(Path(ramp_lake.root)) == before and tree_hash(outside) == outside_before


@pytest.mark.parametrize("link", ["raw", ".tmp"])
def test_an_ingest_refuses_to_write_through_a_link_out_of_the_lake(link, ramp_lake, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(ramp_lake.path(link), ignore_errors=True)
    Path(ramp_lake.path(link)).symlink_to(outside, target_is_directory=True)
    before = tree_hash(Path(ramp_lake.root))
    with pytest.raises(LakeError, match=f"holds a symbolic link '{link}' to {outside}, outside the lake"):
        ingest_synthetic_eels(ramp_lake, "img", (4, 4, 64), progress=False)
    assert tree_hash(Path(ramp_lake.root)) == before and not any(outside.iterdir())


def test_links_that_stay_inside_the_lake_and_a_linked_root_are_fine(ramp_lake, tmp_path, write_recipe):
    inside = Path(ramp_lake.path("derived-data"))
    inside.mkdir()
    Path(ramp_lake.path("derived")).symlink_to(inside, target_is_directory=True)
    linked_root = tmp_path / "lake-link"
    linked_root.symlink_to(ramp_lake.root, target_is_directory=True)
    summary = engine.run(write_recipe(RECIPE), Lake(str(linked_root)))
    assert summary.outputs[0].status == "computed"
    assert (inside / "smoke" / "total" / "zarr.json").is_file()


# -- publishes killed between their steps ------------------------------------------------------
def kill_after_moving_aside(patch) -> None:
    move = Lake.move_tree

    def move_then_die(self, source, target):
        move(self, source, target)
        if "/.history/" in target:  # the old version moved to the lake's history
            raise SystemExit("killed after moving the old version aside")

    patch.setattr(Lake, "move_tree", move_then_die)


def kill_at(owner, name: str):
    def patch_it(patch) -> None:
        def die(*args, **kwargs):
            raise SystemExit(f"killed at {name}")

        patch.setattr(owner, name, die)

    return patch_it


KILLS = {  # where a publish dies, and whether the next command finds the new version in place
    "old version moved aside": (kill_after_moving_aside, False),
    "new version moved in, not listed": (kill_at(catalog, "register_entry"), True),
    "listed, old version not dropped": (kill_at(Lake, "finish_publish"), True),
}


def republish_and_die(lake: Lake, monkeypatch, kill: str, name: str = "ramp") -> None:
    """Publish `name` (twice the ramp) with the publish dying at `kill`, as a SIGKILL would leave it:
    locks released, nothing cleaned up."""
    with monkeypatch.context() as patch:
        KILLS[kill][0](patch)
        with pytest.raises(SystemExit):
            put_in_lake(lake, name, ramp_dataset() * 2)


def assert_consistent(lake: Lake, name: str, doubled: bool) -> None:
    """raw/NAME whole and listed, holding the old or the new values; no record or retired copy left."""
    assert find_damage(lake.fs, lake.entry_path("raw", name), require_manifest=True) == []
    assert f"raw/{name}" in read_lake_catalog(lake).entries
    np.testing.assert_array_equal(lake.open("raw", name)["a"].values,
                                  ramp_dataset()["a"].values * (2 if doubled else 1))
    assert not list(Path(lake.path(TMP_DIR)).glob("retired-*"))
    assert not list(Path(lake.path(TMP_DIR, PUBLISH_DIR)).glob("*"))


@pytest.mark.parametrize("kill", KILLS)
def test_the_next_command_finishes_or_undoes_a_killed_publish(kill, ramp_lake, monkeypatch, capsys):
    republish_and_die(ramp_lake, monkeypatch, kill)
    assert list(Path(ramp_lake.path(TMP_DIR, PUBLISH_DIR)).glob("*.json"))  # the record of the publish
    if kill == "old version moved aside":
        assert not ramp_lake.exists("raw", "ramp")  # what a kill here used to leave for good
    code, out, err = replicalake(monkeypatch, capsys, "verify")
    assert code == 0, out + err
    assert "the publish of raw/ramp that a killed process left half done" in message(err)
    assert_consistent(ramp_lake, "ramp", doubled=KILLS[kill][1])


@pytest.mark.parametrize("kill", ["new version moved in, not listed", "listed, old version not dropped"])
def test_a_first_publish_killed_before_listing_is_listed_by_the_next_command(kill, ramp_lake, monkeypatch,
                                                                            capsys):
    republish_and_die(ramp_lake, monkeypatch, kill, name="fresh")
    code, out, _ = replicalake(monkeypatch, capsys, "catalog", "list", "--json")
    assert code == 0 and "raw/fresh" in json.loads(out)
    assert_consistent(ramp_lake, "fresh", doubled=True)


@pytest.mark.parametrize("kill", KILLS)
def test_doctor_reports_a_killed_publish_and_repair_restores_consistency(kill, ramp_lake, monkeypatch,
                                                                         capsys):
    republish_and_die(ramp_lake, monkeypatch, kill)
    before = tree_hash(Path(ramp_lake.root))
    code, out, _ = replicalake(monkeypatch, capsys, "doctor")
    assert code == 1 and "interrupted publish raw/ramp: a publish killed half way" in message(out)
    assert "--repair would: finish it" in message(out)
    assert tree_hash(Path(ramp_lake.root)) == before  # a report changes nothing
    code, out, _ = replicalake(monkeypatch, capsys, "doctor", "--repair")
    assert code == 0 and "the lake is consistent" in message(out)
    assert_consistent(ramp_lake, "ramp", doubled=KILLS[kill][1])
    assert examine(ramp_lake) == []


KILL_SCRIPT = """
import os, signal, sys
from engine import catalog
from engine.ingest.synthetic_eels import ingest_synthetic_eels
from engine.storage import Lake

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[2] == "aside":
    move = Lake.move_tree
    def move_then_die(self, source, target):
        move(self, source, target)
        if "/.history/" in target:
            die()
    Lake.move_tree = move_then_die
else:
    catalog.register_entry = die
ingest_synthetic_eels(Lake(sys.argv[1]), "img", (4, 4, 64), seed=1, progress=False)
"""


@pytest.mark.parametrize(("where", "new_in_place"), [("aside", False), ("listing", True)])
def test_a_reingest_killed_by_sigkill_mid_publish_is_repaired(where, new_in_place, lake, monkeypatch, capsys):
    ingest_synthetic_eels(lake, "img", (4, 4, 64), seed=0, progress=False)
    old = lake.token("raw", "img")
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, lake.root, where], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert lake.exists("raw", "img") == new_in_place
    code, out, _ = replicalake(monkeypatch, capsys, "doctor")
    assert code == 1 and "interrupted publish raw/img" in out and "1 of 1 problems left" in out
    code, out, _ = replicalake(monkeypatch, capsys, "doctor", "--repair")
    assert code == 0, out
    assert (lake.token("raw", "img") != old) == new_in_place
    assert examine(lake) == [] and replicalake(monkeypatch, capsys, "verify")[0] == 0
    assert not [p for p in Path(lake.path(TMP_DIR)).iterdir() if p.name not in ("publish", "resume")]


# -- doctor: every kind of inconsistency, and what --repair does about it ------------------------
def doctor(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    code, out, err = replicalake(monkeypatch, capsys, "doctor", *args)
    assert "Traceback" not in err
    return code, message(out)


def test_doctor_finds_nothing_on_a_consistent_lake(ran_lake, monkeypatch, capsys):
    assert doctor(monkeypatch, capsys) == (0, "the lake is consistent")


def test_doctor_lists_stores_the_catalog_misses_and_rebuilds_a_lost_catalog(ran_lake, monkeypatch, capsys):
    Path(ran_lake.path("catalog.yaml")).unlink()
    code, out = doctor(monkeypatch, capsys)
    assert code == 1 and "2 of 2 problems left" in out
    assert ("unlisted store raw/ramp: a whole store that the lake catalog does not list (there is no "
            "catalog.yaml) --repair would: list it in the lake catalog") in out
    code, out = doctor(monkeypatch, capsys, "--repair")
    assert code == 0 and "repaired: list it in the lake catalog" in out
    assert out.endswith("the lake is consistent (2 problems repaired)")
    assert set(read_lake_catalog(ran_lake).entries) == {"raw/ramp", "derived/smoke/total"}
    assert replicalake(monkeypatch, capsys, "verify")[0] == 0


def test_doctor_moves_an_unreadable_catalog_aside_and_lists_every_store_again(ran_lake, monkeypatch, capsys):
    catalog_file = Path(ran_lake.path("catalog.yaml"))
    catalog_file.write_bytes(b"\xff not a catalog")
    code, out = doctor(monkeypatch, capsys, "--repair")
    assert code == 0 and "unreadable catalog catalog.yaml:" in out and "found byte 0xff" in out
    (aside,) = Path(ran_lake.root).glob("catalog.yaml.unreadable-*")
    assert aside.read_bytes() == b"\xff not a catalog"
    assert set(read_lake_catalog(ran_lake).entries) == {"raw/ramp", "derived/smoke/total"}


def test_doctor_unlists_an_entry_whose_store_is_gone(ran_lake, monkeypatch, capsys):
    shutil.rmtree(ran_lake.entry_path("derived", "smoke/total"))
    code, out = doctor(monkeypatch, capsys)
    assert code == 1 and "listed without store derived/smoke/total: the lake catalog lists it, but" in out
    assert doctor(monkeypatch, capsys, "--repair")[0] == 0
    assert set(read_lake_catalog(ran_lake).entries) == {"raw/ramp"}


def test_doctor_reports_damaged_stores_with_what_recomputes_them_and_leaves_them(ran_lake, write_recipe,
                                                                                monkeypatch, capsys):
    (Path(ran_lake.entry_path("derived", "smoke/total")) / "a" / "c" / "0").unlink()
    shutil.rmtree(Path(ran_lake.entry_path("raw", "ramp")) / "_integrity")
    before = tree_hash(Path(ran_lake.root))
    code, out = doctor(monkeypatch, capsys, "--repair")
    assert code == 1 and "2 of 2 problems left" in out
    assert ("damaged store derived/smoke/total: array 'a', chunk (0): missing (listed in the manifest) to "
            f"fix: rerun `replicalake run {write_recipe(RECIPE)}`: it recomputes and republishes") in out
    assert ("damaged store raw/ramp: metadata file '_integrity/zarr.json': missing: no checksum manifest, so "
            "a deleted chunk cannot be told from an unwritten one to fix: re-ingest raw/ramp") in out
    assert tree_hash(Path(ran_lake.root)) == before


@pytest.mark.parametrize("entry_there", [True, False], ids=["entry whole", "entry missing"])
def test_doctor_removes_or_puts_back_a_retired_copy(entry_there, ramp_lake, monkeypatch, capsys):
    retired = Path(ramp_lake.path(TMP_DIR, "retired-raw-ramp-0123456789ab"))
    store = Path(ramp_lake.entry_path("raw", "ramp"))
    before = store_digests(ramp_lake, "raw/ramp")
    (shutil.copytree if entry_there else shutil.move)(store, retired)
    code, out = doctor(monkeypatch, capsys)
    assert code == 1 and f"retired copy raw/ramp: {TMP_DIR}/retired-raw-ramp-0123456789ab:" in out
    assert ("--repair would: remove it" if entry_there else "--repair would: move it back into place") in out
    assert doctor(monkeypatch, capsys, "--repair")[0] == 0
    assert not retired.exists() and store_digests(ramp_lake, "raw/ramp") == before


def test_doctor_removes_leftovers_no_live_process_holds(ran_lake, monkeypatch, capsys):
    tmp = Path(ran_lake.path(TMP_DIR))
    dead, live = tmp / "raw-img-0123456789ab", tmp / "raw-img-abcdef012345"
    for staging in (dead, live):
        staging.mkdir(parents=True)
        Path(f"{staging}.lock").touch()
    half_run = tmp / "resume" / "derived__x-0123"  # a run killed after publishing, before cleaning up
    (half_run / "chunks").mkdir(parents=True)
    resumable = tmp / "resume" / "derived__y-4567"  # a killed run's staging: the next run resumes it
    (resumable / "store").mkdir(parents=True)
    (resumable / "store" / "zarr.json").write_text("{}")
    Path(ran_lake.path("catalog.yaml.0123abcd.tmp")).write_text("half a catalog")
    with open(f"{live}.lock") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # a live ingest: its staging, and what it may be writing, stay
        code, out = doctor(monkeypatch, capsys, "--repair")
        assert code == 1 and "2 of 3 problems left" in out and "(now: raw-img-abcdef012345)" in out
        assert not dead.exists() and not Path(f"{dead}.lock").exists()
        assert live.exists() and half_run.exists()
    code, out = doctor(monkeypatch, capsys, "--repair")  # that ingest was killed: all of it is left over
    assert code == 0 and "the lake is consistent (3 problems repaired)" in out
    assert not live.exists() and not half_run.exists() and resumable.exists()
    assert not Path(ran_lake.path("catalog.yaml.0123abcd.tmp")).exists()


def test_doctor_leaves_leftovers_alone_while_a_writer_runs(ran_lake, monkeypatch, capsys):
    leftover = Path(ran_lake.path(TMP_DIR, "checkpoint-0123456789ab"))
    leftover.mkdir(parents=True)
    with output_locks(ran_lake, ["derived/other"], "a live run"):
        code, out = doctor(monkeypatch, capsys, "--repair")
    assert code == 1 and "run doctor again when no run or ingest is writing (now: derived__other)" in out
    assert leftover.exists()
    assert doctor(monkeypatch, capsys, "--repair")[0] == 0 and not leftover.exists()


def test_doctor_reports_links_out_of_the_lake_and_changes_none(ran_lake, tmp_path, monkeypatch, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.rmtree(ran_lake.path("reports"), ignore_errors=True)
    Path(ran_lake.path("reports")).symlink_to(outside, target_is_directory=True)
    code, out = doctor(monkeypatch, capsys, "--repair")
    assert code == 1 and f"link out of the lake reports: a symbolic link to {outside}, outside" in out
    assert Path(ran_lake.path("reports")).is_symlink()


def test_doctor_repair_never_deletes_a_complete_output(ran_lake, monkeypatch, capsys):
    """Every kind of problem at once: the whole stores are all still there, byte for byte."""
    put_in_lake(ran_lake, "extra", ramp_dataset() * 3)  # republished below, killed once listed
    whole = {entry: store_digests(ran_lake, entry) for entry in ("raw/ramp", "derived/smoke/total")}
    Path(ran_lake.path("catalog.yaml")).write_text("version: 2\nentries: {}\n")  # lists nothing
    retired = ran_lake.path(TMP_DIR, "retired-raw-ramp-01234567abcd")
    shutil.copytree(ran_lake.entry_path("raw", "ramp"), retired)
    (Path(ran_lake.path(TMP_DIR)) / "raw-img-0123456789ab").mkdir()
    republish_and_die(ran_lake, monkeypatch, "listed, old version not dropped", name="extra")
    code, out = doctor(monkeypatch, capsys, "--repair")
    assert code == 0, out
    assert {entry: store_digests(ran_lake, entry) for entry in whole} == whole
    np.testing.assert_array_equal(ran_lake.open("raw", "extra")["a"].values, ramp_dataset()["a"].values * 2)
    assert set(read_lake_catalog(ran_lake).entries) == {"raw/ramp", "raw/extra", "derived/smoke/total"}
    assert examine(ran_lake) == [] and replicalake(monkeypatch, capsys, "verify")[0] == 0


# -- the corpus's damaged lakes stay as they are --------------------------------------------------
CORPUS_LAKE_CASES = [case for case in CASES if "--lake" in case.get("args", [])
                     and case["case"].startswith("damaged_lakes/")]


def test_the_corpus_damaged_lakes_are_left_byte_identical(ramp_lake, monkeypatch, capsys):
    """tests/test_corpus.py checks the default lake; these cases run on their own lake folders, which
    must not change either (a lock file or a repair there would be a write the error should prevent)."""
    assert len(CORPUS_LAKE_CASES) >= 15
    for case in CORPUS_LAKE_CASES:
        args = command_line(case)
        folder = Path(args[args.index("--lake") + 1])
        before = tree_hash(folder)
        assert replicalake(monkeypatch, capsys, *args)[0] == 1, case
        assert tree_hash(folder) == before, case


def test_doctor_on_a_folder_that_is_no_lake_says_so(tmp_path, monkeypatch, capsys):
    code, _, err = replicalake(monkeypatch, capsys, "doctor", "--lake", tmp_path / "nowhere")
    assert code == 1 and f"no lake at '{tmp_path / 'nowhere'}'" in message(err)


def test_doctor_repairs_a_killed_publish_in_a_lake_whose_catalog_is_unreadable(ramp_lake, monkeypatch,
                                                                                 capsys):
    republish_and_die(ramp_lake, monkeypatch, "new version moved in, not listed", name="fresh")
    Path(ramp_lake.path("catalog.yaml")).write_text("version: [2]\n")
    code, out = doctor(monkeypatch, capsys, "--repair")
    assert code == 0 and "the lake is consistent (3 problems repaired)" in out
    assert set(read_lake_catalog(ramp_lake).entries) == {"raw/ramp", "raw/fresh"}
