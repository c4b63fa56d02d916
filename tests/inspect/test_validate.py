"""`python -m pipeline.validate`: a good run passes, and each broken promise of contract §2 is named."""

from __future__ import annotations

import gzip
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from inspection import validate
from shards.reinforced import iter_members, open_tar_writer
from tests.support import write_public_half

Members = dict[str, Any]


def rewrite_shard(path: Path, change: Callable[[int, Members], Members | None]) -> None:
    """Rewrite a tar sample by sample; `change(index, members)` returns new members, or None to drop."""
    samples = list(iter_members(str(path)))
    with path.open("wb") as f:
        writer = open_tar_writer(f)
        for index, members in enumerate(samples):
            changed = change(index, dict(members))
            if changed is not None:
                writer.write(changed)
        writer.close()


def only_first(edit: Callable[[Members], Members | None]) -> Callable[[int, Members], Members | None]:
    return lambda index, members: edit(members) if index == 0 else members


def npz_arrays(members: Members) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(members["npz"]), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def with_npz(members: Members, arrays: dict[str, np.ndarray]) -> Members:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return {**members, "npz": buffer.getvalue()}


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = validate.main(args)
    return code, capsys.readouterr().out.splitlines()


def problems_of(path: Path, **kwargs: Any) -> list[validate.Problem]:
    found: list[validate.Problem] = []
    validate.validate(str(path), report=found.append, **kwargs)
    return found


def test_a_good_run_passes_with_raw_check(make_run, sample_raw_dir: Path, capsys) -> None:
    run = make_run(shards=("00000000.tar", "00000001.tar"))
    code, lines = run_cli([str(run), "--raw", str(sample_raw_dir)], capsys)
    assert code == 0, lines
    assert lines == ["OK: 2 shard(s), 12 sample(s) checked, no problems"]


def test_the_real_job_output_passes(reinforced_run: Path, sample_raw_dir: Path, capsys) -> None:
    code, lines = run_cli([str(reinforced_run), "--raw", str(sample_raw_dir)], capsys)
    assert code == 0, lines
    assert lines[-1].startswith("OK: 1 shard(s), 12 sample(s) checked")


@pytest.mark.parametrize(
    ("spec", "flags"),
    [
        ({"layout": "v1", "embedding_dtype": "bf16"}, ["--teacher-dims", "32,48"]),
        ({"layout": "v2", "embedding_dtype": "fp32", "dims": (64, 64)}, []),
        ({"layout": "v2", "embedding_dtype": "bf16", "dims": (96,)}, []),
    ],
    ids=["v1-pth.gz-flagged-dims", "v2-npz-inferred-dims", "v2-pth.gz-one-teacher"],
)
def test_public_shards_without_run_files_pass(
    make_run, spec: dict[str, Any], flags: list[str], capsys
) -> None:
    shard = make_run(**spec, run_files=False) / "00000000.tar"
    code, lines = run_cli([str(shard), *flags], capsys)
    assert code == 0, lines
    assert lines[-1].startswith("OK: 1 shard(s), 6 sample(s)")


def test_public_folder_with_only_a_manifest(make_run, capsys) -> None:
    """Published DataCompDR folders list their shards in manifest.jsonl and have no config or stats."""
    folder = make_run(dims=(64, 64), shards=("00000000.tar", "00000001.tar"), run_files=False)
    lines = ['{"shard": "00000000", "num_samples": 6}', '{"shard": "00000001", "num_samples": 6}']
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    code, out = run_cli([str(folder)], capsys)
    assert code == 0, out
    (folder / "manifest.jsonl").write_text(lines[0] + "\n")
    code, out = run_cli([str(folder)], capsys)
    assert code == 1
    assert out[0] == f"{folder}/manifest.jsonl - manifest_mismatch: shard 00000001 is not listed"


def test_unequal_teachers_without_config_or_flag_are_not_guessed(make_run, capsys) -> None:
    shard = make_run(dims=(32, 48), run_files=False) / "00000000.tar"
    code, lines = run_cli([str(shard)], capsys)
    assert code == 1
    assert "no equal split of D=80 gives unit-norm teacher slices; pass --teacher-dims" in lines[0]


