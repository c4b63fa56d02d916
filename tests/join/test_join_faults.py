"""The join killed (kill -9, the whole process) at random moments, then resumed: the same bytes as an
uninterrupted run, and nothing left over."""

from __future__ import annotations

import random
import shutil
import sys
from types import SimpleNamespace

import pytest

from pipeline.join import main
from tests.services import dask_cluster, kill_after_launch, run_losing_a_dask_worker, timed_run
from tests.support import comparable_outputs


@pytest.mark.slow
def test_a_join_killed_at_random_moments_resumes_to_the_same_bytes(joined, join_input, join_args, tmp_path):
    def command(out):
        args = join_args(join_input, out, "--on-mismatch", "list", "--runner", "DirectRunner")
        return [sys.executable, "-m", "pipeline.join", *args]

    window = timed_run(command(tmp_path / "timed"), tmp_path / "timed")
    out = tmp_path / "out"
    rng = random.Random(5)
    killed = [kill_after_launch(command(out), out, rng.uniform(0, window)) for _ in range(4)]
    assert any(killed)
    assert main(command(out)[3:]) == 0
    assert comparable_outputs(out) == comparable_outputs(joined) == comparable_outputs(tmp_path / "timed")
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_a_join_on_dask_survives_a_worker_killed_inside_a_shard(join_input, join_args, tmp_path):
    pytest.importorskip("distributed")
    public = tmp_path / "public"  # four reinforced shards: the two of the test input, and the same again
    public.mkdir()
    for index in range(4):
        shutil.copy(join_input.public / f"{index % 2:08d}.tar", public / f"{index:08d}.tar")
    data = SimpleNamespace(**{**vars(join_input), "public": public})
    assert main(join_args(data, tmp_path / "reference", "--on-mismatch", "list")) == 0
    out = tmp_path / "out"
    with dask_cluster(tmp_path) as cluster:
        args = join_args(data, out, "--on-mismatch", "list", "--runner", "DaskRunner")
        command = [sys.executable, "-m", "pipeline.join", *args, "--dask_client_address", cluster.address]
        run_losing_a_dask_worker(command, out, cluster, tmp_path)
    assert comparable_outputs(out) == comparable_outputs(tmp_path / "reference")
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
