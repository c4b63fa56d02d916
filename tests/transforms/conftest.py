"""Shared helpers: the torchvision v1 reference renderer and synthetic test images.

The reference renders a view from ``ViewParams`` with ``torchvision.transforms.functional`` on a
PIL image and torchvision's own RandAugment op dispatcher, i.e. what the public DataCompDR code
runs. Our renderer must match it pixel for pixel.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import _apply_op

from transforms import OP_NAMES, ViewParams

ReferenceView = Callable[..., torch.Tensor]


def reference_view(
    image: Image.Image,
    params: ViewParams,
    size: int,
    crop_interpolation: InterpolationMode = InterpolationMode.BICUBIC,
    op_interpolation: InterpolationMode = InterpolationMode.NEAREST,
    fill: list[float] | None = None,
) -> torch.Tensor:
    i, j, h, w = params.crop
    view = F.resized_crop(image, i, j, h, w, [size, size], crop_interpolation)
    if params.flip:
        view = F.hflip(view)
    for op, magnitude in params.ops or ():
        view = _apply_op(view, OP_NAMES[op], magnitude, interpolation=op_interpolation, fill=fill)
    tensor = F.pil_to_tensor(view)
    if params.erase is not None:
        tensor = F.erase(tensor, *params.erase, v=torch.zeros((), dtype=torch.uint8))
    return tensor


def reference_decode(data: bytes) -> Image.Image:
    """The public trainer's decode: webdataset "pilrgba", then RGB."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGBA").convert("RGB")


def structured_pixels(width: int, height: int, seed: int) -> np.ndarray:
    """Gradients, blocks and noise: enough structure for autocontrast, equalize and sharpness to act."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack(
        [
            255 * x / max(1, width - 1),
            255 * y / max(1, height - 1),
            127.5 + 127.5 * np.sin((x + 2 * y) / (3 + seed % 7)),
        ],
        axis=-1,
    )
    blocks = ((x // (4 + seed % 5) + y // (3 + seed % 4)) % 2)[..., None] * rng.uniform(-60, 60, size=3)
    noise = rng.normal(0, 12, size=(height, width, 3))
    low, high = rng.uniform(0, 60), rng.uniform(190, 255)  # a narrowed range, so autocontrast stretches it
    pixels = np.clip(base + blocks + noise, 0, 255) / 255 * (high - low) + low
    return pixels.round().astype(np.uint8)


def encode_image(pixels: np.ndarray, mode: str, fmt: str, seed: int = 0) -> bytes:
    """Encode RGB pixels as an image file of ``mode`` and ``fmt`` (PNG, JPEG, WEBP, GIF, BMP, TIFF)."""
    image = Image.fromarray(pixels, "RGB")
    extra: dict = {}
    if mode in ("RGBA", "LA"):
        alpha = np.random.default_rng(seed).integers(0, 256, pixels.shape[:2], dtype=np.uint8)
        alpha[: pixels.shape[0] // 2] = 0  # a fully transparent half: its colour must survive decoding
        image = image.convert(mode[:-1])
        image.putalpha(Image.fromarray(alpha, "L"))
    elif mode == "P":
        image = image.quantize(colors=64)
    elif mode == "P_transparent":
        image = image.quantize(colors=32)
        extra["transparency"] = 0
    elif mode == "I;16":
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(gray)  # uint16 -> mode "I;16"
    elif mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    if fmt == "JPEG":
        extra["quality"] = 90
    if fmt == "WEBP":
        extra["lossless"] = True
    image.save(buffer, fmt, **extra)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def reference() -> ReferenceView:
    return reference_view


@pytest.fixture(scope="session")
def decode_reference() -> Callable[[bytes], Image.Image]:
    return reference_decode


@pytest.fixture(scope="session")
def make_pixels() -> Callable[[int, int, int], np.ndarray]:
    return structured_pixels


@pytest.fixture(scope="session")
def make_image_bytes() -> Callable[..., bytes]:
    return encode_image
