"""Augmentations that sample their parameters, record them, and replay them exactly.

Typical use (the job samples and stores; the trainer decodes and replays)::

    image = decode_image(jpg_bytes)
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    params = augmenter.sample(view_rng(run_seed, uid, k), image.size)   # numpy Generator
    view = augmenter.apply(image, params)                 # uint8 [3, 224, 224]
    entry = encode_param_aug(params)                      # -> paug.json
    replay = augmenter.apply(image, decode_param_aug(entry), size=256)
    pixels = normalize(view, mean, std)                   # float32 for a model
"""

from transforms.augmenter import DATACOMPDR_AUGMENTATION, DEFAULT_MIN_SIDE, ViewAugmenter
from transforms.decode import DEFAULT_MAX_PIXELS, decode_image
from transforms.errors import (
    AugmentationError,
    BadImageError,
    ImageTooSmallError,
    InvalidParamsError,
    UnsupportedParamVersionError,
)
from transforms.params import (
    PARAM_AUG_VERSION,
    SUPPORTED_PARAM_AUG_VERSIONS,
    ViewParams,
    decode_param_aug,
    encode_param_aug,
)
from transforms.randaugment import OP_NAMES
from transforms.seeding import derive_seed, view_rng
from transforms.tensors import normalize

__all__ = [
    "DATACOMPDR_AUGMENTATION",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "OP_NAMES",
    "PARAM_AUG_VERSION",
    "SUPPORTED_PARAM_AUG_VERSIONS",
    "AugmentationError",
    "BadImageError",
    "ImageTooSmallError",
    "InvalidParamsError",
    "UnsupportedParamVersionError",
    "ViewAugmenter",
    "ViewParams",
    "decode_image",
    "decode_param_aug",
    "derive_seed",
    "encode_param_aug",
    "normalize",
    "view_rng",
]
