"""The reinforcement job end to end on the real tiny models: outputs, alignment, bad input, exit codes."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.raw_shards import IMAGE_EXTENSIONS
from pipeline.reinforce import main
from pipeline.shard_format import iter_shard
from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter, decode_image, decode_param_aug

pytest.importorskip("teachers.captioner")  # until the teachers package is in the tree
TeacherEnsemble = pytest.importorskip("teachers.ensemble").TeacherEnsemble

NUM_VIEWS, NUM_CAPTIONS = 2, 1


def job_args(raw: Path | str, out: Path | str, ckpt: dict[str, str], *extra: str) -> list[str]:
    return [
        "--input", f"{raw}/*.tar", "--output", str(out), "--preset", "tiny",
        "--teachers", f"{ckpt['clip-a']},{ckpt['clip-b']}", "--captioner", ckpt["coca"],
        "--num-views", str(NUM_VIEWS), "--num-captions", str(NUM_CAPTIONS), "--batch-size", "8",
        "--seed", "7", "--no-progress", "--model_threads", "1", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def job_input(tmp_path_factory, sample_raw_dir, kit) -> tuple[Path, dict[str, str]]:
    """One bundled real-photo shard, one shard of bad input, a truncated shard and an empty one."""
    raw = tmp_path_factory.mktemp("raw")
    shutil.copy(sample_raw_dir / "00000000.tar", raw / "00000000.tar")
    members, expected = kit.bad_input_members()
    kit.write_tar(raw / "00000001.tar", members)
    full = (raw / "00000000.tar").read_bytes()
    with tarfile.open(raw / "00000000.tar") as tar:
        cut = [m for m in tar.getmembers() if m.name.endswith((".jpg", ".webp", ".png"))][4].offset_data + 50
    (raw / "00000002.tar").write_bytes(full[:cut])
    (raw / "00000003.tar").write_bytes(b"")
    return raw, expected


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, job_input, tiny_checkpoints) -> Path:
    """A clean in-process run every other test compares against."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(job_args(job_input[0], out, tiny_checkpoints)) == 0
    return out


def test_writes_contract_outputs(reference_run, sample_raw_dir):
    names = sorted(p.name for p in reference_run.iterdir())
    for shard in ("00000000", "00000001", "00000002", "00000003"):
        for suffix in (".tar", ".parquet", "_errors.jsonl", "_stats.json"):
            assert f"{shard}{suffix}" in names
    assert {"config.json", "manifest.jsonl", "summary.json"} <= set(names)
    config = json.loads((reference_run / "config.json").read_text())
    assert [t["dim"] for t in config["teachers"]] == [32, 48]
    assert [t["kd_logit_scale"] for t in config["teachers"]] == [100.0, 100.0]
    assert config["num_views"] == NUM_VIEWS and config["num_captions"] == NUM_CAPTIONS and config["seed"] == 7
    assert config["reinforce"]["image_augmentation"]["random_resized_crop"]["size"] == 224
    assert (
        config["layout"] == "v1"
        and config["embedding_dtype"] == "fp32"
        and "apache-beam" in config["versions"]
    )

    raw = {}
    with tarfile.open(sample_raw_dir / "00000000.tar") as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            raw.setdefault(key, {})[ext] = tar.extractfile(m).read()
    samples = list(iter_shard(str(reference_run / "00000000.tar")))
    assert len(samples) == 12 and all(not isinstance(s, Exception) for s in samples)
    by_uid = {json.loads(r["json"])["uid"]: r for r in raw.values()}
    for sample in samples:
        original = by_uid[sample.key]  # __key__ is the DataComp uid
        image_member = next(v for k, v in original.items() if k in IMAGE_EXTENSIONS)
        assert sample.image == image_member  # original bytes, unchanged
        assert sample.caption == original["txt"].decode()
        assert sample.image_emb.shape == (NUM_VIEWS, 80) and sample.syn_emb["syn_text"].shape == (1, 80)
        assert len(sample.param_aug) == NUM_VIEWS and len(sample.syn_captions["syn_text"]) == NUM_CAPTIONS
        width, height = decode_image(sample.image).size
        assert (sample.meta["width"], sample.meta["height"]) == (width, height)
    manifest = [json.loads(line) for line in (reference_run / "manifest.jsonl").read_text().splitlines()]
    assert manifest[0] == {"shard": "00000000", "num_samples": 12}
    table = pq.read_table(reference_run / "00000000.parquet")
    assert table.num_rows == 12 and table.schema.field("image_emb").type.value_type.list_size == 80
    assert table.column("uid").to_pylist() == [s.key for s in samples]


