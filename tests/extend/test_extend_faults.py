"""The extend killed (kill -9, the whole process) at random moments, then resumed: the same bytes as
an uninterrupted run, and nothing left over."""

from __future__ import annotations

import random
import shutil
import sys

import pytest

from pipeline.extend import main
from tests.services import dask_cluster, kill_after_launch, run_losing_a_dask_worker, timed_run
from tests.support import comparable_outputs


@pytest.mark.slow
def test_an_extend_killed_at_random_moments_resumes_to_the_same_bytes(runs, tmp_path):
    source = runs.reinforce("a", ["clip-a"])
    whole = runs.extend("a then b", source, "--add-teacher", runs.models["clip-b"])

    def args(out):
        return runs.extend_args(source, out, "--add-teacher", runs.models["clip-b"])

    def command(out):
        return [sys.executable, "-m", "pipeline.extend", *args(out)]

    window = timed_run(command(tmp_path / "timed"), tmp_path / "timed")
    out = tmp_path / "out"
    rng = random.Random(11)
    killed = [kill_after_launch(command(out), out, rng.uniform(0, window)) for _ in range(3)]
    assert any(killed)
    assert main(args(out)) == 0
    assert comparable_outputs(out) == comparable_outputs(whole) == comparable_outputs(tmp_path / "timed")
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_an_extend_on_dask_survives_a_worker_killed_inside_a_shard(runs, tmp_path):
    pytest.importorskip("distributed")
    source = tmp_path / "four"  # four shards: the two of run "a", and the same two again
    shutil.copytree(runs.reinforce("a", ["clip-a"]), source)
    for shard, copy in (("00000000", "00000002"), ("00000001", "00000003")):
        shutil.copy(source / f"{shard}.tar", source / f"{copy}.tar")

    def args(out, *extra):
        return runs.extend_args(source, out, "--add-teacher", runs.models["clip-b"], *extra)

    assert main(args(tmp_path / "reference")) == 0
    out = tmp_path / "out"
    with dask_cluster(tmp_path) as cluster:
        dask = ["--runner", "DaskRunner", "--dask_client_address", cluster.address]
        run_losing_a_dask_worker(
            [sys.executable, "-m", "pipeline.extend", *args(out, *dask)], out, cluster, tmp_path
        )
    assert comparable_outputs(out) == comparable_outputs(tmp_path / "reference")
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
