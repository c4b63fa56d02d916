"""Bit-exact replay over 1,120 random (image, seed) cases across sizes, modes, formats and configs.

Each case: encode an image file, decode it with our convention, sample a view from a seeded
generator, store it as JSON, load it back, render it, and compare with torchvision v1 rendering the
same parameters on the public trainer's decode of the same bytes; some cases also at the student's
size 256. Another test covers crops taller and wider than the output, above and below its size.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode

from transforms import (
    DATACOMPDR_AUGMENTATION,
    ViewAugmenter,
    decode_image,
    decode_param_aug,
    encode_param_aug,
    view_rng,
)

MODES_AND_FORMATS = [
    ("RGB", "JPEG"),
    ("RGB", "PNG"),
    ("RGB", "WEBP"),
    ("L", "JPEG"),
    ("L", "PNG"),
    ("P", "PNG"),
    ("P", "GIF"),
    ("P_transparent", "PNG"),
    ("RGBA", "PNG"),
    ("RGBA", "WEBP"),
    ("LA", "PNG"),
    ("CMYK", "JPEG"),
    ("1", "BMP"),
    ("I;16", "PNG"),
    ("RGB", "TIFF"),
]

EVERYTHING_ON = {
    "random_resized_crop": {"size": 64, "scale": [0.2, 1.0], "interpolation": "bilinear"},
    "random_horizontal_flip": {"p": 0.5},
    "rand_augment": {"p": 0.7, "num_ops": 3, "magnitude": 15, "num_magnitude_bins": 31},
    "random_erase": {"p": 0.5},
}

NUM_IMAGES = 120
# (images, views per image): 80 x 8 DataCompDR views at 224 px and 120 x 4 small all-steps views.
CASES = {"datacompdr": (80, 8), "everything_on": (120, 4)}


def _image_cases() -> list[tuple[int, int, int, str, str]]:
    rng = np.random.default_rng(2024)
    cases = []
    for index in range(NUM_IMAGES):
        mode, fmt = MODES_AND_FORMATS[index % len(MODES_AND_FORMATS)]
        if index % 10 == 9:  # extreme aspect ratios: RandomResizedCrop's centre-crop fallback
            width, height = (int(rng.integers(16, 24)), int(rng.integers(150, 300)))
            if index % 20 == 19:
                width, height = height, width
        else:
            width, height = (int(v) for v in rng.integers(16, 161, size=2))
        cases.append((index, width, height, mode, fmt))
    return cases


@pytest.mark.parametrize("config_name", ["datacompdr", "everything_on"])
def test_replay_matches_torchvision(
    config_name: str, make_pixels, make_image_bytes, decode_reference, reference
):
    config = DATACOMPDR_AUGMENTATION if config_name == "datacompdr" else EVERYTHING_ON
    augmenter = ViewAugmenter.from_config(config)
    crop_mode = InterpolationMode(augmenter.config["random_resized_crop"]["interpolation"])
    num_images, views_per_image = CASES[config_name]
    cases = _image_cases()[:num_images]
    checked = fallbacks = flips = erases = skipped_ops = 0
    for index, width, height, mode, fmt in cases:
        data = make_image_bytes(make_pixels(width, height, index), mode, fmt, seed=index)
        image = decode_image(data)
        expected_image = decode_reference(data)
        assert image.tobytes() == expected_image.tobytes(), (mode, fmt)
        uid = f"{index:032x}"
        for k in range(views_per_image):
            params = augmenter.sample(view_rng(index * 7 + 1, uid, k), image.size)
            view = augmenter.apply(image, params)
            stored = json.loads(json.dumps({"param_aug": [encode_param_aug(params)]}))["param_aug"][0]
            replayed = decode_param_aug(stored)
            assert replayed == params
            expected = reference(expected_image, replayed, augmenter.size, crop_interpolation=crop_mode)
            assert torch.equal(augmenter.apply(image, replayed), expected), (index, mode, fmt, k, stored)
            assert torch.equal(view, expected)
            if k == 0 and params.erase is None:  # the student's size; erase boxes are only valid at 64
                student = reference(expected_image, replayed, 256, crop_interpolation=crop_mode)
                assert torch.equal(augmenter.apply(image, replayed, size=256), student)
            checked += 1
            i, j, h, w = params.crop
            fallbacks += (i, j) == ((height - h) // 2, (width - w) // 2) and min(width, height) < 24
            flips += bool(params.flip)
            erases += params.erase is not None
            skipped_ops += params.ops is None
    assert checked == num_images * views_per_image
    assert fallbacks > 0
    if config_name == "everything_on":
        assert flips > 0 and erases > 0 and skipped_ops > 0


# Sources large enough for crops above the 224 output: tall, wide and square, several modes and formats.
LARGE_SOURCES = [
    (300, 700, "RGB", "JPEG"),
    (700, 300, "RGB", "PNG"),
    (480, 640, "L", "JPEG"),
    (640, 480, "CMYK", "JPEG"),
    (250, 900, "RGBA", "WEBP"),
    (900, 250, "P", "PNG"),
    (512, 512, "RGB", "WEBP"),
    (229, 400, "LA", "PNG"),
]
# Explicit boxes (fractions of the source) that make sure every shape class occurs on every source.
SHAPE_BOXES = {
    "tall_above": (0.95, 0.3),
    "wide_above": (0.3, 0.95),
    "tall_below": (0.3, 0.2),
    "wide_below": (0.2, 0.3),
}


def _shape(h: int, w: int, size: int) -> str:
    return f"{'tall' if h > w else 'wide' if w > h else 'square'}_{'above' if max(h, w) > size else 'below'}"


def test_crops_taller_and_wider_than_the_output_replay_like_torchvision(
    make_pixels, make_image_bytes, decode_reference, reference
):
    """Downscaling crops (where Pillow builds have differed) as well as upscaling ones, at 224 and 256."""
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    shapes: dict[str, int] = {}
    for index, (width, height, mode, fmt) in enumerate(LARGE_SOURCES):
        data = make_image_bytes(make_pixels(width, height, 500 + index), mode, fmt, seed=index)
        image = decode_image(data)
        expected_image = decode_reference(data)
        assert image.tobytes() == expected_image.tobytes(), (mode, fmt)
        views = [augmenter.sample(view_rng(3, f"large{index}", k), image.size) for k in range(6)]
        for fh, fw in SHAPE_BOXES.values():
            h, w = max(1, round(fh * min(height, 2 * width))), max(1, round(fw * min(width, 2 * height)))
            h, w = min(h, height), min(w, width)
            views.append(dataclasses.replace(views[0], crop=((height - h) // 2, (width - w) // 2, h, w)))
        for params in views:
            replayed = decode_param_aug(json.loads(json.dumps(encode_param_aug(params))))
            for size in (224, 256):
                expected = reference(expected_image, replayed, size)
                assert torch.equal(augmenter.apply(image, replayed, size=size), expected), (
                    index,
                    params,
                    size,
                )
            _, _, h, w = params.crop
            shapes[_shape(h, w, 224)] = shapes.get(_shape(h, w, 224), 0) + 1
    assert all(shapes.get(name, 0) >= len(LARGE_SOURCES) for name in SHAPE_BOXES), shapes
