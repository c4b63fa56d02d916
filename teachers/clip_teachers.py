"""One CLIP teacher behind one interface, whether it comes from open_clip or transformers.

A teacher knows its own preprocessing (input size, resize mode, interpolation, mean/std) and its own
tokenizer; the ensemble only hands it pixels already resized and normalised its way, and raw text.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from teachers.determinism import use_batch_invariant_kernels
from teachers.devices import host_to_device
from teachers.specs import ModelSpec, check_reachable, load_errors, parse_spec, torch_dtype

# A caption longer than this is cut before tokenising: every tokenizer here truncates to at most a few
# hundred tokens anyway, and cleaning/BPE over megabytes of text would stall the whole batch.
MAX_TEXT_CHARS = 4096

# PIL resample codes (as stored in transformers image-processor configs) -> torchvision mode names.
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def clean_text(text: str) -> str:
    """What any tokenizer can take: bounded length, valid UTF-8 (lone surrogates replaced)."""
    if not isinstance(text, str):
        raise TypeError(f"captions must be str, got {type(text).__name__}")
    return text[:MAX_TEXT_CHARS].encode("utf-8", "replace").decode("utf-8")


@dataclasses.dataclass
class Teacher:
    """A loaded CLIP teacher: image and text towers plus the preprocessing they were trained with."""

    spec: ModelSpec
    precision: str
    device: torch.device
    dim: int
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # "bicubic" | "bilinear" | "nearest"
    resize_mode: str  # "shortest" (resize + centre crop) | "squash" | "longest" (resize + pad)
    logit_scale: float  # the model's own learned scale, the default KD logit scale
    encode_pixels: Callable[[torch.Tensor], torch.Tensor]  # normalised float pixels -> [B, dim] on device
    encode_texts: Callable[[list[str]], torch.Tensor]  # cleaned texts -> [N, dim] on device


_Tokens = TypeVar("_Tokens")


def one_thread_at_a_time(tokenizer: Callable[..., _Tokens]) -> Callable[..., _Tokens]:
    """The tokenizer behind a lock: Beam runs several harness threads over one loaded teacher.

    A transformers fast tokenizer stores its padding and truncation settings in the Rust object and
    rewrites them in a call whenever they differ from the call's; a thread doing so while another
    thread is tokenising raises "RuntimeError: Already borrowed". Tokenising is cheap next to the
    model, so serialising it costs little.
    """
    lock = threading.Lock()

    def tokenize(*args: Any, **kwargs: Any) -> _Tokens:
        with lock:
            return tokenizer(*args, **kwargs)

    return tokenize


def _input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the first layer computes in (open_clip's bf16 keeps embeddings and norms in fp32)."""
    return next(m.weight.dtype for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def load_open_clip_teacher(spec: ModelSpec, precision: str, device: str) -> Teacher:
    import open_clip

    quick_gelu = False
    if spec.pretrained is not None:
        # open_clip 3.x only warns when a tag was trained with QuickGELU (the OpenAI weights) but the
        # architecture config says GELU; the embeddings would then be silently wrong.
        tag_cfg = open_clip.get_pretrained_cfg(spec.model_id.replace("/", "-"), spec.pretrained)
        quick_gelu = bool(tag_cfg.get("quick_gelu", False)) if tag_cfg else False
    with load_errors(spec):
        model = open_clip.create_model(
            spec.model_id,
            pretrained=spec.pretrained,
            precision=precision,
            device=device,
            force_quick_gelu=quick_gelu,
            pretrained_text=False,
        )
        tokenizer = one_thread_at_a_time(open_clip.get_tokenizer(spec.model_id))
    model.eval()
    use_batch_invariant_kernels(device)
    target = torch.device(device)
    pre = open_clip.get_model_preprocess_cfg(model)
    size = pre["size"]
    weight_dtype = _input_dtype(model.visual)

    @torch.inference_mode()
    def encode_pixels(pixels: torch.Tensor) -> torch.Tensor:
        return model.encode_image(pixels.to(device=device, dtype=weight_dtype)).float()

    @torch.inference_mode()
    def encode_texts(texts: list[str]) -> torch.Tensor:
        return model.encode_text(host_to_device(tokenizer(texts), target)).float()

    return Teacher(
        spec=spec,
        precision=precision,
        device=target,
        dim=encode_texts([""]).shape[1],
        image_size=(size, size) if isinstance(size, int) else (int(size[0]), int(size[1])),
        mean=tuple(float(v) for v in pre["mean"]),
        std=tuple(float(v) for v in pre["std"]),
        interpolation=str(pre.get("interpolation", "bicubic")),
        resize_mode=str(pre.get("resize_mode", "shortest")),
        logit_scale=float(model.logit_scale.detach().float().exp().reshape(-1)[0]),
        encode_pixels=encode_pixels,
        encode_texts=encode_texts,
    )


def _hf_image_geometry(processor: object) -> tuple[tuple[int, int], str]:
    """Final input size and resize mode from a transformers image processor's settings."""
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None):
        crop = processor.crop_size
        return (int(crop["height"]), int(crop["width"])), "shortest"
    size = processor.size
    if "height" in size and "width" in size:
        return (int(size["height"]), int(size["width"])), "squash"
    edge = int(size["shortest_edge"])
    return (edge, edge), "shortest"


