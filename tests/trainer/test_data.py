"""Loading reinforced shards: both public layouts, exact replay, counted skips, resumable positions."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from shards.reinforced import encode_sample
from tests.support import ShardSpec, identity_sample, write_members
from trainer.data import (
    DataCursor,
    DataError,
    ReinforcedStream,
    SampleReplayer,
    in_worker_order,
    list_shards,
    make_loader,
    probe,
)
from trainer.settings import SettingsError, resolve_data_settings
from trainer.students import TINY_MODEL_CFG
from transforms import ViewAugmenter, decode_image, decode_param_aug

DIMS, SCALES = (8, 12), (100.0, 50.0)
SIZE = 64


@pytest.fixture(scope="module")
def tokenizer() -> open_clip.SimpleTokenizer:
    return open_clip.SimpleTokenizer(context_length=TINY_MODEL_CFG["text_cfg"]["context_length"])


def _settings(**config):
    return resolve_data_settings(config or None, teacher_dims=DIMS, kd_logit_scales=SCALES)


def _stream(folder: Path, tokenizer, batch_size: int = 4, **kw) -> ReinforcedStream:
    return ReinforcedStream(
        list_shards([str(folder / "*.tar")]),
        _settings(),
        image_size=SIZE,
        tokenizer=tokenizer,
        batch_size=batch_size,
        **kw,
    )


def _one_epoch_of_samples(folder: Path, tokenizer, count: int, **kw):
    """The first `count` training samples of a single-process stream (no batching)."""
    stream = _stream(folder, tokenizer, batch_size=1, **kw)
    return [b for b in itertools.islice(iter(stream), count)]


@pytest.mark.parametrize(
    ("layout", "dtype", "paug_as_string"),
    [("v1", "fp32", False), ("v2", "fp32", False), ("v1", "bf16", True), ("v2", "bf16", False)],
)
def test_public_layouts_load_and_replay_exactly_the_stored_view(
    make_shards, tokenizer, layout: str, dtype: str, paug_as_string: bool
) -> None:
    folder, samples = make_shards(layout=layout, dtype=dtype, paug_as_string=paug_as_string, per_shard=6)
    by_key = {s.key: s for s in samples}
    replayer = SampleReplayer(_settings(), SIZE, tokenizer, seed=0)
    augmenter = ViewAugmenter.from_config(_settings().augmentation)
    atol = 0.0 if dtype == "fp32" else 1e-2
    batches = list(itertools.islice(iter(_stream(folder, tokenizer, batch_size=3)), 4))
    assert sum(len(b) for b in batches) == 12
    assert sorted(k for b in batches for k in b.keys) == sorted(by_key)
    for batch in batches:
        assert batch.images.dtype == torch.uint8 and batch.images.shape == (3, 3, SIZE, SIZE)
        assert batch.teacher_image.shape == (3, sum(DIMS))
        for row, key in enumerate(batch.keys):
            original = by_key[key]
            family = next(iter(original.syn_captions))
            view, syn = replayer.pick(original, batch.position.epoch, len(original.syn_captions[family]))
            # The replay is the stored view's parameters rendered at the student's size, pixel for pixel.
            params = decode_param_aug(original.param_aug[view])
            expected = augmenter.apply(decode_image(original.image), params, size=SIZE)
            assert torch.equal(batch.images[row], expected)
            # The targets are the stored rows of exactly that view and that synthetic caption.
            np.testing.assert_allclose(batch.teacher_image[row].numpy(), original.image_emb[view], atol=atol)
            np.testing.assert_allclose(batch.teacher_original[row].numpy(), original.caption_emb, atol=atol)
            np.testing.assert_allclose(
                batch.teacher_synthetic[row].numpy(), original.syn_emb[family][syn], atol=atol
            )
            tokens = tokenizer([original.caption, original.syn_captions[family][syn]])
            assert torch.equal(batch.original_tokens[row], tokens[0])
            assert torch.equal(batch.synthetic_tokens[row], tokens[1])


def test_views_and_captions_vary_over_epochs_but_not_over_runs(make_shards, tokenizer) -> None:
    folder, _ = make_shards(shards=1, per_shard=8, views=5, captions=4)
    first = _one_epoch_of_samples(folder, tokenizer, 16, seed=3)
    again = _one_epoch_of_samples(folder, tokenizer, 16, seed=3)
    assert [b.keys for b in first] == [b.keys for b in again]
    assert all(torch.equal(a.images, b.images) for a, b in zip(first, again, strict=True))
    epochs = {b.position.epoch for b in first}
    assert epochs == {0, 1}
    # Across two epochs the same sample gets (almost surely) another view somewhere.
    views = {}
    for b in first:
        views.setdefault(b.keys[0], []).append(b.teacher_image[0])
    assert any(not torch.equal(*pair) for pair in views.values())


def _bad_shard(folder: Path) -> dict[str, str]:
    """A shard mixing good samples with one of each kind of bad one; returns key -> expected reason."""
    spec = ShardSpec(dims=DIMS)
    augmenter = ViewAugmenter.from_config(_settings().augmentation)
    good = [identity_sample(i, spec, augmenter) for i in range(4)]
    members = [encode_sample(s) for s in good]
    expected = {}

    no_npz = encode_sample(identity_sample(10, spec, augmenter))
    del no_npz["npz"]
    expected[no_npz["__key__"]] = "missing_member"

    wide = identity_sample(11, ShardSpec(dims=(8, 16)), augmenter)
    expected[wide.key] = "embedding_width_mismatch"

    unknown_op = identity_sample(12, spec, augmenter)
    unknown_op.param_aug = [[p[0], [[99, 0.5], [1, 0.09]]] for p in unknown_op.param_aug]
    expected[unknown_op.key] = "unknown_op"

    not_image = identity_sample(13, spec, augmenter)
    not_image.image = b"<html>404</html>"
    expected[not_image.key] = "undecodable"

    outside = identity_sample(14, spec, augmenter)
    outside.param_aug = [[[0, 0, 500, 500], p[1]] for p in outside.param_aug]
    expected[outside.key] = "box_outside_image"

    unnormalised = identity_sample(15, spec, augmenter)
    unnormalised.image_emb = unnormalised.image_emb * 3.0
    unnormalised.caption_emb = unnormalised.caption_emb * 3.0
    unnormalised.syn_emb = {f: e * 3.0 for f, e in unnormalised.syn_emb.items()}
    expected[unnormalised.key] = "teacher_slice_not_unit"

    members += [no_npz] + [encode_sample(s) for s in (wide, unknown_op, not_image, outside, unnormalised)]
    folder.mkdir(parents=True)
    write_members(folder / "00000000.tar", members)
    # A truncated copy of a good shard: its complete samples are kept, the damage counted once.
    write_members(
        folder / "00000001.tar",
        [encode_sample(identity_sample(20 + i, spec, augmenter)) for i in range(3)],
    )
    data = (folder / "00000001.tar").read_bytes()
    (folder / "00000001.tar").write_bytes(data[: len(data) * 3 // 4])
    return expected


def test_bad_samples_are_skipped_and_counted_by_reason_and_good_ones_all_arrive(
    tmp_path: Path, tokenizer
) -> None:
    expected = _bad_shard(tmp_path / "bad")
    batches = list(_stream(tmp_path / "bad", tokenizer, batch_size=1, epochs=1))
    keys = [b.keys[0] for b in batches]
    assert not set(keys) & set(expected)
    assert {f"{i:032x}" for i in range(4)} <= set(keys)
    last = batches[-1].skipped
    for reason in set(expected.values()):
        assert last.get(reason) == list(expected.values()).count(reason), (reason, last)
    assert last.get("unreadable_tar") == 1


def test_wrong_teacher_widths_are_a_clear_error_at_start(make_shards, tokenizer) -> None:
    folder, _ = make_shards(shards=1, per_shard=3)
    shards = list_shards([str(folder / "*.tar")])
    same_total = resolve_data_settings(None, teacher_dims=(4, 16), kd_logit_scales=SCALES)
    with pytest.raises(DataError, match="teacher widths"):
        probe(shards, same_total, tokenizer, SIZE)
    too_wide = resolve_data_settings(None, teacher_dims=(768, 768), kd_logit_scales=SCALES)
    with pytest.raises(DataError, match="embedding_width_mismatch"):
        probe(shards, too_wide, tokenizer, SIZE)
    assert probe(shards, _settings(), tokenizer, SIZE)["dim"] == sum(DIMS)


def test_settings_come_from_the_run_config_and_flags_override() -> None:
    config = {
        "teachers": [
            {"name": "a", "dim": 8, "kd_logit_scale": 70.0},
            {"name": "b", "dim": 12, "kd_logit_scale": 60.0},
        ],
        "param_aug_version": 1,
        "reinforce": {
            "image_augmentation": {"random_resized_crop": {"size": 224, "interpolation": "bicubic"}}
        },
    }
    settings = resolve_data_settings(config)
    assert settings.teacher_dims == (8, 12) and settings.kd_logit_scales == (70.0, 60.0)
    assert "rand_augment" not in settings.augmentation
    assert resolve_data_settings(config, kd_logit_scales=(1.0, 2.0)).kd_logit_scales == (1.0, 2.0)
    with pytest.raises(SettingsError, match="--teacher-dims"):
        resolve_data_settings(None)
    with pytest.raises(SettingsError, match="param_aug version"):
        resolve_data_settings({**config, "param_aug_version": 99})
    with pytest.raises(SettingsError, match="KD logit scales"):
        resolve_data_settings(config, kd_logit_scales=(100.0,))


def test_a_stream_started_at_a_saved_cursor_continues_with_the_same_batches(make_shards, tokenizer) -> None:
    folder, _ = make_shards(shards=2, per_shard=7)
    for workers in (0, 2):
        full = list(
            itertools.islice(iter(make_loader(_stream(folder, tokenizer, batch_size=3), workers)), 12)
        )
        cursor = DataCursor.fresh(workers)
        for batch in full[:5]:
            cursor.advance(batch)
        cursor = DataCursor.from_json(json.loads(json.dumps(cursor.to_json())))
        resumed_stream = _stream(
            folder, tokenizer, batch_size=3, start=cursor.positions, skipped=cursor.skipped
        )
        ordered = in_worker_order(iter(make_loader(resumed_stream, workers)), workers, cursor.next_worker)
        resumed = list(itertools.islice(ordered, 7))
        assert [b.keys for b in resumed] == [b.keys for b in full[5:]]
        assert all(torch.equal(a.images, b.images) for a, b in zip(resumed, full[5:], strict=True))
        if workers:
            assert {b.worker for b in full} == {0, 1}


def test_a_pass_without_any_usable_sample_is_an_error_not_a_hang(tmp_path: Path, tokenizer) -> None:
    folder = tmp_path / "hopeless"
    folder.mkdir()
    spec = ShardSpec(dims=(8, 16))
    augmenter = ViewAugmenter.from_config(_settings().augmentation)
    write_members(
        folder / "00000000.tar",
        [encode_sample(identity_sample(i, spec, augmenter)) for i in range(3)],
    )
    with pytest.raises(DataError, match="no usable sample"):
        next(iter(_stream(folder, tokenizer)))
