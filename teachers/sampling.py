"""Token choice for caption decoding: open_clip's CoCa `generate` rules, with per-sample random streams.

The rules are those of open_clip's `generate` (min-length EOS ban, then top-k or nucleus filtering,
then temperature, EOS forced at the last position). Randomness differs on purpose: instead of the
global RNG, every (image seed, sample index) owns a fixed stream of uniforms, and a token is drawn by
inverting the CDF of the row's kept tokens with that step's uniform. A caption therefore depends only
on its image, its seed and its index, never on what else shares the batch or on which worker runs it.

Sampler versions (`describe()["sampler_version"]`, recorded in config.json):
- 1: the kept tokens' CDF ran in descending probability order, which needed the row's vocabulary
  sorted at every step whenever the nucleus was large.
- 2 (current): the same nucleus (the smallest set of most likely tokens holding at least top_p of the
  mass; among equally likely tokens the lower id ranks first), found without sorting the vocabulary,
  and its CDF runs in vocabulary order. Each token is drawn with the same probability as in
  version 1, but a given uniform selects another token, so version 2 does not regenerate version-1
  captions. Top-k draws (and so greedy decoding) are unchanged from version 1.

Version 2 finds the nucleus with a histogram instead of a sort: each token's log-probability gap to
the row's best token is binned (`_BINS_PER_NAT` bins per nat); the bins' cumulative mass names the
one bin where the nucleus ends; every token above it is in, every token below it out, and only the
tokens of that bin (a handful for a peaked row, a few hundred for a flat one) are sorted. The draw
sums the kept weights in blocks of `_BLOCK` tokens, finds the block, then the token inside it. All of
it runs on the logits' device with one host synchronisation per step, whatever the number of rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

SAMPLER_VERSION = 2


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
            "sampler_version": SAMPLER_VERSION,
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


def uniform_table(seeds: Sequence[int], num_samples: int, count: int, device: torch.device) -> torch.Tensor:
    """Every row's uniforms for a whole decoding, float64 [len(seeds) * num_samples, count], image-major,
    made once per batch and moved to `device` in one copy."""
    table = np.stack([sample_uniforms(seed, s, count) for seed in seeds for s in range(num_samples)])
    return torch.from_numpy(table).to(device)


# Histogram resolution of the nucleus search, in bins per nat of log-probability below the row's best
# token; gaps beyond _BINS / _BINS_PER_NAT nats share one last bin. A flat row's crossing bin then holds
# a few hundred tokens, a peaked row's a handful.
_BINS_PER_NAT = 64
_BINS = 1024
# Tokens per block of the two-level CDF inversion.
_BLOCK = 256


def _draw_in_blocks(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverts each row's CDF of non-negative `weights` [N, V] (vocabulary order) at `uniforms` [N].

    A row's block sums pick the block, that block's cumulative sum the token; every reduction runs
    along the row, so a row's token depends on that row only.
    """
    rows, vocab = weights.shape
    blocks = -(-vocab // _BLOCK)
    if blocks * _BLOCK != vocab:
        weights = F.pad(weights, (0, blocks * _BLOCK - vocab))
    grouped = weights.view(rows, blocks, _BLOCK)
    block_cdf = grouped.sum(dim=-1).double().cumsum(dim=-1)
    target = uniforms * block_cdf[:, -1]
    # The first block whose CDF exceeds the target holds mass; in it, the first such token does.
    block = torch.searchsorted(block_cdf, target.unsqueeze(1), right=True).clamp_(max=blocks - 1)
    below = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp_(min=0)), 0.0)
    inside = grouped.gather(1, block.unsqueeze(2).expand(rows, 1, _BLOCK)).squeeze(1)
    inside_cdf = inside.double().cumsum(dim=-1)
    position = torch.searchsorted(inside_cdf, target.unsqueeze(1) - below, right=True)
    # Block sums and in-block sums round differently; never step past the block's last weighted token.
    positions = torch.arange(_BLOCK, device=weights.device)
    last = torch.where(inside > 0, positions, 0).amax(dim=-1, keepdim=True)
    return (block * _BLOCK + torch.minimum(position, last)).squeeze(1)


