"""Token choice: open_clip's rules (min length, nucleus, forced end) with per-sample random streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from teachers.sampling import (
    UNIFORMS_PER_STEP,
    SamplingSettings,
    choose_tokens,
    sample_uniforms,
    uniform_table,
)

EOS = 3


def _logits(probs: list[float], rows: int) -> torch.Tensor:
    return torch.tensor([math.log(p) if p > 0 else -math.inf for p in probs]).repeat(rows, 1)


def _uniforms(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(
        rows, UNIFORMS_PER_STEP, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )


def _nucleus_by_sorting(logits: torch.Tensor, top_p: float, temperature: float) -> torch.Tensor:
    """The reference distribution, as open_clip's top-p filter builds it (sort, cut, then temperature)."""
    probs = logits.double().softmax(-1)
    ranked, order = probs.sort(descending=True)
    kept = torch.zeros_like(probs, dtype=torch.bool)
    kept[order] = (ranked.cumsum(-1) - ranked) < top_p
    weights = torch.where(kept, (logits.double() / temperature).exp(), 0.0)
    return weights / weights.sum()


def _frequencies(logits: torch.Tensor, settings: SamplingSettings, draws: int, seed: int = 0) -> torch.Tensor:
    rows = logits.expand(draws, -1)
    chosen = choose_tokens(rows, 10, _uniforms(draws, seed), EOS, settings)
    return torch.bincount(chosen, minlength=logits.shape[-1]).double() / draws


def test_uniform_streams_depend_only_on_seed_and_sample() -> None:
    a = sample_uniforms(7, 0, 30)
    assert np.array_equal(a, sample_uniforms(7, 0, 30))
    assert not np.array_equal(a, sample_uniforms(7, 1, 30))
    assert not np.array_equal(a, sample_uniforms(8, 0, 30))
    assert np.array_equal(sample_uniforms(7, 0, 10), a[:10])  # a prefix, whatever the length asked
    assert a.dtype == np.float64 and (a >= 0).all() and (a < 1).all()
    with pytest.raises(ValueError):
        sample_uniforms(-1, 0, 3)


def test_uniform_table_keeps_one_stream_per_sample_and_the_version_1_column() -> None:
    table = uniform_table([7, 9], 2, 30, torch.device("cpu"))
    assert table.shape == (4, UNIFORMS_PER_STEP, 30) and table.dtype == torch.float64
    # Column 0 holds each stream's first uniforms, one per position (what top-k and version 1 use).
    assert np.array_equal(table[3, 0].numpy(), sample_uniforms(9, 1, 30))
    assert np.array_equal(table[1].flatten().numpy(), sample_uniforms(7, 1, 30 * UNIFORMS_PER_STEP))


@pytest.mark.parametrize(
    ("scale", "top_p", "temperature"),
    [(3.0, 0.9, 1.0), (0.3, 0.9, 1.0), (2.0, 0.5, 0.7), (1.0, 0.9, 1.5), (0.2, 0.1, 1.0)],
)
def test_draws_follow_the_top_p_distribution(scale: float, top_p: float, temperature: float) -> None:
    """Peaked and flat rows, with temperature, and a small nucleus of a flat row (where most rows run
    out of proposals and take the exact fallback): counts fit open_clip's filtered distribution."""
    logits = torch.randn(1, 120, generator=torch.Generator().manual_seed(int(scale * 10))) * scale
    settings = SamplingSettings(top_p=top_p, temperature=temperature)
    draws = 30_000
    expected = _nucleus_by_sorting(logits[0], top_p, temperature) * draws
    counts = _frequencies(logits, settings, draws) * draws
    inside = expected > 0
    assert counts[~inside].sum() == 0  # nothing outside the nucleus, ever
    # Pearson's chi-square against its degrees of freedom, with a six-sigma margin.
    chi_square = float(((counts[inside] - expected[inside]) ** 2 / expected[inside]).sum())
    freedom = int(inside.sum()) - 1
    assert chi_square < freedom + 6 * math.sqrt(2 * freedom)


