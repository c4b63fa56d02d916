"""Shared test settings: offline hubs, bundled sample shards, tiny checkpoints built once per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def sample_raw_dir() -> Path:
    """The bundled raw DataComp-layout shards (contract §1)."""
    return REPO / "samples" / "raw"


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """name -> `local-dir:` spec of the tiny seeded teachers and captioner."""
    from teachers.tiny import ensure_tiny_checkpoints

    return ensure_tiny_checkpoints(tmp_path_factory.mktemp("tiny-checkpoints"))


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server on loopback, credentials in the environment as a user would have them.

    The CLIs set this process's filesystem options (`--s3_endpoint_url`); they are restored after.
    """
    from apache_beam.io.filesystems import FileSystems

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    previous = FileSystems._pipeline_options
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
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(name, "test")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield f"http://127.0.0.1:{port}"
    finally:
        FileSystems.set_options(previous)
        server.terminate()
        server.wait(timeout=10)
