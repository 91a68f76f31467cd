"""The same plan on a real dask.distributed cluster (LocalCluster, worker processes)."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.storage import Lake
from tests.test_graph import RECIPE


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, scheduler_port=0) as local:
        yield local


def test_scheduler_address_gives_identical_outputs(ramp_lake, write_recipe, tmp_path, cluster):
    from engine.testing import put_in_lake, ramp_dataset

    recipe = write_recipe(RECIPE)
    threaded = engine.run(recipe, ramp_lake)
    other = Lake(str(tmp_path / "distributed-lake"))
    put_in_lake(other, "ramp", ramp_dataset())
    summary = engine.run(recipe, other, scheduler=cluster.scheduler_address)
    assert summary.scheduler == cluster.scheduler_address
    assert [o.status for o in summary.outputs] == ["computed"] == [o.status for o in threaded.outputs]
    np.testing.assert_array_equal(other.open("derived", "smoke/total")["a"].values,
                                  ramp_lake.open("derived", "smoke/total")["a"].values)
    assert other.token("derived", "smoke/total") == ramp_lake.token("derived", "smoke/total")
