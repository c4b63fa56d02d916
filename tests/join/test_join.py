"""The join end to end on held-out-style data: outcomes by reason, complete shards, determinism, resume,
validation and training on the output."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from inspection import validate
from pipeline.join import main
from pipeline.join_pairs import REFETCHABLE, RawRef, box_problem, choose_raw
from shards.reinforced import encode_sample, iter_entries, iter_shard, to_float32_rounded
from tests.support import write_members


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file but the wall-clock parts (stats' seconds/input, summary.json)."""
    files = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.name.endswith("_stats.json"):
            stats = json.loads(data)
            stats.pop("seconds")
            data = json.dumps(stats, sort_keys=True).encode()
        elif path.name == "summary.json":
            continue
        files[path.name] = data
    return files


def _errors(out: Path) -> dict[str, list[str]]:
    by_reason: dict[str, list[str]] = {}
    for path in sorted(out.glob("*_errors.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            by_reason.setdefault(record["reason"], []).append(record["key"])
    return {reason: sorted(keys) for reason, keys in by_reason.items()}


def test_every_pair_is_counted_by_reason_and_listed(joined, join_input):
    assert _errors(joined) == join_input.expected
    summary = json.loads((joined / "summary.json").read_text())
    expected_counts = {reason: len(uids) for reason, uids in join_input.expected.items()}
    assert summary["skipped"] == expected_counts
    total = len(join_input.originals)
    assert summary["num_read"] == total and summary["num_written"] == total - sum(expected_counts.values())
    refetch = pq.read_table(joined / "refetch.parquet").to_pylist()
    listed = {row["uid"]: row for row in refetch}
    wanted = {uid: reason for reason in REFETCHABLE for uid in join_input.expected[reason]}
    assert {uid: row["reason"] for uid, row in listed.items()} == wanted
    assert all(row["url"] == join_input.originals[row["uid"]].url for row in refetch)


def test_joined_shards_are_complete_in_reinforced_order(joined, join_input):
    skipped = {uid for uids in join_input.expected.values() for uid in uids}
    for shard, order in join_input.shard_order.items():
        samples = list(iter_shard(str(joined / f"{shard}.tar")))
        assert [s.key for s in samples] == [uid for uid in order if uid not in skipped]
        for sample in samples:
            original = join_input.originals[sample.key]
            reinforced = join_input.reinforced[sample.key]
            assert sample.image == original.image  # the exact bytes the boxes were drawn on
            assert sample.caption == original.caption  # from txt, or the metadata parquet
            assert sample.param_aug == reinforced.param_aug
            assert (sample.image_emb == reinforced.image_emb).all()
            assert sample.meta["sha256"] == original.meta["sha256"]
        names = {name for entry in iter_entries(str(joined / f"{shard}.tar")) for name in entry.members}
        assert {"jpg", "txt", "json", "url.txt", "syn.json", "paug.json", "npz"} == names
    written = {s.key for shard in join_input.shard_order for s in iter_shard(str(joined / f"{shard}.tar"))}
    assert join_input.caption_in_metadata in written


def test_the_parquet_scores_each_sample_from_its_stored_embeddings(joined):
    dims = [t["dim"] for t in json.loads((joined / "config.json").read_text())["teachers"]]
    for path in sorted(joined.glob("*.tar")):
        samples = list(iter_shard(str(path)))
        table = pq.read_table(path.with_suffix(".parquet"))
        assert table.column("uid").to_pylist() == [s.key for s in samples]
        start = 0
        for k, dim in enumerate(dims):  # the original caption against the first view, per teacher
            image = np.stack([s.image_emb[0, start : start + dim] for s in samples]).astype(np.float64)
            text = np.stack([s.caption_emb[start : start + dim] for s in samples]).astype(np.float64)
            cosine = (image * text).sum(1) / np.linalg.norm(image, axis=1) / np.linalg.norm(text, axis=1)
            np.testing.assert_allclose(table.column(f"score_{k}").to_numpy(), cosine, atol=1e-12)
            start += dim


def test_output_passes_the_validator(joined):
    problems = []
    outcome = validate.validate(str(joined), report=problems.append)
    assert outcome.ok, problems


@pytest.mark.slow
def test_rerun_on_two_workers_is_byte_identical_and_resumes(joined, join_input, join_args, tmp_path):
    again = tmp_path / "again"
    extra = ("--on-mismatch", "list", "--runner", "DirectRunner", "--direct_num_workers", "2")
    assert main(join_args(join_input, again, *extra)) == 0
    assert _files(again) == _files(joined)
    # A shard whose stats file is gone is joined again; the other is left alone.
    (again / "00000001_stats.json").unlink()
    (again / "00000001.tar").unlink()
    kept = (again / "00000000_stats.json").read_bytes()
    assert main(join_args(join_input, again, "--on-mismatch", "list")) == 0
    assert (again / "00000000_stats.json").read_bytes() == kept
    assert _files(again) == _files(joined)


@pytest.mark.slow
def test_trainer_trains_on_the_joined_output(joined, tmp_path):
    from trainer import train

    data = tmp_path / "data"
    shutil.copytree(joined, data)
    run = tmp_path / "run"
    argv = ["--data", str(data / "*.tar"), "--model", "tiny", "--batch-size", "4", "--workers", "0"]
    train.main([*argv, "--steps", "3", "--output", str(run), "--threads", "1"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [0, 1, 2]
    assert all(entry["skipped"] == 0 and entry["kd_original"] > 0 for entry in log)


def test_without_teacher_widths_the_public_release_is_refused(join_input, join_args, tmp_path, capsys):
    args = [a for a in join_args(join_input, tmp_path / "out") if a not in ("--teacher-dims", "8,12")]
    assert main(args) == 2
    assert "--teacher-dims" in capsys.readouterr().err


def _ref(key: str, sha: str, json_sha: str) -> RawRef:
    return RawRef("u", "raw/0.tar", key, sha, 0, 1, None, "c", {"sha256": json_sha}, None)


def test_a_reencoded_download_is_told_apart_from_a_different_image():
    reencoded = choose_raw({"sha256": "aa"}, (_ref("k", "bb", "aa"),))
    assert reencoded.reason == "hash_mismatch" and "re-encoded" in reencoded.detail
    different = choose_raw({"sha256": "aa"}, (_ref("k", "bb", "cc"),))
    assert different.reason == "hash_mismatch" and "different image" in different.detail
    # Of two raw copies of a uid, the one whose stored bytes match wins, whatever their order.
    refs = (_ref("k2", "aa", "aa"), _ref("k1", "bb", "aa"))
    meta = {"sha256": "aa"}
    assert choose_raw(meta, refs).ref.key == "k2" and choose_raw(meta, refs[::-1]).ref.key == "k2"
    assert choose_raw(meta, refs).matched_by == "sha256"
    # Our own shards: the bytes the job decoded decide, the original download's hash only explains.
    ours = {"sha256": "aa", "image_sha256": "bb"}
    assert choose_raw(ours, refs).ref.key == "k1" and choose_raw(ours, refs).matched_by == "image_sha256"
    resized = choose_raw(ours, (_ref("k", "cc", "aa"),))
    assert resized.reason == "hash_mismatch" and "the same download stored as other bytes" in resized.detail


def test_boxes_must_lie_inside_the_decoded_image():
    view = [[10, 20, 30, 40], [[1, 0.1], [5, -9.0]]]
    assert box_problem([view], width=60, height=40) is None
    assert "outside 59x40" in box_problem([view], width=59, height=40)
    assert "outside 60x39" in box_problem([view], width=60, height=39)


def test_counts_add_up_per_shard(joined):
    for stats_path in joined.glob("*_stats.json"):
        stats = json.loads(stats_path.read_text())
        assert stats["num_read"] == stats["num_written"] + sum(Counter(stats["skipped"]).values())


def test_bf16_v2_public_shards_join_into_the_same_layout(join_input, join_args, tmp_path):
    uids = join_input.shard_order["00000000"][:8]
    public = tmp_path / "public"
    public.mkdir()
    members = []
    for uid in uids:
        encoded = encode_sample(join_input.reinforced[uid], "v2", "bf16")
        del encoded["jpg"], encoded["txt"]
        members.append(encoded)
    write_members(public / "00000007.tar", members)
    out = tmp_path / "out"
    args = join_args(join_input, out, "--runner", "DirectRunner")
    args[args.index("--reinforced") + 1] = f"{public}/*.tar"
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["layout"], config["embedding_dtype"]) == ("v2", "bf16")
    assert config["caption_family"] == "syn_text_default" and config["num_views"] == 3
    skipped = {uid for uids in join_input.expected.values() for uid in uids}
    entries = list(iter_entries(str(out / "00000007.tar")))
    assert [e.key for e in entries] == [uid for uid in uids if uid not in skipped]
    for entry in entries:
        assert "pth.gz" in entry.members and "npz" not in entry.members
        stored = to_float32_rounded(join_input.reinforced[entry.key].image_emb, "bf16")
        assert (entry.sample.image_emb == stored).all()
        assert entry.sample.image == join_input.originals[entry.key].image
    assert validate.validate(str(out)).ok


@pytest.mark.parametrize(
    ("dims", "says"),
    [
        ("768,768", "add up to 1536, but the embeddings are 20 wide"),
        ("12,8", "columns 0-11 of the embeddings"),
    ],
)
def test_teacher_widths_that_do_not_fit_the_embeddings_are_refused(
    join_input, join_args, tmp_path, refusal, dims, says
):
    out = tmp_path / "out"
    args = join_args(join_input, out)
    args[args.index("--teacher-dims") + 1] = dims
    assert main(args) == 2
    line = refusal()
    assert not out.exists()
    assert says in line and f"--teacher-dims {dims}" in line


def test_config_widths_that_do_not_fit_the_embeddings_are_refused(join_input, join_args, tmp_path, refusal):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"teachers": [{"dim": 10, "kd_logit_scale": 100}, {"dim": 10}]}))
    out = tmp_path / "out"
    args = [a for a in join_args(join_input, out) if a not in ("--teacher-dims", "8,12")]
    assert main([*args, "--config", str(config)]) == 2
    assert "config.json's teachers 10,10: columns 0-9" in refusal()
    assert not out.exists()


def test_a_rerun_of_a_finished_join_writes_its_missing_manifest_again(
    joined, join_input, join_args, tmp_path
):
    """Killed after the last shard, before the manifest: the same command finishes the run."""
    again = tmp_path / "again"
    shutil.copytree(joined, again)
    (again / "manifest.jsonl").unlink()
    assert main(join_args(join_input, again, "--on-mismatch", "list")) == 0
    assert (again / "manifest.jsonl").read_bytes() == (joined / "manifest.jsonl").read_bytes()
