"""Reinforced shards for your own training loop: the trainer's own stream, opened with one call.

    import open_clip, torch
    from trainer.dataset import open_reinforced, reinforced_loss_of

    model = open_clip.create_model("MobileCLIP2-S0")
    stream = open_reinforced("OUT/*.tar", model, open_clip.get_tokenizer("MobileCLIP2-S0"), batch_size=32)
    batch = next(iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)))
    reinforced_loss_of(model, batch, stream).backward()

`open_reinforced` gives `trainer.data.ReinforcedStream`, a torch `IterableDataset` of `Batch`es: uint8
views replayed at the model's input size from the stored `param_aug`, the original and one synthetic
caption's tokens, and the stored teacher embeddings of exactly that view and those captions. It
shuffles, resumes, skips bad samples by reason and checks replays exactly as `python -m trainer.train`
does (each DataLoader worker streams its own shards: use at most as many workers as shards).
`reinforced_loss_of` is the trainer's loss on a batch (contract §5). Paths may be local, gs:// or
s3:// (`storage_options`: Beam's filesystem flags, e.g. `["--s3_endpoint_url", URL]`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shards import storage
from trainer.data import (
    DEFAULT_SHUFFLE_BUFFER,
    Batch,
    ReinforcedStream,
    Tokenizer,
    list_shards,
    probe,
)
from trainer.loss import FAMILIES
from trainer.objectives import reinforced_objective
from trainer.settings import load_run_config, resolve_data_settings, sibling_config
from trainer.step import batch_loss
from trainer.students import Student

__all__ = ["Batch", "ReinforcedStream", "open_reinforced", "reinforced_loss_of"]


def open_clip_student(model: torch.nn.Module, tokenizer: Tokenizer) -> Student:
    """An open_clip model as the trainer's Student: its input size and normalisation from the model's
    own `visual.preprocess_cfg`, which open_clip sets on every model it creates."""
    preprocess = dict(getattr(model.visual, "preprocess_cfg", None) or {})
    if "size" not in preprocess or "mean" not in preprocess or "std" not in preprocess:
        raise ValueError("the model has no visual.preprocess_cfg (size, mean, std): create it with open_clip")
    size = preprocess["size"]
    model_cfg = {"vision_cfg": {"image_size": list(size) if isinstance(size, list | tuple) else size}}
    return Student(type(model).__name__, model, tokenizer, model_cfg, preprocess)


def open_reinforced(
    data: str | Sequence[str],
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    *,
    batch_size: int,
    config: str | None = None,
    teacher_dims: Sequence[int] | None = None,
    kd_logit_scales: Sequence[float] | None = None,
    caption_families: Sequence[str] | None = None,
    seed: int = 0,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    epochs: int | None = None,
    storage_options: Sequence[str] = (),
) -> ReinforcedStream:
    """The shards matching `data` as the trainer's stream for `model` (an open_clip model).

    The teachers' widths, KD scales and view recipe come from the run's config.json (`config`, else
    the one beside the shards); public DataCompDR shards need `teacher_dims` and `kd_logit_scales`.
    The first usable sample is checked at once: wrong widths raise here, not as skipped samples.
    Endless unless `epochs` is given.
    """
    storage.use_filesystem_options(list(storage_options))
    patterns = [data] if isinstance(data, str) else list(data)
    shards = list_shards(patterns)
    config_path = config or sibling_config(patterns[0])
    settings = resolve_data_settings(
        load_run_config(config_path) if config_path else None,
        teacher_dims=teacher_dims,
        kd_logit_scales=kd_logit_scales,
        config_path=config_path,
        caption_families=caption_families,
    )
    student = open_clip_student(model, tokenizer)
    probe(shards, settings, tokenizer, student.image_size)
    return ReinforcedStream(
        shards,
        settings,
        image_size=student.image_size,
        tokenizer=tokenizer,
        batch_size=batch_size,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        epochs=epochs,
    )


def reinforced_loss_of(
    model: torch.nn.Module,
    batch: Batch,
    stream: ReinforcedStream,
    *,
    lam: float = 1.0,
    families: Sequence[str] = FAMILIES,
) -> torch.Tensor:
    """The trainer's loss on `batch` (contract §5: (1 − λ)·CLIP + λ·KD per caption family, λ = 1 by
    default as `trainer.train --lambda`), with the stream's teacher slices and KD scales."""
    student = open_clip_student(model, stream.tokenizer)
    objective = reinforced_objective(stream.settings.slices, lam, families)
    return batch_loss(student, batch, objective)["total"]
