"""Catalog files: our parser and plain Intake agree; malformed catalogs give clear errors."""

from __future__ import annotations

import warnings

import pytest

from engine.catalog import load_catalog, open_entry, parse_catalog
from engine.errors import CatalogError
from tests.conftest import REPO


def plain_intake_open(path, **params):
    import intake

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalog = intake.from_yaml_file(str(path))
        catalog.user_parameters.update(params)
        return catalog


def test_lake_catalog_opens_with_plain_intake(ramp_lake):
    catalog = plain_intake_open(ramp_lake.path("catalog.yaml"))
    assert list(catalog) == ["raw/ramp"]
    dataset = catalog["raw/ramp"].read()
    assert dataset["a"].chunks is not None  # lazy, dask-backed
    assert float(dataset["a"][2, 3]) == 23.0


def test_hand_written_catalogs_open_with_plain_intake(ramp_lake):
    for path in sorted((REPO / "catalogs").glob("*.yaml")):
        catalog = plain_intake_open(path, lake=ramp_lake.root)
        ours = load_catalog(path.stem, ramp_lake, REPO / "catalogs")
        assert set(catalog) == set(ours.entries), path.name


def test_engine_opens_lake_entries_lazily(ramp_lake):
    entry = load_catalog("lake", ramp_lake).entry("raw/ramp")
    dataset = open_entry(entry, ramp_lake, chunks={"y": 8})
    assert dataset["a"].chunks == ((8,), (4, 2))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\nsources: {}\n", r"expected an Intake 2 catalog \('version: 2'\), found 1"),
        ("version: 2\ndata: {}\nentries:\n  a:\n    reader: intake.readers.readers:PandasCSV\n",
         r"cat.yaml:5: entries.a.reader: expected reader"),
        ("version: 2\ndata: {}\nentries:\n  a:\n    reader: intake.readers.readers:XArrayDatasetReader\n"
         "    kwargs: {args: ['{data(missing)}']}\n", r"cat.yaml:6: entries.a.kwargs.args: expected args"),
        ("version: 2\nentries: !!python/name:os.system\n", "tag .* is not allowed"),
    ],
)
def test_malformed_catalogs(text, expected):
    with pytest.raises(CatalogError, match=expected):
        parse_catalog(text, "cat.yaml", "cat", {})
