"""inspect and validate read a bucket as they read a local folder (S3 served by moto on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspection import inspect, validate
from inspection.overview import load_overview

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")


def upload(endpoint: str, folder: Path, bucket: str, prefix: str) -> str:
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return f"s3://{bucket}/{prefix}"


@pytest.mark.slow
def test_validate_and_inspect_an_s3_folder_from_the_command_line(make_run, s3_endpoint: str, capsys) -> None:
    remote = upload(s3_endpoint, make_run(), "reinforced", "run")
    endpoint_flag = f"--s3_endpoint_url={s3_endpoint}"
    assert validate.main([remote, endpoint_flag]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "OK: 1 shard(s), 6 sample(s) checked, no problems"
    assert inspect.main([f"{remote}/00000000.tar", endpoint_flag]) == 0
    assert "00000000" in capsys.readouterr().out
    overview = load_overview(f"{remote}/00000000.tar", limit=2)
    assert overview.slices_source == "config"  # config.json found beside a single remote shard
    assert [s.num_views for s in overview.samples] == [3, 3]


def test_a_mistyped_flag_is_refused_not_ignored(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        validate.main(["some/folder", "--s3_endpoint_ur=http://127.0.0.1:1"])
    assert caught.value.code == 2 and "unrecognized arguments: --s3_endpoint_ur" in capsys.readouterr().err
