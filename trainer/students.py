"""Student models: open_clip architectures (MobileCLIP ones included) and a tiny one for tests.

A student replays stored views at its own input size with its own normalisation. A student trained
from scratch takes the preprocessing its architecture's published checkpoints use (MobileCLIP:
mean 0, std 1, bilinear), so that our checkpoint is a drop-in for theirs. Every student is saved in
open_clip's `local-dir:` layout, so open_clip itself (and `trainer.evaluate`) can load it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from teachers.specs import LOCAL_DIR, OPEN_CLIP_CONFIG_FILE, unknown_architecture

TINY = "tiny"

# Small enough to train a few hundred steps in seconds on a shared CPU; the full CLIP vocabulary is kept
# so the real tokenizer works, and a short context keeps the text tower cheap.
TINY_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# open_clip's defaults; also what a student without a published checkpoint is fed.
TINY_PREPROCESS_CFG: dict[str, Any] = {
    "mean": list(OPENAI_DATASET_MEAN),
    "std": list(OPENAI_DATASET_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


class StudentError(ValueError):
    """A student that cannot be built as asked (unknown name, unreachable weights)."""


@dataclasses.dataclass
class Student:
    """A model and everything needed to feed it and to save it as an open_clip checkpoint."""

    name: str
    model: torch.nn.Module
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    autocast_bf16: bool = False  # encode under bf16 autocast (`--precision amp_bf16`); losses stay fp32

    @property
    def image_size(self) -> int:
        size = self.model_cfg["vision_cfg"]["image_size"]
        return int(size[0] if isinstance(size, list | tuple) else size)

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.preprocess_cfg["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.preprocess_cfg["std"])

    def open_clip_config(self) -> dict[str, Any]:
        """The `open_clip_config.json` that makes a saved student loadable by open_clip."""
        return {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg}


def create_student(name: str, *, pretrained: str | None = None, seed: int = 0) -> Student:
    """Build a student: `tiny`, an open_clip architecture name, or a saved `local-dir:` folder.

    Random initialisation draws from a forked, seeded generator: the same seed gives the same
    weights, and the caller's global random state is untouched.
    """
    if name == TINY:
        if pretrained:
            raise StudentError("the tiny student has no pretrained weights")
        model_cfg, preprocess_cfg = json.loads(json.dumps(TINY_MODEL_CFG)), dict(TINY_PREPROCESS_CFG)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.CLIP(**model_cfg)
    elif name.startswith(LOCAL_DIR):
        model, model_cfg, preprocess_cfg = _load_local_dir(name[len(LOCAL_DIR) :])
    else:
        model_cfg = open_clip.get_model_config(name)
        if model_cfg is None:
            raise StudentError(
                f"unknown student: {unknown_architecture(name)}; or choose tiny or local-dir:PATH"
            )
        preprocess_cfg = _published_preprocess(name, pretrained)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = open_clip.create_model(
                    name,
                    pretrained=pretrained,
                    force_preprocess_cfg=preprocess_cfg,
                    require_pretrained=bool(pretrained),
                )
        except Exception as error:
            raise StudentError(
                f"cannot build student {name}@{pretrained or 'random-init'}: {type(error).__name__}: {error}"
            ) from error
    tokenizer = open_clip.SimpleTokenizer(context_length=int(model_cfg["text_cfg"].get("context_length", 77)))
    return Student(name, model, tokenizer, model_cfg, preprocess_cfg)


def _published_preprocess(name: str, pretrained: str | None) -> dict[str, Any]:
    """Mean/std/interpolation of the named (else the first) published checkpoint of `name`."""
    tags = open_clip.list_pretrained_tags_by_model(name)
    tag = pretrained if pretrained in tags else (tags[0] if tags else None)
    published = open_clip.get_pretrained_cfg(name, tag) if tag else {}
    return {
        key: list(published[key])
        if key in ("mean", "std") and key in published
        else published.get(key, default)
        for key, default in TINY_PREPROCESS_CFG.items()
    }


def _load_local_dir(folder: str) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    config_path = Path(folder) / OPEN_CLIP_CONFIG_FILE
    if not config_path.is_file():
        raise StudentError(f"{folder} holds no {OPEN_CLIP_CONFIG_FILE}")
    config = json.loads(config_path.read_text())
    try:
        model = open_clip.create_model(f"{LOCAL_DIR}{folder}")
    except Exception as error:
        raise StudentError(f"cannot load student from {folder}: {type(error).__name__}: {error}") from error
    saved = config.get("preprocess_cfg") or {}
    preprocess = {key: saved.get(key, default) for key, default in TINY_PREPROCESS_CFG.items()}
    return model, config["model_cfg"], preprocess


def encode(student: Student, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """L2-normalised image and text features and the exponentiated logit scale, in float32."""
    model = student.model
    dtype = next(model.parameters()).dtype
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=student.autocast_bf16):
        image_features = model.encode_image(images.to(dtype), normalize=True).float()
        text_features = model.encode_text(tokens, normalize=True).float()
    return image_features, text_features, model.logit_scale.float().exp()
