"""The live progress line counts committed shards as they appear; the summary says what happened."""

from __future__ import annotations

import io
import time

from pipeline.progress import ShardProgress, summary_table
from shards.run_folder import ShardStats, summarize_run, write_shard_outcome


def test_progress_line_follows_committed_shards(tmp_path):
    stream = io.StringIO()
    shards = ["00000000", "00000001"]
    with ShardProgress(str(tmp_path), shards, label="extending", interval=0.02, stream=stream):
        write_shard_outcome(str(tmp_path), ShardStats("00000000", "in/00000000.tar", 7, 5), [])
        deadline = time.monotonic() + 10
        while "5 samples" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "1/2" in stream.getvalue() and "5 samples" in stream.getvalue()
        assert stream.getvalue().lstrip("\r").startswith("extending:")  # the job's own word
    assert "2/2" not in stream.getvalue()  # the second shard never committed


def test_summary_table_lists_skips_missing_shards_and_output():
    stats = {
        "00000000": ShardStats("00000000", "a", 10, 8, {"image_undecodable": 2}, {}, {"caption": 3.0}),
        "00000001": ShardStats("00000001", "b", 0, 0, {}, {"empty_tar": 1}, {"read": 1.0}),
    }
    table = summary_table(summarize_run(["00000000", "00000001", "00000002"], stats), "out/x", 4.0, 8)
    for fragment in (
        "2 / 3",
        "skipped: image_undecodable  2",
        "shard damage: empty_tar",
        "shards not done",
        "00000002",
        "2.00 samples/s",
        "time in caption",
        "out/x",
    ):
        assert fragment in table, fragment
