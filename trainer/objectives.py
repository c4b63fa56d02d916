"""What one training step minimises, per trainer mode.

- `reinforced`: contract §5 on reinforced shards (replayed view, original and synthetic caption,
  stored teacher targets), optionally with one caption family only (an ablation);
- `plain`: the standard CLIP loss on raw image-text pairs (the baseline without reinforcement);
- `coca`: open_clip CoCa's contrastive + captioning loss on raw pairs (fine-tunes a captioner).

An objective maps (student, batch) to its loss terms; `total` is the one minimised, the others are
logged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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

Objective = Callable[[Student, object], dict[str, torch.Tensor]]


def reinforced_objective(
    slices: Sequence[TeacherSlice], lam: float, families: Sequence[str] = FAMILIES
) -> Objective:
    def terms(student: Student, batch: Batch) -> dict[str, torch.Tensor]:
        images = normalize(batch.images, student.mean, student.std)
        tokens = torch.cat([batch.original_tokens, batch.synthetic_tokens])
        image_features, text_features, logit_scale = encode(student, images, tokens)
        size = len(batch)
        parts = reinforced_loss(
            image_features,
            text_features[:size],
            text_features[size:],
            logit_scale,
            batch.teacher_image,
            batch.teacher_original,
            batch.teacher_synthetic,
            slices,
            lam,
            families,
        )
        return {"total": parts.total, **{k: getattr(parts, k) for k in parts.as_floats() if k != "total"}}

    return terms


def plain_objective() -> Objective:
    def terms(student: Student, batch: PairBatch) -> dict[str, torch.Tensor]:
        images = normalize(batch.images, student.mean, student.std)
        image_features, text_features, logit_scale = encode(student, images, batch.tokens)
        loss = clip_loss(image_features, text_features, logit_scale)
        return {"total": loss, "clip_original": loss}

    return terms


def coca_objective(caption_weight: float = DEFAULT_CAPTION_LOSS_WEIGHT) -> Objective:
    def terms(student: Student, batch: PairBatch) -> dict[str, torch.Tensor]:
        model = student.model
        if not hasattr(model, "text_decoder"):
            raise ValueError(f"--mode coca needs a CoCa model, {student.name} is a {type(model).__name__}")
        images = normalize(batch.images, student.mean, student.std).to(next(model.parameters()).dtype)
        out = model(images, batch.tokens)
        contrastive = clip_loss(
            out["image_features"].float(), out["text_features"].float(), out["logit_scale"]
        )
        captioning = caption_loss(out["logits"], out["labels"], model.pad_id)
        total = contrastive + caption_weight * captioning
        return {"total": total, "clip_original": contrastive, "caption": captioning}

    return terms
