"""Token choice for caption decoding: open_clip's CoCa `generate` rules, with per-sample random streams.

The rules are those of open_clip's `generate` (min-length EOS ban, then top-k or nucleus filtering,
then temperature, EOS forced at the last position). Randomness differs on purpose: instead of the
global RNG, every (image seed, sample index) owns a fixed stream of uniforms (`uniform_table`), and
tokens are drawn by inverting CDFs with them. A caption therefore depends only on its image, its seed
and its index, never on what else shares the batch or on which worker runs it.

Sampler versions (`describe()["sampler_version"]`, recorded in config.json):
- 1: the nucleus (the smallest set of most likely tokens holding at least top_p of the mass) was cut
  from the row's vocabulary sorted by probability, and the step's uniform inverted the kept tokens'
  CDF in that descending order. Sorting 49,408 tokens per row and step was most of the job's time.
- 2 (current): a token is in the nucleus when the tokens strictly more likely than it hold less than
  top_p of the mass (the same set as version 1 except that a tie at the boundary is kept whole). It
  is drawn by rejection: a proposal from the whole vocabulary at the temperature (CDF in vocabulary
  order) is accepted if it is in the nucleus, else the step's next uniform proposes again. An
  accepted proposal follows exactly the filtered-then-tempered distribution of version 1; a row
  whose `_PROPOSALS` proposals all fall outside the nucleus (chance below (1 - top_p)^7 at
  temperature 1) draws with its last uniform from the nucleus found by an exact search. Each token
  keeps its version-1 probability, but a given uniform may select another token, so version 2 does
  not regenerate version-1 captions. Top-k draws (and so greedy decoding) are unchanged.

Everything runs on the logits' device in whole-batch tensor operations; no step sorts the vocabulary
and no Python code runs per row. Sums along a row go through fixed blocks of `_BLOCK` tokens, so that
a row's rounding never depends on how many rows share the call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

SAMPLER_VERSION = 2
# Proposals per step before a row falls back to the exact nucleus search, and the uniforms a step owns
# (one per proposal, one for the fallback draw).
_PROPOSALS = 7
UNIFORMS_PER_STEP = _PROPOSALS + 1
# Tokens per block of the two-level CDF inversion and of every sum along a row.
_BLOCK = 256


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
    """Every row's uniforms for a decoding of `count` positions, float64 [rows, UNIFORMS_PER_STEP, count]
    (rows image-major), made once per batch and moved to `device` in one copy.

    Column k of position t is element k * count + t of the row's stream, so column 0 is the stream's
    first `count` uniforms: the one per position that top-k sampling (and sampler version 1) uses.
    """
    table = np.stack(
        [sample_uniforms(seed, s, count * UNIFORMS_PER_STEP) for seed in seeds for s in range(num_samples)]
    )
    return torch.from_numpy(table.reshape(-1, UNIFORMS_PER_STEP, count)).to(device)


def _blocks(values: torch.Tensor) -> torch.Tensor:
    """[N, V] -> [N, V / _BLOCK, _BLOCK] (V must be a multiple of _BLOCK)."""
    return values.view(values.shape[0], -1, _BLOCK)


def _row_sums(values: torch.Tensor) -> torch.Tensor:
    """float64 [N]: block sums first, so a lone row is summed in the same order as a row among many."""
    return _blocks(values).sum(dim=-1).double().sum(dim=-1)


def _invert(weights: torch.Tensor, block_cdf: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Tokens [N, K]: each row's CDF of non-negative `weights` [N, V] (vocabulary order) inverted at its
    K `uniforms`; `block_cdf` is the cumulative sum of the row's block sums.

    The first block whose CDF exceeds the target holds mass, and in it the first such token does.
    """
    rows, draws = uniforms.shape
    grouped = _blocks(weights)
    target = uniforms * block_cdf[:, -1:]
    block = torch.searchsorted(block_cdf, target, right=True).clamp_(max=grouped.shape[1] - 1)
    below = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    inside = grouped.gather(1, block.unsqueeze(2).expand(rows, draws, _BLOCK))
    position = torch.searchsorted(inside.double().cumsum(dim=-1), (target - below).unsqueeze(2), right=True)
    # Block sums and in-block sums round differently; never step past the block's last weighted token.
    positions = torch.arange(_BLOCK, device=weights.device)
    last = torch.where(inside > 0, positions, 0).amax(dim=-1)
    return block * _BLOCK + torch.minimum(position.squeeze(2), last)


