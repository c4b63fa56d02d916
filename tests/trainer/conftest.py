"""Reinforced shards in the public DataCompDR layouts for trainer tests (built by tests.support)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shards.reinforced import ReinforcedSample
from tests.support import ShardSpec, build_shards


@pytest.fixture
def make_shards(tmp_path: Path) -> Callable[..., tuple[Path, list[ReinforcedSample]]]:
    """Build identity shards in a fresh folder: `make_shards(name, **ShardSpec fields)`."""

    def build(name: str = "data", **fields) -> tuple[Path, list[ReinforcedSample]]:
        spec = ShardSpec(**fields)
        folder = tmp_path / name
        return folder, build_shards(folder, spec)

    return build
