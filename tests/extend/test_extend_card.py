"""Grown folders as Hugging Face datasets: every caption family and teacher in the card and the loaded
rows; a bf16 run's card points `datasets` at its float32 parquet sidecars."""

from __future__ import annotations

import numpy as np
import pytest

from shards.dataset_card import CARD_FILE
from shards.reinforced import iter_shard

datasets = pytest.importorskip("datasets")


@pytest.mark.slow
def test_a_grown_v2_folder_loads_with_every_family(runs, tmp_path):
    original = runs.reinforce("a+b", ["clip-a", "clip-b"])
    grown = runs.extend(
        "a+b then coca-2", original, "--add-captioner", runs.models["coca-2"], "--caption-tag", "c2"
    )
    card = (grown / CARD_FILE).read_text()
    assert (
        f"| `syn_text_c2` | `{runs.models['coca-2']}` |" in card
        and "extended (`python -m pipeline.extend`)" in card
    )
    loaded = datasets.load_dataset(str(grown), split="train", cache_dir=str(tmp_path))
    stored = {s.key: s for s in iter_shard(str(grown / "00000000.tar"))}
    row = next(r for r in loaded if r["__key__"] in stored)
    sample = stored[row["__key__"]]
    assert row["syn.json"] == {
        "syn_text_c2": sample.syn_captions["syn_text_c2"],
        "syn_text_coca": sample.syn_captions["syn_text_coca"],
    }
    np.testing.assert_array_equal(
        np.asarray(row["npz"]["syn_text_c2_emb"], np.float32), sample.syn_emb["syn_text_c2"]
    )


@pytest.mark.slow
def test_a_bf16_folder_loads_its_parquet_sidecars(runs, tmp_path):
    source = runs.reinforce("a v2 bf16", ["clip-a"], "--layout", "v2", "--embedding-dtype", "bf16")
    grown = runs.extend("a v2 bf16 then b", source, "--add-teacher", runs.models["clip-b"])
    card = (grown / CARD_FILE).read_text()
    assert "path: ????????.parquet" in card and "cannot read" in card
    loaded = datasets.load_dataset(str(grown), split="train", cache_dir=str(tmp_path))
    stored = [s for path in sorted(grown.glob("*.tar")) for s in iter_shard(str(path))]
    assert sorted(loaded["uid"]) == sorted(s.uid for s in stored)
    assert np.asarray(loaded[0]["image_emb"]).shape[1] == stored[0].dim
