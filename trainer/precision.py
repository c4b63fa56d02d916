"""bf16 weights for the forward and backward pass, fp32 master weights for the optimizer.

On CPU, autocast to bf16 is many times slower than fp32, but a model whose weights *are* bf16 runs
its forward and backward about 2.5× faster (MobileCLIP2-S0, see bench.trainer). AdamW on bf16
weights would lose every update smaller than bf16's resolution, so the optimizer keeps an fp32
copy: gradients are cast up after backward, the step updates the copy, and the copy is cast down
into the model. Checkpoints hold the fp32 copy, so they load anywhere as ordinary fp32 weights.

On a GPU, `amp_bf16` is the usual choice instead: fp32 weights, and the forward pass under bf16
autocast (matrix products in bf16, norms and softmax in fp32); here it only keeps the weights fp32.
"""

from __future__ import annotations

import torch

PRECISIONS = ("fp32", "bf16", "amp_bf16")


class TrainingWeights:
    """The parameters the optimizer updates; for fp32 and amp_bf16 simply the model's own."""

    def __init__(self, model: torch.nn.Module, precision: str) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.model = model
        self.precision = precision
        if precision == "bf16":
            self._master = {
                name: p.detach().float().clone().requires_grad_(p.requires_grad)
                for name, p in model.named_parameters()
            }
            model.to(torch.bfloat16)
        else:
            model.float()
            self._master = dict(model.named_parameters())

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter | torch.Tensor]]:
        return list(self._master.items())

    def parameters_with_grad(self) -> list[torch.Tensor]:
        return [p for p in self._master.values() if p.grad is not None]

    def gradients_to_master(self) -> None:
        if self.precision != "bf16":
            return
        for name, p in self.model.named_parameters():
            master = self._master[name]
            master.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    def master_to_model(self) -> None:
        if self.precision != "bf16":
            return
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(self._master[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """fp32 weights (master copies for parameters, buffers cast up)."""
        state = {}
        for name, tensor in self.model.state_dict().items():
            source = self._master.get(name, tensor)
            state[name] = source.detach().float() if source.is_floating_point() else source.detach()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)  # casts into the model's dtype
        if self.precision != "bf16":
            return
        with torch.no_grad():
            for name, master in self._master.items():
                master.copy_(state[name])
