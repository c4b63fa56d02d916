"""The training CLI end to end: a tiny student learns, its outputs load, and a resume continues the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from teachers.specs import OPEN_CLIP_WEIGHTS_FILE
from tests.support import ShardSpec, build_shards, identity_image, write_members
from trainer import train
from trainer.checkpoint import completed_steps, step_dir

FLAGS = ["--teacher-dims", "8,12", "--kd-logit-scales", "100,50", "--threads", "1"]


def _heldout(folder: Path) -> Path:
    """A CLIP-benchmark style held-out set: image, caption and class label, class names beside it."""
    split = folder / "test"
    split.mkdir(parents=True)
    members = []
    for index in range(12):
        identity = index % 6
        members.append(
            {
                "__key__": f"{index:06d}",
                "jpg": identity_image(identity, 500 + index, (96, 80)),
                "txt": f"a picture of thing {identity}".encode(),
                "cls": str(identity).encode(),
            }
        )
    write_members(split / "0.tar", members)
    (folder / "classnames.txt").write_text("".join(f"thing {i}\n" for i in range(6)))
    return split


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("trained")
    build_shards(root / "data", ShardSpec(shards=2, per_shard=12))
    heldout = _heldout(root / "heldout")
    run = root / "run"
    steps = 200
    summary = train.train(
        train.parse_args(
            [
                "--data", str(root / "data" / "*.tar"), "--model", "tiny", "--steps", str(steps),
                "--batch-size", "8", "--lr", "2e-3", "--workers", "1", "--output", str(run),
                "--checkpoint-every", "100", "--log-every", "100", "--eval-data", str(heldout / "*.tar"),
                *FLAGS,
            ]
        )
    )  # fmt: skip
    return SimpleNamespace(run=run, summary=summary, steps=steps)


def test_a_tiny_student_lowers_its_kd_loss_clearly(trained: SimpleNamespace) -> None:
    s = trained.summary
    assert s["steps"] == trained.steps and s["skipped"] == {}
    for family in ("original", "synthetic"):
        assert s[f"last_kd_{family}"] < 0.5 * s[f"first_kd_{family}"], s


def test_the_run_leaves_a_step_log_a_plot_and_loadable_checkpoints(trained: SimpleNamespace) -> None:
    records = [json.loads(line) for line in (trained.run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(trained.steps))
    for key in (
        "total",
        "kd_original",
        "kd_synthetic",
        "clip_original",
        "logit_scale",
        "samples_per_s",
        "lr",
    ):
        assert all(isinstance(r[key], float) for r in records), key
    assert (trained.run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert completed_steps(str(trained.run)) == [100, 200]
    # The final checkpoint is a plain open_clip local-dir folder holding the trained weights.
    folder = step_dir(str(trained.run), trained.steps)
    model = open_clip.create_model(f"local-dir:{folder}")
    saved = load_file(str(Path(folder) / OPEN_CLIP_WEIGHTS_FILE))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert float(model.logit_scale.detach().exp()) == pytest.approx(records[-1]["logit_scale"], rel=1e-5)


def test_the_run_reports_retrieval_and_zero_shot_on_the_heldout_set(trained: SimpleNamespace) -> None:
    result = trained.summary["eval"]
    assert result["step"] == trained.steps and result["num_images"] == 12 and result["num_labelled"] == 12
    for key in (
        "image_to_text_R@1",
        "image_to_text_R@5",
        "text_to_image_R@1",
        "text_to_image_R@5",
        "zeroshot_top1",
    ):
        assert 0.0 <= result[key] <= 1.0
    assert result["image_to_text_R@5"] >= result["image_to_text_R@1"]
    assert (trained.run / "eval.jsonl").read_text().count("\n") == 1


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(Path(step_dir(str(run), step)) / OPEN_CLIP_WEIGHTS_FILE))


def test_resuming_an_interrupted_run_gives_exactly_the_uninterrupted_result(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build_shards(data, ShardSpec(shards=3, per_shard=5))
    # Our runs write config.json beside the shards: the trainer takes the teachers from it.
    config = {"teachers": [{"dim": 8, "kd_logit_scale": 100.0}, {"dim": 12, "kd_logit_scale": 50.0}]}
    (data / "config.json").write_text(json.dumps(config))
    argv = [
        "--data", str(data / "*.tar"), "--model", "tiny", "--steps", "12", "--batch-size", "4",
        "--workers", "2", "--checkpoint-every", "5", "--keep-checkpoints", "0", "--threads", "1",
    ]  # fmt: skip
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    train.main([*argv, "--output", str(whole)])
    shutil.copytree(whole, interrupted)
    for step in (10, 12):  # as if the process died after the step-5 checkpoint
        shutil.rmtree(step_dir(str(interrupted), step))
    train.main([*argv, "--output", str(interrupted)])

    a, b = _weights(whole, 12), _weights(interrupted, 12)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = {"samples_per_s", "step_seconds", "data_wait_seconds", "replay_seconds"}
    logs = [
        [
            {k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run / "log.jsonl").open()
        ]
        for run in (whole, interrupted)
    ]
    assert logs[0] == logs[1] and len(logs[0]) == 12
    assert _weights(whole, 5).keys() == a.keys()


def test_a_resume_with_other_settings_or_missing_teacher_widths_fails_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    build_shards(data, ShardSpec(shards=1, per_shard=4))
    argv = ["--data", str(data / "*.tar"), "--model", "tiny", "--batch-size", "2", "--workers", "0"]
    run = str(tmp_path / "run")
    train.main([*argv, "--steps", "2", "--output", run, *FLAGS])
    with pytest.raises(SystemExit) as exit_info:
        train.main([*argv, "--steps", "2", "--lr", "5e-4", "--output", run, *FLAGS])
    assert exit_info.value.code == 2 and "different lr" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train.main([*argv, "--steps", "2", "--output", str(tmp_path / "other")])
    assert exit_info.value.code == 2 and "--teacher-dims" in capsys.readouterr().err


def test_bf16_training_saves_fp32_checkpoints_that_resume(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build_shards(data, ShardSpec(shards=1, per_shard=6))
    argv = ["--data", str(data / "*.tar"), "--model", "tiny", "--batch-size", "3", "--workers", "0"]
    run = tmp_path / "run"
    common = [*argv, "--precision", "bf16", "--output", str(run), "--checkpoint-every", "2", *FLAGS]
    train.main([*common, "--steps", "4"])
    saved = _weights(run, 4)
    assert all(t.dtype == torch.float32 for t in saved.values() if t.is_floating_point())
    shutil.rmtree(step_dir(str(run), 4))
    train.main([*common, "--steps", "4"])
    again = _weights(run, 4)
    assert all(torch.equal(saved[k], again[k]) for k in saved)
