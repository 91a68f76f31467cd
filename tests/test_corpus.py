"""The bad-input corpus (tests/corpus/index.yaml): every case a clear error, exit 1, lake untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.test_cli import replicalake

CORPUS = Path(__file__).parent / "corpus"
CASES = YAML(typ="safe", pure=True).load((CORPUS / "index.yaml").read_text())


def tree_hash(root: Path) -> str:
    """Digest of every path and byte under `root` (lock files included: nothing may be added)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def command_line(case: dict) -> list[str]:
    """The CLI arguments of a case: `args` spelt out (with {case} and {corpus} filled in), or the
    short forms run / validate / ingest-eels of a recipe or data file."""
    target = CORPUS / case["case"]
    if "args" in case:
        return [arg.format(case=target, corpus=CORPUS) for arg in case["args"]]
    if case["command"] in ("run", "validate"):
        extra = ["--no-progress"] if case["command"] == "run" else []
        return [case["command"], str(target), "--catalogs", str(CORPUS / "catalogs_bad"), *extra]
    assert case["command"] == "ingest-eels", case
    return ["ingest", "eels", str(target), case.get("name", "corpus"), "--no-progress"]


def test_corpus_is_large_and_every_file_is_used():
    used = {case["case"] for case in CASES}
    files = {str(p.relative_to(CORPUS)) for p in CORPUS.glob("*/*") if p.parent.name != "catalogs_bad"}
    assert len(CASES) >= 30 and files == used


@pytest.mark.parametrize("case", CASES, ids=[f"{c['command']}:{c['case']}" for c in CASES])
def test_bad_input_gives_a_clear_error_and_leaves_the_lake_unchanged(case, ramp_lake, monkeypatch, capsys):
    root = Path(ramp_lake.root)
    before = tree_hash(root)
    code, out, err = replicalake(monkeypatch, capsys, *command_line(case))
    message = " ".join(err.split())  # rich wraps long lines
    assert code == 1, out + err
    assert case["expect"] in message, message
    assert "Traceback" not in err
    assert tree_hash(root) == before
