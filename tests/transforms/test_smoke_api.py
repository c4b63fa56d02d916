"""The interface other packages import works end to end on a real decoded image."""

import io

import numpy as np
import torch
from PIL import Image

from transforms import (
    DATACOMPDR_AUGMENTATION,
    ViewAugmenter,
    decode_image,
    decode_param_aug,
    encode_param_aug,
    normalize,
    view_rng,
)


def _png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_sample_store_and_replay_at_two_sizes() -> None:
    image = decode_image(_png(120, 90))
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    params = augmenter.sample(view_rng(7, "0" * 32, 3), image.size)
    view = augmenter.apply(image, params)
    assert view.dtype == torch.uint8 and view.shape == (3, 224, 224)

    replayed = decode_param_aug(encode_param_aug(params))
    assert replayed == params
    assert torch.equal(augmenter.apply(image, replayed), view)
    assert augmenter.apply(image, replayed, size=256).shape == (3, 256, 256)

    pixels = normalize(view, augmenter.mean, augmenter.std)
    assert pixels.dtype == torch.float32 and pixels.shape == view.shape