def _nucleus_weights(logits: torch.Tensor, top_p: float, temperature: float) -> torch.Tensor:
    """Each token's draw weight: its probability at the temperature inside the nucleus, 0 outside it.

    Exponentials come from softmax only: its kernel treats every row alike, while elementwise `exp`
    rounds differently where a thread's share of the tensor starts or ends, which depends on the
    number of rows.
    """
    rows, _ = logits.shape
    probs = logits.softmax(dim=-1)
    draw = probs if temperature == 1.0 else (logits / temperature).softmax(dim=-1)
    if top_p >= 1.0:
        return draw
    # Bin of every token, numbered across rows (row r owns bins r*(_BINS+1) ...) so that one bincount
    # fills every row's histogram: 64*(top - logit) rounded down, the last bin also taking -inf and NaN.
    top = logits.amax(dim=-1, keepdim=True)
    offsets = torch.arange(rows, device=logits.device, dtype=logits.dtype).mul_(_BINS + 1).unsqueeze(1)
    bins = torch.add(top * _BINS_PER_NAT + offsets, logits, alpha=-_BINS_PER_NAT)
    # (Clamped below too: the row's best token can round to just under the row's first bin.)
    bins = bins.nan_to_num_(nan=float("inf")).clamp_(min=offsets, max=offsets + _BINS).to(torch.int32)
    mass = torch.bincount(bins.view(-1), weights=probs.view(-1).double(), minlength=rows * (_BINS + 1))
    cdf = mass.view(rows, _BINS + 1).cumsum(dim=-1)
    target = cdf[:, -1:] * top_p
    # The nucleus ends in the first bin whose cumulative mass reaches top_p: tokens in earlier bins
    # have less than top_p ranked above them, tokens in later bins at least top_p.
    crossing = torch.searchsorted(cdf, target).clamp_(max=_BINS)
    above = torch.where(crossing > 0, cdf.gather(1, (crossing - 1).clamp(min=0)), 0.0)
    crossing_bin = crossing.to(torch.int32) + offsets.to(torch.int32)
    # Rank the crossing bin's tokens exactly: gather them into a padded [rows, widest] table.
    row_of, token_of = (bins == crossing_bin).nonzero(as_tuple=True)
    counts = torch.bincount(row_of, minlength=rows)
    slot = torch.arange(row_of.shape[0], device=logits.device) - (counts.cumsum(0) - counts)[row_of]
    widest = int(counts.max())  # the step's one host synchronisation
    candidates = torch.full((rows, widest), -1.0, device=logits.device, dtype=probs.dtype)
    candidates[row_of, slot] = probs[row_of, token_of]
    tokens = torch.zeros((rows, widest), device=logits.device, dtype=torch.long)
    tokens[row_of, slot] = token_of
    # Stable, so equally likely tokens keep ascending ids; padding (-1) sorts last.
    ranked, order = torch.sort(candidates, dim=-1, descending=True, stable=True)
    tokens = tokens.gather(1, order)
    ranked_above = above + F.pad(ranked.double().cumsum(dim=-1)[:, :-1], (1, 0))
    kept = (ranked_above < target) & (ranked > 0)
    kept_draw = torch.where(kept, ranked if draw is probs else draw.gather(1, tokens), 0.0)
    # Earlier bins stay, the crossing bin's kept tokens come back, everything else is cut.
    return draw.mul_(bins < crossing_bin).scatter_add_(1, tokens, kept_draw)


def _top_k_tokens(logits: torch.Tensor, uniforms: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """Draws among the k most likely tokens, CDF in descending probability order (sampler version 1)."""
    assert settings.top_k is not None
    indices = torch.topk(logits, min(settings.top_k, logits.shape[-1]), dim=-1).indices
    scaled = logits.gather(1, indices) / settings.temperature
    cdf = scaled.softmax(dim=-1).double().cumsum(dim=-1)
    target = (uniforms * cdf[:, -1]).unsqueeze(1)
    position = torch.searchsorted(cdf, target, right=True).clamp_(max=indices.shape[1] - 1)
    return indices.gather(1, position).squeeze(1)


def choose_tokens(
    logits: torch.Tensor, cur_len: int, uniforms: torch.Tensor, eos_id: int, settings: SamplingSettings
) -> torch.Tensor:
    """Next token per row: open_clip's EOS ban below the minimum length, then top-k or nucleus.

    `cur_len` counts the tokens so far including the start token; `uniforms` is float64 [N], each
    row's draw for this step. Every operation is row-wise, so a row's token depends on that row only.
    Runs on the logits' device; returns int64 [N] there.
    """
    logits = logits.float()
    if cur_len < settings.min_seq_len:
        logits = logits.clone()
        logits[:, eos_id] = -float("inf")
    uniforms = uniforms.to(device=logits.device, dtype=torch.float64)
    if settings.top_k is not None:
        return _top_k_tokens(logits, uniforms, settings)
    weights = _nucleus_weights(logits, settings.top_p, settings.temperature)
    return _draw_in_blocks(weights, uniforms)
