"""`--distil-from`: KD from some of the stored teachers (the single-teacher ablation of the paper)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import ShardSpec, build_shards
from trainer import train

FLAGS = ["--teacher-dims", "8,12", "--kd-logit-scales", "100,50", "--threads", "1", "--workers", "0"]


def _first_kd(data: Path, run: Path, *extra: str) -> dict[str, float]:
    argv = [
        "--data", str(data / "*.tar"), "--model", "tiny", "--steps", "1", "--batch-size", "8",
        "--output", str(run), "--seed", "3", *FLAGS, *extra,
    ]  # fmt: skip
    train.train(train.parse_args(argv))
    first = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    return {family: first[f"kd_{family}"] for family in ("original", "synthetic")}


def test_the_ensemble_target_is_the_mean_of_the_single_teacher_targets(tmp_path: Path) -> None:
    build_shards(tmp_path / "data", ShardSpec(shards=1, per_shard=8))
    ensemble = _first_kd(tmp_path / "data", tmp_path / "both")
    listed = _first_kd(tmp_path / "data", tmp_path / "listed", "--distil-from", "0,1")
    first = _first_kd(tmp_path / "data", tmp_path / "first", "--distil-from", "0")
    second = _first_kd(tmp_path / "data", tmp_path / "second", "--distil-from", "1")
    for family in ensemble:
        # same weights, same batch: KD is linear in its target, the mean of the teachers' softmaxes
        assert ensemble[family] == pytest.approx((first[family] + second[family]) / 2, rel=1e-5)
        assert listed[family] == pytest.approx(ensemble[family], rel=1e-6)
        assert abs(first[family] - second[family]) > 1e-3  # the two teachers do disagree


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--distil-from", "2"], "--distil-from 2: the data has 2 teachers (positions 0 to 1)"),
        (["--distil-from", "0", "--mode", "plain"], "--distil-from needs --mode reinforced"),
    ],
)
def test_a_teacher_that_is_not_there_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    build_shards(tmp_path / "data", ShardSpec(shards=1, per_shard=8))
    argv = [
        "--data", str(tmp_path / "data" / "*.tar"), "--model", "tiny", "--steps", "1",
        "--batch-size", "8", "--output", str(tmp_path / "run"), *FLAGS, *extra,
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and says in err[0], err


def test_a_run_resumes_only_with_the_same_teachers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_shards(tmp_path / "data", ShardSpec(shards=1, per_shard=8))
    _first_kd(tmp_path / "data", tmp_path / "run", "--distil-from", "0")
    argv = [
        "--data", str(tmp_path / "data" / "*.tar"), "--model", "tiny", "--steps", "1", "--batch-size", "8",
        "--output", str(tmp_path / "run"), "--seed", "3", *FLAGS, "--distil-from", "1",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "holds a run with different distil_from;" in err[-1], err
