"""Token choice: open_clip's rules (min length, nucleus, forced end) with per-sample random streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from teachers.sampling import SamplingSettings, choose_tokens, sample_uniforms

EOS = 3


def _logits(probs: list[float], rows: int) -> torch.Tensor:
    return torch.tensor([math.log(p) if p > 0 else -math.inf for p in probs]).repeat(rows, 1)


def test_uniform_streams_depend_only_on_seed_and_sample() -> None:
    a = sample_uniforms(7, 0, 30)
    assert np.array_equal(a, sample_uniforms(7, 0, 30))
    assert not np.array_equal(a, sample_uniforms(7, 1, 30))
    assert not np.array_equal(a, sample_uniforms(8, 0, 30))
    assert np.array_equal(sample_uniforms(7, 0, 10), a[:10])  # a prefix, whatever the length asked
    assert a.dtype == np.float64 and (a >= 0).all() and (a < 1).all()
    with pytest.raises(ValueError):
        sample_uniforms(-1, 0, 3)


def test_nucleus_keeps_the_smallest_prefix_reaching_top_p() -> None:
    # Sorted: 0.5, 0.3, 0.15, 0.05. The first three reach 0.95 >= 0.9; token 2 (0.05) is cut.
    probs = [0.3, 0.15, 0.05, 0.0, 0.5]
    uniforms = torch.linspace(0, 1, 2001, dtype=torch.float64)[:-1]
    chosen = choose_tokens(_logits(probs, len(uniforms)), 10, uniforms, EOS, SamplingSettings(top_p=0.9))
    counts = torch.bincount(chosen, minlength=5).double() / len(uniforms)
    assert counts[2] == 0 and counts[3] == 0
    expected = torch.tensor([0.3, 0.15, 0.0, 0.0, 0.5], dtype=torch.float64) / 0.95
    assert torch.allclose(counts, expected, atol=2e-3)


def test_flat_distributions_take_the_full_sort_path_with_the_same_rule() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5000, generator=generator) * 0.01  # top 256 tokens hold far less than 0.9
    uniforms = torch.rand(6, dtype=torch.float64, generator=generator)
    chosen = choose_tokens(logits, 10, uniforms, EOS, SamplingSettings(top_p=0.9))
    probs = logits.softmax(-1)
    for row, token in enumerate(chosen.tolist()):
        above = probs[row][probs[row] > probs[row, token]].sum()
        assert above < 0.9  # the token is inside the nucleus


def test_temperature_applies_after_filtering() -> None:
    probs = [0.6, 0.3, 0.1]
    uniforms = torch.linspace(0, 1, 4001, dtype=torch.float64)[:-1]
    hot = SamplingSettings(top_p=0.8, temperature=2.0)
    counts = torch.bincount(choose_tokens(_logits(probs, len(uniforms)), 10, uniforms, 99, hot), minlength=3)
    weights = torch.tensor([0.6, 0.3]).sqrt()  # p^(1/T) among the kept tokens only
    assert counts[2] == 0
    assert counts[0].item() / len(uniforms) == pytest.approx(float(weights[0] / weights.sum()), abs=2e-3)


def test_end_token_is_banned_below_min_length_and_forced_at_the_end() -> None:
    logits = _logits([0.05, 0.05, 0.1, 0.8], 4)  # EOS (3) is the favourite
    uniforms = torch.full((4,), 0.5, dtype=torch.float64)
    greedy = SamplingSettings(top_k=1, seq_len=10, min_seq_len=5)
    assert set(choose_tokens(logits, 4, uniforms, EOS, greedy).tolist()) == {2}
    assert set(choose_tokens(logits, 5, uniforms, EOS, greedy).tolist()) == {EOS}


def test_a_rows_token_ignores_other_rows() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 3000, generator=generator) * 3
    uniforms = torch.rand(8, dtype=torch.float64, generator=generator)
    settings = SamplingSettings()
    together = choose_tokens(logits, 6, uniforms, EOS, settings)
    alone = torch.cat(
        [choose_tokens(logits[i : i + 1], 6, uniforms[i : i + 1], EOS, settings) for i in range(8)]
    )
    assert torch.equal(together, alone)


@pytest.mark.parametrize(
    "kwargs",
    [{"top_p": 0.0}, {"top_p": 1.5}, {"top_k": 0}, {"temperature": 0.0}, {"seq_len": 5, "min_seq_len": 5}],
)
def test_invalid_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SamplingSettings(**kwargs)
