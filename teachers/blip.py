"""A transformers BLIP captioning model as an alternative to CoCa, with the same sampling loop.

transformers' own `generate` draws from torch's global RNG, which would tie a caption to its batch and
process; here BLIP only supplies the image encoding and a cached next-token step, and
`teachers.captioner` does the (per-sample seeded) sampling exactly as for CoCa.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from teachers.caption_backend import CaptionBackend, IncrementalDecoder
from teachers.determinism import batch_invariant
from teachers.specs import ModelSpec, load_errors, torch_dtype


class BlipIncrementalDecoder:
    """BLIP's text decoder, one token per call, with its own self- and cross-attention cache."""

    def __init__(self, decoder: nn.Module, image_embeds: torch.Tensor) -> None:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        self.decoder = decoder
        self.image_embeds = image_embeds
        self.image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image_embeds.device)
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self.device = image_embeds.device
        self.pos = 0

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        with batch_invariant(self.device):
            out = self.decoder(
                input_ids=tokens.to(self.device).unsqueeze(1),
                encoder_hidden_states=self.image_embeds,
                encoder_attention_mask=self.image_mask,
                past_key_values=self.cache,
                use_cache=True,
                return_dict=True,
                cache_position=torch.tensor([self.pos], device=self.device),
            )
        self.cache = out.past_key_values
        self.pos += 1
        return out.logits[:, -1]


def load_blip_backend(spec: ModelSpec, precision: str, device: str) -> CaptionBackend:
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, BlipForConditionalGeneration

    dtype = torch_dtype(precision)
    with load_errors(spec):
        config = AutoConfig.from_pretrained(spec.model_id)
        if config.model_type != "blip":
            raise ValueError(f"a transformers captioner must be a BLIP model, not {config.model_type}")
        model = (
            BlipForConditionalGeneration.from_pretrained(spec.model_id, torch_dtype=dtype).to(device).eval()
        )
        tokenizer = AutoTokenizer.from_pretrained(spec.model_id)
        processor = AutoImageProcessor.from_pretrained(spec.model_id, use_fast=False)
    text_cfg = config.text_config

    def preprocess(image: Image.Image) -> torch.Tensor:
        return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    @torch.inference_mode()
    def start(pixels: torch.Tensor, num_samples: int, max_len: int) -> IncrementalDecoder:
        with batch_invariant(device):
            image_embeds = model.vision_model(pixel_values=pixels.to(device=device, dtype=dtype))[0]
        return BlipIncrementalDecoder(model.text_decoder, image_embeds.repeat_interleave(num_samples, dim=0))

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True).split(".")[0].strip()

    size = processor.size
    return CaptionBackend(
        spec=spec,
        precision=precision,
        start_id=int(text_cfg.bos_token_id),
        eos_id=int(text_cfg.sep_token_id),
        pad_id=int(text_cfg.pad_token_id),
        stop_ids=(int(text_cfg.sep_token_id),),
        preprocess=preprocess,
        image_shape=(3, int(size["height"]), int(size["width"])),
        start=start,
        decode=decode,
    )
