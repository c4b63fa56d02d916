"""Keeping a sample's numbers independent of the batch it is computed in (contract: byte-identical
output whatever the runner, bundle or worker count).

Measured on CPU with torch 2.14: matrix products give a row the same bits for the same batch shape
whatever its position or neighbours, but the fused (flash) attention kernel does not, while the plain
("math") attention does. So on CPU every model forward runs with math attention, and callers
compute in fixed-shape chunks. GPUs give no such guarantee; there this is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


@contextlib.contextmanager
def batch_invariant(device: str | torch.device) -> Iterator[None]:
    if torch.device(device).type == "cpu":
        with sdpa_kernel(SDPBackend.MATH):
            yield
    else:
        yield