def test_stored_views_and_captions_replay_to_the_stored_embeddings(reference_run, tiny_checkpoints):
    ensemble = TeacherEnsemble.load(
        [tiny_checkpoints["clip-a"], tiny_checkpoints["clip-b"]], kd_logit_scales=[100.0, 100.0]
    )
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    samples = [s for s in iter_shard(str(reference_run / "00000000.tar"))][::3]
    views, stored_views, texts, stored_texts = [], [], [], []
    for sample in samples:
        image = decode_image(sample.image)
        for k, entry in enumerate(sample.param_aug):
            views.append(augmenter.apply(image, decode_param_aug(entry)))
            stored_views.append(sample.image_emb[k])
        texts += [sample.caption, *sample.syn_captions["syn_text"]]
        stored_texts += [sample.caption_emb, *sample.syn_emb["syn_text"]]
    replayed_images = ensemble.embed_images(torch.stack(views))
    stored_images = torch.from_numpy(np.stack(stored_views))
    for start, stop in ((0, 32), (32, 80)):  # each teacher's slice on its own
        cos = torch.nn.functional.cosine_similarity(
            replayed_images[:, start:stop], stored_images[:, start:stop], dim=1
        )
        assert cos.min() >= 0.999
    text_cos = torch.nn.functional.cosine_similarity(
        ensemble.embed_texts(texts), torch.from_numpy(np.stack(stored_texts)), dim=1
    )
    assert text_cos.min() >= 0.999
    # and different views really are different: replay is not trivially constant
    assert not np.allclose(stored_views[0], stored_views[1])


def test_bad_samples_are_skipped_by_reason_and_good_ones_written(reference_run, job_input):
    _, expected = job_input
    written = [s.meta["key"] for s in iter_shard(str(reference_run / "00000001.tar"))]
    assert written == ["g000", "g001", "g002"]
    errors = [json.loads(line) for line in (reference_run / "00000001_errors.jsonl").read_text().splitlines()]
    assert {e["key"]: e["reason"] for e in errors} == expected
    stats = json.loads((reference_run / "00000001_stats.json").read_text())
    assert stats["num_written"] == 3 and stats["num_read"] == 3 + len(expected)
    assert sum(stats["skipped"].values()) == len(expected)
    assert stats["skipped"]["unsafe_member_name"] == 2


def test_damaged_shards_keep_what_was_readable(reference_run):
    truncated = json.loads((reference_run / "00000002_stats.json").read_text())
    assert truncated["shard_errors"] == {"truncated_tar": 1}
    assert truncated["num_written"] >= 3  # the samples before the cut
    truncated_keys = [s.key for s in iter_shard(str(reference_run / "00000002.tar"))]
    full_keys = [s.key for s in iter_shard(str(reference_run / "00000000.tar"))]
    assert truncated_keys == full_keys[: len(truncated_keys)]
    empty = json.loads((reference_run / "00000003_stats.json").read_text())
    assert empty["shard_errors"] == {"empty_tar": 1} and empty["num_written"] == 0
    errors = (reference_run / "00000003_errors.jsonl").read_text()
    assert json.loads(errors)["whole_shard"] is True


def test_exit_codes(tmp_path, tiny_checkpoints, capsys):
    empty_raw = tmp_path / "empty"
    empty_raw.mkdir()
    (empty_raw / "00000000.tar").write_bytes(b"")
    assert main(job_args(empty_raw, tmp_path / "o1", tiny_checkpoints)) == 1  # nothing could be processed
    assert "no sample could be processed" in capsys.readouterr().err
    assert main(job_args(tmp_path / "nowhere", tmp_path / "o2", tiny_checkpoints)) == 2
    assert "no .tar shards match" in capsys.readouterr().err
    bad_views = [*job_args(empty_raw, tmp_path / "o3", tiny_checkpoints), "--num-views", "0"]
    assert main(bad_views) == 2
    missing_model = dict(tiny_checkpoints, coca="local-dir:" + str(tmp_path / "no-such-model"))
    assert main(job_args(empty_raw, tmp_path / "o4", missing_model)) == 2
    assert "error:" in capsys.readouterr().err
