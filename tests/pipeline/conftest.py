"""Builders for raw DataComp-layout shards, good and bad, written the way img2dataset writes them."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

Member = tuple[str, bytes]


def jpeg_bytes(width: int = 96, height: int = 80, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A small seeded noise picture with some structure, encoded like a downloaded image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1), (xx + yy) % 256], -1)
    noise = rng.integers(0, 64, size=(height, width, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def sample_members(
    key: str,
    *,
    caption: str | bytes = "a photo",
    image: bytes | None = None,
    image_ext: str = "jpg",
    uid: str | None = None,
    meta: dict | None = None,
    seed: int = 0,
) -> list[Member]:
    """The three members of one img2dataset sample (image, txt, json)."""
    meta = dict(meta or {})
    meta.setdefault("uid", uid if uid is not None else hashlib.md5(key.encode()).hexdigest())
    meta.setdefault("url", f"https://example.com/{key}.jpg")
    meta.setdefault("key", key)
    meta.setdefault("status", "success")
    text = caption if isinstance(caption, bytes) else caption.encode("utf-8")
    image = image if image is not None else jpeg_bytes(seed=seed)
    return [(f"{key}.{image_ext}", image), (f"{key}.txt", text), (f"{key}.json", json.dumps(meta).encode())]


def write_tar(path: Path, members: Iterable[Member]) -> Path:
    """A plain tar with fixed member metadata, members in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """The builders here, as a fixture: test modules cannot import a conftest reliably."""
    return SimpleNamespace(
        jpeg_bytes=jpeg_bytes,
        sample_members=sample_members,
        write_tar=write_tar,
        bad_input_members=bad_input_members,
    )


@pytest.fixture
def raw_tar(tmp_path: Path) -> Callable[..., Path]:
    """`raw_tar(members, name="00000000.tar")` writes a raw shard into a fresh folder."""

    def build(members: Iterable[Member], name: str = "00000000.tar") -> Path:
        return write_tar(tmp_path / "raw" / name, members)

    return build


def bomb_png() -> bytes:
    """A tiny file that decodes to 8000 x 8000 pixels: above the default 2**25-pixel cap."""
    out = io.BytesIO()
    Image.new("1", (8000, 8000)).save(out, format="PNG")
    return out.getvalue()


def bad_input_members() -> tuple[list[Member], dict[str, str]]:
    """A raw shard mixing good samples with every kind of bad one; also {bad key: expected reason}."""
    good = [sample_members(f"g{k:03d}", seed=10 + k) for k in range(3)]
    bad: list[list[Member]] = []
    expected: dict[str, str] = {}

    def add(key: str, reason: str, members: list[Member]) -> None:
        bad.append(members)
        expected[key] = reason

    add("b000", "image_undecodable", sample_members("b000", image=b"<html>503 Service Unavailable</html>"))
    add("b001", "missing_image", [m for m in sample_members("b001") if not m[0].endswith(".jpg")])
    no_caption = [m for m in sample_members("b002", meta={"caption": None}) if not m[0].endswith(".txt")]
    add("b002", "missing_caption", no_caption)
    add("b003", "image_too_many_pixels", sample_members("b003", image=bomb_png(), image_ext="png"))
    add("b004", "image_too_small", sample_members("b004", image=jpeg_bytes(8, 8)))
    add("b005", "caption_not_utf8", sample_members("b005", caption=b"\xff\xfe caf\xe9"))
    add(
        "b006",
        "invalid_json",
        [(n, b"{oops" if n.endswith(".json") else d) for n, d in sample_members("b006")],
    )
    add("g000", "duplicate_key", sample_members("g000", seed=99))
    add("../b008.jpg", "unsafe_member_name", sample_members("../b008"))
    add("/abs/b009.jpg", "unsafe_member_name", sample_members("/abs/b009"))
    add("b010", "image_empty", sample_members("b010", image=b""))
    # good samples before, between and after the bad ones
    samples = [good[0], *bad[:4], good[1], *bad[4:], good[2]]
    return [member for sample in samples for member in sample], expected
