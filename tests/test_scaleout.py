"""Scale-out: one recipe, identical results on threads, a LocalCluster, a `dask scheduler` + `dask worker`
reached by address, and a lake in an S3 bucket (a moto server on loopback).

The recipe is the real EELS thickness chain (recipes/eels_thickness.yaml) on a small synthetic image.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.ingest.synthetic_eels import DEMO_NAME, ingest_synthetic_eels
from engine.storage import Lake
from tests.conftest import REPO
from tests.test_cli import replicalake

pytestmark = pytest.mark.slow  # ~1-2 min together: worker processes and an S3 server start

RECIPE = REPO / "recipes" / "eels_thickness.yaml"
CATALOGS = REPO / "catalogs"
OUTPUT = ("derived", "eels-thickness/thickness")
SHAPE = (32, 32, 512)
CHUNKS = (16, 16)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scaleout") / "ingested"
    ingest_synthetic_eels(Lake(str(root)), DEMO_NAME, SHAPE, chunks=CHUNKS, progress=False)
    return root


def copy_lake(ingested: Path, root: Path) -> Lake:
    shutil.copytree(ingested, root)
    return Lake(str(root))


def output_arrays(lake: Lake) -> dict[str, np.ndarray]:
    dataset = lake.open(*OUTPUT)
    return {name: dataset[name].values for name in dataset.variables}


def assert_same_output(lake: Lake, reference: Lake) -> None:
    ours, theirs = output_arrays(lake), output_arrays(reference)
    assert set(ours) == set(theirs)
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert lake.token(*OUTPUT) == reference.token(*OUTPUT)


@pytest.fixture
def scheduler_address(tmp_path):
    """A `dask scheduler` and a `dask worker` (2 processes) as subprocesses on 127.0.0.1."""
    from distributed import Client

    scheduler_file = tmp_path / "scheduler.json"
    bin_dir = Path(sys.executable).parent
    scheduler = subprocess.Popen([bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", scheduler_file],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.monotonic() + 180  # a loaded machine starts processes slowly
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "the dask scheduler did not start"
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        worker = subprocess.Popen([bin_dir / "dask", "worker", address, "--nworkers", "2", "--nthreads", "1",
                                   "--no-dashboard", "--host", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
        with Client(address, timeout=120) as client:
            client.wait_for_workers(2, timeout=180)
        yield address
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


def test_threads_local_cluster_and_scheduler_address_give_identical_outputs(
        ingested, tmp_path, scheduler_address, monkeypatch, capsys):
    from distributed import LocalCluster

    monkeypatch.setenv("REPLICALAKE_CATALOGS", str(CATALOGS))
    threads = copy_lake(ingested, tmp_path / "threads")
    summary = engine.run(RECIPE, threads)
    assert summary.scheduler == "threads" and summary.outputs[0].status == "computed"

    local = copy_lake(ingested, tmp_path / "local-cluster")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      scheduler_port=0) as cluster:
        summary = engine.run(RECIPE, local, scheduler=cluster.scheduler_address)
    assert summary.outputs[0].status == "computed"
    assert_same_output(local, threads)

    remote = copy_lake(ingested, tmp_path / "remote")
    code, out, err = replicalake(monkeypatch, capsys, "run", RECIPE, "--lake", remote.root, "--catalogs",
                                 CATALOGS, "--scheduler", scheduler_address, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["scheduler"] == scheduler_address and report["outputs"][0]["status"] == "computed"
    assert_same_output(remote, threads)


@pytest.fixture
def s3_bucket(monkeypatch):
    """An S3-compatible server (moto) on loopback with an empty bucket; credentials via the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("lake-bucket")
    yield "s3://lake-bucket/lake"
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_lake_in_an_s3_bucket_ingest_run_rerun_verify(ingested, tmp_path, s3_bucket, monkeypatch, capsys):
    lake = ["--lake", s3_bucket]
    code, out, err = replicalake(monkeypatch, capsys, "ingest", "synthetic-eels", DEMO_NAME, "--shape",
                                 *map(str, SHAPE), "--chunks", *map(str, CHUNKS), "--no-progress", *lake)
    assert code == 0, err
    run = ["run", RECIPE, "--catalogs", CATALOGS, "--json", *lake]
    code, out, err = replicalake(monkeypatch, capsys, *run)
    assert code == 0, err
    assert json.loads(out)["outputs"][0]["status"] == "computed"
    code, out, err = replicalake(monkeypatch, capsys, *run)
    assert code == 0 and json.loads(out)["outputs"][0]["status"] == "up to date"
    code, out, err = replicalake(monkeypatch, capsys, "verify", "--json", *lake)
    assert code == 0 and {r["entry"] for r in json.loads(out) if r["ok"]} == {
        f"raw/{DEMO_NAME}", "derived/eels-thickness/thickness"}

    bucket = Lake(s3_bucket)
    assert not bucket.fs.exists(bucket.path(".tmp")) or not bucket.fs.find(bucket.path(".tmp"))
    local = copy_lake(ingested, tmp_path / "local")
    monkeypatch.setenv("REPLICALAKE_CATALOGS", str(CATALOGS))
    engine.run(RECIPE, local)
    assert_same_output(bucket, local)
