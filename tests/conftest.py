"""Shared test settings: offline hubs, bundled sample shards, tiny checkpoints built once per session."""

from __future__ import annotations

import os
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
