"""Run-level files: presets, config.json (written once, checked on resume), stats, manifest, summary."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from pipeline.presets import PRESETS, resolve_preset
from pipeline.settings import ReinforceSettings, build_run_config
from shards import storage
from shards.raw import SkippedSample
from shards.run_config import ConfigError, write_or_check_run_config
from shards.run_folder import (
    ShardStats,
    committed_shards,
    finalize_run,
    output_paths,
    read_shard_stats,
    remove_stale_temporaries,
    run_result,
    shard_name,
    write_shard_outcome,
)


def settings(**overrides) -> ReinforceSettings:
    base = ReinforceSettings(
        input_pattern="in/*.tar",
        output_dir="out",
        preset="datacompdr12m",
        teachers=("ViT-L-14@openai", "ViT-L-14@datacomp_xl_s13b_b90k"),
        kd_logit_scales=(100.0, 100.0),
        captioner="coca_ViT-L-14@mscoco_finetuned_laion2B-s13B-b90k",
        num_views=30,
        num_captions=5,
    )
    return dataclasses.replace(base, **overrides)


def test_presets_carry_contract_section_4():
    dr12m, dr1b, mc2 = PRESETS["datacompdr12m"], PRESETS["datacompdr1b"], PRESETS["mobileclip2"]
    assert dr12m.teachers == ("ViT-L-14@openai", "ViT-L-14@datacomp_xl_s13b_b90k")
    assert (dr12m.num_views, dr12m.num_captions, dr1b.num_views) == (30, 5, 10)
    assert dr1b.teachers == dr12m.teachers and dr1b.captioner == dr12m.captioner
    assert mc2.kd_logit_scales == (70.0, 60.0) and mc2.num_views == 10
    assert all(len(p.kd_logit_scales) == 2 for p in PRESETS.values())
    with pytest.raises(KeyError, match="unknown preset"):
        resolve_preset("nope")


def test_settings_validation_names_every_problem():
    settings().validate()
    bad = settings(kd_logit_scales=(100.0,), num_views=0, layout="v3", precision="fp16")
    with pytest.raises(ConfigError) as err:
        bad.validate()
    for fragment in ("KD logit scales", "--num-views", "--layout", "--precision"):
        assert fragment in str(err.value)


def test_caption_family_and_caption_group():
    assert settings().caption_family == "syn_text"
    assert settings(layout="v2", caption_tag="coca").caption_family == "syn_text_coca"
    assert settings(batch_size=64, num_captions=5).caption_group == 12  # about 64 captions per call
    assert settings(batch_size=4, num_captions=5).caption_group == 1


def run_config(**overrides) -> dict:
    return build_run_config(
        settings(**overrides),
        teachers=[{"spec": "ViT-L-14@openai", "dim": 768, "kd_logit_scale": 100.0}],
        captioner={"spec": "coca"},
        image_augmentation={"random_resized_crop": {"size": 224}},
        param_aug_version=1,
        device_kind="cpu",
    )


def test_config_written_once_and_a_resume_must_match(tmp_path):
    out = str(tmp_path / "out")
    config = run_config()
    assert config["reinforce"] == {"image_augmentation": {"random_resized_crop": {"size": 224}}}
    assert config["schema_version"] == 1 and config["num_views"] == 30 and "torch" in config["versions"]
    assert write_or_check_run_config(out, config) is False
    first = (tmp_path / "out" / "config.json").read_bytes()
    upgraded = dict(config, versions={"torch": "99"})
    assert write_or_check_run_config(out, upgraded) is True  # same run, newer libraries: resumable
    assert (tmp_path / "out" / "config.json").read_bytes() == first
    with pytest.raises(ConfigError, match="num_views"):
        write_or_check_run_config(out, run_config(num_views=10))


def test_config_records_the_image_stack_and_runs_written_before_it_still_resume(tmp_path):
    from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter
    from transforms.fingerprint import image_stack

    config = run_config()
    assert config["image_stack"] == image_stack() and {"pillow", "libjpeg_turbo", "zlib", "libwebp",
        "torchvision"} <= set(config["image_stack"])  # fmt: skip
    assert (
        config["view_fingerprint"]["key"] == "view_sha"
        and "blake2b" in config["view_fingerprint"]["algorithm"]
    )
    canonical = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION).config
    config["reinforce"] = {"image_augmentation": canonical}
    before = {k: v for k, v in DATACOMPDR_AUGMENTATION.items() if k != "to_tensor"}  # what runs wrote
    older = {k: v for k, v in config.items() if k not in ("view_fingerprint", "image_stack")}
    older["reinforce"] = {"image_augmentation": before}
    out = str(tmp_path / "out")
    write_or_check_run_config(out, older)
    assert write_or_check_run_config(out, config) is True  # same recipe, same run; new keys may be absent
    other_stack = dict(config, image_stack=dict(config["image_stack"], pillow="12.3.0"))
    assert write_or_check_run_config(out, other_stack) is True  # the views' fingerprints will tell
    changed = dict(config, reinforce={"image_augmentation": dict(canonical, rand_augment={"num_ops": 3})})
    with pytest.raises(ConfigError, match="reinforce"):
        write_or_check_run_config(out, changed)


def test_stats_commit_a_shard_and_feed_manifest_and_summary(tmp_path):
    out = str(tmp_path)
    assert shard_name("gs://b/raw/00000007.tar") == "00000007"
    stats = ShardStats("00000007", "raw/00000007.tar", num_read=5, num_written=3)
    stats.skipped = {"image_undecodable": 1, "duplicate_key": 1}
    stats.seconds = {"embed_images": 1.5}
    assert committed_shards(out) == set()
    write_shard_outcome(out, stats, [SkippedSample("k1", "image_undecodable", "not an image")])
    assert committed_shards(out) == {"00000007"}
    assert read_shard_stats(out, "00000007") == stats
    errors = (tmp_path / "00000007_errors.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in errors] == [
        {"key": "k1", "reason": "image_undecodable", "detail": "not an image"}
    ]
    summary = finalize_run(out, ["00000009", "00000007"])
    assert (tmp_path / "manifest.jsonl").read_text() == '{"shard": "00000007", "num_samples": 3}\n'
    assert summary.missing_shards == ["00000009"] and summary.num_written == 3 and summary.num_skipped == 2
    assert output_paths(out, "00000007")["tar"].endswith("00000007.tar")


def test_the_launcher_reads_a_run_back_from_its_run_files_only_when_they_are_current(tmp_path, monkeypatch):
    out, shards = str(tmp_path), ["00000000", "00000001", "00000002"]

    def commit(shard: str, written: int) -> None:
        stats = ShardStats(shard, f"raw/{shard}.tar", num_read=written + 1, num_written=written)
        stats.skipped = {"duplicate_key": 1}
        write_shard_outcome(out, stats, [])

    def age_run_files() -> None:  # as if finalized long before the shards committed since
        for name in ("manifest.jsonl", "summary.json"):
            os.utime(tmp_path / name, (1e9, 1e9))

    commit("00000000", 4)
    commit("00000001", 5)
    summary, written = run_result(out, shards)  # a run killed before finalizing: no run files
    assert written == {"00000000": 4, "00000001": 5} and summary.missing_shards == ["00000002"]

    finalized = finalize_run(out, shards)
    reads, read_text = [], storage.read_text
    monkeypatch.setattr(storage, "read_text", lambda path: reads.append(path) or read_text(path))
    summary, written = run_result(out, shards)
    assert summary.to_dict() == finalized.to_dict() and written == {"00000000": 4, "00000001": 5}
    assert sorted(os.path.basename(p) for p in reads) == ["manifest.jsonl", "summary.json"]  # no stats file

    commit("00000002", 6)  # committed after the last finalize, which it does not list
    age_run_files()
    summary, written = run_result(out, shards)
    assert summary.shards_done == 3 and summary.num_written == 15 and written["00000002"] == 6

    finalize_run(out, shards)
    os.remove(tmp_path / "00000001_stats.json")  # to be redone: the manifest lists it, no longer committed
    summary, written = run_result(out, shards)
    assert summary.missing_shards == ["00000001"] and set(written) == {"00000000", "00000002"}

    commit("00000001", 5)  # redone, the run killed before its finalize: same counts, older run files
    age_run_files()
    reads.clear()
    summary, written = run_result(out, shards)
    assert summary.shards_done == 3 and len(reads) == 3  # every stats file read again


def test_stale_temporaries_of_unfinished_shards_only_are_removed(tmp_path):
    left_behind = [
        ".00000001.tar.tmp-aa", ".00000001.parquet.tmp-bb", ".00000001_stats.json.tmp-cc",
        ".00000002_errors.jsonl.tmp-dd", ".00000003.tar.tmp-ee", ".manifest.jsonl.tmp-ff",
    ]  # fmt: skip
    for name in [*left_behind, "00000003.tar", "00000003_stats.json"]:
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temporaries(str(tmp_path), ["00000001", "00000002"]) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".00000003.tar.tmp-ee", ".manifest.jsonl.tmp-ff", "00000003.tar", "00000003_stats.json",
    ]  # fmt: skip


def test_flags_override_the_preset():
    from pipeline.reinforce_args import parse, settings_from_args

    args, beam_args = parse(
        ["--input", "in/*.tar", "--output", "out", "--preset", "datacompdr1b", "--num-views", "3",
         "--teachers", "a@x,b@y,c@z", "--layout", "v2", "--runner", "DirectRunner"]
    )  # fmt: skip
    settings = settings_from_args(args)
    assert settings.teachers == ("a@x", "b@y", "c@z") and settings.kd_logit_scales == (100.0, 100.0, 100.0)
    assert settings.num_views == 3 and settings.num_captions == 5  # one flag given, the other from the preset
    assert settings.captioner == PRESETS["datacompdr1b"].captioner and settings.layout == "v2"
    assert beam_args == ["--runner", "DirectRunner"]
    args, _ = parse(["--input", "i", "--output", "o", "--preset", "mobileclip2", "--seed", "3"])
    mobileclip2 = settings_from_args(args)
    assert (
        mobileclip2.kd_logit_scales == (70.0, 60.0) and mobileclip2.seed == 3 and mobileclip2.num_views == 10
    )


def test_help_explains_every_flag():
    from pipeline.reinforce_args import build_parser

    help_text = build_parser().format_help()
    flags = "input output preset teachers captioner num-views num-captions seed precision embedding-dtype"
    for flag in [*flags.split(), "layout", "batch-size", "runner"]:
        assert f"--{flag}" in help_text, flag
    assert "datacompdr12m" in help_text and "never downloads" in help_text


def test_unknown_or_stray_arguments_are_refused():
    from shards.storage import unusable_beam_args

    assert unusable_beam_args(["--runner", "DirectRunner", "--direct_num_workers", "2"]) == []
    typo = ["raw/00000001.tar", "--num-view", "3"]
    assert unusable_beam_args(typo) == ["--num-view", "raw/00000001.tar"]  # as typed, not Beam's num_view
    dask = ["--runner", "DaskRunner", "--dask_client_address", "tcp://127.0.0.1:8786"]
    assert unusable_beam_args(dask) == []
