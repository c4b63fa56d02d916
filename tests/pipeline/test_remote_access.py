"""A gs:// or s3:// path without credentials or without an endpoint stops every CLI within seconds,
naming what to set. Loopback only: the S3 endpoint is a closed port on 127.0.0.1, and no cloud
metadata server is ever asked (no credentials file, no cloud firmware, IMDS disabled)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inspection import inspect, validate
from pipeline.reinforce import main as reinforce
from shards import remote_access
from trainer import evaluate, train

# Not a speed target: Beam's own retries took 2 (gs://) to 8 (s3://) minutes before saying anything.
_FAST_S = 20.0


@pytest.fixture
def no_cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A machine with no cloud credentials anywhere, and nothing that looks like a cloud VM."""
    from apache_beam.io.filesystems import FileSystems

    for name in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "GOOGLE_APPLICATION_CREDENTIALS",
        "GCE_METADATA_HOST", "GCE_METADATA_IP", "K_SERVICE", "GAE_ENV", "STORAGE_EMULATOR_HOST",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    monkeypatch.setattr(remote_access, "_DMI", tmp_path / "no-dmi")  # not a GCE or EC2 machine
    previous = FileSystems._pipeline_options  # the CLIs set this process's filesystem options
    yield
    FileSystems.set_options(previous)


@pytest.fixture
def closed_endpoint() -> str:
    """http://127.0.0.1:PORT where nothing listens (the port was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def exit_code(call: Callable[[], object]) -> int:
    try:
        result = call()
    except SystemExit as stop:
        return int(stop.code)
    return int(result or 0)


def test_s3_without_credentials_and_endpoint_names_both(no_cloud, closed_endpoint, capsys):
    started = time.monotonic()
    code = exit_code(lambda: validate.main(["s3://bucket/run", f"--s3_endpoint_url={closed_endpoint}"]))
    assert time.monotonic() - started < _FAST_S
    err = capsys.readouterr().err
    assert code == 2
    assert "no credentials for s3://bucket/run" in err and "--s3_access_key_id" in err
    assert f"endpoint {closed_endpoint.removeprefix('http://')} unreachable for s3://bucket/run" in err


def test_s3_with_credentials_but_a_closed_endpoint(no_cloud, closed_endpoint, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    started = time.monotonic()
    code = exit_code(
        lambda: inspect.main(["s3://bucket/run/00000000.tar", f"--s3_endpoint_url={closed_endpoint}"])
    )
    assert time.monotonic() - started < _FAST_S
    err = capsys.readouterr().err
    assert code == 2 and "unreachable for s3://bucket/run/00000000.tar" in err and "--s3_endpoint_url" in err
    assert "no credentials" not in err


def test_s3_credentials_as_flags_and_endpoint_from_the_environment_count(
    no_cloud, closed_endpoint, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_endpoint)  # boto3's own setting, honoured as well
    with pytest.raises(remote_access.RemoteAccessError) as err:
        remote_access.check_remote_access(
            ["s3://bucket/x"], ["--s3_access_key_id=a", "--s3_secret_access_key=b"]
        )
    assert "no credentials" not in str(err.value)
    assert f"{closed_endpoint.removeprefix('http://')} unreachable" in str(err.value)


def test_gs_without_credentials_fails_before_any_network(no_cloud, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError(f"the check tried to connect: {args}")

    monkeypatch.setattr(socket, "create_connection", no_network)
    started = time.monotonic()
    code = exit_code(lambda: validate.main(["gs://bucket/run"]))
    assert time.monotonic() - started < _FAST_S
    err = capsys.readouterr().err
    assert code == 2
    assert "no credentials for gs://bucket/run" in err and "GOOGLE_APPLICATION_CREDENTIALS" in err


@pytest.mark.parametrize(
    "run",
    [
        lambda url, ckpt: reinforce([
            "--input", "s3://raw/*.tar", "--output", "/tmp/never-written", "--preset", "tiny",
            "--teachers", ckpt["clip-a"], "--captioner", ckpt["coca"], f"--s3_endpoint_url={url}",
        ]),
        lambda url, ckpt: train.main([
            "--data", "s3://data/*.tar", "--model", "tiny", "--steps", "1", "--batch-size", "2",
                "--output", "/tmp/never-written",
            f"--s3_endpoint_url={url}",
        ]),
        lambda url, ckpt: evaluate.main([
            "--checkpoint", "tiny", "--data", "s3://heldout/*.tar", f"--s3_endpoint_url={url}",
        ]),
    ],
    ids=["reinforce", "train", "evaluate"],
)  # fmt: skip
def test_every_cli_stops_at_once(no_cloud, closed_endpoint, tiny_checkpoints, run, capsys):
    started = time.monotonic()
    code = exit_code(lambda: run(closed_endpoint, tiny_checkpoints))
    assert time.monotonic() - started < _FAST_S
    assert code == 2
    err = capsys.readouterr().err
    assert "no credentials for s3://" in err and "unreachable" in err
    assert not Path("/tmp/never-written").exists()
