"""Every RandAugment op at every magnitude equals torchvision's v1 op on PIL images, bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode, RandAugment
from torchvision.transforms.autoaugment import _apply_op

from transforms import OP_NAMES
from transforms.crop import RESAMPLING
from transforms.randaugment import SIGNED_OPS, apply_op, op_magnitudes

CONTRACT_OP_TABLE = [
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
]


def test_op_table_is_the_contract_table_and_torchvision_order() -> None:
    assert list(OP_NAMES) == CONTRACT_OP_TABLE
    assert list(RandAugment()._augmentation_space(31, (224, 224))) == CONTRACT_OP_TABLE


@pytest.mark.parametrize("num_bins", [31, 10])
@pytest.mark.parametrize("size", [(224, 224), (57, 90)])
def test_magnitudes_and_signs_equal_torchvision(num_bins: int, size: tuple[int, int]) -> None:
    space = RandAugment()._augmentation_space(num_bins, size)
    for magnitude in range(num_bins):
        ours = op_magnitudes(num_bins, magnitude, *size)
        for index, (values, signed) in enumerate(space.values()):
            expected = float(values[magnitude].item()) if values.ndim > 0 else 0.0
            assert ours[index] == expected, (OP_NAMES[index], magnitude)
            assert (index in SIGNED_OPS) == signed


def test_datacompdr_magnitudes_are_the_stored_float32_values() -> None:
    ours = dict(zip(OP_NAMES, op_magnitudes(31, 9, 224, 224), strict=True))
    assert ours["Brightness"] == 0.26999998092651367
    assert ours["ShearX"] == pytest.approx(0.09, abs=1e-7)
    assert ours["TranslateX"] == pytest.approx(150 / 331 * 224 / 30 * 9, abs=1e-5)
    assert ours["Rotate"] == 9.0 and ours["Posterize"] == 7.0 and ours["Solarize"] == 178.5


def _torchvision_op(image: Image.Image, name: str, magnitude: float, interpolation: InterpolationMode, fill):
    return F.pil_to_tensor(_apply_op(image, name, magnitude, interpolation=interpolation, fill=fill))


def _ours(image: Image.Image, op: int, magnitude: float, interpolation: str, fill) -> torch.Tensor:
    pil_fill = (0, 0, 0) if fill is None else tuple(int(v) for v in fill)
    return F.pil_to_tensor(apply_op(image, op, magnitude, RESAMPLING[interpolation], pil_fill))


@pytest.mark.parametrize("size", [(96, 96), (37, 61)])
def test_every_op_every_bin_both_signs(size: tuple[int, int], make_pixels) -> None:
    width, height = size
    image = Image.fromarray(make_pixels(width, height, seed=width), "RGB")
    changed = set()
    for magnitude in range(31):
        table = op_magnitudes(31, magnitude, height, width)
        for op, name in enumerate(OP_NAMES):
            for sign in (1.0, -1.0) if op in SIGNED_OPS else (1.0,):
                value = sign * table[op]
                expected = _torchvision_op(image, name, value, InterpolationMode.NEAREST, None)
                ours = _ours(image, op, value, "nearest", None)
                assert torch.equal(ours, expected), (name, magnitude, value)
                if not torch.equal(ours, F.pil_to_tensor(image)):
                    changed.add(name)
    # Guard against a vacuous comparison: every op but Identity must change this image somewhere.
    assert changed == set(OP_NAMES) - {"Identity"}


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_geometric_ops_with_other_interpolation_and_fill(interpolation: str, make_pixels) -> None:
    image = Image.fromarray(make_pixels(48, 40, seed=3), "RGB")
    mode = InterpolationMode(interpolation)
    fill = [200.0, 10.0, 90.0]
    for name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        for value in (0.3, -0.17, 13.7, -21.0, 29.9):
            expected = _torchvision_op(image, name, value, mode, fill)
            assert torch.equal(_ours(image, OP_NAMES.index(name), value, interpolation, fill), expected)


def test_shear_is_about_the_origin_and_translate_truncates(make_pixels) -> None:
    image = Image.fromarray(make_pixels(64, 64, seed=1), "RGB")
    pixels = F.pil_to_tensor(image)
    sheared = _ours(image, OP_NAMES.index("ShearX"), 0.3, "nearest", None)
    assert torch.equal(sheared[:, 0, :], pixels[:, 0, :])  # row 0 does not move: the origin is fixed
    shifted = _ours(image, OP_NAMES.index("TranslateX"), 30.9, "nearest", None)
    assert torch.equal(shifted[:, :, 30:], pixels[:, :, :-30])  # 30.9 moves by int(30.9) = 30 pixels
    assert int(shifted[:, :, :30].max()) == 0
    assert math.isclose(math.degrees(math.atan(0.3)), 16.69924423399362)
