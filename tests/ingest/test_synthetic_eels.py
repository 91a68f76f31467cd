"""`ingest synthetic-eels`: layout, truth maps beside the counts, reproducibility, registration."""

from __future__ import annotations

import numpy as np
import pytest

from engine.catalog import load_catalog
from engine.errors import IngestError
from engine.ingest.synthetic_eels import ingest_synthetic_eels
from engine.kernels import eels_synth
from tests.conftest import lake_files


def test_ingest_writes_counts_truth_and_registers(lake):
    ingest_synthetic_eels(lake, "img", (20, 12, 256), seed=3, chunks=(8, 8), progress=False)
    dataset = lake.open("raw", "img")
    assert dataset["counts"].dims == ("y", "x", "energy")
    assert dataset["counts"].shape == (20, 12, 256)
    assert dataset["counts"].chunks == ((8, 8, 4), (8, 4), (256,))
    for truth in ("tau", "e_g", "b", "n_counts", "drift", "windowed_log_ratio"):
        assert dataset[truth].dims == ("y", "x"), truth
    assert dataset["energy"].attrs["units"] == "eV"
    assert dataset.attrs["beam_energy_kev"] == 200.0
    assert "raw/img" in load_catalog("lake", lake).entries
    assert not any(p.startswith(".tmp/") for p in lake_files(lake))
    # Any block regenerates alone, bit for bit, from its own seed.
    block = eels_synth.simulate_block((20, 12), (8, 8), (8, 4), dataset["energy"].values, 3)
    np.testing.assert_array_equal(dataset["counts"][8:16, 8:12].values, block["counts"])


def test_same_seed_same_bytes_and_token(lake):
    ingest_synthetic_eels(lake, "a", (8, 8, 64), seed=1, chunks=(4, 4), progress=False)
    ingest_synthetic_eels(lake, "b", (8, 8, 64), seed=1, chunks=(4, 4), progress=False)
    ingest_synthetic_eels(lake, "c", (8, 8, 64), seed=2, chunks=(4, 4), progress=False)
    a, b, c = (lake.open("raw", n)["counts"].values for n in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert lake.token("raw", "a") == lake.token("raw", "b") != lake.token("raw", "c")


@pytest.mark.parametrize(("shape", "chunks", "message"), [
    ((0, 4, 64), (4, 4), "three positive integers"),
    ((4, 4, 8), (4, 4), "too few"),
    ((4, 4, 64), (0, 4), "two positive integers"),
])
def test_bad_requests_write_nothing(lake, shape, chunks, message):
    with pytest.raises(IngestError, match=message):
        ingest_synthetic_eels(lake, "bad", shape, chunks=chunks, progress=False)
    assert lake_files(lake) == set()
