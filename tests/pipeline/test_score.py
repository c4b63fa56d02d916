"""Score first, reinforce what agrees: the score pass, the reinforce job's selection, sidecar scores.

The score run shares the reinforce job's input (`job_input`: real photos, bad samples, a truncated and
an empty shard) and tiny teachers; the selection runs are compared with the unfiltered reference run.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from pipeline.reinforce import main as reinforce_main
from pipeline.score import main as score_main
from shards.raw import RawSample, iter_raw_shard
from shards.reinforced import iter_members, iter_shard
from tests.services import kill_after_first_commit
from transforms import decode_image

SHARDS = ("00000000", "00000001", "00000002", "00000003")


def score_args(raw: Path, out: Path, ckpt: dict[str, str], *extra: str) -> list[str]:
    return [
        "--input", f"{raw}/*.tar", "--output", str(out), "--teachers", f"{ckpt['clip-a']},{ckpt['clip-b']}",
        "--batch-size", "8", "--no-progress", "--model_threads", "1", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def score_run(tmp_path_factory, job_input, tiny_checkpoints) -> Path:
    out = tmp_path_factory.mktemp("scores") / "out"
    assert score_main(score_args(job_input[0], out, tiny_checkpoints)) == 0
    return out


def pool(score_run: Path) -> pd.DataFrame:
    """Every score file of a run, as a user would load them."""
    return pd.concat([pd.read_parquet(p) for p in sorted(score_run.glob("*.parquet"))], ignore_index=True)


def test_a_score_is_open_clips_own_cosine_on_the_decoded_image(score_run, job_input, tiny_checkpoints):
    config = json.loads((score_run / "config.json").read_text())
    specs = [tiny_checkpoints["clip-a"], tiny_checkpoints["clip-b"]]
    assert config["job"] == "score" and [t["spec"] for t in config["teachers"]] == specs
    table = pd.read_parquet(score_run / "00000000.parquet")
    raw = [s for s in iter_raw_shard(str(job_input[0] / "00000000.tar")) if isinstance(s, RawSample)]
    assert table.uid.tolist() == [s.uid for s in raw] and table.url.tolist() == [s.url for s in raw]
    images = [decode_image(s.image) for s in raw]
    assert list(zip(table.width, table.height, strict=True)) == [image.size for image in images]
    assert table.caption_length.tolist() == [len(s.caption) for s in raw]
    for k, spec in enumerate(specs):
        model, _, preprocess = open_clip.create_model_and_transforms(spec)
        tokenizer = open_clip.get_tokenizer(spec)
        model.eval()
        with torch.no_grad():
            image_emb = F.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
            text_emb = F.normalize(model.encode_text(tokenizer([s.caption for s in raw])), dim=-1)
        direct = (image_emb * text_emb).sum(-1).double().numpy()
        np.testing.assert_allclose(table[f"score_{k}"], direct, atol=2e-6)
    np.testing.assert_allclose(table.score_mean, (table.score_0 + table.score_1) / 2, atol=1e-12)
    assert table.score_0.std() > 0.01  # the samples really differ


@pytest.mark.slow
def test_two_worker_processes_score_the_same_bytes(tmp_path, score_run, job_input, tiny_checkpoints, job):
    extra = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing", "--model_threads", "0"]
    out = tmp_path / "out"
    assert score_main(score_args(job_input[0], out, tiny_checkpoints, *extra)) == 0
    assert job.files(out) == job.files(score_run)


def test_bad_input_is_skipped_and_counted_by_reason_as_the_job_does(score_run, job_input):
    _, expected = job_input
    errors = [json.loads(line) for line in (score_run / "00000001_errors.jsonl").read_text().splitlines()]
    assert {e["key"]: e["reason"] for e in errors} == expected
    stats = json.loads((score_run / "00000001_stats.json").read_text())
    assert stats["num_written"] == 3 and stats["num_read"] == 3 + len(expected) and stats["filtered_out"] == 0
    assert len(pd.read_parquet(score_run / "00000001.parquet")) == 3
    truncated = json.loads((score_run / "00000002_stats.json").read_text())
    assert truncated["shard_errors"] == {"truncated_tar": 1} and truncated["num_written"] >= 3
    empty = json.loads((score_run / "00000003_stats.json").read_text())
    assert empty["shard_errors"] == {"empty_tar": 1} and empty["num_written"] == 0
    assert pd.read_parquet(score_run / "00000003.parquet").columns.tolist()[:4] == [
        "uid", "url", "score_0", "score_1",
    ]  # fmt: skip
    manifest = [json.loads(line) for line in (score_run / "manifest.jsonl").read_text().splitlines()]
    assert [m["shard"] for m in manifest] == list(SHARDS)


@pytest.fixture(scope="module")
def top_half(tmp_path_factory, score_run, job_input, job) -> Path:
    out = tmp_path_factory.mktemp("top-half") / "out"
    assert (
        reinforce_main(job.args(job_input[0], out, "--scores", str(score_run), "--top-fraction", "0.5")) == 0
    )
    return out


def test_top_fraction_keeps_what_a_pandas_query_selects_with_the_bytes_of_the_full_run(
    top_half, score_run, reference_run
):
    scores = pool(score_run)
    threshold = scores.score_mean.quantile(1 - 0.5)
    chosen = scores[scores.score_mean >= threshold]
    assert 0 < len(chosen) < len(scores)
    config = json.loads((top_half / "config.json").read_text())
    assert config["selection"]["min_score"] == threshold and config["selection"]["top_fraction"] == 0.5
    assert config["selection"]["scores"] == str(score_run) and config["selection"]["score_run"][
        "samples"
    ] == len(scores)
    kept, filtered_out = [], 0
    for shard in SHARDS:
        file = pd.read_parquet(score_run / f"{shard}.parquet")
        wanted = file[file.score_mean >= threshold].uid.tolist()
        uids = pq.read_table(top_half / f"{shard}.parquet").column("uid").to_pylist()
        assert uids == wanted, shard  # in shard order
        kept += uids
        stats = json.loads((top_half / f"{shard}_stats.json").read_text())
        full = json.loads((reference_run / f"{shard}_stats.json").read_text())
        assert stats["num_written"] == len(wanted) and stats["num_read"] == full["num_read"]
        assert stats["num_read"] == stats["num_written"] + stats["num_skipped"] + stats["filtered_out"]
        filtered_out += stats["filtered_out"]
        # a sample the score run skipped for its image has no score: left out, never decoded again
        assert stats["skipped"] == {r: n for r, n in full["skipped"].items() if not r.startswith("image_")}
        errors = (reference_run / f"{shard}_errors.jsonl").read_text().splitlines()
        kept_errors = [line for line in errors if not json.loads(line)["reason"].startswith("image_")]
        assert (top_half / f"{shard}_errors.jsonl").read_text().splitlines() == kept_errors
        # a kept sample is byte for byte what the unfiltered run wrote for it
        reference = {m["__key__"]: m for m in iter_members(str(reference_run / f"{shard}.tar"))}
        for members in iter_members(str(top_half / f"{shard}.tar")):
            assert members == reference[members["__key__"]]
        rows = pq.read_table(reference_run / f"{shard}.parquet").to_pylist()
        assert pq.read_table(top_half / f"{shard}.parquet").to_pylist() == [
            r for r in rows if r["uid"] in wanted
        ]
    assert sorted(kept) == sorted(chosen.uid)
    summary = json.loads((top_half / "summary.json").read_text())
    assert summary["filtered_out"] == filtered_out and summary["num_written"] == len(chosen)


@pytest.mark.slow
def test_a_selective_run_resumes_with_its_selection_and_refuses_another(
    tmp_path, top_half, score_run, job_input, job, capsys
):
    out = tmp_path / "out"
    shutil.copytree(top_half, out)
    (out / "00000001_stats.json").unlink()  # shard 1 never committed
    flags = ["--scores", str(score_run), "--top-fraction", "0.5"]
    assert reinforce_main(job.args(job_input[0], out, *flags)) == 0
    assert "3 shard(s) were already done" in capsys.readouterr().out
    assert job.files(out) == job.files(top_half)
    assert (
        reinforce_main(job.args(job_input[0], out, "--scores", str(score_run), "--top-fraction", "0.3")) == 2
    )
    assert "different settings (selection)" in capsys.readouterr().err


@pytest.mark.slow
def test_two_worker_processes_select_the_same_bytes(tmp_path, top_half, score_run, job_input, job):
    extra = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing", "--model_threads", "0"]
    out = tmp_path / "out"
    assert (
        reinforce_main(
            job.args(job_input[0], out, "--scores", str(score_run), "--top-fraction", "0.5", *extra)
        )
        == 0
    )
    assert job.files(out) == job.files(top_half)


def test_keep_uids_reinforces_the_listed_samples_only(
    tmp_path, sample_raw_dir, score_run, reference_run, job
):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(sample_raw_dir / "00000000.tar", raw / "00000000.tar")
    scores = pd.read_parquet(score_run / "00000000.parquet")
    listed = scores.nsmallest(3, "score_mean")[["uid"]]  # any query; a uid of no shard does no harm
    pd.concat([listed, pd.DataFrame({"uid": ["not-in-any-shard"]})]).to_parquet(tmp_path / "keep.parquet")
    out = tmp_path / "out"
    assert reinforce_main(job.args(raw, out, "--keep-uids", str(tmp_path / "keep.parquet"))) == 0
    kept = [s.key for s in iter_shard(str(out / "00000000.tar"))]
    assert kept == [uid for uid in scores.uid if uid in set(listed.uid)]
    assert json.loads((out / "00000000_stats.json").read_text())["filtered_out"] == len(scores) - 3
    reference = {m["__key__"]: m for m in iter_members(str(reference_run / "00000000.tar"))}
    assert all(m == reference[m["__key__"]] for m in iter_members(str(out / "00000000.tar")))
    assert json.loads((out / "config.json").read_text())["selection"] == {
        "keep_uids": str(tmp_path / "keep.parquet")
    }


def test_a_selection_that_cannot_work_stops_before_any_work(tmp_path, job_input, score_run, job, capsys):
    raw = job_input[0]
    not_scores = tmp_path / "not-scores"
    not_scores.mkdir()
    (not_scores / "config.json").write_text('{"job": "reinforce"}')
    unscored = tmp_path / "unscored"
    shutil.copytree(raw, unscored)
    shutil.copy(raw / "00000000.tar", unscored / "00000009.tar")
    pd.DataFrame({"key": ["a"]}).to_parquet(tmp_path / "no-uid.parquet")
    cases = {
        "need --scores": (raw, ["--top-fraction", "0.3"]),
        "exactly one of --min-score": (raw, ["--scores", str(score_run)]),
        "--top-fraction must be in (0, 1]": (raw, ["--scores", str(score_run), "--top-fraction", "1.5"]),
        "not both": (raw, ["--scores", str(score_run), "--min-score", "0", "--keep-uids", "x.parquet"]),
        "is not a score run's folder": (raw, ["--scores", str(not_scores), "--min-score", "0.2"]),
        "has not scored 1 input shard(s) (00000009)": (
            unscored,
            ["--scores", str(score_run), "--min-score", "0"],
        ),
        "has no column uid": (raw, ["--keep-uids", str(tmp_path / "no-uid.parquet")]),
    }
    for message, (inputs, flags) in cases.items():
        assert reinforce_main(job.args(inputs, tmp_path / "out", *flags)) == 2, message
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_every_sidecar_row_scores_its_first_view_against_its_original_caption(reference_run):
    table = pq.read_table(reference_run / "00000000.parquet")
    samples = list(iter_shard(str(reference_run / "00000000.tar")))
    for k, (start, stop) in enumerate(((0, 32), (32, 80))):  # the config's teachers: widths 32, 48
        image = np.stack([s.image_emb[0, start:stop] for s in samples]).astype(np.float64)
        text = np.stack([s.caption_emb[start:stop] for s in samples]).astype(np.float64)
        cosine = (image * text).sum(1) / np.linalg.norm(image, axis=1) / np.linalg.norm(text, axis=1)
        np.testing.assert_allclose(table.column(f"score_{k}").to_numpy(), cosine, atol=1e-12)
    scores = np.stack([table.column(f"score_{k}").to_numpy() for k in range(2)])
    np.testing.assert_allclose(table.column("score_mean").to_numpy(), scores.mean(0), atol=1e-12)
    # a finished dataset filters with one query
    frame = table.to_pandas()
    assert set(frame.query("score_mean >= score_mean.median()").uid) <= {s.key for s in samples}


@pytest.mark.slow
def test_a_killed_score_run_resumes_with_only_unfinished_shards(
    tmp_path, sample_raw_dir, tiny_checkpoints, job
):
    raw = tmp_path / "raw"
    raw.mkdir()
    for index in range(8):  # enough shards that a kill after the first commit leaves some to do
        shutil.copy(sample_raw_dir / "00000000.tar", raw / f"{index:08d}.tar")
    whole = tmp_path / "whole"
    assert score_main(score_args(raw, whole, tiny_checkpoints)) == 0
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.score", *score_args(raw, out, tiny_checkpoints)]
    kill_after_first_commit(command, out)
    committed = {p.name: p.read_bytes() for p in out.glob("*_stats.json")}
    assert 1 <= len(committed) < 8, "the run should have been killed after its first shard"
    reference = job.files(whole)
    for path in out.iterdir():  # nothing half-written under a final name: complete, or not there
        if not path.name.startswith(".") and path.name in reference and not path.name.endswith("_stats.json"):
            assert path.read_bytes() == reference[path.name], path.name
    assert score_main(score_args(raw, out, tiny_checkpoints)) == 0
    assert {p.name: p.read_bytes() for p in out.glob("*_stats.json") if p.name in committed} == committed
    assert job.files(out) == reference
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no stale temporaries left
