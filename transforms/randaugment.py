"""RandAugment with torchvision's v1 semantics on PIL images, split into sample and apply.

The op table (index -> op) is part of the stored format (``PARAM_AUG_VERSION`` 1): a stored
``[op, mag]`` means "op number ``op`` of this table, applied with signed magnitude ``mag``".
Magnitudes are the float32 values of torchvision's ``torch.linspace`` tables, turned into Python
floats (0.27 becomes 0.26999998092651367), so a stored value equals the value torchvision applies.

Each op calls the same Pillow primitive with the same arguments that
``torchvision.transforms.functional`` uses for a PIL image: affine ops use nearest (or the configured)
interpolation with a black fill, shears are about the origin with angle ``degrees(atan(mag))``,
translations are truncated to whole pixels and act about the image centre, rotations turn about the
centre without expanding. Affine matrices are computed in the same floating-point order as
torchvision's, so the pixels are identical, which the tests check op by op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from transforms.errors import InvalidParamsError
from transforms.seeding import draw_int, draw_unit

OP_NAMES: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
OP_INDEX: dict[str, int] = {name: index for index, name in enumerate(OP_NAMES)}
_SIGNED = (
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
)
SIGNED_OPS = frozenset(OP_INDEX[name] for name in _SIGNED)

Op = tuple[int, float]
Fill = tuple[int, int, int]


@lru_cache(maxsize=64)
def op_magnitudes(num_bins: int, magnitude: int, height: int, width: int) -> tuple[float, ...]:
    """Unsigned magnitude of every op at bin ``magnitude`` for a ``height`` x ``width`` view.

    Uses ``torch.linspace`` in float32 on purpose: those are torchvision's exact values.
    """
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"magnitude bin {magnitude} is outside [0, {num_bins})")

    def ramp(end: float, start: float = 0.0) -> float:
        return float(torch.linspace(start, end, num_bins)[magnitude].item())

    posterize_bits = 8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int()
    by_name = {
        "Identity": 0.0,
        "ShearX": ramp(0.3),
        "ShearY": ramp(0.3),
        "TranslateX": ramp(150.0 / 331.0 * width),
        "TranslateY": ramp(150.0 / 331.0 * height),
        "Rotate": ramp(30.0),
        "Brightness": ramp(0.9),
        "Color": ramp(0.9),
        "Contrast": ramp(0.9),
        "Sharpness": ramp(0.9),
        "Posterize": float(posterize_bits[magnitude].item()),
        "Solarize": ramp(0.0, start=255.0),
        "AutoContrast": 0.0,
        "Equalize": 0.0,
    }
    return tuple(by_name[name] for name in OP_NAMES)


def sample_ops(rng: np.random.Generator, num_ops: int, magnitudes: Sequence[float]) -> tuple[Op, ...]:
    """Draw ``num_ops`` (op, signed magnitude) pairs: uniform op, sign flipped with probability 1/2."""
    ops = []
    for _ in range(num_ops):
        op = draw_int(rng, 0, len(OP_NAMES))
        value = magnitudes[op]
        if op in SIGNED_OPS and draw_unit(rng) < 0.5:
            value = -value
        ops.append((op, value))
    return tuple(ops)


def _affine_inverse(
    center: tuple[float, float], angle: float, translate: tuple[float, float], shear: tuple[float, float]
) -> tuple[float, ...]:
    """Pillow's output->input matrix of rotate-shear about ``center`` then translate (scale 1).

    The arithmetic follows torchvision's ``_get_inverse_affine_matrix`` operation for operation:
    nearest-neighbour sampling turns a one-ulp difference into a different pixel.
    """
    rot = math.radians(angle)
    sx = math.radians(shear[0])
    sy = math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = (0.0 + (m0 * (-cx - tx) + m1 * (-cy - ty))) + cx
    m5 = (0.0 + (m3 * (-cx - tx) + m4 * (-cy - ty))) + cy
    return (m0, m1, m2, m3, m4, m5)


def _affine(image: Image.Image, matrix: tuple[float, ...], resample: int, fill: Fill) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample, fillcolor=fill)


def _shear_angle(magnitude: float) -> float:
    return math.degrees(math.atan(magnitude))


def _shear_x(image: Image.Image, magnitude: float, resample: int, fill: Fill) -> Image.Image:
    matrix = _affine_inverse((0.0, 0.0), 0.0, (0.0, 0.0), (_shear_angle(magnitude), 0.0))
    return _affine(image, matrix, resample, fill)


def _shear_y(image: Image.Image, magnitude: float, resample: int, fill: Fill) -> Image.Image:
    matrix = _affine_inverse((0.0, 0.0), 0.0, (0.0, 0.0), (0.0, _shear_angle(magnitude)))
    return _affine(image, matrix, resample, fill)


def _translate(image: Image.Image, dx: int, dy: int, resample: int, fill: Fill) -> Image.Image:
    width, height = image.size
    center = (width * 0.5, height * 0.5)
    matrix = _affine_inverse(center, 0.0, (float(dx), float(dy)), (0.0, 0.0))
    return _affine(image, matrix, resample, fill)


def _posterize(image: Image.Image, magnitude: float) -> Image.Image:
    bits = int(magnitude)
    if not 0 <= bits <= 8:
        raise InvalidParamsError(f"posterize needs 0..8 bits, got {magnitude}", "bad_magnitude")
    return ImageOps.posterize(image, bits)


OpFunction = Callable[[Image.Image, float, int, Fill], Image.Image]

_OPS: dict[str, OpFunction] = {
    "Identity": lambda im, m, r, f: im,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": lambda im, m, r, f: _translate(im, int(m), 0, r, f),
    "TranslateY": lambda im, m, r, f: _translate(im, 0, int(m), r, f),
    "Rotate": lambda im, m, r, f: im.rotate(m, r, expand=False, fillcolor=f),
    "Brightness": lambda im, m, r, f: ImageEnhance.Brightness(im).enhance(1.0 + m),
    "Color": lambda im, m, r, f: ImageEnhance.Color(im).enhance(1.0 + m),
    "Contrast": lambda im, m, r, f: ImageEnhance.Contrast(im).enhance(1.0 + m),
    "Sharpness": lambda im, m, r, f: ImageEnhance.Sharpness(im).enhance(1.0 + m),
    "Posterize": lambda im, m, r, f: _posterize(im, m),
    "Solarize": lambda im, m, r, f: ImageOps.solarize(im, m),
    "AutoContrast": lambda im, m, r, f: ImageOps.autocontrast(im),
    "Equalize": lambda im, m, r, f: ImageOps.equalize(im),
}
_OP_FUNCTIONS: tuple[OpFunction, ...] = tuple(_OPS[name] for name in OP_NAMES)


def apply_op(image: Image.Image, op: int, magnitude: float, resample: int, fill: Fill) -> Image.Image:
    """Apply op number ``op`` with its signed ``magnitude`` to an RGB image."""
    if not 0 <= op < len(OP_NAMES):
        raise InvalidParamsError(f"op {op} is not in the op table (0..{len(OP_NAMES) - 1})", "unknown_op")
    return _OP_FUNCTIONS[op](image, magnitude, resample, fill)
