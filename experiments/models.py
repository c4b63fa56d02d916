"""The miniature's models: two CLIP teachers, a CoCa captioner and a weaker student, all tiny for CPU.

Each is an open_clip config at 64 px with a 24-token context (every caption of the world fits; the
captioner has 32 positions for the job's 30-token sampling), written as a seeded random-init
`local-dir:` folder that `python -m trainer.train` starts from. The CLIP teachers are small
convolutional towers (open_clip's ModifiedResNet), which learn shapes from a few thousand steps where
ViTs this small learned colours only (top-1 0.22 after 400 steps against the ResNet's 0.59); they
differ in depth and embedding width. The captioner must be a ViT (CoCa's decoder reads image tokens),
with small patches; `teacher_cache` gives it a first stage on one-object pictures, from which it
learns shapes. The student is a ResNet of half the teachers' width with a one-layer
text tower: a mobile model beside its teachers, as MobileCLIP's are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load, save

from shards import storage
from teachers.specs import OPEN_CLIP_WEIGHTS_FILE
from teachers.tiny import local_dir_spec, write_random_checkpoint

_VOCAB = 49408  # the CLIP tokenizer's ids: every text tower keeps the full vocabulary
CONTEXT = 24
# The job samples captions up to 30 tokens (contract §4), so the captioner needs positions for them.
CAPTIONER_CONTEXT = 32
PREPROCESS = {
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def _text(width: int, layers: int, context: int = CONTEXT) -> dict[str, Any]:
    return {"context_length": context, "vocab_size": _VOCAB, "width": width, "heads": 2, "layers": layers}


def _vision(width: int, layers: int, patch: int) -> dict[str, Any]:
    return {"image_size": 64, "layers": layers, "width": width, "head_width": 32, "patch_size": patch}


def _resnet(width: int, blocks: list[int]) -> dict[str, Any]:
    return {"image_size": 64, "layers": blocks, "width": width, "head_width": 32}


MODELS: dict[str, dict[str, Any]] = {
    "teacher_a": {"embed_dim": 64, "vision_cfg": _resnet(16, [1, 1, 1, 1]), "text_cfg": _text(32, 2)},
    "teacher_b": {"embed_dim": 48, "vision_cfg": _resnet(16, [1, 1, 2, 1]), "text_cfg": _text(32, 2)},
    "captioner": {
        "embed_dim": 32,  # open_clip's CoCa decoder attends to image tokens of this width: = text width
        "vision_cfg": {
            **_vision(96, 2, 8),
            "attentional_pool": True,
            "attn_pooler_queries": 17,  # 16 image tokens for the decoder (open_clip's 256 suit 224 px)
            # open_clip's 8 heads: with 2 (of 16 dims) the pooled features learnt shapes at half the
            # speed (a 36-class probe: top-1 0.34 against 0.66 after 300 steps at batch 128)
            "attn_pooler_heads": 8,
            "output_tokens": True,
        },
        # Narrow text towers: the decoder's 49,408-way output layer at every position is most of the cost.
        "text_cfg": {**_text(32, 1, CAPTIONER_CONTEXT), "embed_cls": True, "output_tokens": True},
        # Two decoder layers, on the reasoning that naming an object's shape means finding the object
        # first; not measured alone (a one-layer probe named both objects of 5% of two-object pictures).
        "multimodal_cfg": {**_text(32, 2, CAPTIONER_CONTEXT), "attn_pooler_heads": 2},
        "custom_text": True,
    },
    "student": {"embed_dim": 64, "vision_cfg": _resnet(8, [1, 1, 1, 1]), "text_cfg": _text(32, 1)},
}
TEACHERS = ("teacher_a", "teacher_b")
CAPTIONER = "captioner"
STUDENT = "student"


def write_initial(name: str, folder: str | Path, seed: int) -> str:
    """Write model `name` with seeded random weights into `folder`; returns its `local-dir:` spec.

    Token embeddings start at zero: the world's captions use a few hundred of CLIP's 49,408 tokens,
    the rows no caption uses get no gradient and stay zero, and so a trained model compresses to a
    fraction of its size (the shipped teachers). The rows a caption uses learn from zero as well.
    """
    write_random_checkpoint(folder, MODELS[name], PREPROCESS, seed=seed)
    weights = Path(folder) / OPEN_CLIP_WEIGHTS_FILE
    state = load(weights.read_bytes())
    for key, tensor in state.items():
        if key.endswith("token_embedding.weight"):
            tensor.zero_()
    storage.write_bytes_atomic(str(weights), save(state))
    return local_dir_spec(folder)
