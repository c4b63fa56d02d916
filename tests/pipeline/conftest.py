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


@pytest.fixture
def kit() -> SimpleNamespace:
    """The builders above, as a fixture: test modules cannot import a conftest reliably."""
    return SimpleNamespace(jpeg_bytes=jpeg_bytes, sample_members=sample_members, write_tar=write_tar)


@pytest.fixture
def raw_tar(tmp_path: Path) -> Callable[..., Path]:
    """`raw_tar(members, name="00000000.tar")` writes a raw shard into a fresh folder."""

    def build(members: Iterable[Member], name: str = "00000000.tar") -> Path:
        return write_tar(tmp_path / "raw" / name, members)

    return build
