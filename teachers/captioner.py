"""Synthetic captions (contract §4): S nucleus samples per un-augmented image, reproducible per seed.

Images are captioned in fixed-size chunks (padded with blank images), and every chunk runs the same
tensor shapes at every step. On CPU a row's floating-point result then depends only on that row, not
on its neighbours, so an image's captions are byte-identical whichever batch or worker it lands in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from teachers.caption_backend import CaptionBackend
from teachers.sampling import SamplingSettings, choose_tokens, sample_uniforms
from teachers.specs import check_reachable, parse_spec, torch_dtype


@dataclasses.dataclass(frozen=True)
class CaptionFailure:
    """One image that could not be captioned; the caller counts it by `reason`."""

    reason: str
    detail: str = ""


@torch.inference_mode()
def run_sampling(
    backend: CaptionBackend,
    pixels: torch.Tensor,
    seeds: Sequence[int],
    num_captions: int,
    settings: SamplingSettings,
) -> list[list[list[int]]]:
    """Token ids (start token through stop token) of `num_captions` samples for each image."""
    images = pixels.shape[0]
    rows = images * num_captions
    uniforms = torch.from_numpy(
        np.stack([sample_uniforms(seed, s, settings.seq_len) for seed in seeds for s in range(num_captions)])
    )
    decoder = backend.start(pixels, num_captions, settings.seq_len)
    last = torch.full((rows,), backend.start_id, dtype=torch.long)
    tokens = [last]
    done = torch.zeros(rows, dtype=torch.bool)
    stop = torch.tensor(backend.stop_ids, dtype=torch.long)
    while len(tokens) < settings.seq_len and not bool(done.all()):
        cur_len = len(tokens)
        if cur_len + 1 == settings.seq_len:  # the last position is always the end token
            last = torch.full((rows,), backend.eos_id, dtype=torch.long)
        else:
            logits = decoder.step(last)
            last = choose_tokens(logits, cur_len, uniforms[:, cur_len], backend.eos_id, settings)
        last = torch.where(done, torch.full_like(last, backend.pad_id), last)
        tokens.append(last)
        done |= torch.isin(last, stop)
    table = torch.stack(tokens, dim=1).tolist()
    sequences = []
    for row in table:
        end = next((i for i, t in enumerate(row[1:], start=1) if t in backend.stop_ids), len(row) - 1)
        sequences.append(row[: end + 1])
    return [sequences[i * num_captions : (i + 1) * num_captions] for i in range(images)]


class Captioner:
    """A captioning model with the contract's sampling settings."""

    def __init__(self, backend: CaptionBackend, settings: SamplingSettings, micro_batch: int = 8) -> None:
        if micro_batch < 1:
            raise ValueError("micro_batch must be >= 1")
        self.backend = backend
        self.settings = settings
        self.micro_batch = micro_batch

    @classmethod
    def load(
        cls,
        spec: str,
        *,
        precision: str = "fp32",
        device: str = "cpu",
        top_p: float = 0.9,
        seq_len: int = 30,
        min_seq_len: int = 5,
        temperature: float = 1.0,
        top_k: int | None = None,
        micro_batch: int = 8,
    ) -> Captioner:
        """Loads a CoCa (open_clip spec) or BLIP (transformers spec) captioner.

        `top_k` replaces nucleus sampling with top-k sampling (1 = greedy); `micro_batch` is the
        number of images decoded together. It fixes the tensor shapes, so keep it for a whole run
        (describe() records it): another value may round differently and, rarely, pick another token.
        """
        settings = SamplingSettings(
            top_p=top_p, top_k=top_k, temperature=temperature, seq_len=seq_len, min_seq_len=min_seq_len
        )
        torch_dtype(precision)
        parsed = parse_spec(spec)
        check_reachable(parsed)
        if parsed.backend == "open_clip":
            from teachers.coca import load_coca_backend

            backend = load_coca_backend(parsed, precision, device)
        else:
            from teachers.blip import load_blip_backend

            backend = load_blip_backend(parsed, precision, device)
        return cls(backend, settings, micro_batch)

    def _pixels(self, image: Image.Image) -> torch.Tensor | CaptionFailure:
        if not isinstance(image, Image.Image):
            return CaptionFailure("not_an_image", type(image).__name__)
        try:
            pixels = self.backend.preprocess(image)
        except Exception as e:  # a broken or exotic image fails alone, never its batch
            return CaptionFailure("unreadable_image", f"{type(e).__name__}: {e}")
        if tuple(pixels.shape) != self.backend.image_shape or not bool(torch.isfinite(pixels).all()):
            return CaptionFailure("unreadable_image", f"preprocessed to {tuple(pixels.shape)}")
        return pixels

    def caption(
        self, images: Sequence[Image.Image], seeds: Sequence[int], num_captions: int
    ) -> list[list[str] | CaptionFailure]:
        """`num_captions` captions per image (in sample order), or a CaptionFailure for that image."""
        if len(images) != len(seeds):
            raise ValueError(f"{len(images)} images but {len(seeds)} seeds")
        if num_captions < 1:
            raise ValueError("num_captions must be >= 1")
        if any(not isinstance(seed, int) or seed < 0 for seed in seeds):
            raise ValueError(f"seeds must be non-negative ints, got {list(seeds)!r}")
        results: list[list[str] | CaptionFailure] = []
        good: list[tuple[int, torch.Tensor, int]] = []
        for index, (image, seed) in enumerate(zip(images, seeds, strict=True)):
            pixels = self._pixels(image)
            results.append(pixels if isinstance(pixels, CaptionFailure) else [])
            if not isinstance(pixels, CaptionFailure):
                good.append((index, pixels, seed))
        for start in range(0, len(good), self.micro_batch):
            chunk = good[start : start + self.micro_batch]
            for (index, _, _), ids in zip(chunk, self._sample_chunk(chunk, num_captions), strict=True):
                results[index] = [self.backend.decode(seq) for seq in ids]
        return results

    def _sample_chunk(
        self, chunk: list[tuple[int, torch.Tensor, int]], num_captions: int
    ) -> list[list[list[int]]]:
        blanks = self.micro_batch - len(chunk)
        pixels = torch.stack([p for _, p, _ in chunk] + [torch.zeros(self.backend.image_shape)] * blanks)
        seeds = [seed for _, _, seed in chunk] + [0] * blanks
        return run_sampling(self.backend, pixels, seeds, num_captions, self.settings)[: len(chunk)]

    def caption_tokens(
        self, pixels: torch.Tensor, seeds: Sequence[int], num_captions: int
    ) -> list[list[list[int]]]:
        """Token ids for already-preprocessed images, without chunking (for equivalence checks)."""
        return run_sampling(self.backend, pixels, seeds, num_captions, self.settings)

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.backend.spec.spec,
            "name": self.backend.spec.name,
            "backend": self.backend.spec.backend,
            "precision": self.backend.precision,
            "image_size": list(self.backend.image_shape[1:]),
            "micro_batch": self.micro_batch,
            **self.settings.describe(),
        }
