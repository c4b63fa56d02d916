"""The join killed (kill -9, the whole process) at random moments, then resumed: the same bytes as an
uninterrupted run, and nothing left over."""

from __future__ import annotations

import random
import sys

import pytest

from pipeline.join import main
from tests.services import kill_after_launch, timed_run
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
