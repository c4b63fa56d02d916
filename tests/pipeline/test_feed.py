"""The decode/augment pool: results in input order, early stops, and not one output byte changed."""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import tarfile

import pytest

from pipeline.feed import ordered_map


def test_results_come_back_in_input_order_whatever_finishes_first() -> None:
    # factorial(30000) takes far longer than factorial(3): later small items finish first in the pool
    sizes = [30_000, 3, 20_000, 5, 1, 25_000, 2, 7]
    got = list(ordered_map(math.factorial, iter(sizes), workers=2, depth=4))
    assert got == [math.factorial(n) for n in sizes]


def test_workers_zero_runs_in_this_process_with_the_same_results() -> None:
    double = functools.partial(operator.mul, 2)
    assert list(ordered_map(double, iter(range(50)), workers=0, depth=4)) == list(range(0, 100, 2))
    assert list(ordered_map(double, iter(range(50)), workers=2, depth=4)) == list(range(0, 100, 2))


def test_an_error_reaches_the_consumer_and_an_early_stop_leaves_the_pool_usable() -> None:
    with pytest.raises(ValueError):
        list(ordered_map(int, iter(["1", "2", "not a number", "4"]), workers=2, depth=2))
    consumer = ordered_map(math.factorial, iter(range(10_000)), workers=2, depth=3)
    assert [next(consumer) for _ in range(3)] == [1, 1, 2]
    consumer.close()  # cancels what was submitted ahead; nothing blocks
    assert list(ordered_map(math.factorial, iter([4, 5]), workers=2, depth=3)) == [24, 120]


@pytest.mark.slow
def test_feed_processes_do_not_change_a_byte(tmp_path, sample_raw_dir, kit, tiny_checkpoints) -> None:
    """The same shard with the read-ahead thread and with 2 feed processes: identical tar and parquet,
    a bad image counted the same way."""
    from pipeline.reinforce_shard import reinforce_shard
    from pipeline.settings import ReinforceSettings
    from pipeline.worker_models import load_models

    with tarfile.open(sample_raw_dir / "00000000.tar") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad = kit.sample_members("bad", image=b"<html>not an image</html>")
    raw = kit.write_tar(tmp_path / "raw" / "00000000.tar", members + bad)
    settings = ReinforceSettings(
        input_pattern="",
        output_dir="",
        preset="tiny",
        teachers=(tiny_checkpoints["clip-a"], tiny_checkpoints["clip-b"]),
        kd_logit_scales=(100.0, 100.0),
        captioner=tiny_checkpoints["coca"],
        num_views=3,
        num_captions=2,
        batch_size=8,
    )
    models = load_models(settings)
    outputs = {}
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        stats = reinforce_shard(
            str(raw), dataclasses.replace(settings, output_dir=str(out), feed_workers=workers), models
        )
        assert stats.skipped == {"image_undecodable": 1}
        outputs[workers] = [(out / f"00000000.{ext}").read_bytes() for ext in ("tar", "parquet")]
    assert outputs[0] == outputs[2]
