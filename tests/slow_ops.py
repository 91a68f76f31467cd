"""A deliberately slow op for fault-injection tests, and `python -m tests.slow_ops ARGS` = `replicalake ARGS`.

The crash and concurrency tests run the real CLI in a subprocess with this op registered, so they
can kill it (or start a second run) while chunks are being written. Each block computed appends a
line to $SLOW_OP_LOG, which is how a test counts recomputed chunks; while the file $SLOW_OP_GATE
exists, blocks wait, so a test can hold a run mid-write for as long as it needs (each block
touches $SLOW_OP_GATE.started first, so the test knows the compute has begun).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict

from engine.registry import register_op


class SlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = 0.3


@register_op("testing.slow_double", params=SlowParams)
def slow_double(params: SlowParams, data: xr.Dataset) -> xr.Dataset:
    """Twice the input, sleeping `seconds` per chunk (and logging each chunk computed)."""

    def block(values):
        time.sleep(params.seconds)
        gate = os.environ.get("SLOW_OP_GATE")
        if gate:
            Path(f"{gate}.started").touch()  # a test can wait until a block is being computed
        deadline = time.monotonic() + 120
        while gate and os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)  # held until the test removes the gate file
        log = os.environ.get("SLOW_OP_LOG")
        if log:
            with open(log, "a") as handle:
                handle.write(f"{os.getpid()}\n")
        return values * 2

    result = data.copy()
    for name, var in data.data_vars.items():
        result[name] = (var.dims, var.data.map_blocks(block, meta=np.empty((0,) * var.ndim, var.dtype)))
    return result


if __name__ == "__main__":
    import sys

    from engine.cli import main

    sys.argv[0] = "replicalake"
    main()
