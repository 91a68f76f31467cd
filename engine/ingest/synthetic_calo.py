"""`replicalake ingest synthetic-calo`: known-physics calorimeter showers written into the lake.

Showers are generated block by block (kernels.calo_synth, each block from (seed, block)) straight
into a staged zarr store, so memory is bounded by one block, then published to raw/NAME as
`energy` (shower, layer, cell) in GeV and `incident_energy` (shower,) in GeV, with the geometry
(cell centres, layer depths) as coordinates and the generator settings as attributes.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ..bounds import Events, Rows
from ..errors import IngestError
from ..kernels import calo_synth
from ..storage import PROVENANCE_KEY, Lake, content_token
from .registry import EntryName, IngestParams, Progress, Seed, register_format
from .staging import staged_entry, write_blocks

GENERATOR = "synthetic-calo"
GENERATOR_VERSION = "1"
SHOWER, LAYER, CELL = "shower", "layer", "cell"


def geometry_coords(n_layers: int, n_side: int) -> dict:
    """Coordinates of the (layer, cell) grid: layer depths (X0) and cell centres (cell widths)."""
    edges = calo_synth.layer_edges(n_layers)
    centres = calo_synth.cell_centres(n_side)
    y, x = np.meshgrid(centres, centres, indexing="ij")
    return {
        LAYER: np.arange(n_layers),
        CELL: np.arange(n_side * n_side),
        "depth_start": (LAYER, edges[:-1], {"units": "X0"}),
        "depth_end": (LAYER, edges[1:], {"units": "X0"}),
        "cell_x": (CELL, x.reshape(-1), {"units": "cell widths"}),
        "cell_y": (CELL, y.reshape(-1), {"units": "cell widths"}),
    }


def shower_template(n: int, n_layers: int, n_side: int, chunk: int) -> xr.Dataset:
    """A lazy dataset with the showers' layout (only its metadata is ever written from it)."""
    chunk = min(chunk, max(n, 1))
    return xr.Dataset(
        {
            "energy": (
                (SHOWER, LAYER, CELL),
                da.zeros((n, n_layers, n_side * n_side), dtype=np.float32, chunks=(chunk, -1, -1)),
                {"units": "GeV"},
            ),
            "incident_energy": ((SHOWER,), da.zeros(n, dtype=np.float32, chunks=chunk), {"units": "GeV"}),
        },
        coords=geometry_coords(n_layers, n_side),
    )


class SyntheticCaloParams(IngestParams):
    """Generate calorimeter showers with a gamma-function longitudinal profile, an energy-dependent
    lateral spread and Poisson quanta (kernels.calo_synth) into raw/NAME."""

    name: EntryName
    n_showers: Events = Field(50_000, alias="showers", ge=1, description="number of showers")
    seed: Seed = 0
    n_layers: int = Field(3, alias="layers", ge=1, le=50, description="calorimeter layers")
    n_side: int = Field(6, alias="side", ge=1, le=64, description="cells per side of each layer's grid")
    e_min: float = Field(1.0, gt=0, description="lowest incident energy (GeV), log-uniform")
    e_max: float = Field(100.0, gt=0, description="highest incident energy (GeV)")
    quantum: float = Field(0.01, gt=0, description="energy quantum (GeV): cells hold Poisson counts of it")
    profile_jitter: float = Field(
        0.1, ge=0, le=1, description="relative shower-to-shower spread of the profile's shape parameter"
    )
    chunk: Rows = Field(10_000, ge=1, description="showers per block and per zarr chunk")
    progress: Progress = True


@register_format(GENERATOR, SyntheticCaloParams)
def ingest_synthetic_calo(
    lake: Lake,
    name: str,
    n_showers: int = 50_000,
    seed: int = 0,
    n_layers: int = 3,
    n_side: int = 6,
    e_min: float = 1.0,
    e_max: float = 100.0,
    quantum: float = 0.01,
    profile_jitter: float = 0.1,
    chunk: int = 10_000,
    progress: bool = True,
) -> str:
    """Generate n_showers showers into raw/NAME block by block; returns a one-line description."""
    if not e_min <= e_max:
        raise IngestError(f"--e-min must not exceed --e-max, found {e_min} > {e_max}")
    if n_showers < 1 or chunk < 1:
        raise IngestError(f"--showers and --chunk must be positive, found {n_showers}, {chunk}")
    settings = {
        "n_layers": n_layers,
        "n_side": n_side,
        "e_min": e_min,
        "e_max": e_max,
        "quantum": quantum,
        "profile_jitter": profile_jitter,
    }
    token = content_token(GENERATOR, GENERATOR_VERSION, n_showers, seed, chunk, settings)
    dataset = shower_template(n_showers, n_layers, n_side, chunk)
    dataset.attrs = {
        "description": "synthetic EM calorimeter showers (gamma profile, Poisson quanta)",
        "generator": GENERATOR,
        **settings,
        PROVENANCE_KEY: {
            "token": token,
            "ingest": GENERATOR,
            "seed": seed,
            "generator_version": GENERATOR_VERSION,
            **settings,
        },
    }
    with staged_entry(lake, "raw", name) as stage:
        group = stage.layout(dataset)

        def write_block(start: int) -> None:
            stop = min(start + chunk, n_showers)
            block = calo_synth.simulate_showers(stop - start, seed, start // chunk, **settings)
            group["energy"][start:stop] = block["energy"]
            group["incident_energy"][start:stop] = block["incident_energy"]

        write_blocks(list(range(0, n_showers, chunk)), write_block, f"generating raw/{name}", progress)
        stage.publish(
            f"{n_showers} synthetic showers, {n_layers} layers x {n_side}x{n_side} cells, seed {seed}",
            {"token": token},
        )
    return f"{n_showers} showers x {n_layers} layers x {n_side * n_side} cells"
