"""The one image-decoding convention used by the job, the trainer and the notebook.

A stored crop box is only meaningful on the exact pixel grid the teachers saw, so every reader of
an image must decode it the same way. The convention is the public MobileCLIP trainer's (webdataset
``"pilrgba"`` followed by ``.convert("RGB")``):

1. ``PIL.Image.open(bytes)``; for multi-frame files (GIF, APNG, TIFF, WebP) only the first frame.
2. **No EXIF orientation** is applied: a photo tagged "rotate 90°" keeps its stored pixel grid.
3. ``.convert("RGBA").convert("RGB")`` whatever the source mode: palette (``P``, ``PA``),
   grayscale (``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``.
   Alpha is **dropped, not composited**: a transparent pixel keeps its stored colour.
   A mode Pillow cannot convert to RGBA (e.g. ``La``) is a :class:`BadImageError`.
4. A crop box ``(i, j, h, w)`` refers to this RGB image: ``0 <= i < i + h <= height`` and
   ``0 <= j < j + w <= width``, where ``(width, height) == image.size``.

Decompression bombs are refused from the header, before any pixel is decoded. The effective cap is
``min(max_pixels, PIL.Image.MAX_IMAGE_PIXELS)``: Pillow's own bomb warning and error both become
:class:`BadImageError` and never escape. That uses ``warnings.catch_warnings``, which in Python
3.11 swaps the process-wide filter list; the worst a concurrent thread can see is Pillow's bomb
warning raised as an exception instead of printed.

``ImageFile.LOAD_TRUNCATED_IMAGES`` is Pillow's global switch; we leave it alone (off), so a
truncated file is ``BadImageError("truncated")`` rather than an image padded with grey.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from transforms.errors import BadImageError

# 2**25 ≈ 33.5 M pixels (≈ 5800² px): far above DataComp's 512-px images, far below what makes a
# worker's RGBA copy (4 bytes/pixel) dangerous, and below Pillow's own 89 M warning threshold.
DEFAULT_MAX_PIXELS = 2**25


def decode_image(
    data: bytes | bytearray | memoryview | None, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode image bytes into an RGB PIL image under the convention above.

    Raises :class:`BadImageError` (with ``.reason``) for anything that is not a decodable image.
    """
    if data is None or len(data) == 0:
        raise BadImageError("no image bytes", "empty")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"decode_image takes bytes, got {type(data).__name__}")
    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors at 2x) above its global cap; make both an exception here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(str(exc), "too_many_pixels") from exc
    except Exception as exc:  # Pillow's format plugins raise many types on hostile input.
        raise BadImageError(f"not an image: {exc}", "undecodable") from exc
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise BadImageError(f"image has size {width}x{height}", "zero_size")
        if width * height > max_pixels:
            raise BadImageError(f"{width}x{height} exceeds the cap of {max_pixels} pixels", "too_many_pixels")
        try:
            image.load()
        except Exception as exc:
            reason = "truncated" if "truncated" in str(exc).lower() else "undecodable"
            raise BadImageError(f"cannot decode image: {exc}", reason) from exc
        try:
            return image.convert("RGBA").convert("RGB")
        except (ValueError, OSError) as exc:
            raise BadImageError(f"mode {image.mode} cannot become RGB: {exc}", "unsupported_mode") from exc
