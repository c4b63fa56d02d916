"""Seeds are stable across processes and versions, and distinct for distinct (seed, uid, view)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter, derive_seed, encode_param_aug, view_rng
from transforms.seeding import draw_int, draw_unit

REPO = Path(__file__).resolve().parents[2]


def test_golden_seeds() -> None:
    assert derive_seed(0) == 6123453654292721103
    assert derive_seed(2024, "abc", 3) == 7158078733823162858
    assert 0 <= derive_seed(2**80, "é" * 100, -5) < 2**63


def test_parts_are_typed_and_delimited() -> None:
    seeds = {
        derive_seed(*parts)
        for parts in [("ab", "c"), ("a", "bc"), ("abc",), (1, "1"), ("1", 1), (1, 1), (11,)]
    }
    assert len(seeds) == 7
    for bad in (True, 1.5, None, b"x"):
        with pytest.raises(TypeError):
            derive_seed(bad)  # type: ignore[arg-type]


def test_views_are_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "from transforms import *; a = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION); "
        "print([encode_param_aug(a.sample(view_rng(11, 'f' * 32, k), (500, 375))) for k in range(30)])"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    other = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    here = [encode_param_aug(augmenter.sample(view_rng(11, "f" * 32, k), (500, 375))) for k in range(30)]
    assert other.stdout.strip() == str(here)


def test_draws_are_in_range_and_cover_it() -> None:
    rng = view_rng(1, "draws", 0)
    ints = [draw_int(rng, 3, 10) for _ in range(2000)]
    assert set(ints) == set(range(3, 10))
    units = [draw_unit(rng) for _ in range(2000)]
    assert 0.0 <= min(units) < 0.01 and 0.99 < max(units) < 1.0
    with pytest.raises(ValueError):
        draw_int(rng, 5, 5)
