"""The schedule and the optimizer's parameter groups."""

from __future__ import annotations

import itertools
import math

import pytest

from trainer.optim import build_optimizer, learning_rate
from trainer.students import create_student


def test_warmup_rises_linearly_to_the_peak_then_cosine_decays_to_zero() -> None:
    base, warmup, total = 1e-3, 10, 110
    assert learning_rate(0, base, warmup, total) == pytest.approx(base / warmup)
    assert learning_rate(4, base, warmup, total) == pytest.approx(base * 5 / warmup)
    assert learning_rate(warmup, base, warmup, total) == pytest.approx(base)
    assert learning_rate(warmup + 50, base, warmup, total) == pytest.approx(base / 2)
    assert learning_rate(total, base, warmup, total) == pytest.approx(0.0, abs=1e-12)
    decay = [learning_rate(s, base, warmup, total) for s in range(warmup, total)]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert learning_rate(3, base, 0, 10) == pytest.approx(0.5 * base * (1 + math.cos(math.pi * 0.3)))


def test_gains_biases_and_the_logit_scale_are_not_decayed() -> None:
    model = create_student("tiny").model
    optimizer = build_optimizer(list(model.named_parameters()), 1e-3, 0.2, (0.9, 0.95))
    by_id = {id(p): name for name, p in model.named_parameters()}
    no_decay, decay = ({by_id[id(p)] for p in g["params"]} for g in optimizer.param_groups)
    assert (
        optimizer.param_groups[1]["weight_decay"] == 0.2 and optimizer.param_groups[0]["weight_decay"] == 0.0
    )
    assert "logit_scale" in no_decay and "visual.ln_post.weight" in no_decay
    assert any(n.endswith(".bias") for n in no_decay) and not any(n.endswith(".bias") for n in decay)
    assert "text_projection" in decay and "visual.conv1.weight" in decay
    assert len(no_decay) + len(decay) == len(by_id)
