"""The miniature's models: two CLIP teachers, a CoCa captioner and a weaker student, all tiny for CPU.

Each is an open_clip config at 64 px with a 24-token context (every caption of the world fits; the
captioner has 32 positions for the job's 30-token sampling),
written as a seeded random-init `local-dir:` folder that `python -m trainer.train` starts from. The
teachers differ in architecture (wider and deeper with 16-px patches; narrower with 8-px patches);
the student is narrower and shallower than both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from teachers.tiny import local_dir_spec, write_random_checkpoint

_VOCAB = 49408  # the CLIP tokenizer's ids: every text tower keeps the full vocabulary
CONTEXT = 24
# The job samples captions up to 30 tokens (contract §4), so the captioner needs positions for them.
CAPTIONER_CONTEXT = 32
_PREPROCESS = {
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def _text(width: int, layers: int, context: int = CONTEXT) -> dict[str, Any]:
    return {"context_length": context, "vocab_size": _VOCAB, "width": width, "heads": 2, "layers": layers}


def _vision(width: int, layers: int, patch: int) -> dict[str, Any]:
    return {"image_size": 64, "layers": layers, "width": width, "head_width": 32, "patch_size": patch}


MODELS: dict[str, dict[str, Any]] = {
    "teacher_a": {"embed_dim": 64, "vision_cfg": _vision(128, 3, 16), "text_cfg": _text(64, 2)},
    "teacher_b": {"embed_dim": 48, "vision_cfg": _vision(64, 2, 8), "text_cfg": _text(64, 2)},
    "captioner": {
        "embed_dim": 32,  # open_clip's CoCa decoder attends to image tokens of this width: = text width
        "vision_cfg": {
            **_vision(96, 2, 16),
            "attentional_pool": True,
            "attn_pooler_queries": 17,  # 16 image tokens for the decoder (open_clip's 256 suit 224 px)
            "attn_pooler_heads": 2,
            "output_tokens": True,
        },
        # Narrow text towers: the decoder's 49,408-way output layer at every position is most of the cost.
        "text_cfg": {**_text(32, 1, CAPTIONER_CONTEXT), "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {**_text(32, 1, CAPTIONER_CONTEXT), "attn_pooler_heads": 2},
        "custom_text": True,
    },
    "student": {"embed_dim": 64, "vision_cfg": _vision(64, 2, 16), "text_cfg": _text(64, 1)},
}
TEACHERS = ("teacher_a", "teacher_b")
CAPTIONER = "captioner"
STUDENT = "student"


def write_initial(name: str, folder: str | Path, seed: int) -> str:
    """Write model `name` with seeded random weights into `folder`; returns its `local-dir:` spec."""
    write_random_checkpoint(folder, MODELS[name], _PREPROCESS, seed=seed)
    return local_dir_spec(folder)
