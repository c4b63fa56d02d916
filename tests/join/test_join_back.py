"""Our own output joins back: the public-layout half of a run (no `jpg`, no `txt`) joined with the very
raw shards it was made from gives every sample back, byte for byte (contract §6)."""

from __future__ import annotations

import json

import pytest

from pipeline.join import main


@pytest.mark.slow
def test_our_public_half_joins_back_whole_and_byte_identical(own_run, sample_raw_dir, tmp_path, capsys):
    out = tmp_path / "joined"
    args = ["--reinforced", f"{own_run.public}/*.tar", "--raw", f"{sample_raw_dir}/*.tar"]
    assert main([*args, "--output", str(out), "--no-progress"]) == 0
    # The bundled raw json's sha256 is the original download's, not the stored bytes': only the
    # job's own image_sha256 pairs them.
    summary = json.loads((out / "summary.json").read_text())
    reinforced = json.loads((own_run.reinforced / "summary.json").read_text())
    assert summary["num_read"] == summary["num_written"] == reinforced["num_written"] == 32
    assert summary["skipped"] == {} and summary["matched_by"] == {"image_sha256": 32}
    assert "image_sha256 32" in capsys.readouterr().out
    names = sorted(p.name for p in own_run.reinforced.glob("*") if p.suffix in (".tar", ".parquet"))
    names += [*sorted(p.name for p in own_run.reinforced.glob("*_errors.jsonl")), "manifest.jsonl"]
    assert len(names) == 3 * 3 + 1
    for name in names:
        assert (out / name).read_bytes() == (own_run.reinforced / name).read_bytes(), name