def test_published_layout_without_images_passes(make_run, capsys) -> None:
    """DataCompDR as published has no jpg and no txt: users fetch the images from url.txt."""
    shard = make_run(dims=(64, 64), run_files=False) / "00000000.tar"
    rewrite_shard(shard, lambda _, m: {k: v for k, v in m.items() if k not in ("jpg", "txt")})
    code, lines = run_cli([str(shard)], capsys)
    assert code == 0, lines


def test_public_paug_stored_as_json_string_passes(make_run, capsys) -> None:
    shard = make_run(dims=(64, 64), run_files=False) / "00000000.tar"

    def stringify(_: int, members: Members) -> Members:
        entries = json.loads(members["paug.json"])["param_aug"]
        return {**members, "paug.json": json.dumps({"param_aug": json.dumps(entries)}).encode()}

    rewrite_shard(shard, stringify)
    code, lines = run_cli([str(shard)], capsys)
    assert code == 0, lines


def test_a_teacher_slice_off_unit_norm_is_named_with_its_key(make_run, capsys) -> None:
    run = make_run()
    shard = run / "00000000.tar"
    keys = [m["__key__"] for m in iter_members(str(shard))]

    def shrink_second_teacher(members: Members) -> Members:
        arrays = npz_arrays(members)
        arrays["image_emb"][2, 32:] *= 0.5  # clip-b's slice of view 2 only
        return with_npz(members, arrays)

    rewrite_shard(shard, only_first(shrink_second_teacher))
    code, lines = run_cli([str(run)], capsys)
    assert code == 1
    assert lines[0].startswith(f"{shard} {keys[0]} bad_norm: image_emb row 2, teacher clip-b (columns 32:80)")
    assert lines[-1].startswith("FAIL: 1 problem(s)")


def test_flagged_teacher_dims_catch_what_a_whole_vector_norm_hides(make_run) -> None:
    """Two teachers whose slices are off but whose concatenation has norm sqrt(2): only slices catch it."""
    shard = make_run(dims=(64, 64), run_files=False) / "00000000.tar"

    def skew(members: Members) -> Members:
        data = torch.load(io.BytesIO(gzip.decompress(members["pth.gz"])), weights_only=True)
        data["image_emb"][0, :64] *= 0.6
        data["image_emb"][0, 64:] *= (2 - 0.36) ** 0.5  # the whole row keeps norm sqrt(2)
        buffer = io.BytesIO()
        torch.save(data, buffer)
        return {**members, "pth.gz": gzip.compress(buffer.getvalue())}

    bf16_shard = make_run(dims=(64, 64), embedding_dtype="bf16", run_files=False) / "00000000.tar"
    rewrite_shard(bf16_shard, only_first(skew))
    problems = problems_of(bf16_shard, teacher_dims=[64, 64])
    assert [(p.reason, p.detail.split(",")[0]) for p in problems] == [
        ("bad_norm", "image_emb row 0"),
        ("bad_norm", "image_emb row 0"),
    ]
    assert problems_of(shard, teacher_dims=[64, 64]) == []
    assert {p.reason for p in problems_of(shard, teacher_dims=[32, 96])} == {"bad_norm"}


def test_config_and_samples_must_agree(make_run) -> None:
    run = make_run()
    config = json.loads((run / "config.json").read_text())
    config["num_views"] = 4
    config["num_captions"] = 5
    config["teachers"][1]["dim"] = 40
    (run / "config.json").write_text(json.dumps(config))
    problems = problems_of(run)
    reasons = {p.reason for p in problems}
    assert reasons == {"count_mismatch", "bad_shape"}
    assert sum(p.reason == "count_mismatch" for p in problems) == 12  # views and captions, 6 samples
    assert all(p.key for p in problems)


def test_param_aug_counts_and_boxes_are_checked(make_run) -> None:
    run = make_run()
    shard = run / "00000000.tar"

    def drop_a_view(members: Members) -> Members:
        entries = json.loads(members["paug.json"])["param_aug"]
        return {**members, "paug.json": json.dumps({"param_aug": entries[:-1]}).encode()}

    def box_outside(index: int, members: Members) -> Members:
        if index != 1:
            return members
        entries = json.loads(members["paug.json"])["param_aug"]
        entries[0][0] = [0, 0, 5000, 10]  # taller than any bundled image
        entries[1] = "not a view"
        return {**members, "paug.json": json.dumps({"param_aug": entries}).encode()}

    rewrite_shard(shard, only_first(drop_a_view))
    rewrite_shard(shard, box_outside)
    problems = problems_of(run)
    details = [(p.reason, p.detail.split(":")[0]) for p in problems]
    assert details == [
        ("count_mismatch", "3 image embeddings for 2 param_aug entries"),
        ("bad_param_aug", "param_aug[0] box_outside_image"),
        ("bad_param_aug", "param_aug[1] malformed_params"),
    ]


