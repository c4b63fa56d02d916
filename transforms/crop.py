"""RandomResizedCrop split into sampling a box and rendering it, as torchvision v1 does on PIL.

The box ``(i, j, h, w)`` (top, left, height, width) is in pixels of the decoded source image, so
it stays valid at any output size: the teachers render it at 224, a student at 256. Rendering is
``image.crop(box).resize((size, size), resample)``, the order torchvision uses; resizing with
Pillow's ``box=`` argument would read pixels outside the box and give different edges.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from transforms.errors import ImageTooSmallError, InvalidParamsError
from transforms.seeding import draw_int, draw_uniform

Box = tuple[int, int, int, int]

RESAMPLING: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
_MAX_TRIES = 10


def check_min_side(image_size: tuple[int, int], min_side: int) -> None:
    """ImageTooSmallError for an image (width, height) with a side below `min_side`: no view is drawn
    from it, and the score pass skips it the same way."""
    width, height = image_size
    if min(width, height) < max(1, min_side):
        raise ImageTooSmallError(f"image {width}x{height} has a side below {min_side} px")


def sample_crop(
    rng: np.random.Generator,
    image_size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    min_side: int,
) -> Box:
    """Draw a box covering ``scale`` of the area with aspect ``ratio``; centre crop after 10 misses.

    ``image_size`` is ``(width, height)``. Images with a side below ``min_side`` are refused.
    """
    check_min_side(image_size, min_side)
    width, height = image_size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_MAX_TRIES):
        target_area = area * draw_uniform(rng, scale[0], scale[1])
        aspect = math.exp(draw_uniform(rng, log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return (draw_int(rng, 0, height - h + 1), draw_int(rng, 0, width - w + 1), h, w)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return ((height - h) // 2, (width - w) // 2, h, w)


def check_box(box: Box, image_size: tuple[int, int]) -> None:
    """Refuse a box that is not fully inside a ``(width, height)`` image (torchvision would pad it)."""
    i, j, h, w = box
    width, height = image_size
    if h < 1 or w < 1 or i < 0 or j < 0 or i + h > height or j + w > width:
        raise InvalidParamsError(
            f"crop box (i={i}, j={j}, h={h}, w={w}) is not inside the {width}x{height} image",
            "box_outside_image",
        )


def render_crop(image: Image.Image, box: Box, size: int, resample: int) -> Image.Image:
    """Cut ``box`` out of ``image`` and resize it to ``size`` x ``size``."""
    check_box(box, image.size)
    i, j, h, w = box
    return image.crop((j, i, j + w, i + h)).resize((size, size), resample)
