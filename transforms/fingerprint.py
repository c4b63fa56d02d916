"""Fingerprints of views as the teachers saw them, and the decode/resize stack that made them.

Replaying a stored view gives the teachers' pixels only on the same decode and resize code: Pillow
12 and 13 differ on some bicubic downscales (crops taller than the output and taller than wide).
The job stores a short hash of every uint8 view it embedded; a replay at the same size hashes its
own view and compares, so a trainer or validator on another stack notices instead of training on
views the stored embeddings do not describe.
"""

from __future__ import annotations

import hashlib
from importlib import metadata

import torch

# Recorded in config.json: what the hex strings in paug.json's `view_sha` are the hash of.
FINGERPRINT_ALGORITHM = "blake2b-64 of the uint8 [3, S, S] view, C order, S = random_resized_crop.size"
FINGERPRINT_HEX_CHARS = 16
# Pillow's names for the builds that decode and resize: feature name -> config.json key.
_PILLOW_BUILDS = {
    "libjpeg_turbo": "libjpeg_turbo",
    "jpg": "libjpeg",
    "zlib": "zlib",
    "zlib_ng": "zlib_ng",
    "webp": "libwebp",
}


def view_fingerprint(view: torch.Tensor) -> str:
    """16 hex characters of BLAKE2b over the view's bytes: 64 bits, enough to tell any two views apart."""
    if view.dtype != torch.uint8 or view.ndim != 3:
        raise TypeError(f"fingerprints are of uint8 [3, S, S] views, got {view.dtype} {tuple(view.shape)}")
    return hashlib.blake2b(view.contiguous().numpy().tobytes(), digest_size=8).hexdigest()


def image_stack() -> dict[str, str]:
    """Versions of the code that turns image bytes into view pixels (Pillow and its builds, torchvision)."""
    from PIL import __version__ as pillow_version
    from PIL import features

    stack = {"pillow": pillow_version}
    for feature, name in _PILLOW_BUILDS.items():
        try:
            version = features.version(feature)
        except ValueError:  # a feature this Pillow does not know
            version = None
        stack[name] = version or "not built"
    try:
        stack["torchvision"] = metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        stack["torchvision"] = "not installed"
    return stack
