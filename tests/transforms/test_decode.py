"""The decoding convention: RGBA-then-RGB, no EXIF transpose, first frame; bad bytes become BadImageError."""

from __future__ import annotations

import io
import struct
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transforms import (
    DATACOMPDR_AUGMENTATION,
    DEFAULT_MAX_PIXELS,
    BadImageError,
    ViewAugmenter,
    decode_image,
    view_rng,
)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _decode_without_warnings(data: bytes | None, **kwargs) -> Image.Image:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return decode_image(data, **kwargs)
        finally:
            assert [str(w.message) for w in caught] == []


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_alpha_is_dropped_not_composited(make_pixels) -> None:
    rgba = Image.fromarray(make_pixels(20, 10, 1), "RGB").convert("RGBA")
    rgba.putalpha(0)  # fully transparent everywhere
    decoded = _decode_without_warnings(_encoded(rgba, "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.tobytes() == rgba.convert("RGB").tobytes()


def test_palette_with_transparency_decodes_silently(make_pixels, make_image_bytes, decode_reference) -> None:
    data = make_image_bytes(make_pixels(30, 20, 2), "P_transparent", "PNG")
    assert _decode_without_warnings(data).tobytes() == decode_reference(data).tobytes()


def test_exif_orientation_is_not_applied(make_pixels) -> None:
    photo = Image.fromarray(make_pixels(40, 24, 3), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = _encoded(photo, "JPEG", exif=exif.tobytes(), quality=95)
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6
    assert _decode_without_warnings(data).size == (40, 24)  # the stored grid, as the teachers saw it


def test_first_frame_of_an_animation(make_pixels) -> None:
    frames = [Image.fromarray(make_pixels(16, 16, seed), "RGB") for seed in (4, 5)]
    data = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = Image.open(io.BytesIO(data)).convert("RGBA").convert("RGB")
    assert _decode_without_warnings(data).tobytes() == first.tobytes()


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "LAB", "RGBX"])
def test_every_mode_becomes_rgb_like_the_public_trainer(mode: str, make_pixels) -> None:
    rgb = Image.fromarray(make_pixels(12, 9, 6), "RGB")
    source = rgb.convert("L").convert(mode) if mode in ("I;16", "I", "F") else rgb.convert(mode)
    data = _encoded(source, "TIFF")
    expected = Image.open(io.BytesIO(data)).convert("RGBA").convert("RGB")
    decoded = _decode_without_warnings(data)
    assert decoded.mode == "RGB" and decoded.tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (None, "empty"),
        (b"<html><body>502 Bad Gateway</body></html>", "undecodable"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 20, "undecodable"),
    ],
)
def test_not_an_image(data: bytes | None, reason: str) -> None:
    with pytest.raises(BadImageError) as error:
        _decode_without_warnings(data)
    assert error.value.reason == reason


def test_truncated_files_are_refused(make_pixels) -> None:
    image = Image.fromarray(make_pixels(64, 48, 7), "RGB")
    for fmt in ("JPEG", "PNG"):
        data = _encoded(image, fmt)
        with pytest.raises(BadImageError) as error:
            _decode_without_warnings(data[: len(data) // 2])
        assert error.value.reason in ("truncated", "undecodable"), fmt
    with pytest.raises(BadImageError) as error:
        _decode_without_warnings(_encoded(image, "JPEG")[:-300])
    assert error.value.reason == "truncated"


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (6000, 6000),  # above our cap, below Pillow's warning threshold
        (10_000, 10_000),  # above Pillow's warning threshold (a warning must not leak)
        (40_000, 40_000),  # above Pillow's error threshold
    ],
)
def test_decompression_bombs_are_refused_from_the_header(width: int, height: int) -> None:
    assert width * height > DEFAULT_MAX_PIXELS
    with pytest.raises(BadImageError) as error:
        _decode_without_warnings(_png_header_only(width, height))
    assert error.value.reason == "too_many_pixels"


def test_pixel_cap_is_a_parameter(make_pixels) -> None:
    data = _encoded(Image.fromarray(make_pixels(20, 20, 8), "RGB"), "PNG")
    assert _decode_without_warnings(data, max_pixels=400).size == (20, 20)
    with pytest.raises(BadImageError) as error:
        _decode_without_warnings(data, max_pixels=399)
    assert error.value.reason == "too_many_pixels"


def test_bad_image_error_is_a_value_error() -> None:
    assert issubclass(BadImageError, ValueError)
    with pytest.raises(TypeError):
        decode_image("not bytes")  # type: ignore[arg-type]


def test_bundled_real_photos_decode_and_render(sample_raw_dir: Path) -> None:
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    decoded = 0
    for shard in sorted(sample_raw_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.rsplit(".", 1)[-1] not in ("jpg", "jpeg", "png", "webp"):
                    continue
                image = _decode_without_warnings(tar.extractfile(member).read())
                params = augmenter.sample(view_rng(0, member.name, 0), image.size)
                view = augmenter.apply(image, params)
                assert view.shape == (3, 224, 224) and int(view.max()) > int(view.min())
                assert np.asarray(image).shape == (image.size[1], image.size[0], 3)
                decoded += 1
    assert decoded >= 20
