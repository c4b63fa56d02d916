"""inspect and validate read a bucket as they read a local folder (S3 served by moto on loopback)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import shard_report, validate

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server on loopback, with Beam's FileSystems pointed at it for this test only."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the moto server did not start") from None
                time.sleep(0.1)
        for name, value in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        previous = FileSystems._pipeline_options
        FileSystems.set_options(
            PipelineOptions(
                [
                    f"--s3_endpoint_url={endpoint}",
                    "--s3_access_key_id=test",
                    "--s3_secret_access_key=test",
                    "--s3_region_name=us-east-1",
                ]
            )
        )
        try:
            yield endpoint
        finally:
            FileSystems.set_options(previous)
    finally:
        server.terminate()
        server.wait(timeout=10)


def upload(endpoint: str, folder: Path, bucket: str, prefix: str) -> str:
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return f"s3://{bucket}/{prefix}"


def test_validate_and_inspect_an_s3_folder(make_run, s3_endpoint: str) -> None:
    remote = upload(s3_endpoint, make_run(), "reinforced", "run")
    problems: list[validate.Problem] = []
    outcome = validate.validate(remote, report=problems.append)
    assert problems == [] and outcome.verdict() == "OK: 1 shard(s), 6 sample(s) checked, no problems"
    overview = shard_report.load_overview(f"{remote}/00000000.tar", limit=2)
    assert overview.slices_source == "config"  # config.json found beside a single remote shard
    assert [s.num_views for s in overview.samples] == [3, 3]