def test_missing_members_and_changed_images_are_caught(make_run, sample_raw_dir: Path) -> None:
    run = make_run()
    shard = run / "00000000.tar"

    def reencode(index: int, members: Members) -> Members:
        if index == 0:
            return {k: v for k, v in members.items() if k != "url.txt"}
        if index == 2:  # a JPEG in the raw shard
            image = Image.open(io.BytesIO(members["jpg"])).convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")  # same pixels, other bytes: crop boxes may no longer replay
            return {**members, "jpg": buffer.getvalue()}
        return members

    rewrite_shard(shard, reencode)
    problems = problems_of(run, raw_dir=str(sample_raw_dir))
    assert [(p.reason, p.detail) for p in problems] == [
        ("missing_member", "no url.txt"),
        ("image_hash_mismatch", "json image_sha256 is not the hash of the jpg"),  # caught without the raw
        ("image_changed", "image bytes differ from the raw input's"),
    ]


def test_undecodable_image_and_wrong_sizes_are_caught(make_run) -> None:
    run = make_run()
    shard = run / "00000000.tar"

    def damage(index: int, members: Members) -> Members:
        if index == 0:
            return {**members, "jpg": b"<html>404</html>"}
        if index == 1:
            meta = json.loads(members["json"])
            meta["width"] += 1
            return {**members, "json": json.dumps(meta).encode()}
        return members

    rewrite_shard(shard, damage)
    problems = problems_of(run)
    assert [(p.reason, p.detail.split(":")[0]) for p in problems] == [
        ("image_hash_mismatch", "json image_sha256 is not the hash of the jpg"),
        ("bad_image", "undecodable"),
        ("bad_meta", "json says 101x100, the image decodes to 100x100"),  # the 100 px retina photo
    ]


def test_a_sample_lost_without_a_record_is_reported(make_run, sample_raw_dir: Path) -> None:
    run = make_run()
    shard = run / "00000000.tar"
    rewrite_shard(shard, lambda index, members: None if index == 3 else members)
    reasons = [p.reason for p in problems_of(run, raw_dir=str(sample_raw_dir))]
    # the tar lost a sample that the stats, manifest, parquet and errors file still account for
    assert sorted(reasons) == ["lost_sample", "manifest_mismatch", "parquet_mismatch", "stats_mismatch"]


def test_run_files_must_describe_every_shard(make_run, capsys) -> None:
    run = make_run(shards=("00000000.tar", "00000001.tar", "00000002.tar"))
    (run / "00000001_stats.json").unlink()  # an uncommitted shard
    manifest = (run / "manifest.jsonl").read_text().splitlines()
    (run / "manifest.jsonl").write_text("\n".join([manifest[0], manifest[1].replace("6", "7")]) + "\n")
    (run / "00000002.tar").unlink()
    (run / "00000002_errors.jsonl").write_text('{"key": "x", "reason": "missing_image"}\n')
    code, lines = run_cli([str(run)], capsys)
    assert code == 1
    problems = lines[:-1]
    assert f"{run}/00000001_stats.json - missing_run_file: shard has no stats (not committed)" in problems
    assert f"{run}/manifest.jsonl - manifest_mismatch: 00000001: num_samples 7, the tar holds 6" in problems
    assert any("00000002_stats.json - missing_shard" in line for line in problems)
    assert len(problems) == 3
    assert lines[-1] == (
        "FAIL: 3 problem(s) in 2 shard(s), 12 sample(s) checked "
        "(manifest_mismatch 1, missing_run_file 1, missing_shard 1)"
    )


def test_stats_must_match_the_errors_file(make_run) -> None:
    run = make_run()
    stats = json.loads((run / "00000000_stats.json").read_text())
    stats["skipped"]["missing_image"] = 1
    stats["num_read"] += 1
    (run / "00000000_stats.json").write_text(json.dumps(stats))
    problems = problems_of(run)
    assert [p.reason for p in problems] == ["stats_mismatch"]
    assert "missing_image" in problems[0].detail


