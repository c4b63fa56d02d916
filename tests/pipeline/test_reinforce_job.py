"""The reinforcement job end to end on the real tiny models: outputs, alignment, bad input, exit codes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tarfile
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.reinforce import main
from shards.raw import IMAGE_EXTENSIONS
from shards.reinforced import iter_shard
from teachers.ensemble import TeacherEnsemble
from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter, decode_image, decode_param_aug
from transforms.fingerprint import image_stack, view_fingerprint


def test_writes_contract_outputs(reference_run, sample_raw_dir, job):
    names = sorted(p.name for p in reference_run.iterdir())
    for shard in ("00000000", "00000001", "00000002", "00000003"):
        for suffix in (".tar", ".parquet", "_errors.jsonl", "_stats.json"):
            assert f"{shard}{suffix}" in names
    assert (reference_run / "00000000_errors.jsonl").read_bytes() == b""  # nothing was skipped there
    assert {"config.json", "manifest.jsonl", "summary.json"} <= set(names)
    config = json.loads((reference_run / "config.json").read_text())
    assert [t["dim"] for t in config["teachers"]] == [32, 48]
    assert [t["kd_logit_scale"] for t in config["teachers"]] == [100.0, 100.0]
    assert (
        config["num_views"] == job.num_views
        and config["num_captions"] == job.num_captions
        and config["seed"] == 7
    )
    assert config["reinforce"]["image_augmentation"]["random_resized_crop"]["size"] == 224
    assert (
        config["layout"] == "v1"
        and config["embedding_dtype"] == "fp32"
        and "apache-beam" in config["versions"]
    )
    assert config["image_stack"] == image_stack() and config["view_fingerprint"]["key"] == "view_sha"

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
        # The input's sha256 (of the original download) untouched; the bytes decoded, for a join back.
        assert sample.meta["sha256"] == json.loads(original["json"])["sha256"]
        decoded = hashlib.sha256(image_member).hexdigest()
        assert sample.meta["image_sha256"] == decoded != sample.meta["sha256"]
        assert sample.caption == original["txt"].decode()
        assert sample.image_emb.shape == (job.num_views, 80) and sample.syn_emb["syn_text"].shape == (1, 80)
        assert (
            len(sample.param_aug) == job.num_views
            and len(sample.syn_captions["syn_text"]) == job.num_captions
        )
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
            assert view_fingerprint(views[-1]) == sample.view_sha[k]  # the fingerprint of the embedded view
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


def test_exit_codes(tmp_path, job, capsys):
    empty_raw = tmp_path / "empty"
    empty_raw.mkdir()
    (empty_raw / "00000000.tar").write_bytes(b"")
    assert main(job.args(empty_raw, tmp_path / "o1")) == 1  # nothing could be processed
    assert "no sample could be processed" in capsys.readouterr().err
    assert main(job.args(tmp_path / "nowhere", tmp_path / "o2")) == 2
    assert "no .tar shards match" in capsys.readouterr().err
    bad_views = [*job.args(empty_raw, tmp_path / "o3"), "--num-views", "0"]
    assert main(bad_views) == 2
    missing_model = job.args(empty_raw, tmp_path / "o4")
    missing_model[missing_model.index("--captioner") + 1] = f"local-dir:{tmp_path / 'no-such-model'}"
    assert main(missing_model) == 2
    assert "error:" in capsys.readouterr().err


def test_batch_composition_does_not_change_a_byte(tmp_path, sample_raw_dir, kit, tiny_checkpoints):
    """The same samples, shifted by one extra sample in front, land in other batches at other rows; in a
    3-sample shard they are captioned in a short chunk of their own, padded to the chunk's shape: a row's
    bits can depend on how many rows share a call (on this machine with 2 threads, chunks of 1 or 2
    images of the tiny CoCa give other logits than 8), so short chunks are never run unpadded."""
    from pipeline.reinforce_shard import reinforce_shard
    from pipeline.settings import ReinforceSettings
    from pipeline.worker_models import load_models
    from shards.reinforced import iter_members

    with tarfile.open(sample_raw_dir / "00000000.tar") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    plain = kit.write_tar(tmp_path / "plain" / "00000000.tar", members)
    shifted = kit.write_tar(tmp_path / "shifted" / "00000000.tar", kit.sample_members("extra") + members)
    first_keys = sorted({name.split(".")[0] for name, _ in members})[:3]
    short = kit.write_tar(
        tmp_path / "short" / "00000000.tar", [m for m in members if m[0].split(".")[0] in first_keys]
    )
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
    written = {}
    for raw in (plain, shifted, short):
        out = raw.parent / "out"
        reinforce_shard(str(raw), dataclasses.replace(settings, output_dir=str(out)), models)
        written[raw] = {m["__key__"]: m for m in iter_members(str(out / "00000000.tar"))}
    assert len(written[shifted]) == len(written[plain]) + 1
    for key, sample in written[plain].items():
        assert written[shifted][key] == sample, key
    assert len(written[short]) == 3
    for key, sample in written[short].items():
        assert written[plain][key] == sample, key


def test_real_presets_fail_fast_and_clearly_without_a_hub(tmp_path, sample_raw_dir, capsys):
    out = tmp_path / "out"
    args = [
        "--input",
        f"{sample_raw_dir}/*.tar",
        "--output",
        str(out),
        "--preset",
        "datacompdr1b",
        "--no-progress",
    ]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "cannot load 'ViT-L-14@openai'" in error and "local-dir:" in error
    assert not out.exists()  # nothing written before the models are known to load


def test_an_unforeseen_error_costs_one_sample_not_the_shard(tmp_path, kit, tiny_checkpoints):
    from pipeline.reinforce_shard import SAMPLE_FAILED, reinforce_shard
    from pipeline.settings import ReinforceSettings
    from pipeline.worker_models import load_models

    settings = ReinforceSettings(
        input_pattern="",
        output_dir=str(tmp_path / "out"),
        preset="tiny",
        teachers=(tiny_checkpoints["clip-a"], tiny_checkpoints["clip-b"]),
        kd_logit_scales=(100.0, 100.0),
        captioner=tiny_checkpoints["coca"],
        num_views=1,
        num_captions=1,
    )
    models = load_models(settings)
    real = models.augmenter

    class Brittle:
        """An augmenter that breaks, unexpectedly, on one image size."""

        def sample(self, rng, size):
            return real.sample(rng, size)

        def apply(self, image, params):
            if image.size == (77, 55):
                raise RuntimeError("a bug no check foresaw")
            return real.apply(image, params)

    models.augmenter = Brittle()
    members = [m for k, size in enumerate([(96, 80), (77, 55), (90, 70)]) for m in
               kit.sample_members(f"s{k}", image=kit.jpeg_bytes(*size, seed=k))]  # fmt: skip
    stats = reinforce_shard(str(kit.write_tar(tmp_path / "raw" / "00000000.tar", members)), settings, models)
    assert stats.num_written == 2 and stats.skipped == {SAMPLE_FAILED: 1}


def test_v2_layout_with_bf16_embeddings(tmp_path, job_input, reference_run, job):
    from shards.reinforced import iter_members

    out = tmp_path / "v2"
    assert main(job.args(job_input[0], out, "--layout", "v2", "--embedding-dtype", "bf16")) == 0
    members = next(iter_members(str(out / "00000000.tar")))
    assert "pth.gz" in members and "npz" not in members
    assert set(json.loads(members["syn.json"])) == {"syn_text_coca"}
    config = json.loads((out / "config.json").read_text())
    assert config["layout"] == "v2" and config["embedding_dtype"] == "bf16"
    v1 = {s.key: s for s in iter_shard(str(reference_run / "00000000.tar"))}
    for sample in iter_shard(str(out / "00000000.tar")):
        same = v1[sample.key]
        assert sample.syn_captions["syn_text_coca"] == same.syn_captions["syn_text"]
        assert sample.param_aug == same.param_aug
        np.testing.assert_allclose(sample.image_emb, same.image_emb, atol=1e-2)  # bf16 keeps ~3 digits
        np.testing.assert_allclose(sample.syn_emb["syn_text_coca"], same.syn_emb["syn_text"], atol=1e-2)


def test_read_ahead_keeps_order_passes_errors_and_stops_with_its_consumer():
    from pipeline.reinforce_shard import StageClock, read_ahead

    def numbers(fail_at: int | None = None):
        for n in range(100):
            if n == fail_at:
                raise ValueError("broken input stream")
            yield n, {"read": 0.001}

    clock = StageClock()
    assert list(read_ahead(numbers(), depth=3, clock=clock)) == list(range(100))
    assert clock.seconds["read"] > 0
    with pytest.raises(ValueError, match="broken input stream"):
        list(read_ahead(numbers(fail_at=50), depth=3, clock=StageClock()))
    for items in (numbers(), iter([("a", {}), ("b", {})])):  # long, and short enough to finish producing
        consumer = read_ahead(items, depth=1, clock=StageClock())
        next(consumer)
        time.sleep(0.2)  # let the helper fill the queue and wait on it
        consumer.close()  # the consumer gives up early: the helper must end, not block on a full queue
        assert not any(t.name == "shard-prefetch" and t.is_alive() for t in threading.enumerate())


def test_errors_a_rerun_cannot_fix_name_their_cause(tmp_path, sample_raw_dir, job, capsys):
    """'Run the same command again' only where a re-run helps: not for an output that is a file or
    on a read-only disk (Beam's runners pass such errors on as text, so the text counts too)."""
    import errno

    from pipeline.reinforce import EXIT_CONFIG, EXIT_NOTHING_DONE, failure_advice

    out = tmp_path / "out"
    out.write_text("a file where the output folder should be")
    assert main(job.args(sample_raw_dir, out)) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"--output {out} is a file, not a folder" in err
    assert "run the same command again" not in err
    read_only = OSError(errno.EROFS, "Read-only file system", str(out))
    wrapped = RuntimeError(f"step 'Reinforce' failed: OSError: {read_only}")
    for error in (read_only, wrapped):
        advice, code = failure_advice(error, str(out))
        assert "read-only file system" in advice and "run the same command again" not in advice
        assert code == EXIT_CONFIG
    advice, code = failure_advice(TimeoutError("worker lost"), str(out))
    assert "run the same command again to resume" in advice and code == EXIT_NOTHING_DONE


def test_samples_without_json_and_the_validator_agree(tmp_path, kit, job, capsys):
    """A json-less sample is written with the uid and url the raw parquet knows, or skipped as
    missing_url: either way `pipeline.validate --raw` accepts the job's own output."""
    import pyarrow as pa

    from inspection.validate import main as validate

    def without_json(key: str, seed: int) -> list:
        return [m for m in kit.sample_members(key, seed=seed) if not m[0].endswith(".json")]

    raw = tmp_path / "raw"
    members = kit.sample_members("0000", seed=1) + without_json("0001", 2) + without_json("0002", 3)
    kit.write_tar(raw / "00000000.tar", members)
    rows = {"key": ["0001"], "uid": ["f" * 32], "url": ["https://x.org/1.jpg"]}
    pq.write_table(pa.table(rows), raw / "00000000.parquet")
    out = tmp_path / "out"
    assert main(job.args(raw, out)) == 0
    written = {s.key: s.url for s in iter_shard(str(out / "00000000.tar"))}
    assert written["f" * 32] == "https://x.org/1.jpg" and len(written) == 2
    errors = [json.loads(line) for line in (out / "00000000_errors.jsonl").read_text().splitlines()]
    assert [(e["key"], e["reason"]) for e in errors] == [("0002", "missing_url")]
    capsys.readouterr()
    assert validate([str(out), "--raw", str(raw)]) == 0, capsys.readouterr().out
