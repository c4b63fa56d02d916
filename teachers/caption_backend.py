"""What the caption sampling loop needs from a captioning model (CoCa, BLIP): one small interface."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import torch
from PIL import Image

from teachers.specs import ModelSpec


class IncrementalDecoder(Protocol):
    """Feeds one token per row at the next position; `step` returns next-token logits [rows, vocab]
    on `device` (the sampling loop never moves them to the host)."""

    device: torch.device

    def step(self, tokens: torch.Tensor) -> torch.Tensor: ...


@dataclasses.dataclass
class CaptionBackend:
    """What the sampling loop needs from a captioning model."""

    spec: ModelSpec
    precision: str
    start_id: int
    eos_id: int
    pad_id: int  # fills a row after its caption ended
    stop_ids: tuple[int, ...]  # tokens that end a caption (EOS, and for CoCa also the pad id)
    preprocess: Callable[[Image.Image], torch.Tensor]  # un-augmented image -> normalised [3, h, w]
    image_shape: tuple[int, int, int]
    start: Callable[[torch.Tensor, int, int], IncrementalDecoder]  # (pixels, S, max_len) -> decoder
    decode: Callable[[list[int]], str]  # token ids (start to stop token) -> caption
