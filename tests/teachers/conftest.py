"""Tiny seeded transformers models (CLIP, SigLIP, BLIP) saved with save_pretrained, loaded by path.

No hub access is possible in tests, so these stand in for real transformers checkpoints the same way
the tiny open_clip checkpoints stand in for real open_clip ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

_WORDS = [
    "a",
    "an",
    "the",
    "photo",
    "of",
    "dog",
    "cat",
    "on",
    "in",
    "with",
    "red",
    "blue",
    "green",
    "small",
    "large",
    "tree",
    "car",
    "man",
    "woman",
    "beach",
]
_SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
PAD, UNK, BOS, EOS = range(4)
VOCAB = 64


def _tokenizer(max_length: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIALS + _WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", BOS), ("[EOS]", EOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=max_length,
    )


_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def _save(model_factory, processor, tokenizer, folder: Path, seed: int) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_factory()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> folder of a tiny transformers model: "clip", "siglip" (teachers), "blip" (captioner)."""
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    root = tmp_path_factory.mktemp("tiny-hf")
    text = {**_TOWER, "vocab_size": VOCAB, "max_position_embeddings": 16}
    clip_cfg = CLIPConfig(
        text_config={**text, "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD},
        vision_config={**_TOWER, "image_size": 64, "patch_size": 16},
        projection_dim=24,
    )
    siglip_cfg = SiglipConfig(
        text_config={**text, "pad_token_id": PAD},
        vision_config={**_TOWER, "image_size": 48, "patch_size": 16},
    )
    blip_cfg = BlipConfig(
        text_config={
            **_TOWER,
            "vocab_size": VOCAB,
            "max_position_embeddings": 40,
            "bos_token_id": BOS,
            "sep_token_id": EOS,
            "eos_token_id": EOS,
            "pad_token_id": PAD,
            "encoder_hidden_size": 32,
        },
        vision_config={**_TOWER, "image_size": 64, "patch_size": 16},
        projection_dim=32,
    )
    return {
        "clip": _save(
            lambda: CLIPModel(clip_cfg),
            CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
            _tokenizer(16),
            root / "clip",
            seed=11,
        ),
        "siglip": _save(
            lambda: SiglipModel(siglip_cfg),
            SiglipImageProcessor(size={"height": 48, "width": 48}),
            _tokenizer(16),
            root / "siglip",
            seed=12,
        ),
        "blip": _save(
            lambda: BlipForConditionalGeneration(blip_cfg),
            BlipImageProcessor(size={"height": 64, "width": 64}),
            _tokenizer(40),
            root / "blip",
            seed=13,
        ),
    }
