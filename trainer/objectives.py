"""What one training step minimises, per trainer mode.

- `reinforced`: contract §5 on reinforced shards (replayed view, original and synthetic caption,
  stored teacher targets), optionally with one caption family only (an ablation);
- `plain`: the standard CLIP loss on raw image-text pairs (the baseline without reinforcement);
- `coca`: open_clip CoCa's contrastive + captioning loss on raw pairs (fine-tunes a captioner).

An objective is split where the samples meet: `embed` turns one micro-batch into per-sample rows
(student features with gradient, stored teacher targets without) plus terms that need no other
sample (CoCa's captioning loss, a mean over the micro-batch); `loss` takes the rows of the whole
step, every micro-batch of every rank (`trainer.step`), and gives the terms. `total` is the one
minimised, the others are logged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from trainer.data import Batch
from trainer.loss import FAMILIES, TeacherSlice, caption_loss, clip_loss, reinforced_loss
from trainer.raw_data import PairBatch
from trainer.students import Student, encode
from transforms import normalize

REINFORCED, PLAIN, COCA = "reinforced", "plain", "coca"
MODES = (REINFORCED, PLAIN, COCA)
# open_clip's default weights for CoCa training (contrastive 1, captioning 2).
DEFAULT_CAPTION_LOSS_WEIGHT = 2.0

Terms = dict[str, torch.Tensor]


@dataclasses.dataclass
class Embedded:
    """One micro-batch, embedded: float32 rows [B, *] by name, and its own terms (means over it)."""

    rows: dict[str, torch.Tensor]
    own: Terms = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Objective:
    embed: Callable[[Student, Any], Embedded]
    loss: Callable[[dict[str, torch.Tensor], torch.Tensor, Terms], Terms]  # rows, logit scale, own terms


def reinforced_objective(
    slices: Sequence[TeacherSlice], lam: float, families: Sequence[str] = FAMILIES
) -> Objective:
    def embed(student: Student, batch: Batch) -> Embedded:
        images = normalize(batch.images, student.mean, student.std)
        tokens = torch.cat([batch.original_tokens, batch.synthetic_tokens])
        image_features, text_features, _ = encode(student, images, tokens)
        size = len(batch)
        rows = {
            "image": image_features,
            "original": text_features[:size],
            "synthetic": text_features[size:],
            "teacher_image": batch.teacher_image.float(),
            "teacher_original": batch.teacher_original.float(),
            "teacher_synthetic": batch.teacher_synthetic.float(),
        }
        return Embedded(rows)

    def loss(rows: dict[str, torch.Tensor], logit_scale: torch.Tensor, own: Terms) -> Terms:
        parts = reinforced_loss(
            rows["image"],
            rows["original"],
            rows["synthetic"],
            logit_scale,
            rows["teacher_image"],
            rows["teacher_original"],
            rows["teacher_synthetic"],
            slices,
            lam,
            families,
        )
        return {"total": parts.total, **{k: getattr(parts, k) for k in parts.as_floats() if k != "total"}}

    return Objective(embed, loss)


def _embed_pairs(student: Student, batch: PairBatch) -> Embedded:
    images = normalize(batch.images, student.mean, student.std)
    image_features, text_features, _ = encode(student, images, batch.tokens)
    return Embedded({"image": image_features, "text": text_features})


def plain_objective() -> Objective:
    def loss(rows: dict[str, torch.Tensor], logit_scale: torch.Tensor, own: Terms) -> Terms:
        value = clip_loss(rows["image"], rows["text"], logit_scale)
        return {"total": value, "clip_original": value}

    return Objective(_embed_pairs, loss)


def coca_objective(caption_weight: float = DEFAULT_CAPTION_LOSS_WEIGHT) -> Objective:
    def embed(student: Student, batch: PairBatch) -> Embedded:
        model = student.model
        if not hasattr(model, "text_decoder"):
            raise ValueError(f"--mode coca needs a CoCa model, {student.name} is a {type(model).__name__}")
        images = normalize(batch.images, student.mean, student.std).to(next(model.parameters()).dtype)
        out = model(images, batch.tokens)
        rows = {"image": out["image_features"].float(), "text": out["text_features"].float()}
        return Embedded(rows, {"caption": caption_loss(out["logits"], out["labels"], model.pad_id)})

    def loss(rows: dict[str, torch.Tensor], logit_scale: torch.Tensor, own: Terms) -> Terms:
        contrastive = clip_loss(rows["image"], rows["text"], logit_scale)
        total = contrastive + caption_weight * own["caption"]
        return {"total": total, "clip_original": contrastive, "caption": own["caption"]}

    return Objective(embed, loss)
