"""Growing finished runs: an added teacher or caption family equals what a fresh run with the grown
setup writes, bad input is counted, a killed run resumes, and the output validates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from inspection.validate import validate
from pipeline.extend import main as extend_main
from shards.reinforced import encode_sample, iter_shard
from tests.support import write_members

SHARDS = ("00000000", "00000001")


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def _stats(run: Path, shard: str) -> dict:
    return json.loads((run / f"{shard}_stats.json").read_text())


@pytest.mark.slow
def test_added_teacher_equals_a_fresh_run_with_both_teachers(runs):
    fresh = runs.reinforce("a+b", ["clip-a", "clip-b"])
    grown = runs.extend("a then b", runs.reinforce("a", ["clip-a"]), "--add-teacher", runs.models["clip-b"])
    for shard in SHARDS:
        for suffix in (".tar", ".parquet", "_errors.jsonl"):
            assert (grown / f"{shard}{suffix}").read_bytes() == (fresh / f"{shard}{suffix}").read_bytes()
        assert _stats(grown, shard)["num_written"] == _stats(fresh, shard)["num_written"] > 0
    assert (grown / "manifest.jsonl").read_bytes() == (fresh / "manifest.jsonl").read_bytes()
    scores = pq.read_schema(grown / "00000000.parquet").names[-3:]
    assert scores == ["score_0", "score_1", "score_mean"]  # the added teacher is scored too
    config, expected = _config(grown), _config(fresh)
    assert config["teachers"] == expected["teachers"]  # dims, KD scales, order = slice order
    assert [t["dim"] for t in config["teachers"]] == [32, 48]
    assert config["extended"][0]["added_teacher"] == runs.models["clip-b"]
    assert {k: v for k, v in config.items() if k != "extended"} == expected
    assert validate(str(grown)).ok


@pytest.mark.slow
def test_added_teacher_on_a_v2_bf16_run_equals_a_fresh_one(runs):
    v2_bf16 = ("--layout", "v2", "--embedding-dtype", "bf16")
    fresh = runs.reinforce("a+b v2 bf16", ["clip-a", "clip-b"], *v2_bf16)
    source = runs.reinforce("a v2 bf16", ["clip-a"], *v2_bf16)
    grown = runs.extend("a v2 bf16 then b", source, "--add-teacher", runs.models["clip-b"])
    for shard in SHARDS:
        for suffix in (".tar", ".parquet"):
            assert (grown / f"{shard}{suffix}").read_bytes() == (fresh / f"{shard}{suffix}").read_bytes()
    assert {k: v for k, v in _config(grown).items() if k != "extended"} == _config(fresh)


@pytest.mark.slow
def test_added_captioner_writes_v2_with_a_family_a_fresh_run_with_that_captioner_writes(runs):
    original = runs.reinforce("a+b", ["clip-a", "clip-b"])  # v1
    other = runs.reinforce(
        "a+b coca-2 v2", ["clip-a", "clip-b"], "--captioner", runs.models["coca-2"],
        "--layout", "v2", "--caption-tag", "c2",
    )  # fmt: skip
    grown = runs.extend(
        "a+b then coca-2", original, "--add-captioner", runs.models["coca-2"], "--caption-tag", "c2"
    )
    for shard in SHARDS:
        before = list(iter_shard(str(original / f"{shard}.tar")))
        fresh = {s.key: s for s in iter_shard(str(other / f"{shard}.tar"))}
        after = list(iter_shard(str(grown / f"{shard}.tar")))
        assert [s.key for s in after] == [s.key for s in before] and after
        for old, new in zip(before, after, strict=True):
            assert list(new.syn_captions) == ["syn_text_coca", "syn_text_c2"]  # v1's family renamed
            assert new.syn_captions["syn_text_coca"] == old.syn_captions["syn_text"]
            np.testing.assert_array_equal(new.syn_emb["syn_text_coca"], old.syn_emb["syn_text"])
            np.testing.assert_array_equal(new.image_emb, old.image_emb)
            np.testing.assert_array_equal(new.caption_emb, old.caption_emb)
            same = fresh[new.key]
            assert new.syn_captions["syn_text_c2"] == same.syn_captions["syn_text_c2"]
            assert new.syn_emb["syn_text_c2"].shape == (1, 32 + 48)  # from every teacher
            np.testing.assert_array_equal(new.syn_emb["syn_text_c2"], same.syn_emb["syn_text_c2"])
        assert any(
            s.syn_captions["syn_text_c2"] != s.syn_captions["syn_text_coca"] for s in after
        )  # another captioner, other captions
    config = _config(grown)
    assert config["layout"] == "v2" and config["caption_family"] == "syn_text_coca"
    assert sorted(config["caption_families"]) == ["syn_text_c2", "syn_text_coca"]
    assert config["caption_families"]["syn_text_c2"]["spec"] == runs.models["coca-2"]
    assert validate(str(grown)).ok


@pytest.mark.slow
def test_a_killed_extend_resumes_with_the_same_bytes(runs, tmp_path, capsys):
    source = runs.reinforce("a", ["clip-a"])
    whole = runs.extend("a then b", source, "--add-teacher", runs.models["clip-b"])
    out = tmp_path / "out"
    shutil.copytree(whole, out)
    for name in ("00000001_stats.json", "00000001.tar", "summary.json", "manifest.jsonl"):
        (out / name).unlink()  # shard 1 never committed
    (out / ".00000001.tar.tmp-dead").write_bytes(b"half a shard")
    kept = (out / "00000000.tar").stat().st_mtime_ns
    args = runs.extend_args(source, out, "--add-teacher", runs.models["clip-b"])
    assert extend_main(args) == 0
    assert "1 shard(s) were already done" in capsys.readouterr().out
    assert (out / "00000000.tar").stat().st_mtime_ns == kept  # not redone
    assert not list(out.glob(".*tmp-*"))
    for shard in SHARDS:
        assert (out / f"{shard}.tar").read_bytes() == (whole / f"{shard}.tar").read_bytes()
    assert (out / "manifest.jsonl").read_bytes() == (whole / "manifest.jsonl").read_bytes()
    # a resume with other settings would mix two runs in one folder
    other_scale = [*args, "--kd-logit-scale", "50"]
    assert extend_main(other_scale) == 2
    assert "different settings (teachers)" in capsys.readouterr().err


@pytest.mark.slow
def test_bad_samples_are_counted_and_good_ones_extended(runs, tmp_path):
    source = runs.reinforce("a", ["clip-a"])
    samples = list(iter_shard(str(source / "00000000.tar")))
    members = [encode_sample(s) for s in samples[:4]]
    members[1]["npz"] = b"not a zip"
    members[2]["paug.json"] = json.dumps({"param_aug": [[[0, 0, 99999, 99999], []]] * 2}).encode()
    narrow = samples[3]
    narrow.image_emb, narrow.caption_emb = narrow.image_emb[:, :16], narrow.caption_emb[:16]
    narrow.syn_emb = {f: e[:, :16] for f, e in narrow.syn_emb.items()}
    members[3] = encode_sample(narrow)
    members.append(encode_sample(samples[4]))
    bad = tmp_path / "bad"
    bad.mkdir()
    write_members(bad / "00000000.tar", members)
    shutil.copy(source / "config.json", bad / "config.json")
    out = tmp_path / "out"
    assert extend_main(runs.extend_args(bad, out, "--add-teacher", runs.models["clip-b"])) == 0
    stats = _stats(out, "00000000")
    assert stats["num_read"] == 5 and stats["num_written"] == 2
    assert stats["skipped"] == {
        "bad_member": 1, "image_box_outside_image": 1, "embedding_width_mismatch": 1,
    }  # fmt: skip
    errors = [json.loads(line) for line in (out / "00000000_errors.jsonl").read_text().splitlines()]
    assert [e["key"] for e in errors] == [s.key for s in samples[1:4]]
    assert [s.key for s in iter_shard(str(out / "00000000.tar"))] == [samples[0].key, samples[4].key]
    assert validate(str(out)).ok


@pytest.mark.slow
def test_misconfigured_extends_stop_before_any_work(runs, tmp_path, capsys):
    source = runs.reinforce("a", ["clip-a"])
    teacher, captioner = runs.models["clip-b"], runs.models["coca-2"]
    cases = {
        "exactly one of --add-teacher and --add-captioner": [
            "--add-teacher", teacher, "--add-captioner", captioner, "--caption-tag", "x",
        ],
        "needs --caption-tag": ["--add-captioner", captioner],
        "already holds syn_text_coca": ["--add-captioner", captioner, "--caption-tag", "coca"],
        "already has teacher": ["--add-teacher", runs.models["clip-a"]],
    }  # fmt: skip
    for message, flags in cases.items():
        assert extend_main(runs.extend_args(source, tmp_path / "out", *flags)) == 2
        assert message in capsys.readouterr().err
    assert extend_main(runs.extend_args(source, source, "--add-teacher", teacher)) == 2
    assert "not the input's" in capsys.readouterr().err
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(source / "00000000.tar", lone / "00000000.tar")
    assert extend_main(runs.extend_args(lone, tmp_path / "out", "--add-teacher", teacher)) == 2
    assert "--input-config" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
