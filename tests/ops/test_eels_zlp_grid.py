"""eels.subtract_zlp's quantile grid: one task per run, evaluated only where the chunks read it."""

from __future__ import annotations

import json

import dask
import numpy as np
import pytest
import xarray as xr

from engine.kernels import zlp
from engine.kernels.mlp import EnsembleMLP
from engine.ops.eels_zlp import KIND, SubtractParams, subtract_zlp
from tests.kernels.test_zlp import DE_I, DE_II, clusters

ACTIVATIONS = ["sigmoid", "sigmoid", "relu", "linear"]


@pytest.fixture(scope="module")
def inputs():
    """A 4 x 4 image of two clusters in 2 x 2 chunks, its windows, an untrained 8-replica model
    (the grid's coverage does not depend on how well the model fits)."""
    energy, spectra, _ = clusters(taus=(0.2, 1.2), n_per=8, seed=3)
    counts = np.concatenate(spectra).reshape(4, 4, energy.size).astype(np.float32)
    labels = np.repeat([0, 1], 8).reshape(4, 4)
    image = xr.Dataset({"counts": (("y", "x", "energy"), counts)}, coords={"energy": energy})
    image = image.chunk({"y": 2, "x": 2, "energy": -1})
    groups = xr.Dataset({"cluster": (("y", "x"), labels)}, coords={"cluster_id": [0, 1]})
    median = np.stack([np.log(np.maximum(np.median(s, axis=0), 1.0)) for s in spectra])
    windows = xr.Dataset(
        {
            "de_i": ("cluster_id", [DE_I, DE_I + 0.3]),
            "de_ii": ("cluster_id", [DE_II, DE_II]),
            "ln_i_median": (("cluster_id", "energy"), median),
        },
        coords={"cluster_id": [0, 1], "energy": energy},
    )
    net = EnsembleMLP(8, [2, 10, 15, 5, 1], ACTIVATIONS, seed=0)
    ln_n = np.log(counts.sum(axis=-1, dtype=np.float64))
    scaling = [-1.0, 2 * DE_II, float(ln_n.min()), float(ln_n.max())]
    arrays = {**net.to_arrays(), "kept": np.ones(8, bool)}
    model = xr.Dataset(
        {
            name: (("replica", *(f"{name}_{i}" for i in range(1, value.ndim))), value)
            for name, value in arrays.items()
        },
        attrs={"kind": KIND, "architecture": json.dumps(net.architecture())},
    )
    model["scaling"] = ("scaling_param", scaling)
    return image, groups, windows, model


def bands(inputs):
    ds = subtract_zlp(SubtractParams(), *inputs)
    return ds, dask.compute(ds["inelastic_quantile"].data, ds["inelastic_de_i"].data, scheduler="sync")


def test_the_grid_is_built_once_for_all_chunks(inputs, monkeypatch):
    calls = []
    build = zlp.zlp_quantile_grid
    monkeypatch.setattr(zlp, "zlp_quantile_grid", lambda *a, **k: calls.append(1) or build(*a, **k))
    ds, _ = bands(inputs)
    assert ds["inelastic_quantile"].data.numblocks == (1, 2, 2, 1) and len(calls) == 1


def test_a_grid_on_the_read_channels_gives_the_full_grids_bands(inputs, monkeypatch):
    """Every channel a chunk reads, the moved dE_I's included, lies inside grid_channels: the
    bands are bit for bit those of a grid over the whole energy axis."""
    _, (quantile, moved) = bands(inputs)
    energy = inputs[0]["energy"].values
    window = zlp.grid_channels(energy, [0.4, 0.4], [[DE_I - 0.2, DE_I + 0.1]], [DE_II, DE_II])
    assert 0 < window.stop - window.start < energy.size / 4  # the saving is real
    monkeypatch.setattr(zlp, "grid_channels", lambda energy, *_: slice(0, len(energy)))
    _, (quantile_full, moved_full) = bands(inputs)
    assert np.isfinite(quantile).all() and np.isfinite(moved).all()
    np.testing.assert_array_equal(quantile, quantile_full)
    np.testing.assert_array_equal(moved, moved_full)


def test_channels_outside_the_grid_are_nan(inputs):
    _, _, _, model = inputs
    arrays = {name: model[name].values for name in model.data_vars if name not in ("kept", "scaling")}
    architecture = json.loads(model.attrs["architecture"])
    scaling = zlp.ZlpScaling(*model["scaling"].values)
    energy = inputs[0]["energy"].values
    nodes = zlp.ln_n_nodes(scaling.ln_n_low, scaling.ln_n_high, 8)
    full = zlp.zlp_quantile_grid(arrays, architecture, scaling, energy, nodes)
    part = zlp.zlp_quantile_grid(arrays, architecture, scaling, energy, nodes, channels=slice(100, 300))
    np.testing.assert_array_equal(part[..., 100:300], full[..., 100:300])
    assert np.isnan(part[..., :100]).all() and np.isnan(part[..., 300:]).all()
