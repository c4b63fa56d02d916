"""AdamW with open_clip's parameter groups and a warmup + cosine schedule that is a function of the step.

The learning rate is computed from the step number alone, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# open_clip leaves gains, biases, norms, embeddings' scalars and the logit scale out of weight decay.
_NO_DECAY_HINTS = ("bn", "ln", "bias", "logit_scale", "norm")
MAX_LOGIT_SCALE = math.log(100.0)


def _decays(name: str, param: torch.Tensor) -> bool:
    return param.ndim >= 2 and not any(hint in name for hint in _NO_DECAY_HINTS)


def build_optimizer(
    named_parameters: Sequence[tuple[str, torch.Tensor]],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-6,
) -> torch.optim.AdamW:
    named = [(n, p) for n, p in named_parameters if p.requires_grad]
    decay = [p for n, p in named if _decays(n, p)]
    no_decay = [p for n, p in named if not _decays(n, p)]
    return torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}],
        lr=lr,
        betas=betas,
        eps=eps,
    )


def learning_rate(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup from 0 to `base_lr` over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clamp_logit_scale(log_scale: torch.Tensor) -> None:
    """As in CLIP: the learned temperature (stored as its log) may not exceed 100."""
    with torch.no_grad():
        log_scale.clamp_(0, MAX_LOGIT_SCALE)
