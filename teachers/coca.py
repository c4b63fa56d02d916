"""An open_clip CoCa as a fast captioner: one image encoding for all samples, and a key/value cache.

open_clip's `generate` re-runs the text tower and the multimodal decoder over the whole prefix at
every step, and the public generator calls it once per caption, re-encoding the image each time.
Here the image is encoded once per chunk, each decoder layer's cross-attention keys/values are
computed once per image (the S samples of an image attend to them as S queries, no copies), and
self-attention keys/values are cached, so each new token costs one position.

The maths is open_clip's (same modules, weights and order of operations per position); only the
bookkeeping differs. The CLS token and pad mask that open_clip appends to the text tower only change
the CLS position, which captioning never reads, so they are left out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from teachers.caption_backend import CaptionBackend, IncrementalDecoder
from teachers.determinism import batch_invariant
from teachers.specs import ModelSpec, load_errors, torch_dtype


class UnsupportedCocaError(ValueError):
    """The CoCa variant has blocks this fast path does not implement (the message names them)."""


def _check_block(block: nn.Module, where: str) -> None:
    from open_clip.transformer import ResidualAttentionBlock

    if type(block) is not ResidualAttentionBlock:
        raise UnsupportedCocaError(f"{where}: {type(block).__name__} blocks are not supported")
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention) or not attn.batch_first or attn.in_proj_weight is None:
        raise UnsupportedCocaError(
            f"{where}: attention must be a batch-first MultiheadAttention with in_proj"
        )
    if attn.bias_k is not None or attn.bias_v is not None:
        raise UnsupportedCocaError(f"{where}: attention with bias_k/bias_v is not supported")


def check_supported(model: nn.Module) -> None:
    """Raises UnsupportedCocaError unless `model` is a CoCa whose towers this module can step through."""
    from open_clip import CoCa
    from open_clip.transformer import TextTransformer

    if not isinstance(model, CoCa):
        raise UnsupportedCocaError(f"not an open_clip CoCa model: {type(model).__name__}")
    if not isinstance(model.text, TextTransformer) or model.text.cls_emb is None:
        raise UnsupportedCocaError("the text tower must be open_clip's TextTransformer with a CLS token")
    if model.text.attn_mask is None:
        raise UnsupportedCocaError("the text tower must be causal")
    for i, block in enumerate(model.text.transformer.resblocks):
        _check_block(block, f"text block {i}")
    for i, block in enumerate(model.text_decoder.resblocks):
        _check_block(block, f"decoder block {i}")
    for i, block in enumerate(model.text_decoder.cross_attn):
        _check_block(block, f"decoder cross-attention {i}")


def cast_for_precision(model: nn.Module, dtype: torch.dtype) -> None:
    """Finishes open_clip's bf16 weight cast for CoCa, which open_clip only completes under autocast.

    open_clip leaves the attentional pooler's queries and the decoder's vocabulary projection in
    float32, so a bf16 forward without autocast (which is 10-20x slower on CPU) fails on them.
    """
    from open_clip.transformer import AttentionalPooler

    if dtype == torch.float32:
        return
    for module in model.modules():
        if isinstance(module, AttentionalPooler):
            module.query.data = module.query.data.to(dtype)
    model.text_decoder.text_projection.data = model.text_decoder.text_projection.data.to(dtype)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[N, L, W] -> [N, H, L, W/H]"""
    n, length, width = x.shape
    return x.view(n, length, num_heads, width // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[N, H, L, d] -> [N, L, H*d]"""
    n, h, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, h * d)


@dataclasses.dataclass
class _KVCache:
    keys: torch.Tensor  # [N, H, max_len, d]
    values: torch.Tensor


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention: the fused CPU kernel's bits depend on the row's batch position."""
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    return scores.softmax(dim=-1) @ v


def _mlp_residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _self_attention_step(block: nn.Module, x: torch.Tensor, cache: _KVCache, pos: int) -> torch.Tensor:
    """One new position through a causal self-attention block, reading and extending the cache."""
    attn: nn.MultiheadAttention = block.attn
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (_heads(t, attn.num_heads) for t in (q, k, v))
    cache.keys[:, :, pos : pos + 1] = k
    cache.values[:, :, pos : pos + 1] = v
    out = _attend(q, cache.keys[:, :, : pos + 1], cache.values[:, :, : pos + 1])
    x = x + block.ls_1(attn.out_proj(_merge_heads(out)))
    return _mlp_residual(block, x)


def _cross_attention_step(
    block: nn.Module, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Text positions attend to their image's tokens; the S samples of an image are S queries of it."""
    attn: nn.MultiheadAttention = block.attn
    width = attn.embed_dim
    q = F.linear(block.ln_1(x), attn.in_proj_weight[:width], attn.in_proj_bias[:width])  # [B*S, 1, W]
    images = keys.shape[0]
    q = _heads(q.reshape(images, -1, width), attn.num_heads)  # [B, H, S, d]
    out = _attend(q, keys, values)  # [B, H, S, d]
    out = _merge_heads(out).reshape(-1, 1, width)  # [B*S, 1, W]
    x = x + block.ls_1(attn.out_proj(out))
    return _mlp_residual(block, x)


