"""Lake names through every way they reach the lake (engine/names.py, Lake.entry_path/new_entry_path).

A refused name fails with a message that names it and the rule it breaks, before anything is
written: every refused ingest below compares a hash of every file under the lake before and after.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.catalog import load_catalog, register_entry
from engine.errors import CatalogError, LakeError, RecipeError
from engine.graph import check_recipe_offline
from engine.names import catalog_name_problem, entry_key_problem, entry_name_problem
from engine.testing import put_in_lake, ramp_dataset
from engine.verify import verify_entries
from tests.conftest import REPO
from tests.test_cli import replicalake
from tests.test_corpus import tree_hash
from tests.test_graph import RECIPE

TOY = REPO / "tests" / "data" / "lhapdf" / "LHToy"

# (name, a fragment of the message): every form of lake name the parser refuses
REFUSED = [
    (".", "must be a relative name inside the zone, found a '.' part"),
    ("..", "found a '..' part"),
    ("", "found an empty name"),
    ("/etc/escaped", "found a leading '/'"),
    ("../escaped", "found a '..' part"),
    ("ramp/./x", "found a '.' part"),
    ("ramp/", "found an empty part"),
    ("a//b", "found an empty part"),
    ("a\\b", "must use '/' between parts, found a backslash"),
    ("a\x00b", "found the control character '\\x00'"),
    ("a\nb", "found the control character '\\n'"),
    ("raw", "must not be 'raw': that is a lake zone"),
    ("models", "that is a lake zone"),
    ("catalog.yaml", "that is the lake's catalog file"),
    (".tmp", "found part '.tmp' (parts starting with '_' or '.' are the lake's and zarr's own files)"),
    (".locks/x", "found part '.locks'"),
    ("ramp/_integrity", "found part '_integrity'"),
    ("ramp/zarr.json", "must not have a part 'zarr.json'"),
    ("+ramp", "must start every part with a letter or digit, found part '+ramp'"),
    ("a[b]", "found '[' in part 'a[b]'"),
    ("[red]x[/red]", "found '['"),
    ("{lake}/x", "found '{' in part '{lake}'"),
    ("a b", "found ' '"),
    ("caf\u00e9", "found '\u00e9'"),
    ("x" * 256, "must have parts of at most 255 bytes, found a part of 256 bytes"),
    ("a/" * 100 + "a", "must stay within 200 bytes with each '/' written as '__'"),
]
ACCEPTED = ["ramp", "ws2_flake", "eels-bandgap/zlp_model", "v1.2+local", "3d", "a/b/c", "Run2012B_DoubleMu",
            "raw-v2", "x" * 200, "a/" * 66 + "ab"]
IDS = [repr(name)[:24] for name, _ in REFUSED]


def _message(err: str) -> str:
    return " ".join(err.split())  # rich wraps long lines


# -- the parser ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "fragment"), [*REFUSED, ("-ramp", "found part '-ramp'")],
                         ids=[*IDS, "-ramp (an option on a command line)"])
def test_parser_refuses_with_the_rule_it_breaks(name, fragment):
    assert fragment in entry_name_problem(name)


@pytest.mark.parametrize("name", ACCEPTED, ids=[n[:24] for n in ACCEPTED])
def test_parser_accepts_plain_names(name):
    assert entry_name_problem(name) is None


@pytest.mark.parametrize(("key", "fragment"), [
    ("raw/ramp", None), ("derived/eels-bandgap/bandgap", None),
    ("ramp", "must be ZONE/NAME with ZONE one of raw, derived, models, reports, found zone 'ramp'"),
    ("lake/x", "found zone 'lake'"),
    ("raw", "its name '' must be a relative name inside the zone, found an empty name"),
    ("raw/../x", "its name '../x' must be a relative name inside the zone, found a '..' part"),
    ("raw/a[/b]", "found '['"),
])
def test_entry_keys_are_zone_and_name(key, fragment):
    problem = entry_key_problem(key)
    assert problem is None if fragment is None else fragment in problem


@pytest.mark.parametrize(("name", "fragment"), [
    ("eels", None), ("lake", None), ("my-catalog.v2", None),
    ("../catalogs_bad/bad_version", "must be the stem of a file in the catalogs folder (no '/', '.' or "
                                    "'..'), found '../catalogs_bad/bad_version'"),
    ("sub/eels", "found 'sub/eels'"), ("..", "found '..'"), ("", "found ''"),
    ("{lake}", "found '{'"), (".hidden", "found part '.hidden'"), ("a\x00", "control character"),
])
def test_catalog_names_are_plain_stems(name, fragment):
    problem = catalog_name_problem(name)
    assert problem is None if fragment is None else fragment in problem


# -- every entry point, through the CLI -------------------------------------------------------------
@pytest.fixture
def text_spectrum(tmp_path) -> Path:
    path = tmp_path / "spectrum.txt"
    path.write_text("\t".join(str(v) for v in range(32)) + "\n")
    return path


COMMANDS = {
    "ingest synthetic-eels": lambda name, files: ["ingest", "synthetic-eels", name, "--shape", "4", "4", "32",
                                                  "--no-progress"],
    "ingest eels": lambda name, files: ["ingest", "eels", files["txt"], name, "--no-progress"],
    "ingest lhapdf": lambda name, files: ["ingest", "lhapdf", TOY, name, "--no-progress"],
    "ingest synthetic-jets": lambda name, files: ["ingest", "synthetic-jets", name, "--jets", "10",
                                                  "--no-progress"],
    "export lhapdf": lambda name, files: ["export", "lhapdf", name, files["out"]],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("name", "fragment"), REFUSED, ids=IDS)
def test_ingest_and_export_refuse_and_leave_the_lake_byte_identical(command, name, fragment, ramp_lake,
                                                                    text_spectrum, tmp_path, monkeypatch,
                                                                    capsys):
    root = Path(ramp_lake.root)
    before = tree_hash(root)
    args = COMMANDS[command](name, {"txt": text_spectrum, "out": tmp_path / "out"})
    code, out, err = replicalake(monkeypatch, capsys, *args)
    assert code == 1, out + err
    assert "lake entry name" in _message(err) and fragment in _message(err), err
    assert "Traceback" not in err
    assert tree_hash(root) == before
    assert not (tmp_path / "out").exists()


def test_root_ingest_refuses_bad_names(ramp_lake, tmp_path, monkeypatch, capsys):
    uproot = pytest.importorskip("uproot")
    path = tmp_path / "events.root"
    with uproot.recreate(path) as handle:
        handle.mktree("Events", {"met": np.float32})
        handle["Events"].extend({"met": np.arange(5, dtype=np.float32)})
    root = Path(ramp_lake.root)
    before = tree_hash(root)
    for name, fragment in REFUSED:
        code, _, err = replicalake(monkeypatch, capsys, "ingest", "root", path, name, "--tree", "Events")
        assert code == 1 and fragment in _message(err), (name, err)
    assert tree_hash(root) == before
    code, _, err = replicalake(monkeypatch, capsys, "ingest", "root", path, "events", "--tree", "Events")
    assert code == 0, err


def test_synthetic_jets_take_nested_names(lake, monkeypatch, capsys):
    """The generator's temporary HDF5 file is named after the entry's last part, not its path."""
    pytest.importorskip("h5py")
    code, _, err = replicalake(monkeypatch, capsys, "ingest", "synthetic-jets", "jets/small", "--jets", "10",
                               "--no-progress")
    assert code == 0, err
    assert lake.open("raw", "jets/small").sizes["jet"] == 10


def test_ingest_named_dot_no_longer_replaces_the_raw_zone(ramp_lake, monkeypatch, capsys):
    """The reported bug: `ingest synthetic-eels .` replaced raw/ while catalog.yaml still listed it."""
    root = Path(ramp_lake.root)
    before = tree_hash(root)
    code, _, err = replicalake(monkeypatch, capsys, "ingest", "synthetic-eels", ".", "--shape", "4", "4",
                               "32", "--no-progress")
    assert code == 1
    assert "lake entry name '.' in zone 'raw' must be a relative name inside the zone" in _message(err)
    assert tree_hash(root) == before
    assert ramp_lake.open("raw", "ramp")["a"].shape == (8, 6)
    assert verify_entries(ramp_lake, ["raw/ramp"])[0].ok


@pytest.mark.parametrize(("name", "fragment"), REFUSED, ids=IDS)
def test_verify_refuses_bad_keys(name, fragment, ramp_lake, monkeypatch, capsys):
    code, _, err = replicalake(monkeypatch, capsys, "verify", f"raw/{name}")
    assert code == 1
    assert "lake entry 'raw/" in _message(err)
    assert fragment in _message(err), err


@pytest.mark.parametrize(("name", "fragment"), REFUSED, ids=IDS)
def test_recipe_output_names_are_refused_at_validate(name, fragment, ramp_lake, write_recipe,
                                                      monkeypatch, capsys):
    text = RECIPE.replace("total: {zone: derived}", f"total: {{zone: derived, name: {json.dumps(name)}}}")
    code, _, err = replicalake(monkeypatch, capsys, "validate", write_recipe(text))
    assert code == 1
    assert "outputs.total.name: Value error, " in _message(err) and fragment in _message(err), err


def test_recipe_catalog_names_are_plain_stems(ramp_lake, write_recipe, monkeypatch, capsys):
    text = RECIPE.replace("catalog: lake", "catalog: ../catalogs/eels")
    code, _, err = replicalake(monkeypatch, capsys, "validate", write_recipe(text))
    assert code == 1
    assert ("sources.data.catalog: Value error, must be the stem of a file in the catalogs folder"
            in _message(err))


def test_catalog_list_refuses_paths(ramp_lake, monkeypatch, capsys):
    code, _, err = replicalake(monkeypatch, capsys, "catalog", "list",
                               "../tests/corpus/catalogs_bad/bad_version")
    assert code == 1
    assert "catalog name '../tests/corpus/catalogs_bad/bad_version' must be the stem" in _message(err)


# -- names that nest ---------------------------------------------------------------------------------
def _ingest(monkeypatch, capsys, name: str) -> tuple[int, str]:
    code, _, err = replicalake(monkeypatch, capsys, "ingest", "synthetic-eels", name, "--shape", "4", "4",
                               "32", "--no-progress")
    return code, _message(err)


def test_a_name_inside_an_existing_entry_is_refused(ramp_lake, monkeypatch, capsys):
    root = Path(ramp_lake.root)
    before = tree_hash(root)
    code, message = _ingest(monkeypatch, capsys, "ramp/sub")
    assert code == 1
    assert ("lake entry name 'ramp/sub' lies inside the existing entry raw/ramp; expected a name outside "
            "every entry") in message
    assert tree_hash(root) == before


def test_a_name_around_existing_entries_is_refused(lake, monkeypatch, capsys):
    assert _ingest(monkeypatch, capsys, "nest/inner")[0] == 0
    assert _ingest(monkeypatch, capsys, "nest/other")[0] == 0
    root = Path(lake.root)
    before = tree_hash(root)
    code, message = _ingest(monkeypatch, capsys, "nest")
    assert code == 1
    assert ("lake entry name 'nest' would replace the folder raw/nest, which holds the entries "
            "raw/nest/inner, raw/nest/other") in message
    assert tree_hash(root) == before
    assert set(load_catalog("lake", lake).entries) == {"raw/nest/inner", "raw/nest/other"}


def test_the_same_name_replaces_its_own_entry(lake, monkeypatch, capsys):
    assert _ingest(monkeypatch, capsys, "img")[0] == 0
    assert _ingest(monkeypatch, capsys, "img")[0] == 0
    assert verify_entries(lake, ["raw/img"])[0].ok


def test_a_run_does_not_publish_inside_an_existing_entry(ramp_lake, write_recipe, monkeypatch, capsys):
    put_in_lake(ramp_lake, "nest", ramp_dataset(), zone="derived")
    text = RECIPE.replace("total: {zone: derived}", "total: {zone: derived, name: nest/inner}")
    code, _, err = replicalake(monkeypatch, capsys, "run", write_recipe(text), "--no-progress")
    assert code == 1
    assert "lake entry name 'nest/inner' lies inside the existing entry derived/nest" in _message(err)
    assert verify_entries(ramp_lake, ["derived/nest"])[0].ok
    assert "derived/nest/inner" not in load_catalog("lake", ramp_lake).entries


# -- outputs of one recipe ---------------------------------------------------------------------------
def _two_outputs(write_recipe, part: str, total: str):
    return write_recipe(RECIPE.replace("  total: {zone: derived}\n", f"  part: {part}\n  total: {total}\n"))


@pytest.mark.parametrize(("part", "total", "fragment"), [
    ("{zone: derived, name: same}", "{zone: derived, name: same}",
     "outputs.total: output 'total' writes derived/same, the same store as output 'part' (derived/same)"),
    ("{zone: derived, name: nest}", "{zone: derived, name: nest/inner}",
     "output 'total' writes derived/nest/inner, a store nested with output 'part' (derived/nest)"),
    ("{zone: derived, name: nest/inner}", "{zone: derived, name: nest}",
     "output 'total' writes derived/nest, a store nested with output 'part' (derived/nest/inner)"),
    ("{zone: derived, name: smoke/total}", "{zone: derived}",
     "output 'total' writes derived/smoke/total, the same store as output 'part'"),
])
def test_outputs_of_one_recipe_may_not_share_or_nest(part, total, fragment, write_recipe):
    with pytest.raises(RecipeError, match="references") as caught:
        check_recipe_offline(_two_outputs(write_recipe, part, total))
    assert fragment in str(caught.value)
    assert "expected a separate lake name per output" in str(caught.value)


def test_outputs_in_different_zones_or_side_by_side_are_fine(write_recipe):
    check_recipe_offline(_two_outputs(write_recipe, "{zone: models, name: same}",
                                      "{zone: derived, name: same}"))
    check_recipe_offline(_two_outputs(write_recipe, "{zone: derived, name: nest}",
                                      "{zone: derived, name: nested}"))


def test_default_output_names_are_checked(write_recipe):
    with pytest.raises(RecipeError) as caught:
        check_recipe_offline(write_recipe(RECIPE.replace("name: smoke", "name: _smoke")))
    assert ("outputs.total: the default lake name '_smoke/total' (RECIPE/STEP) must start every part with "
            "a letter or digit") in str(caught.value)


# -- Python calls -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "fragment"), REFUSED, ids=IDS)
def test_python_calls_refuse_bad_names(name, fragment, ramp_lake):
    root = Path(ramp_lake.root)
    before = tree_hash(root)
    for call in (lambda: ramp_lake.entry_path("raw", name), lambda: ramp_lake.exists("derived", name),
                 lambda: register_entry(ramp_lake, "raw", name)):
        with pytest.raises(LakeError, match="lake entry name") as caught:
            call()
        assert fragment in str(caught.value)
    assert tree_hash(root) == before


def test_python_calls_refuse_unknown_zones_and_catalog_paths(ramp_lake):
    with pytest.raises(LakeError, match="unknown lake zone 'lake'; expected one of raw, derived, models"):
        ramp_lake.entry_path("lake", "ramp")
    with pytest.raises(CatalogError, match=r"catalog name '\.\./catalogs/eels' must be the stem"):
        load_catalog("../catalogs/eels", ramp_lake, REPO / "tests")
    with pytest.raises(LakeError, match=r"lake entry 'raw/\.\.' must be ZONE/NAME"):
        verify_entries(ramp_lake, ["raw/.."])


# -- names already in a catalog are printed as text, never as markup ----------------------------------
def test_markup_in_listed_names_is_printed_literally(ramp_lake, monkeypatch, capsys):
    """A catalog written before names were checked may hold `[`: listing must not crash on it."""
    root = Path(ramp_lake.root)
    (root / "raw" / "a[b][").mkdir()
    (root / "raw" / "ramp").rename(root / "raw" / "a[b][" / "b]")  # the store of key raw/a[b][/b]
    catalog = root / "catalog.yaml"
    catalog.write_text(catalog.read_text().replace("raw/ramp", "raw/a[b][/b]"))
    for args in (("catalog", "list"), ("verify",)):
        code, out, err = replicalake(monkeypatch, capsys, *args)
        assert code == 0, err
        assert "raw/a[b][/b]" in out
