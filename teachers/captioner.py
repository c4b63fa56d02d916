"""Synthetic captions (contract §4): S nucleus samples per un-augmented image, reproducible per seed.

Images are captioned in fixed-size chunks, and every chunk runs the model at the same tensor shapes at
every step. On CPU a row's floating-point result then depends only on that row, not on its
neighbours, so an image's captions are byte-identical whichever batch or worker it lands in. A short
chunk (a small shard, a shard's tail) is filled with blank images whose rows are finished before the
first step: the model computes them (the shapes must not change: with 2 threads, chunks of 1 or 2
tiny-CoCa images gave other logits than the 8-image chunk, while 1 thread showed no difference) but
nothing is sampled for them and they never keep the loop going. The cost is at most one chunk per
shard, under 0.1% for img2dataset's 10,000-sample shards. Sampling is row-wise, so it runs on the
rows still decoding only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from teachers.caption_backend import CaptionBackend
from teachers.sampling import SamplingSettings, choose_tokens, uniform_table
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
    chunk_images: int | None = None,
) -> list[list[list[int]]]:
    """Token ids (start token through stop token) of `num_captions` samples for each image.

    With `chunk_images`, the model runs on that many images, blank ones after the real ones.
    """
    images = pixels.shape[0]
    shape_images = images if chunk_images is None else chunk_images
    if shape_images < images:
        raise ValueError(f"{images} images do not fit a chunk of {shape_images}")
    if shape_images > images:
        blanks = pixels.new_zeros((shape_images - images, *pixels.shape[1:]))
        pixels = torch.cat([pixels, blanks])
    decoder = backend.start(pixels, num_captions, settings.seq_len)
    device = decoder.device
    rows, real_rows = shape_images * num_captions, images * num_captions
    uniforms = uniform_table(seeds, num_captions, settings.seq_len, device)
    tokens = torch.full((rows, settings.seq_len), backend.pad_id, dtype=torch.long, device=device)
    tokens[:, 0] = backend.start_id
    decoding = torch.zeros(rows, dtype=torch.bool, device=device)
    decoding[:real_rows] = True
    stop = torch.tensor(backend.stop_ids, dtype=torch.long, device=device)
    for pos in range(1, settings.seq_len):
        active = decoding.nonzero().squeeze(1)  # the step's host synchronisation
        if active.shape[0] == 0:
            break
        if pos + 1 == settings.seq_len:  # the last position is always the end token
            tokens[active, pos] = backend.eos_id
            break
        logits = decoder.step(tokens[:, pos - 1])
        if active.shape[0] < rows:
            logits = logits.index_select(0, active)
        chosen = choose_tokens(logits, pos, uniforms[active, :, pos], backend.eos_id, settings)
        tokens[active, pos] = chosen
        decoding[active] = ~torch.isin(chosen, stop)
    table = tokens[:real_rows]
    # Each row ends at its first stop token after the start token (the last position holds one).
    ends = (torch.isin(table[:, 1:], stop).int().argmax(dim=1) + 2).tolist()
    sequences = [row[:end] for row, end in zip(table.tolist(), ends, strict=True)]
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
        pixels = torch.stack([p for _, p, _ in chunk])
        seeds = [seed for _, _, seed in chunk]
        return run_sampling(self.backend, pixels, seeds, num_captions, self.settings, self.micro_batch)

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
