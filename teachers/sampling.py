"""Token choice for caption decoding: open_clip's CoCa `generate` rules, with per-sample random streams.

The rules are those of open_clip's `generate` (min-length EOS ban, then top-k or nucleus filtering,
then temperature, EOS forced at the last position). Randomness differs on purpose: instead of the
global RNG, every (image seed, sample index) owns a fixed stream of uniforms, and a token is drawn by
inverting the row's CDF. A caption therefore depends only on its image, its seed and its index, never
on what else shares the batch or on which worker runs it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Nucleus sampling by default (contract §4); `top_k` switches to top-k (1 = greedy)."""

    top_p: float = 0.9
    top_k: int | None = None
    temperature: float = 1.0
    seq_len: int = 30  # total tokens including the start and end tokens, as open_clip counts
    min_seq_len: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 1 <= self.min_seq_len < self.seq_len:
            raise ValueError(f"need 1 <= min_seq_len < seq_len, got {self.min_seq_len}, {self.seq_len}")

    def describe(self) -> dict[str, object]:
        if self.top_k is not None:
            method: dict[str, object] = {"method": "top_k", "top_k": self.top_k}
        else:
            method = {"method": "top_p", "top_p": self.top_p}
        return {
            **method,
            "temperature": self.temperature,
            "seq_len": self.seq_len,
            "min_seq_len": self.min_seq_len,
        }


def sample_uniforms(seed: int, sample_index: int, count: int) -> np.ndarray:
    """`count` uniforms in [0, 1) that depend only on (seed, sample_index).

    Drawn from PCG64's raw output, whose stream NumPy keeps stable across versions (unlike the
    convenience methods of `Generator`), so stored captions can be regenerated later.
    """
    if seed < 0 or sample_index < 0:
        raise ValueError(f"seeds must be non-negative integers, got {seed}, {sample_index}")
    bits = np.random.PCG64(np.random.SeedSequence([seed, sample_index])).random_raw(count)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# Nucleus candidates are first looked for among this many most likely tokens; only rows whose top
# tokens hold less than top_p of the mass (flat distributions) pay for a full sort of the vocabulary.
_CANDIDATES = 256


def _draw(
    logits: torch.Tensor,
    indices: torch.Tensor,
    probs: torch.Tensor | None,
    uniforms: torch.Tensor,
    settings: SamplingSettings,
) -> torch.Tensor:
    """Draws one token per row among candidates given in descending probability.

    With `probs` (nucleus), a candidate is kept while the mass ranked above it is below top_p, so the
    nucleus is the smallest prefix holding at least top_p and is never empty. The draw inverts the
    CDF of the kept candidates (temperature applied after filtering, as open_clip does).
    """
    if probs is not None:
        kept = (probs.cumsum(dim=-1) - probs) < settings.top_p
        kept[:, 0] = True
        scaled = logits.gather(1, indices).masked_fill(~kept, -float("inf"))
    else:
        scaled = logits.gather(1, indices)
    cdf = (scaled / settings.temperature).softmax(dim=-1).double().cumsum(dim=-1)
    target = (uniforms * cdf[:, -1]).unsqueeze(1)
    # The first position whose CDF exceeds the target always has non-zero probability.
    position = torch.searchsorted(cdf, target, right=True).clamp_(max=indices.shape[1] - 1)
    return indices.gather(1, position).squeeze(1)


def choose_tokens(
    logits: torch.Tensor, cur_len: int, uniforms: torch.Tensor, eos_id: int, settings: SamplingSettings
) -> torch.Tensor:
    """Next token per row: open_clip's EOS ban below the minimum length, then top-k or nucleus.

    `cur_len` counts the tokens so far including the start token; `uniforms` is float64 [N], each
    row's draw for this step. Every operation is row-wise, so a row's token depends on that row only.
    """
    logits = logits.float()
    if cur_len < settings.min_seq_len:
        logits = logits.clone()
        logits[:, eos_id] = -float("inf")
    uniforms = uniforms.double()
    if settings.top_k is not None:
        indices = torch.topk(logits, min(settings.top_k, logits.shape[-1]), dim=-1).indices
        return _draw(logits, indices, None, uniforms, settings)
    probs = logits.softmax(dim=-1)
    values, indices = torch.topk(probs, min(_CANDIDATES, probs.shape[-1]), dim=-1)
    short = values.sum(dim=-1) < settings.top_p
    if not bool(short.any()):
        return _draw(logits, indices, values, uniforms, settings)
    tokens = torch.empty(logits.shape[0], dtype=torch.long)
    enough = ~short
    if bool(enough.any()):
        tokens[enough] = _draw(logits[enough], indices[enough], values[enough], uniforms[enough], settings)
    values, indices = torch.sort(probs[short], dim=-1, descending=True)
    tokens[short] = _draw(logits[short], indices, values, uniforms[short], settings)
    return tokens
