"""The joined folder as a Hugging Face dataset: its card, and `datasets` loading it from local files."""

from __future__ import annotations

import json

import pytest

from shards.dataset_card import CARD_FILE

datasets = pytest.importorskip("datasets")


def test_the_joined_folder_loads_as_a_dataset_without_its_refetch_list(joined, join_input, tmp_path):
    card = (joined / CARD_FILE).read_text()
    summary = json.loads((joined / "summary.json").read_text())
    assert "joined with raw images by uid" in card
    for reason, uids in join_input.expected.items():
        assert f"| `{reason}` | {len(uids)} |" in card
    assert (joined / "refetch.parquet").exists()
    loaded = datasets.load_dataset(str(joined), split="train", cache_dir=str(tmp_path))
    assert loaded.num_rows == summary["num_written"]
    written = {uid for uids in join_input.shard_order.values() for uid in uids} - {
        uid for uids in join_input.expected.values() for uid in uids
    }
    assert set(loaded["__key__"]) == written
    row = loaded[0]
    assert row["jpg"] is not None and row["txt"] == join_input.originals[row["__key__"]].caption