def test_the_nucleus_is_the_smallest_prefix_reaching_top_p() -> None:
    # Sorted: 0.5, 0.3, 0.15, 0.05. The first three reach 0.95 >= 0.9; token 2 (0.05) is cut.
    got = _frequencies(_logits([0.3, 0.15, 0.05, 0.0, 0.5], 1), SamplingSettings(top_p=0.9), 20_000)
    expected = torch.tensor([0.3, 0.15, 0.0, 0.0, 0.5], dtype=torch.float64) / 0.95
    assert got[2] == 0 and got[3] == 0
    assert torch.allclose(got, expected, atol=0.015)


def test_a_tie_at_the_boundary_is_kept_whole() -> None:
    # Both 0.3 tokens have 0.4 < 0.5 of the mass strictly above them.
    got = _frequencies(_logits([0.3, 0.4, 0.3], 1), SamplingSettings(top_p=0.5), 20_000)
    assert torch.allclose(got, torch.tensor([0.3, 0.4, 0.3], dtype=torch.float64), atol=0.015)


def test_temperature_applies_after_filtering() -> None:
    hot = SamplingSettings(top_p=0.8, temperature=2.0)
    got = _frequencies(_logits([0.6, 0.3, 0.1], 1), hot, 20_000)
    weights = torch.tensor([0.6, 0.3]).sqrt()  # p^(1/T) among the kept tokens only
    assert got[2] == 0
    assert got[0].item() == pytest.approx(float(weights[0] / weights.sum()), abs=0.015)


def test_end_token_is_banned_below_min_length_and_forced_at_the_end() -> None:
    logits = _logits([0.05, 0.05, 0.1, 0.8], 4)  # EOS (3) is the favourite
    uniforms = torch.full((4, UNIFORMS_PER_STEP), 0.5, dtype=torch.float64)
    greedy = SamplingSettings(top_k=1, seq_len=10, min_seq_len=5)
    assert set(choose_tokens(logits, 4, uniforms, EOS, greedy).tolist()) == {2}
    assert set(choose_tokens(logits, 5, uniforms, EOS, greedy).tolist()) == {EOS}
    nucleus = SamplingSettings(top_p=0.99, seq_len=10, min_seq_len=5)
    assert EOS not in choose_tokens(logits, 4, _uniforms(4), EOS, nucleus).tolist()


@pytest.mark.parametrize(
    "settings", [SamplingSettings(), SamplingSettings(top_p=0.3, temperature=0.7), SamplingSettings(top_k=40)]
)
@pytest.mark.parametrize("scale", [1.0, 6.0])
def test_a_rows_token_ignores_other_rows(settings: SamplingSettings, scale: float) -> None:
    """Bit-level row independence: a row sampled alone, or among any number of others, gets the same
    token (flat and peaked rows over the real 49,408-token vocabulary)."""
    generator = torch.Generator().manual_seed(int(scale))
    logits = torch.randn(24, 49408, generator=generator) * scale
    uniforms = torch.rand(24, UNIFORMS_PER_STEP, dtype=torch.float64, generator=generator)
    together = choose_tokens(logits, 6, uniforms, EOS, settings)
    for start, count in [(0, 1), (5, 1), (3, 2), (7, 3), (1, 5), (11, 13)]:
        part = slice(start, start + count)
        assert torch.equal(choose_tokens(logits[part], 6, uniforms[part], EOS, settings), together[part])


@pytest.mark.parametrize(
    "kwargs",
    [{"top_p": 0.0}, {"top_p": 1.5}, {"top_k": 0}, {"temperature": 0.0}, {"seq_len": 5, "min_seq_len": 5}],
)
def test_invalid_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SamplingSettings(**kwargs)


def test_describe_names_the_sampler_version() -> None:
    assert SamplingSettings().describe() == {
        "method": "top_p",
        "top_p": 0.9,
        "temperature": 1.0,
        "seq_len": 30,
        "min_seq_len": 5,
        "sampler_version": 2,
    }
