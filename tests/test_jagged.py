"""engine.jagged: awkward collections <-> zarr buffers, exact round trips chunk by chunk."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import xarray as xr
import zarr

from engine.errors import OpError
from engine.jagged import (
    ATTR,
    CollectionWriter,
    UnsupportedLayout,
    align_events,
    buffer_layout,
    collection_blocks,
    from_stored,
    to_awkward,
    to_stored,
)


def _muons(n: int, seed: int = 0) -> ak.Array:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, n)
    total = int(counts.sum())
    flat = ak.zip({"Px": rng.normal(size=total).astype(np.float32),
                   "Charge": rng.choice(np.array([-1, 1], dtype=np.int32), total),
                   "ID": rng.random(total) > 0.5})
    return ak.unflatten(flat, counts)


def _write(tmp_path, name: str, array: ak.Array, chunk: int) -> xr.Dataset:
    group = zarr.open_group(str(tmp_path / "sample"), mode="w", zarr_format=3)
    writer = CollectionWriter(group, name, chunk)
    for start in range(0, len(array), chunk):
        writer.append(array[start:start + chunk])
    group.attrs[ATTR] = {name: writer.description()}
    return xr.open_zarr(str(tmp_path / "sample"), consolidated=False, chunks={})


def test_stored_buffers_round_trip_one_chunk():
    array = ak.Array([{"a": [[1, 2], []], "s": "hi"}, {"a": [], "s": ""}, {"a": [[3]], "s": "xyz"}])
    form, stored = to_stored(array)
    assert all(not key.endswith("-offsets") for key in stored)
    back = from_stored(form.to_json(), len(array), stored)
    assert back.to_list() == array.to_list()
    assert str(back.type) == str(array.type)


def test_collection_round_trips_exactly_through_zarr_in_chunks(tmp_path):
    muons = _muons(1000)
    dataset = _write(tmp_path, "Muon", muons, chunk=128)
    assert dataset["Muon__counts"].dims == ("event",)
    assert dataset["Muon_Px"].dims == ("Muon",)
    assert dataset["Muon__counts"].chunks[0][0] == 128
    blocks = collection_blocks(dataset, "Muon")
    assert len(blocks) == 8  # lazy: one delayed per event chunk
    back = to_awkward(dataset, "Muon")
    assert ak.array_equal(back, muons)
    assert str(back.type) == str(muons.type)  # dtypes kept: float32, int32, bool


def test_nested_lists_get_their_own_dim(tmp_path):
    jets = ak.Array([[{"pt": 1.0, "parts": [1, 2, 3]}], [], [{"pt": 2.0, "parts": []},
                                                           {"pt": 3.0, "parts": [4]}]])
    layout = buffer_layout(to_stored(jets)[0], "Jet")
    dims = {variable: dim for variable, dim in layout.values()}
    assert dims["Jet__counts"] == "event" and dims["Jet_pt"] == "Jet"
    assert dims["Jet_parts__counts"] == "Jet" and dims["Jet_parts"].startswith("Jet__")
    dataset = _write(tmp_path, "Jet", jets, chunk=2)
    assert to_awkward(dataset, "Jet").to_list() == jets.to_list()


def test_option_types_are_refused():
    with pytest.raises(UnsupportedLayout, match="IndexedOptionForm|ByteMaskedForm|found a"):
        buffer_layout(to_stored(ak.Array([[1, None], []]))[0], "x")


def test_rechunked_events_are_refused_then_realigned(tmp_path):
    muons = _muons(100)
    dataset = _write(tmp_path, "Muon", muons, chunk=10).chunk({"event": 50})
    with pytest.raises(OpError, match="align the sample"):
        collection_blocks(dataset, "Muon")
    assert ak.array_equal(to_awkward(align_events(dataset), "Muon"), muons)
