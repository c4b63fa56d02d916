"""`--keep-uids`: a student trains on the samples a uid list names (a query over the sidecar scores)."""

from __future__ import annotations

import json

import open_clip
import pandas as pd
import pytest

from trainer import train
from trainer.data import ReinforcedStream, list_shards
from trainer.settings import resolve_data_settings
from trainer.students import TINY_MODEL_CFG

DIMS, SCALES = (8, 12), (100.0, 50.0)


def test_the_stream_yields_the_listed_samples_only_and_each_once_an_epoch(make_shards):
    folder, samples = make_shards(shards=2, per_shard=6)
    listed = frozenset(s.key for s in samples[1::3])
    stream = ReinforcedStream(
        list_shards([str(folder / "*.tar")]),
        resolve_data_settings(None, teacher_dims=DIMS, kd_logit_scales=SCALES),
        image_size=64,
        tokenizer=open_clip.SimpleTokenizer(context_length=TINY_MODEL_CFG["text_cfg"]["context_length"]),
        batch_size=1,
        epochs=2,
        keep_uids=listed | {"not-in-the-data"},
    )
    batches = list(stream)
    keys = [batch.keys[0] for batch in batches]
    assert set(keys) == listed and len(keys) == 2 * len(listed)
    assert all(not batch.skipped for batch in batches)  # left out is not skipped


@pytest.mark.slow
def test_the_flag_trains_on_the_list_and_says_so_when_it_is_unusable(make_shards, tmp_path, capsys):
    folder, samples = make_shards(shards=1, per_shard=8)
    pd.DataFrame({"uid": [s.key for s in samples[:4]]}).to_parquet(tmp_path / "keep.parquet")
    pd.DataFrame({"key": ["x"]}).to_parquet(tmp_path / "no-uid.parquet")
    flags = [
        "--data", str(folder / "*.tar"), "--model", "tiny", "--steps", "2", "--batch-size", "4",
        "--workers", "1", "--teacher-dims", "8,12", "--kd-logit-scales", "100,50", "--threads", "1",
    ]  # fmt: skip
    run = tmp_path / "run"
    summary = train.train(
        train.parse_args([*flags, "--output", str(run), "--keep-uids", str(tmp_path / "keep.parquet")])
    )
    assert summary["steps"] == 2
    recorded = json.loads((run / train.TRAIN_CONFIG_FILE).read_text())["run"]
    assert recorded["keep_uids"] == str(tmp_path / "keep.parquet")  # part of the run: a resume must match
    with pytest.raises(SystemExit) as exit_info:
        train.main(
            [*flags, "--output", str(tmp_path / "other"), "--keep-uids", str(tmp_path / "no-uid.parquet")]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--keep-uids" in err[-1] and "has no column uid" in err[-1]
