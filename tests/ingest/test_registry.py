"""The ingest-format registry and the commands the CLI builds from it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import Field
from typer.testing import CliRunner

from engine.cli import app
from engine.ingest import registry
from engine.ingest.registry import EntryName, IngestParams, list_formats, register_format
from tests.conftest import lake_files
from tests.test_cli import replicalake

FORMATS = list_formats()


@pytest.mark.parametrize("spec", FORMATS, ids=[spec.name for spec in FORMATS])
def test_every_format_has_a_command_whose_help_lists_each_param(spec):
    result = CliRunner().invoke(app, ["ingest", spec.name, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert spec.help.splitlines()[0] in result.output
    for name, field in spec.fields().items():
        shown = name if name in spec.positional else "--" + name.replace("_", "-")
        assert shown in result.output, (shown, result.output)
        assert field.description.split(";")[0] in result.output, (field.description, result.output)


def test_ingest_help_lists_every_format():
    result = CliRunner().invoke(app, ["ingest", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0 and all(spec.name in result.output for spec in FORMATS), result.output


@pytest.mark.parametrize("args, message", [
    (["synthetic-eels", "x", "--seed", "-1"],
     "ingest synthetic-eels: --seed: Input should be greater than or equal to 0 (found -1)"),
    (["nnpdf", "SLAC_NC_NOTFIXED_P", "x", "--q2-min", "-2"],
     "ingest nnpdf: --q2-min: Input should be greater than or equal to 0 (found -2.0)"),
    (["synthetic-jets", "x", "--constituents", "0"],
     "ingest synthetic-jets: --constituents: Input should be greater than or equal to 1 (found 0)"),
])
def test_a_refused_option_is_one_line_naming_it(lake, monkeypatch, capsys, args, message):
    code, _, err = replicalake(monkeypatch, capsys, "ingest", *args)
    assert code == 1 and err.strip() == f"error: {message}", err
    assert lake_files(lake) == set()


class ToyParams(IngestParams):
    """Write nothing, and say what was asked for."""

    sources: list[str] = Field(description="things to read")
    name: EntryName
    size: tuple[int, int] = Field((2, 3), description="rows and columns")
    n_tags: int = Field(1, alias="tags", ge=0, description="how many tags")
    labels: list[str] | None = Field(None, description="a label (repeat the option)")
    strict: bool = Field(False, description="refuse odd things")


def toy_reader(lake, sources, name, size=(2, 3), n_tags=1, labels=None, strict=False) -> str:
    return f"{sources} {size} {n_tags} {labels} {strict}"


@pytest.fixture
def own_registry(monkeypatch):
    """A copy of the registry that a test may add formats to."""
    monkeypatch.setattr(registry, "_FORMATS", {spec.name: spec for spec in FORMATS})


def test_a_format_registered_later_becomes_a_command(own_registry, lake, monkeypatch, capsys):
    register_format("toy", ToyParams, positional=("sources", "name"))(toy_reader)
    code, out, err = replicalake(monkeypatch, capsys, "ingest", "toy", "a", "b", "t", "--size", "4", "5",
                                 "--tags", "7", "--labels", "x", "--labels", "y", "--strict")
    assert code == 0, err
    assert out.strip() == "ingested raw/t: ['a', 'b'] (4, 5) 7 ['x', 'y'] True"
    code, out, _ = replicalake(monkeypatch, capsys, "ingest", "toy", "a", "t")
    assert code == 0 and out.strip() == "ingested raw/t: ['a'] (2, 3) 1 None False"
    code, _, err = replicalake(monkeypatch, capsys, "ingest", "toy", "a", "t", "--no-strict")
    assert code == 2 and "No such option" in err  # an opt-in flag has no --no- form


@pytest.mark.parametrize("positional, reader, problem", [
    (("sources", "name"), lambda lake, sources, name: "", "param 'size' is no keyword of <lambda>"),
    (("source", "name"), toy_reader, "positional 'source' is no param"),
    (("sources", "name"), lambda lake, sources, name, size, n_tags, labels, strict, seed: "",
     "<lambda> needs 'seed', which is no param"),
])
def test_registration_refuses_a_model_that_does_not_fit_its_reader(own_registry, positional, reader,
                                                                   problem):
    with pytest.raises(ValueError, match=problem):
        register_format("toy", ToyParams, positional)(reader)


def test_a_model_needs_the_entry_name_and_leaves_lake_to_the_cli(own_registry):
    class Nameless(IngestParams):
        lake: str

    with pytest.raises(ValueError, match="no param 'name'.*clashes with the --lake option"):
        register_format("toy", Nameless)(lambda lake: "")


def test_other_commands_do_not_import_the_readers():
    """Formats are listed only when `ingest` is used, so `validate` or `run` start faster."""
    code = ("import sys, engine.cli; from engine.ingest.registry import BUILTIN_MODULES; "
            "readers = [m for m in BUILTIN_MODULES if 'engine.ingest.' + m in sys.modules]; "
            "print(readers); sys.exit(bool(readers))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