def load_hf_teacher(spec: ModelSpec, precision: str, device: str) -> Teacher:
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    dtype = torch_dtype(precision)
    with load_errors(spec):
        config = AutoConfig.from_pretrained(spec.model_id)
        if config.model_type not in ("clip", "siglip"):
            raise ValueError(
                f"a transformers teacher must be a CLIPModel or SiglipModel, not {config.model_type}"
            )
        model = AutoModel.from_pretrained(spec.model_id, torch_dtype=dtype).to(device).eval()
        tokenizer = one_thread_at_a_time(AutoTokenizer.from_pretrained(spec.model_id))
        processor = AutoImageProcessor.from_pretrained(spec.model_id, use_fast=False)
    size, resize_mode = _hf_image_geometry(processor)
    max_length = int(config.text_config.max_position_embeddings)
    # SigLIP was trained on texts padded to the full length without an attention mask; CLIP masks padding.
    siglip = config.model_type == "siglip"
    use_batch_invariant_kernels(device)
    target = torch.device(device)

    @torch.inference_mode()
    def encode_pixels(pixels: torch.Tensor) -> torch.Tensor:
        return model.get_image_features(pixel_values=pixels.to(device=device, dtype=dtype)).float()

    @torch.inference_mode()
    def encode_texts(texts: list[str]) -> torch.Tensor:
        # Always the full length: padding to the batch's longest text would make a caption's numbers
        # depend on its neighbours.
        batch = tokenizer(
            texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        ids = host_to_device(batch["input_ids"], target)
        mask = None if siglip else host_to_device(batch["attention_mask"], target)
        return model.get_text_features(input_ids=ids, attention_mask=mask).float()

    mean, std = processor.image_mean, processor.image_std
    return Teacher(
        spec=spec,
        precision=precision,
        device=target,
        dim=encode_texts([""]).shape[1],
        image_size=size,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        interpolation=_PIL_RESAMPLE.get(int(getattr(processor, "resample", 3)), "bicubic"),
        resize_mode=resize_mode,
        logit_scale=float(model.logit_scale.detach().float().exp().reshape(-1)[0]),
        encode_pixels=encode_pixels,
        encode_texts=encode_texts,
    )


def load_teacher(spec: str | ModelSpec, *, precision: str = "fp32", device: str = "cpu") -> Teacher:
    """Loads one teacher; raises ModelLoadError (fast, with the way out) when it cannot."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    torch_dtype(precision)  # validates
    check_reachable(parsed)
    if parsed.backend == "open_clip":
        return load_open_clip_teacher(parsed, precision, device)
    return load_hf_teacher(parsed, precision, device)
