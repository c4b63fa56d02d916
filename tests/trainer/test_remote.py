"""Training reads shards from and writes its run to a bucket (S3 served by moto on loopback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import ShardSpec, build_shards
from trainer import train

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")


@pytest.mark.slow
def test_training_streams_shards_from_s3_and_writes_the_run_there(s3_endpoint: str, tmp_path: Path) -> None:
    local = tmp_path / "data"
    build_shards(local, ShardSpec(shards=2, per_shard=4))
    (local / "config.json").write_text(
        json.dumps({"teachers": [{"dim": 8, "kd_logit_scale": 100.0}, {"dim": 12, "kd_logit_scale": 50.0}]})
    )
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="bucket")
    for path in sorted(local.iterdir()):
        client.upload_file(str(path), "bucket", f"data/{path.name}")

    argv = [
        "--data", "s3://bucket/data/*.tar", "--model", "tiny", "--steps", "4", "--batch-size", "2",
        "--workers", "2", "--threads", "1", "--output", "s3://bucket/run",
        f"--s3_endpoint_url={s3_endpoint}", "--s3_region_name=us-east-1",
    ]  # fmt: skip
    train.main(argv)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="bucket", Prefix="run/")["Contents"]}
    assert {"run/log.jsonl", "run/loss.png", "run/train_config.json"} <= keys
    assert "run/checkpoints/step_00000004/open_clip_model.safetensors" in keys
    log = client.get_object(Bucket="bucket", Key="run/log.jsonl")["Body"].read().decode()
    assert len(log.splitlines()) == 4
    # Running the finished command again resumes at its last step and has nothing left to do.
    train.main(argv)
    log_again = client.get_object(Bucket="bucket", Key="run/log.jsonl")["Body"].read().decode()
    assert log_again == log