def _in_nucleus(
    probs: torch.Tensor, block_max: torch.Tensor, values: torch.Tensor, limit: torch.Tensor
) -> torch.Tensor:
    """Whether a token of probability `values` [N] is in its row's nucleus: the probability of the row's
    strictly more likely tokens, sum(max(p - v, 0)) + v * count(p > v), is below `limit` [N].

    Only blocks whose maximum (`block_max` [N, blocks]) exceeds v contribute, so when every row has few
    of them (peaked rows) only those are read. Block sums are added one after another in vocabulary
    order, and blocks that contribute nothing add exact zeros, so the result is the same bits whichever
    blocks were read.
    """
    rows, blocks = block_max.shape
    grouped = _blocks(probs)
    needed = int((block_max > values.unsqueeze(1)).sum(dim=-1).max())  # a host synchronisation
    if needed < blocks // 2:
        chosen = block_max.topk(max(needed, 1), dim=-1).indices.sort(dim=-1).values
        grouped = grouped.gather(1, chosen.unsqueeze(2).expand(rows, chosen.shape[1], _BLOCK))
    excess = (grouped - values.view(rows, 1, 1)).clamp_(min=0)
    above = excess.sum(dim=-1).double().cumsum(dim=-1)[:, -1]
    count = excess.sign_().sum(dim=-1).double().cumsum(dim=-1)[:, -1]
    return above + values.double() * count < limit


def _nucleus_threshold(probs: torch.Tensor, block_max: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """The smallest probability in each row's nucleus, by binary search over the sorted row (the rare
    fallback; the nucleus is then every token at least that likely)."""
    ranked = probs.sort(dim=-1, descending=True).values
    low = torch.zeros((probs.shape[0], 1), dtype=torch.long, device=probs.device)  # the best token is in
    high = torch.full_like(low, probs.shape[1] - 1)
    for _ in range(probs.shape[1].bit_length()):
        middle = (low + high + 1) // 2
        inside = _in_nucleus(probs, block_max, ranked.gather(1, middle).squeeze(1), limit).unsqueeze(1)
        low = torch.where(inside, middle, low)
        high = torch.where(inside, high, middle - 1)
    return ranked.gather(1, low)


def _nucleus_tokens(
    logits: torch.Tensor, uniforms: torch.Tensor, top_p: float, temperature: float
) -> torch.Tensor:
    """Nucleus sampling by rejection (sampler version 2, see the module docstring)."""
    pad = -logits.shape[1] % _BLOCK
    if pad:
        logits = F.pad(logits, (0, pad), value=-float("inf"))
    probs = logits.softmax(dim=-1)
    tempered = probs if temperature == 1.0 else (logits / temperature).softmax(dim=-1)
    block_cdf = _blocks(tempered).sum(dim=-1).double().cumsum(dim=-1)
    proposals = _invert(tempered, block_cdf, uniforms[:, :_PROPOSALS])
    chosen = proposals[:, 0].clone()
    if top_p >= 1.0:
        return chosen
    limit = top_p * (block_cdf[:, -1] if tempered is probs else _row_sums(probs))
    block_max = _blocks(probs).amax(dim=-1)
    pending = torch.arange(logits.shape[0], device=logits.device)
    rows_probs, rows_max = probs, block_max
    for proposal in range(_PROPOSALS):
        candidates = proposals[pending, proposal]
        values = rows_probs.gather(1, candidates.unsqueeze(1)).squeeze(1)
        accepted = _in_nucleus(rows_probs, rows_max, values, limit[pending])
        chosen[pending] = torch.where(accepted, candidates, chosen[pending])
        pending = pending[~accepted]
        if pending.shape[0] == 0:  # a host synchronisation; usually after the first proposal
            return chosen
        rows_probs, rows_max = probs.index_select(0, pending), block_max.index_select(0, pending)
    threshold = _nucleus_threshold(rows_probs, rows_max, limit[pending])
    kept = torch.where(rows_probs >= threshold, tempered.index_select(0, pending), 0.0)
    kept_cdf = _blocks(kept).sum(dim=-1).double().cumsum(dim=-1)
    chosen[pending] = _invert(kept, kept_cdf, uniforms[pending, _PROPOSALS:]).squeeze(1)
    return chosen


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

    `cur_len` counts the tokens so far including the start token; `uniforms` is float64
    [N, UNIFORMS_PER_STEP], each row's uniforms for this step. Every operation is row-wise, so a row's
    token depends on that row only. Runs on the logits' device; returns int64 [N] there.
    """
    logits = logits.float()
    if cur_len < settings.min_seq_len:
        logits = logits.clone()
        logits[:, eos_id] = -float("inf")
    uniforms = uniforms.to(device=logits.device, dtype=torch.float64)
    if settings.top_k is not None:
        return _top_k_tokens(logits, uniforms[:, 0], settings)
    return _nucleus_tokens(logits, uniforms, settings.top_p, settings.temperature)