def test_embedding_storage_must_match_config(make_run) -> None:
    run = make_run()
    config = json.loads((run / "config.json").read_text())
    config["embedding_dtype"] = "bf16"
    (run / "config.json").write_text(json.dumps(config))
    problems = problems_of(run)
    assert {p.reason for p in problems} == {"embedding_dtype_mismatch"}
    assert len(problems) == 6


def test_truncated_tar_keeps_earlier_samples_and_fails(make_run, capsys) -> None:
    shard = make_run(run_files=False) / "00000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) * 2 // 3])
    code, lines = run_cli([str(shard)], capsys)
    assert code == 1
    assert any(" unreadable_tar: " in line for line in lines)
    checked = int(lines[-1].split(" shard(s), ")[1].split(" sample")[0])
    assert 0 < checked < 6


def test_nothing_to_validate_is_a_failure(tmp_path: Path, capsys) -> None:
    code, lines = run_cli([str(tmp_path)], capsys)
    assert code == 1
    assert lines[0] == f"{tmp_path} - no_shards: no .tar shard found here"


def test_a_view_that_replays_to_other_pixels_fails_and_old_shards_are_noted(make_run, capsys) -> None:
    """Fingerprints stored at generation are recomputed from image + param_aug; a mismatch is never silent."""
    run = make_run()
    shard = run / "00000000.tar"

    def other_generation_stack(index: int, members: Members) -> Members:
        paug = json.loads(members["paug.json"])
        if index == 1:  # as if the teachers' Pillow had rendered views 0 and 2 differently
            for k in (0, 2):
                paug["view_sha"][k] = "0" * 16
        if index == 3:  # a sample from before fingerprints: nothing to check
            del paug["view_sha"]
        return {**members, "paug.json": json.dumps(paug).encode()}

    rewrite_shard(shard, other_generation_stack)
    code, lines = run_cli([str(run)], capsys)
    assert code == 1
    key = [m["__key__"] for m in iter_members(str(shard))][1]
    assert lines[0] == (
        f"{shard} {key} replay_differs: views [0, 2] of 3 replay to other pixels than the teachers saw "
        "(a different decode/resize stack: see the notes)"
    )
    assert lines[-1].endswith("(replay_differs 1)")
    notes = validate.validate(str(run)).notes
    assert "1 sample(s) carry no view fingerprints (written before they existed)" in notes[0]
    assert "replay: 15 view(s) re-rendered, 2 differ" in notes[1]  # 5 fingerprinted samples x 3 views
    assert notes[2].startswith("image stack here: {'pillow': ")


def test_a_join_output_is_checked_by_uid_against_raw_shards_of_other_names(
    make_run, sample_raw_dir: Path, tmp_path: Path, capsys
) -> None:
    """The join's output shards follow the reinforced shards; the raw side has its own names and order."""
    from pipeline import join

    run = make_run(shards=("00000000.tar", "00000001.tar"), max_samples=None)
    public = tmp_path / "public"
    public.mkdir()
    for name in ("00000000.tar", "00000001.tar"):
        write_public_half(run / name, public / name)
    raw = tmp_path / "DATACOMP"
    raw.mkdir()
    for number, name in enumerate(("00000002.tar", "00000001.tar", "00000000.tar")):
        shutil.copy(sample_raw_dir / name, raw / f"{number + 7:05d}.tar")  # img2dataset's numbering
    joined = tmp_path / "joined"
    args = ["--reinforced", f"{public}/*.tar", "--raw", f"{raw}/*.tar", "--output", str(joined)]
    assert join.main([*args, "--config", str(run / "config.json"), "--no-progress"]) == 0
    capsys.readouterr()
    code, lines = run_cli([str(joined), "--raw", str(raw)], capsys)
    assert (code, lines) == (0, [lines[-1]]) and lines[-1].startswith("OK:") and "no problems" in lines[-1]
    # Paired by uid, a changed image is still caught, wherever its raw shard is.
    first, second = list(iter_members(str(raw / "00008.tar")))[:2]

    def image(members: Members) -> str:
        return next(name for name in members if name not in ("__key__", "json", "txt"))

    def swap_image(members: Members) -> Members:  # another photo under the first one's name
        return {**members, image(members): second[image(second)]}

    rewrite_shard(raw / "00008.tar", only_first(swap_image))
    problems = [(p.reason, p.key) for p in problems_of(joined, raw_dir=str(raw))]
    assert problems == [("image_changed", json.loads(first["json"])["uid"])]
