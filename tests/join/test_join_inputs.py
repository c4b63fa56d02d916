"""A join records its inputs: a rerun with other raw inputs is refused, `--rejoin-missing` adds them
(the output then equals one join with every raw input at once), and a raw side that matches no uid
writes nothing."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from pipeline.join import main


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file but the run-dependent ones (timings, input paths, the inputs record)."""
    files = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.name.endswith("_stats.json"):
            stats = json.loads(data)
            stats.pop("seconds"), stats.pop("input")
            data = json.dumps(stats, sort_keys=True).encode()
        elif path.name in ("summary.json", "join_inputs.json"):
            continue
        files[path.name] = data
    return files


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(folder.iterdir())}


@pytest.fixture
def two_downloads(join_input, tmp_path, monkeypatch) -> Path:
    """The raw side as two img2dataset folders, the first download and the refetch, in the cwd."""
    monkeypatch.chdir(tmp_path)
    raw = sorted(join_input.raw.glob("*.tar"))
    for folder, shards in (("DATACOMP", raw[:3]), ("DATACOMP_refetch", raw[3:])):
        (tmp_path / folder).mkdir()
        for shard in shards:
            shutil.copy(shard, tmp_path / folder / shard.name)
    return tmp_path


def _args(join_input, raw: str, out: str, *extra: str, metadata: bool = True) -> list[str]:
    return [
        "--reinforced", f"{join_input.public}/*.tar", "--raw", raw, "--output", out,
        *(["--raw-metadata", f"{join_input.metadata}/*.parquet"] if metadata else []),
        "--teacher-dims", "8,12", "--no-progress", "--on-mismatch", "list", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_rejoin_missing_adds_the_refetched_shards_and_equals_one_join_of_all(
    join_input, joined, two_downloads, capsys, refusal
):
    # The first join had the images' own captions only; the refetched images come without (img2dataset
    # reads no caption from refetch.parquet), so the rejoin adds DataComp's metadata parquet.
    assert main(_args(join_input, "DATACOMP/*.tar", "out", metadata=False)) == 0
    first = json.loads(Path("out/summary.json").read_text())
    assert first["skipped"]["caption_missing"] == 2
    record = json.loads(Path("out/join_inputs.json").read_text())
    assert [run["raw"] for run in record["runs"]] == ["DATACOMP/*.tar"]
    assert len(record["runs"][0]["raw_files"]) == 3
    capsys.readouterr()

    # Rerunning with another raw side would resume and join nothing new: refused, nothing touched.
    before = _snapshot(Path("out"))
    assert main(_args(join_input, "DATACOMP_refetch/*.tar", "out", metadata=False)) == 2
    line = refusal()
    assert "was joined with other raw inputs (--raw 'DATACOMP/*.tar' (3 files))" in line
    assert "add --rejoin-missing" in line
    assert _snapshot(Path("out")) == before

    assert main(_args(join_input, "DATACOMP_refetch/*.tar", "out", "--rejoin-missing")) == 0
    after = json.loads(Path("out/summary.json").read_text())
    assert after["num_written"] > first["num_written"]
    said = f"they held {first['num_written']} pairs; this run wrote {after['num_written']}"
    assert f"rejoined 2 finished shard(s) with missing pairs, using every raw input so far: {said}" in (
        capsys.readouterr().out
    )
    assert _files(Path("out")) == _files(joined)  # as if every raw shard had been there at first
    record = json.loads(Path("out/join_inputs.json").read_text())
    assert [run["raw"] for run in record["runs"]] == ["DATACOMP/*.tar", "DATACOMP_refetch/*.tar"]
    capsys.readouterr()

    # Nothing new to add: said in one line.
    assert main(_args(join_input, "DATACOMP_refetch/*.tar", "out", "--rejoin-missing")) == 2
    assert "already joined" in refusal()


def test_a_raw_glob_with_a_wildcard_in_its_folder_name(join_input, joined, two_downloads):
    assert main(_args(join_input, "DATACOMP*/*.tar", "out")) == 0
    assert _files(Path("out")) == _files(joined)


def test_rejoin_missing_needs_a_finished_join(join_input, two_downloads, refusal):
    assert main(_args(join_input, "DATACOMP/*.tar", "out", "--rejoin-missing")) == 2
    assert "run the join without --rejoin-missing" in refusal()
    assert not Path("out").exists()


def test_a_raw_side_without_any_of_the_uids_writes_nothing(join_input, tmp_path, refusal):
    """Every pair would be image_missing and every shard 'done': a wrong --raw, refused instead."""
    other = tmp_path / "other"
    other.mkdir()
    with (
        tarfile.open(sorted(join_input.raw.glob("*.tar"))[0]) as source,
        tarfile.open(other / "00000.tar", "w") as target,
    ):
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name.endswith(".json"):
                meta = json.loads(data)
                meta["uid"] = "f" * 32
                data = json.dumps(meta).encode()
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    out = tmp_path / "out"
    assert main(_args(join_input, f"{other}/*.tar", str(out))) == 2
    line = refusal()
    assert "has the uid of a sample in the 2 reinforced shard(s)" in line and "nothing was written" in line
    assert not out.exists()


def test_rejoin_missing_needs_the_earlier_raw_inputs(join_input, two_downloads, refusal):
    assert main(_args(join_input, "DATACOMP/*.tar", "out")) == 0
    (two_downloads / "DATACOMP" / "00001.tar").unlink()
    before = _snapshot(Path("out"))
    assert main(_args(join_input, "DATACOMP_refetch/*.tar", "out", "--rejoin-missing")) == 2
    assert "1 of them are gone (e.g. DATACOMP/00001.tar)" in refusal()
    assert _snapshot(Path("out")) == before
