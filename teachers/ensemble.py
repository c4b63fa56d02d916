"""The CLIP teacher ensemble: per-teacher preprocessing and L2-norm, concatenated in declared order.

Contract §2: D is the sum of the teachers' widths; each teacher's slice is normalised on its own, so
the trainer can split the stored vector back into teachers and apply each one's KD logit scale.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from teachers.clip_teachers import Teacher, clean_text, load_teacher
from teachers.devices import host_to_device
from teachers.specs import torch_dtype

# Rows per forward pass (images, texts) unless given. On a CPU bigger chunks gain little and pad more;
# a GPU needs wide batches to be busy. Part of a run's identity: the chunk shape fixes the bits.
CPU_MICRO_BATCHES = (8, 32)
CUDA_MICRO_BATCHES = (64, 256)


def fit_views(views: torch.Tensor, teacher: Teacher) -> torch.Tensor:
    """Resizes uint8 views to the teacher's input size the way its own eval transform would."""
    height, width = views.shape[-2:]
    target = teacher.image_size
    if (height, width) == target:
        return views
    mode = InterpolationMode(teacher.interpolation)
    if teacher.resize_mode == "squash":
        return TF.resize(views, list(target), interpolation=mode, antialias=True)
    if teacher.resize_mode == "longest":
        scale = min(target[0] / height, target[1] / width)
    else:  # "shortest"
        scale = max(target[0] / height, target[1] / width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    resized = TF.resize(views, size, interpolation=mode, antialias=True)
    return TF.center_crop(resized, list(target))  # crops ("shortest") or zero-pads ("longest")


def normalise_views(views: torch.Tensor, teacher: Teacher) -> torch.Tensor:
    mean, std = _channel_stats(teacher.mean, teacher.std, views.device)
    return (views.to(torch.float32) / 255.0 - mean) / std


@functools.cache
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as [1, 3, 1, 1] tensors on `device`, made once: each copy to a GPU would wait for it."""
    as_tensor = functools.partial(torch.tensor, dtype=torch.float32, device=device)
    return as_tensor(mean).view(1, 3, 1, 1), as_tensor(std).view(1, 3, 1, 1)


def _in_fixed_chunks(
    items: torch.Tensor | list[str], size: int, pad: torch.Tensor | str, encode: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """Runs `encode` on chunks of exactly `size` items (the last one padded), so that every item goes
    through the same tensor shapes and gets the same bits whatever it is batched with."""
    outputs = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        real = len(chunk)
        if real < size:
            if isinstance(chunk, torch.Tensor):
                chunk = torch.cat([chunk, pad.expand(size - real, *pad.shape[1:])])
            else:
                chunk = list(chunk) + [pad] * (size - real)
        outputs.append(encode(chunk)[:real])
    return torch.cat(outputs)


class TeacherEnsemble:
    """Several CLIP teachers that embed the same views and captions into one concatenated vector.

    Views are embedded `micro_batch` at a time and captions `text_micro_batch` at a time, padding the
    last chunk: call with many views at once (a multiple of `micro_batch`) to waste nothing. Both
    default to the device's sizes (CPU_MICRO_BATCHES, CUDA_MICRO_BATCHES).

    On a GPU the uint8 views go to the device through pinned memory and are resized and normalised
    there; results stay on the device until the whole call is done, so each call waits once.
    """

    def __init__(
        self,
        teachers: Sequence[Teacher],
        kd_logit_scales: Sequence[float],
        *,
        micro_batch: int | None = None,
        text_micro_batch: int | None = None,
    ) -> None:
        if not teachers:
            raise ValueError("an ensemble needs at least one teacher")
        if len(kd_logit_scales) != len(teachers):
            raise ValueError(f"{len(kd_logit_scales)} KD logit scales for {len(teachers)} teachers")
        devices = {t.device for t in teachers}
        if len(devices) != 1:
            raise ValueError(f"all teachers must be on one device, not {sorted(map(str, devices))}")
        self.device = devices.pop()
        default_images, default_texts = (
            CUDA_MICRO_BATCHES if self.device.type == "cuda" else CPU_MICRO_BATCHES
        )
        self.micro_batch = default_images if micro_batch is None else micro_batch
        self.text_micro_batch = default_texts if text_micro_batch is None else text_micro_batch
        if self.micro_batch < 1 or self.text_micro_batch < 1:
            raise ValueError("micro batch sizes must be >= 1")
        self.teachers = list(teachers)
        self.kd_logit_scales = [float(s) for s in kd_logit_scales]

    @classmethod
    def load(
        cls,
        specs: Sequence[str],
        *,
        precision: str = "fp32",
        device: str = "cpu",
        kd_logit_scales: Sequence[float] | None = None,
        micro_batch: int | None = None,
        text_micro_batch: int | None = None,
    ) -> TeacherEnsemble:
        """Loads the teachers in order. Without KD logit scales each teacher's learned scale is used."""
        if isinstance(specs, str):
            raise TypeError("specs must be a sequence of spec strings, not one string")
        torch_dtype(precision)  # validates before any (slow) load
        teachers = [load_teacher(spec, precision=precision, device=device) for spec in specs]
        scales = kd_logit_scales if kd_logit_scales is not None else [t.logit_scale for t in teachers]
        return cls(teachers, scales, micro_batch=micro_batch, text_micro_batch=text_micro_batch)

    @property
    def dims(self) -> list[int]:
        return [t.dim for t in self.teachers]

    @property
    def dim(self) -> int:
        return sum(self.dims)

    @property
    def names(self) -> list[str]:
        return [t.spec.name for t in self.teachers]

    def embed_images(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 views [B, 3, H, W] -> float32 [B, D]: each teacher's own resize, mean/std and L2-norm."""
        if views.dtype != torch.uint8 or views.dim() != 4 or views.shape[1] != 3:
            raise ValueError(f"views must be uint8 [B, 3, H, W], got {views.dtype} {tuple(views.shape)}")
        if views.shape[0] == 0:
            return torch.empty(0, self.dim)
        views = host_to_device(views, self.device)  # still uint8: a quarter of float32's bytes
        blank = torch.zeros((1, *views.shape[1:]), dtype=torch.uint8, device=views.device)
        parts = []
        for teacher in self.teachers:

            def encode(chunk: torch.Tensor, teacher: Teacher = teacher) -> torch.Tensor:
                return teacher.encode_pixels(normalise_views(fit_views(chunk, teacher), teacher))

            parts.append(F.normalize(_in_fixed_chunks(views, self.micro_batch, blank, encode), dim=-1))
        return torch.cat(parts, dim=1).cpu()  # the one wait for the device in this call

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> float32 [N, D], each teacher with its own tokenizer and L2-norm.

        Empty captions embed as the tokenizer's empty sequence, as in the public data; overlong ones are
        truncated (first by characters, then by each tokenizer's context length).
        """
        cleaned = [clean_text(t) for t in texts]
        if not cleaned:
            return torch.empty(0, self.dim)
        parts = [
            F.normalize(_in_fixed_chunks(cleaned, self.text_micro_batch, "", t.encode_texts), dim=-1)
            for t in self.teachers
        ]
        return torch.cat(parts, dim=1).cpu()

    def describe(self) -> list[dict[str, Any]]:
        """Per teacher, in order: what a run's config.json records so the data can be interpreted."""
        return [
            {
                "spec": t.spec.spec,
                "name": t.spec.name,
                "dim": t.dim,
                "kd_logit_scale": scale,
                "mean": list(t.mean),
                "std": list(t.std),
                "image_size": list(t.image_size),
                "precision": t.precision,
                "interpolation": t.interpolation,
                "resize_mode": t.resize_mode,
                "backend": t.spec.backend,
                "micro_batch": self.micro_batch,
                "text_micro_batch": self.text_micro_batch,
            }
            for t, scale in zip(self.teachers, self.kd_logit_scales, strict=True)
        ]