class CocaIncrementalDecoder:
    """Decodes S samples for each of B images, one token per call, rows ordered image-major."""

    @torch.inference_mode()
    def __init__(self, model: nn.Module, image_embs: torch.Tensor, num_samples: int, max_len: int) -> None:
        self.model = model
        text, decoder = model.text, model.text_decoder
        self.dtype = text.transformer.get_cast_dtype()
        self.device = image_embs.device
        images = image_embs.shape[0]
        rows = images * num_samples
        self.pos = 0
        self.max_len = max_len

        def cache(block: nn.Module) -> _KVCache:
            attn = block.attn
            shape = (rows, attn.num_heads, max_len, attn.embed_dim // attn.num_heads)
            return _KVCache(
                torch.empty(shape, dtype=self.dtype, device=self.device),
                torch.empty(shape, dtype=self.dtype, device=self.device),
            )

        self.text_caches = [cache(b) for b in text.transformer.resblocks]
        self.decoder_caches = [cache(b) for b in decoder.resblocks]
        self.image_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        for block in decoder.cross_attn:
            attn = block.attn
            width = attn.embed_dim
            context = block.ln_1_kv(image_embs.to(self.dtype))
            k = F.linear(
                context, attn.in_proj_weight[width : 2 * width], attn.in_proj_bias[width : 2 * width]
            )
            v = F.linear(context, attn.in_proj_weight[2 * width :], attn.in_proj_bias[2 * width :])
            self.image_kv.append((_heads(k, attn.num_heads), _heads(v, attn.num_heads)))

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feeds one token per row at the next position; returns next-token logits [N, V] on the model's
        device."""
        if self.pos >= self.max_len:
            raise IndexError(f"decoder is full ({self.max_len} positions)")
        text, decoder = self.model.text, self.model.text_decoder
        x = text.token_embedding(tokens.to(self.device)).to(self.dtype).unsqueeze(1)
        x = x + text.positional_embedding[self.pos].to(self.dtype)
        for block, cache in zip(text.transformer.resblocks, self.text_caches, strict=True):
            x = _self_attention_step(block, x, cache, self.pos)
        layers = zip(decoder.resblocks, decoder.cross_attn, self.decoder_caches, self.image_kv, strict=True)
        for self_block, cross_block, cache, (keys, values) in layers:
            x = _self_attention_step(self_block, x, cache, self.pos)
            x = _cross_attention_step(cross_block, x, keys, values)
        self.pos += 1
        return decoder.ln_final(x)[:, 0] @ decoder.text_projection


@torch.inference_mode()
def encode_images(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Image token embeddings the decoder attends to, [B, tokens, width]."""
    dtype = model.text.transformer.get_cast_dtype()
    with batch_invariant(pixels.device):
        _, image_embs = model._encode_image(pixels.to(dtype))
    return image_embs


def _coca_text(decode_ids: Callable[[list[int]], str], sot: str, eot: str) -> Callable[[list[int]], str]:
    """The public generator's post-processing: after the last start token, before the end token and
    the first ".", whitespace-stripped. A sampled pad token (id 0, "!") ends a caption as in
    open_clip; unlike the public code, the padding after it is not decoded into "!!!"."""

    def decode(ids: list[int]) -> str:
        text = decode_ids(ids)
        return text.split(eot)[0].split(sot)[-1].split(".")[0].strip()

    return decode


def load_coca_backend(spec: ModelSpec, precision: str, device: str) -> CaptionBackend:
    import open_clip

    with load_errors(spec):
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model_id,
            pretrained=spec.pretrained,
            precision=precision,
            device=device,
            pretrained_text=False,
        )
        tokenizer = open_clip.get_tokenizer(spec.model_id)
        check_supported(model)
        if not isinstance(tokenizer, open_clip.SimpleTokenizer):
            raise UnsupportedCocaError(f"tokenizer {type(tokenizer).__name__} (need open_clip's CLIP BPE)")
    model.eval()
    cast_for_precision(model, torch_dtype(precision))
    size = open_clip.get_model_preprocess_cfg(model)["size"]
    height, width = (size, size) if isinstance(size, int) else size

    def start(pixels: torch.Tensor, num_samples: int, max_len: int) -> IncrementalDecoder:
        image_embs = encode_images(model, pixels.to(device))
        return CocaIncrementalDecoder(model, image_embs, num_samples, max_len)

    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    return CaptionBackend(
        spec=spec,
        precision=precision,
        start_id=sot,
        eos_id=eot,
        pad_id=model.pad_id,
        stop_ids=(eot, model.pad_id),
        preprocess=preprocess,
        image_shape=(3, int(height), int(width)),
        start=start,
        decode=_coca_text(tokenizer.decode, tokenizer.decoder[sot], tokenizer.decoder[eot]),
    )
