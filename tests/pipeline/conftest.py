"""Builders for raw DataComp-layout shards, good and bad, written the way img2dataset writes them."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
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


# ---- the job on the real tiny models: one reference run, shared by the job, runner and resume tests ----

NUM_VIEWS, NUM_CAPTIONS = 2, 1
# Per-run files that hold wall-clock times; every other output file must be byte-identical.
TIMED_FILES = ("_stats.json", "summary.json")


def job_args(raw: Path | str, out: Path | str, ckpt: dict[str, str], *extra: str) -> list[str]:
    """The CLI arguments of a small, fast, fully seeded tiny run (one torch thread: 2 shared cores)."""
    return [
        "--input", f"{raw}/*.tar", "--output", str(out), "--preset", "tiny",
        "--teachers", f"{ckpt['clip-a']},{ckpt['clip-b']}", "--captioner", ckpt["coca"],
        "--num-views", str(NUM_VIEWS), "--num-captions", str(NUM_CAPTIONS), "--batch-size", "8",
        "--seed", "7", "--no-progress", "--model_threads", "1", *extra,
    ]  # fmt: skip


def output_files(folder: Path) -> dict[str, bytes]:
    """Every visible output file by name, timing-bearing ones reduced to their non-timing content."""
    files = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.name.endswith("_stats.json"):
            stats = json.loads(data)
            stats.pop("seconds")
            stats.pop("input")  # the input path differs when the same shards are read from elsewhere
            stats.pop("device", None)  # which machine and GPU a worker had, like its timings
            data = json.dumps(stats, sort_keys=True).encode()
        elif path.name == "summary.json":
            continue  # run totals with wall-clock seconds; its counts are checked through the stats files
        files[path.name] = data
    return files


@pytest.fixture(scope="session")
def job(tiny_checkpoints) -> SimpleNamespace:
    """Helpers for running the job: `job.args(raw, out, *extra)`, `job.files(out)`."""
    return SimpleNamespace(
        args=lambda raw, out, *extra: job_args(raw, out, tiny_checkpoints, *extra),
        files=output_files,
        num_views=NUM_VIEWS,
        num_captions=NUM_CAPTIONS,
    )


@pytest.fixture(scope="session")
def job_input(tmp_path_factory, sample_raw_dir) -> tuple[Path, dict[str, str]]:
    """One bundled real-photo shard, one shard of bad input, a truncated shard and an empty one."""
    raw = tmp_path_factory.mktemp("raw")
    shutil.copy(sample_raw_dir / "00000000.tar", raw / "00000000.tar")
    members, expected = bad_input_members()
    write_tar(raw / "00000001.tar", members)
    full = (raw / "00000000.tar").read_bytes()
    with tarfile.open(raw / "00000000.tar") as tar:
        images = [m for m in tar.getmembers() if m.name.endswith((".jpg", ".jpeg", ".webp", ".png"))]
        cut = images[4].offset_data + 50
    (raw / "00000002.tar").write_bytes(full[:cut])
    (raw / "00000003.tar").write_bytes(b"")
    return raw, expected


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, job_input, job) -> Path:
    """A clean in-process run (FnApiRunner in memory) that the other tests compare against."""
    from pipeline.reinforce import main

    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(job.args(job_input[0], out)) == 0
    return out
