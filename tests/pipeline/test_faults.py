"""Faults on a real engine: a Dask worker killed inside a shard, the Dask scheduler killed.

A `dask scheduler` and two `dask worker` processes (one thread each) on 127.0.0.1; the job runs as its
own process, as a user starts it. The output is compared with the in-process reference run byte for
byte (stats files without their wall-clock fields), and no temporary may be left in the folder.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services import dask_cluster, run_losing_a_dask_worker, stop, wait_inside_a_shard

pytestmark = pytest.mark.slow  # a scheduler, workers and the job as processes
pytest.importorskip("distributed")


def assert_same_outputs(expected: Path, actual: Path, job) -> None:
    want, got = job.files(expected), job.files(actual)
    assert sorted(got) == sorted(want)
    assert [name for name in want if want[name] != got[name]] == []
    assert [p.name for p in actual.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_a_dask_worker_killed_inside_a_shard_costs_only_that_shard(tmp_path, job_input, reference_run, job):
    out = tmp_path / "out"
    with dask_cluster(tmp_path) as cluster:
        dask = ["--runner", "DaskRunner", "--dask_client_address", cluster.address]
        command = [sys.executable, "-m", "pipeline.reinforce", *job.args(job_input[0], out, *dask)]
        run_losing_a_dask_worker(command, out, cluster, tmp_path)
    assert_same_outputs(reference_run, out, job)


def test_a_killed_scheduler_ends_the_job_within_a_minute_and_a_new_one_finishes_it(
    tmp_path, job_input, reference_run, job
):
    out = tmp_path / "out"
    with dask_cluster(tmp_path / "first") as cluster:
        dask = ["--runner", "DaskRunner", "--dask_client_address", cluster.address]
        command = [sys.executable, "-m", "pipeline.reinforce", *job.args(job_input[0], out, *dask)]
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_inside_a_shard(out, run)
            stop(cluster.scheduler, signal.SIGKILL)
            killed = time.monotonic()
            _, errors = run.communicate(timeout=120)
            took = time.monotonic() - killed
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode != 0 and took < 60
    assert "Traceback" not in errors
    said = [line for line in errors.splitlines() if line.startswith("error:")]
    assert len(said) == 1 and "scheduler was lost" in said[0], errors
    with dask_cluster(tmp_path / "second", workers=1) as cluster:
        dask = ["--runner", "DaskRunner", "--dask_client_address", cluster.address]
        again = subprocess.run([*command[: -len(dask)], *dask], capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
    assert_same_outputs(reference_run, out, job)
