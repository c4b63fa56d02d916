"""Keeping a sample's numbers independent of the batch it is computed in (contract: byte-identical
output whatever the runner, bundle or worker count).

Measured on CPU with torch 2.14: matrix products give a row the same bits for the same batch shape
whatever its position or neighbours, but the fused (flash) attention kernel does not, while the plain
("math") attention does. So on CPU every model forward runs with math attention, and callers
compute in fixed-shape chunks. GPUs give no such guarantee; there this is a no-op.

torch keeps the attention-kernel switches in one process-wide place, not per thread. A context
manager that restores them on exit (`torch.nn.attention.sdpa_kernel`) lets one Beam harness thread
re-enable the flash kernel while another thread is still computing; so they are set once, when a
model is loaded, and never restored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def use_batch_invariant_kernels(device: str | torch.device) -> None:
    """For the whole process, from now on: only math attention when models run on the CPU."""
    if torch.device(device).type != "cpu":
        return
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(False)
    torch.backends.cuda.enable_math_sdp(True)


@contextlib.contextmanager
def batch_invariant(device: str | torch.device) -> Iterator[None]:
    """`use_batch_invariant_kernels` for code that wraps its forwards; leaves the kernels set on exit."""
    use_batch_invariant_kernels(device)
    yield
