"""Reinforced shards in the public DataCompDR layouts, built from the contract, for trainer tests.

Images are small seeded pictures of a few "identities" (a colour and a shape); each identity has one
random unit vector per teacher, and every stored embedding of a sample (its views, its caption, its
synthetic captions) is that vector plus a little noise. The KD target of a batch is then "match each
image with its own captions", which a tiny student can learn in a few hundred steps.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.shard_format import ReinforcedSample, encode_sample, open_tar_writer, write_shard
from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter, decode_image, encode_param_aug, view_rng

COLOURS = ((220, 40, 40), (40, 180, 60), (50, 80, 220), (230, 200, 40), (160, 60, 200), (30, 200, 210))
NAMES = ("red", "green", "blue", "yellow", "purple", "cyan")
SHAPES = ("circle", "square", "triangle")


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    shards: int = 2
    per_shard: int = 12
    identities: int = 6
    views: int = 3
    captions: int = 2
    dims: tuple[int, ...] = (8, 12)
    layout: str = "v1"
    dtype: str = "fp32"
    paug_as_string: bool = False
    noise: float = 0.15
    image_size: tuple[int, int] = (96, 80)


def identity_image(identity: int, variant: int, size: tuple[int, int]) -> bytes:
    """A JPEG of a coloured shape on a noisy background; variants move the shape a little."""
    rng = np.random.default_rng(10_000 * identity + variant)
    width, height = size
    background = rng.integers(90, 140, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    colour = COLOURS[identity % len(COLOURS)]
    shape = SHAPES[identity % len(SHAPES)]
    cx, cy = width // 2 + int(rng.integers(-8, 9)), height // 2 + int(rng.integers(-8, 9))
    r = min(width, height) // 3
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon(((cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)), fill=colour)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def _unit_slices(vector: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    out, start = vector.astype(np.float32).copy(), 0
    for dim in dims:
        out[start : start + dim] /= np.linalg.norm(out[start : start + dim])
        start += dim
    return out


def make_sample(index: int, spec: ShardSpec, augmenter: ViewAugmenter) -> ReinforcedSample:
    identity = index % spec.identities
    uid = f"{index:032x}"
    image = identity_image(identity, index, spec.image_size)
    decoded = decode_image(image)
    params = [augmenter.sample(view_rng(0, uid, k), decoded.size) for k in range(spec.views)]
    width = sum(spec.dims)
    base = np.random.default_rng(1_000 + identity).standard_normal(width)
    noise = np.random.default_rng(index)

    def embed(rows: int) -> np.ndarray:
        return np.stack(
            [_unit_slices(base + spec.noise * noise.standard_normal(width), spec.dims) for _ in range(rows)]
        )

    name = f"a {NAMES[identity % len(NAMES)]} {SHAPES[identity % len(SHAPES)]}"
    family = "syn_text" if spec.layout == "v1" else "syn_text_coca"
    return ReinforcedSample(
        key=uid,
        image=image,
        caption=f"{name} on a grey background",
        meta={"uid": uid, "key": f"{index:012d}", "sha256": "00" * 32, "width": spec.image_size[0]},
        param_aug=[encode_param_aug(p) for p in params],
        image_emb=embed(spec.views),
        caption_emb=embed(1)[0],
        syn_captions={family: [f"{name}, picture {k}" for k in range(spec.captions)]},
        syn_emb={family: embed(spec.captions)},
        url=f"https://example.com/{uid}.jpg",
    )


def write_members(path: Path, members: Sequence[dict]) -> None:
    """A tar of pre-encoded member dicts, written as our shards are."""
    with open(path, "wb") as f:
        writer = open_tar_writer(f)
        for sample in members:
            writer.write(sample)
        writer.close()


def build_shards(out: Path, spec: ShardSpec, start_index: int = 0) -> list[ReinforcedSample]:
    """Write `spec.shards` shards under `out`; return the samples in write order."""
    out.mkdir(parents=True, exist_ok=True)
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    samples = []
    for shard in range(spec.shards):
        batch = [
            make_sample(start_index + shard * spec.per_shard + i, spec, augmenter)
            for i in range(spec.per_shard)
        ]
        samples.extend(batch)
        path = out / f"{shard:08d}.tar"
        if spec.paug_as_string:
            members = []
            for sample in batch:
                encoded = encode_sample(sample, spec.layout, spec.dtype)
                encoded["paug.json"] = json.dumps({"param_aug": json.dumps(sample.param_aug)}).encode()
                members.append(encoded)
            write_members(path, members)
        else:
            write_shard(str(path), batch, spec.layout, spec.dtype)
    return samples


@pytest.fixture
def make_shards(tmp_path: Path) -> Callable[..., tuple[Path, list[ReinforcedSample]]]:
    """Build reinforced shards in a fresh folder: `make_shards(name, **ShardSpec fields)`."""

    def build(name: str = "data", **fields) -> tuple[Path, list[ReinforcedSample]]:
        spec = ShardSpec(**fields)
        folder = tmp_path / name
        return folder, build_shards(folder, spec)

    return build


@pytest.fixture(scope="session")
def shard_tools() -> SimpleNamespace:
    """The builders above, for tests that hand-craft bad samples."""
    return SimpleNamespace(
        ShardSpec=ShardSpec,
        make_sample=make_sample,
        build_shards=build_shards,
        write_members=write_members,
        identity_image=identity_image,
    )
