"""The trainer on the reinforcement job's real output (tiny preset, bundled real photos)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torchvision import transforms as T

from shards.reinforced import iter_members, iter_shard, open_tar_writer
from shards.run_config import augmenter_from_config
from tests.public_trainer import public_sample, public_transforms
from trainer import train
from trainer.data import ReinforcedStream, list_shards
from trainer.settings import load_run_config, resolve_data_settings, sibling_config
from trainer.students import create_student

reinforce = pytest.importorskip("pipeline.reinforce")
TeacherEnsemble = pytest.importorskip("teachers.ensemble").TeacherEnsemble

TEACHER_SIZE = 224  # the view size the job's teachers saw (contract §3)


@pytest.fixture(scope="module")
def job(
    tmp_path_factory: pytest.TempPathFactory, sample_raw_dir: Path, tiny_checkpoints: dict
) -> SimpleNamespace:
    raw = tmp_path_factory.mktemp("raw")
    shutil.copy(sample_raw_dir / "00000000.tar", raw / "00000000.tar")
    out = tmp_path_factory.mktemp("job") / "out"
    teachers = [tiny_checkpoints["clip-a"], tiny_checkpoints["clip-b"]]
    argv = [
        "--input", f"{raw}/*.tar", "--output", str(out), "--preset", "tiny",
        "--teachers", ",".join(teachers), "--captioner", tiny_checkpoints["coca"],
        "--num-views", "3", "--num-captions", "2", "--batch-size", "8", "--seed", "11",
        "--no-progress", "--model_threads", "1",
    ]  # fmt: skip
    assert reinforce.main(argv) == 0
    return SimpleNamespace(out=out, teachers=teachers)


def test_replayed_views_are_exactly_the_views_the_jobs_teachers_embedded(job: SimpleNamespace) -> None:
    """Replay through the trainer's stream at the teachers' size and embed again: the stored rows come back.

    The embedding is a sensitive function of every pixel, so equal embeddings mean equal views: the
    stored bytes, crop boxes, ops and magnitudes replay the job's views exactly.
    """
    pattern = str(job.out / "*.tar")
    config_path = sibling_config(pattern)
    assert config_path is not None
    settings = resolve_data_settings(load_run_config(config_path), config_path=config_path)
    assert settings.teacher_dims == (32, 48)
    student = create_student("tiny")
    stream = ReinforcedStream(
        list_shards([pattern]),
        settings,
        image_size=TEACHER_SIZE,
        tokenizer=student.tokenizer,
        batch_size=4,
        epochs=2,  # two epochs pick other views of the same samples
    )
    ensemble = TeacherEnsemble.load(job.teachers, kd_logit_scales=settings.kd_logit_scales)
    batches = list(stream)
    assert sum(len(b) for b in batches) == 24 and batches[-1].skipped == {}
    assert batches[-1].replay == {"checked": 24, "differ": 0}  # every replay hashed to its stored fingerprint
    for batch in batches:
        with torch.no_grad():
            again = ensemble.embed_images(batch.images)
        torch.testing.assert_close(again, batch.teacher_image, atol=1e-5, rtol=1e-4)
    # And the comparison can fail: a different view of the same image is far from the stored row.
    shifted = torch.roll(batches[0].images, shifts=7, dims=-1)
    with torch.no_grad():
        assert (ensemble.embed_images(shifted) - batches[0].teacher_image).abs().max() > 1e-3


def test_a_student_trains_on_the_jobs_output_with_its_config(job: SimpleNamespace, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train.main(
        [
            "--data", str(job.out / "*.tar"), "--model", "tiny", "--steps", "6", "--batch-size", "4",
            "--workers", "1", "--threads", "1", "--output", str(run),
        ]
    )  # fmt: skip
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["run"]["data_settings"]["teacher_dims"] == [32, 48]
    assert saved["data_settings_source"].endswith("config.json")
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["skipped"] == 0 for r in records)
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in records)


def test_the_public_trainer_runs_our_config_as_is(job: SimpleNamespace) -> None:
    """config.json through the public trainer's transform rules (tests/public_trainer.py), on our samples."""
    config = json.loads((job.out / "config.json").read_text())
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # a student's own normalisation replaces the teachers'
    compose = public_transforms(config, mean, std)
    crop, rand_augment, _, normalize = compose.transforms
    assert [type(t) for t in compose.transforms] == [
        T.RandomResizedCrop,
        T.RandAugment,
        T.ToTensor,
        T.Normalize,
    ]
    # the transforms the public trainer builds draw from the very recipe our views were sampled from
    ours = augmenter_from_config(config)
    assert crop.size == (ours.size, ours.size) and crop.interpolation == T.InterpolationMode.BICUBIC
    assert (list(crop.scale), list(crop.ratio)) == (ours.config["random_resized_crop"]["scale"],
                                                    ours.config["random_resized_crop"]["ratio"])  # fmt: skip
    assert (rand_augment.num_ops, rand_augment.magnitude, rand_augment.num_magnitude_bins) == (2, 9, 31)
    assert normalize.mean == list(mean) and normalize.std == list(std)
    torch.manual_seed(0)
    samples = [s for s in iter_shard(str(job.out / "00000000.tar"))]
    assert len(samples) == 12
    for sample in samples:
        pixels = public_sample(config, sample.image, mean, std)
        assert pixels.dtype == torch.float32 and pixels.shape == (3, ours.size, ours.size)
        unit = pixels * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
        assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5 and unit.std() > 0.01


def test_without_to_tensor_the_public_trainer_fails_on_the_first_sample(job: SimpleNamespace) -> None:
    """What configs before issue 14 did: the guard above is able to fail."""
    config = json.loads((job.out / "config.json").read_text())
    del config["reinforce"]["image_augmentation"]["to_tensor"]
    sample = next(iter_shard(str(job.out / "00000000.tar")))
    with pytest.raises(TypeError, match="Tensor"):
        public_sample(config, sample.image, (0.5,) * 3, (0.5,) * 3)
    assert augmenter_from_config(config) == augmenter_from_config(
        json.loads((job.out / "config.json").read_text())
    )


def test_a_replay_that_differs_from_generation_is_counted_and_warned_once(
    job: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As on a trainer whose Pillow renders some views differently from the job's: never silent."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(job.out / "config.json", data / "config.json")
    with (data / "00000000.tar").open("wb") as f:
        writer = open_tar_writer(f)
        for index, members in enumerate(iter_members(str(job.out / "00000000.tar"))):
            paug = json.loads(members["paug.json"])
            if index % 2 == 0:  # the generation stack rendered these samples' views differently
                paug["view_sha"] = ["0" * 16] * len(paug["view_sha"])
            writer.write({**members, "paug.json": json.dumps(paug).encode()})
        writer.close()
    run = tmp_path / "run"
    train.main(
        [
            "--data", str(data / "*.tar"), "--model", "tiny", "--steps", "4", "--batch-size", "4",
            "--workers", "1", "--threads", "1", "--output", str(run),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "differ from the views the teachers embedded" in warnings[0]
    assert "'pillow': " in warnings[0]
    summary = json.loads(captured.out.splitlines()[-1])
    # the tiny student replays at 64 px, not the teachers' 224: its first samples are checked at 224
    assert summary["replay_check"]["checked"] == 16 and summary["replay_check"]["differ"] == 8
    assert summary["skipped"] == {}  # the views are still trained on
