"""The multi-modal reinforced training loss of contract §5.

Per caption family (original, synthetic): (1 − λ)·CLIP + λ·KD. KD's target is the mean over teachers
of each teacher's own softmax at its fixed logit scale, so a teacher with a sharper scale is not
drowned by the others' logits: the teachers are averaged as probabilities, never as logits.
An ablation may keep one family only. `caption_loss` is CoCa's captioning term, for training a
captioner on plain image-text pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from shards.teacher_slices import TeacherSlice

FAMILIES = ("original", "synthetic")


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE with the matching pair on the diagonal."""
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


@torch.no_grad()
def teacher_targets(
    teacher_image: torch.Tensor, teacher_text: torch.Tensor, slices: Sequence[TeacherSlice]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image→text, text→image) target distributions: the mean over teachers of their softmaxes."""
    i2t = torch.zeros(teacher_image.shape[0], teacher_text.shape[0], dtype=torch.float32)
    t2i = torch.zeros(teacher_text.shape[0], teacher_image.shape[0], dtype=torch.float32)
    for s in slices:
        u = teacher_image[:, s.start : s.start + s.dim].float()
        v = teacher_text[:, s.start : s.start + s.dim].float()
        logits = s.kd_logit_scale * u @ v.T
        i2t += logits.softmax(dim=1)
        t2i += logits.T.softmax(dim=1)
    return i2t / len(slices), t2i / len(slices)


def soft_cross_entropy(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """−mean over rows of Σ_j target_ij · log_softmax(logits)_ij."""
    return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()


def kd_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    targets: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    logits = logit_scale * image_features @ text_features.T
    i2t, t2i = targets
    return 0.5 * (soft_cross_entropy(i2t, logits) + soft_cross_entropy(t2i, logits.T))


@dataclasses.dataclass
class LossParts:
    """Every term of the loss, so the log can show what moves; `total` is what is minimised."""

    total: torch.Tensor
    clip_original: torch.Tensor
    kd_original: torch.Tensor
    clip_synthetic: torch.Tensor
    kd_synthetic: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name).detach()) for f in dataclasses.fields(self)}


def reinforced_loss(
    image_features: torch.Tensor,
    original_text_features: torch.Tensor,
    synthetic_text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_original_text: torch.Tensor,
    teacher_synthetic_text: torch.Tensor,
    slices: Sequence[TeacherSlice],
    lam: float,
    families: Sequence[str] = FAMILIES,
) -> LossParts:
    """L = Σ over `families` of L_c, with L_c = (1 − λ)·CLIP_c + λ·KD_c (contract §5: both families).

    Student features must be L2-normalised and `logit_scale` already exponentiated; the teacher
    tensors are the stored D-wide embeddings of the replayed view and of the two captions. Every
    part is returned (for the log) whether or not its family counts in `total`.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"λ must be in [0, 1], got {lam}")
    if not families or set(families) - set(FAMILIES):
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {list(families)}")
    image_features = image_features.float()
    logit_scale = logit_scale.float()
    parts: dict[str, torch.Tensor] = {}
    for family, text_features, teacher_text in (
        ("original", original_text_features, teacher_original_text),
        ("synthetic", synthetic_text_features, teacher_synthetic_text),
    ):
        text_features = text_features.float()
        parts[f"clip_{family}"] = clip_loss(image_features, text_features, logit_scale)
        targets = teacher_targets(teacher_image, teacher_text, slices)
        parts[f"kd_{family}"] = kd_loss(image_features, text_features, logit_scale, targets)
    total = sum((1.0 - lam) * parts[f"clip_{family}"] + lam * parts[f"kd_{family}"] for family in families)
    return LossParts(total=total, **parts)


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Next-token cross-entropy of a captioner (logits [B, L, V] predict labels [B, L]), pads ignored."""
    kept = labels != pad_id  # only real positions: the softmax over a 49k vocabulary is the cost
    return F.cross_entropy(logits[kept].float(), labels[kept])
