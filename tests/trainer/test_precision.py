"""bf16 training keeps fp32 master weights: small updates are not lost and checkpoints are fp32."""

from __future__ import annotations

import torch

from trainer.optim import build_optimizer
from trainer.precision import TrainingWeights
from trainer.students import create_student


def _step(weights: TrainingWeights, optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    images = torch.rand(2, 3, 64, 64)
    tokens = torch.randint(1, 1000, (2, 32))
    dtype = next(weights.model.parameters()).dtype
    optimizer.zero_grad(set_to_none=True)
    image = weights.model.encode_image(images.to(dtype), normalize=True).float()
    text = weights.model.encode_text(tokens, normalize=True).float()
    (image @ text.T).sum().backward()
    weights.gradients_to_master()
    optimizer.step()
    weights.master_to_model()


def test_bf16_weights_accumulate_updates_below_bf16_resolution_in_the_master_copy() -> None:
    student = create_student("tiny", seed=0)
    weights = TrainingWeights(student.model, "bf16")
    assert all(p.dtype == torch.bfloat16 for p in student.model.parameters())
    before = {k: v.clone() for k, v in weights.state_dict().items()}
    optimizer = build_optimizer(weights.named_parameters(), 1e-3, 0.0, (0.9, 0.95))
    for _ in range(3):
        _step(weights, optimizer, lr=1e-6)  # far below bf16's ~4e-3 relative step near 1.0
    after = weights.state_dict()
    assert all(v.dtype == torch.float32 for k, v in after.items() if v.is_floating_point())
    name = "visual.ln_post.weight"  # ones at init: a bf16 weight could not move by 3e-6
    assert not torch.equal(after[name], before[name])
    assert torch.equal(student.model.state_dict()[name], after[name].to(torch.bfloat16))


def test_fp32_weights_are_the_models_own_parameters() -> None:
    student = create_student("tiny", seed=0)
    weights = TrainingWeights(student.model, "fp32")
    assert [p for _, p in weights.named_parameters()] == list(student.model.parameters())
    optimizer = build_optimizer(weights.named_parameters(), 1e-3, 0.2, (0.9, 0.95))
    before = student.model.text_projection.detach().clone()
    _step(weights, optimizer, lr=1e-3)
    assert not torch.equal(before, student.model.text_projection)
