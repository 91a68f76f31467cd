"""`ingest synthetic-calo`: layout, block-by-block reproducibility, errors."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import IngestError
from engine.ingest.registry import list_formats
from engine.ingest.synthetic_calo import ingest_synthetic_calo
from engine.kernels.calo_synth import simulate_showers
from engine.storage import Lake


def test_showers_land_in_the_lake_block_by_block(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    summary = ingest_synthetic_calo(
        lake, "calo", 250, seed=4, n_layers=2, n_side=4, chunk=100, progress=False
    )
    assert summary == "250 showers x 2 layers x 16 cells"
    data = lake.open("raw", "calo")
    assert data["energy"].dims == ("shower", "layer", "cell") and data["energy"].shape == (250, 2, 16)
    assert data["energy"].dtype == np.float32 and data["energy"].data.chunks[0] == (100, 100, 50)
    assert data.attrs["quantum"] == 0.01 and data["cell_x"].shape == (16,)
    third = simulate_showers(50, 4, block=2, n_layers=2, n_side=4)  # rows 200-249: block 2 alone
    np.testing.assert_array_equal(data["energy"].values[200:], third["energy"])
    np.testing.assert_array_equal(data["incident_energy"].values[200:], third["incident_energy"])
    assert "synthetic-calo" in [f.name for f in list_formats()]


def test_bad_settings_write_nothing(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(IngestError, match="--e-min must not exceed --e-max, found 5.0 > 2.0"):
        ingest_synthetic_calo(lake, "calo", 10, e_min=5.0, e_max=2.0, progress=False)
    assert not lake.exists("raw", "calo")
