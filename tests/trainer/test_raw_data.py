"""Plain and CoCa modes: batches from raw img2dataset shards, and the losses they train with."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from experiments import models, world
from shards.teacher_slices import slices_from_dims
from trainer import train
from trainer.data import DataCursor, in_worker_order, list_shards, make_loader
from trainer.loss import caption_loss, clip_loss, reinforced_loss
from trainer.raw_data import RawPairStream
from trainer.students import create_student

SIZE = 32


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    world.build_world(out, {"clean": 24}, seed=1)
    return out / "clean"


def _stream(pattern: str, **options: object) -> RawPairStream:
    tokenizer = create_student("tiny").tokenizer
    return RawPairStream(
        list_shards([pattern]), image_size=SIZE, tokenizer=tokenizer, batch_size=8, **options
    )


def test_batches_pair_each_crop_with_its_own_caption(raw: Path) -> None:
    batch = next(iter(_stream(str(raw / "*.tar"), epochs=1)))
    tokenizer = create_student("tiny").tokenizer
    captions = {}
    with tarfile.open(raw / "00000000.tar") as archive:
        for member in archive.getmembers():
            if member.name.endswith(".txt"):
                captions[member.name.split(".")[0]] = archive.extractfile(member).read().decode()
    assert batch.images.shape == (8, 3, SIZE, SIZE) and batch.images.dtype == torch.uint8
    for key, tokens in zip(batch.keys, batch.tokens, strict=True):
        assert torch.equal(tokens, tokenizer([captions[key]])[0])


def test_a_resumed_stream_gives_the_same_batches(raw: Path) -> None:
    pattern = str(raw / "*.tar")
    whole = [b for _, b in zip(range(5), _stream(pattern, shuffle_buffer=10), strict=False)]
    cursor = DataCursor.fresh(0)
    for batch in whole[:2]:
        cursor.advance(batch)
    resumed = _stream(pattern, shuffle_buffer=10, start=cursor.positions, skipped=cursor.skipped)
    loader = in_worker_order(iter(make_loader(resumed, 0)), 0, cursor.next_worker)
    for expected in whole[2:]:
        got = next(loader)
        assert got.keys == expected.keys and torch.equal(got.images, expected.images)


def test_bad_samples_are_counted_not_trained_on(raw: Path, tmp_path: Path) -> None:
    good = (raw / "00000000.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(good)) as archive, tarfile.open(tmp_path / "bad.tar", "w") as out:
        for member in archive.getmembers():
            key, ext = member.name.split(".", 1)
            if key.endswith("0003") and ext == "txt":
                continue  # no caption (and none in the json either)
            data = archive.extractfile(member).read()
            if key.endswith("0003") and ext == "json":
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != "caption"}).encode()
            if key.endswith("0005") and ext == "jpg":
                data = b"<html>404</html>"
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    batches = list(_stream(str(tmp_path / "bad.tar"), epochs=1))
    assert sum(len(b) for b in batches) == 22
    assert batches[-1].skipped == {"missing_caption": 1, "undecodable": 1}


def test_caption_loss_ignores_padding() -> None:
    logits = torch.randn(2, 4, 10)
    labels = torch.tensor([[3, 5, 0, 0], [1, 2, 7, 0]])
    expected = torch.nn.functional.cross_entropy(logits[labels != 0], labels[labels != 0])
    assert torch.allclose(caption_loss(logits, labels, pad_id=0), expected)
    changed = logits.clone()
    changed[0, 3] += 100.0  # a padded position's prediction does not count
    assert torch.allclose(caption_loss(changed, labels, pad_id=0), expected)


def test_one_family_keeps_only_its_terms() -> None:
    torch.manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape), dim=-1)  # noqa: E731
    args = (unit(4, 8), unit(4, 8), unit(4, 8), torch.tensor(10.0), unit(4, 8), unit(4, 8), unit(4, 8))
    slices = slices_from_dims([8], [50.0])
    both = reinforced_loss(*args, slices, 0.5)
    original = reinforced_loss(*args, slices, 0.5, families=("original",))
    synthetic = reinforced_loss(*args, slices, 0.0, families=("synthetic",))
    assert torch.allclose(original.total, 0.5 * both.clip_original + 0.5 * both.kd_original)
    assert torch.allclose(synthetic.total, clip_loss(args[0], args[2], args[3]))
    with pytest.raises(ValueError, match="families"):
        reinforced_loss(*args, slices, 0.5, families=("translated",))


def _run(raw: Path, out: Path, model: str, mode: str, steps: int = 30) -> dict:
    argv = [
        "--mode", mode, "--data", str(raw / "*.tar"), "--model", model, "--steps", str(steps),
        "--batch-size", "8", "--lr", "2e-3", "--workers", "0", "--threads", "1", "--output", str(out),
        "--log-every", str(steps),
    ]  # fmt: skip
    return train.train(train.parse_args(argv))


@pytest.mark.slow
def test_plain_mode_learns_and_resumes(raw: Path, tmp_path: Path) -> None:
    summary = _run(raw, tmp_path / "run", "tiny", "plain")
    assert summary["last_clip_original"] < summary["first_clip_original"]
    assert summary["skipped"] == {}
    again = _run(raw, tmp_path / "run", "tiny", "plain")  # nothing left to do: same checkpoint
    assert again["steps"] == summary["steps"]


@pytest.mark.slow
def test_coca_mode_trains_the_captioner(raw: Path, tmp_path: Path) -> None:
    captioner = models.write_initial(models.CAPTIONER, tmp_path / "initial", seed=0)
    summary = _run(raw, tmp_path / "coca", captioner, "coca", steps=20)
    assert summary["last_caption"] < summary["first_caption"]
    with pytest.raises(ValueError, match="CoCa"):
        _run(raw, tmp_path / "clip", "tiny", "coca", steps=1)
