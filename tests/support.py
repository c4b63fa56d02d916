"""What many tests build: reinforced samples and shards made from the contract, without any model.

`reinforced_sample` is the one builder of a `ReinforcedSample`; the trainer's "identity" shards
(a coloured shape per identity, embeddings that cluster by identity) and the inspection tests' runs
made from the bundled raw shards are both built on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from shards.reinforced import ReinforcedSample, encode_sample, iter_members, open_tar_writer, write_shard
from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter, decode_image, encode_param_aug, view_rng
from transforms.fingerprint import view_fingerprint

# A valid stored view for tests that never decode the image: crop box, ShearX and Rotate.
FIXED_PARAM_AUG = [[0, 1, 20, 20], [[1, 0.09000000357627869], [5, -9.0]]]


def unit_rows(rng: np.random.Generator, rows: int, dims: Sequence[int]) -> np.ndarray:
    """[rows, sum(dims)] float32, each teacher's slice of every row a random unit vector."""
    parts = []
    for dim in dims:
        block = rng.standard_normal((rows, dim)).astype(np.float32)
        parts.append(block / np.linalg.norm(block, axis=1, keepdims=True))
    return np.concatenate(parts, axis=1)


def reinforced_sample(
    key: str,
    image: bytes,
    caption: str,
    *,
    dims: Sequence[int],
    views: int,
    captions: int,
    family: str = "syn_text",
    augmenter: ViewAugmenter | None = None,
    seed: int = 0,
    embed: Callable[[int], np.ndarray] | None = None,
    meta: dict[str, Any] | None = None,
    url: str | None = None,
    image_ext: str = "jpg",
    synthetic: Sequence[str] | None = None,
) -> ReinforcedSample:
    """A sample as the job writes it.

    Views are sampled by `augmenter` on the decoded image (so boxes fit it) and fingerprinted as the
    job does, else FIXED_PARAM_AUG without fingerprints (as in shards written before them);
    embeddings come from `embed(rows)`, else random unit rows per teacher slice seeded by the key.
    """
    view_sha = None
    if augmenter is not None:
        decoded = decode_image(image)
        params = [augmenter.sample(view_rng(seed, key, k), decoded.size) for k in range(views)]
        param_aug = [encode_param_aug(p) for p in params]
        view_sha = [view_fingerprint(augmenter.apply(decoded, p)) for p in params]
    else:
        param_aug = [FIXED_PARAM_AUG for _ in range(views)]
    if embed is None:
        rng = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:12], 16))

        def embed(rows: int) -> np.ndarray:
            return unit_rows(rng, rows, dims)

    return ReinforcedSample(
        key=key,
        image=image,
        image_ext=image_ext,
        caption=caption,
        url=url if url is not None else f"https://example.com/{key}.jpg",
        meta=meta if meta is not None else {"uid": key, "sha256": "0" * 64},
        param_aug=param_aug,
        image_emb=embed(views),
        caption_emb=embed(1)[0],
        syn_captions={
            family: list(synthetic or (f"a synthetic caption {k} of {key}" for k in range(captions)))
        },
        syn_emb={family: embed(captions)},
        view_sha=view_sha,
    )


def write_members(path: Path, members: Sequence[dict]) -> None:
    """A tar of pre-encoded member dicts (for hand-made bad samples), written as our shards are."""
    with open(path, "wb") as f:
        writer = open_tar_writer(f)
        for sample in members:
            writer.write(sample)
        writer.close()


def write_public_half(source: Path, target: Path) -> None:
    """A reinforced shard as the public release ships it: every sample without `jpg` and `txt`."""
    samples = iter_members(str(source))
    write_members(target, [{k: v for k, v in s.items() if k not in ("jpg", "txt")} for s in samples])


# -- identity shards: data a tiny student can learn from ---------------------------------------------

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


def identity_sample(index: int, spec: ShardSpec, augmenter: ViewAugmenter) -> ReinforcedSample:
    """Every stored embedding of the sample is its identity's vector plus a little noise, so the KD
    target of a batch is "match each image with its own captions"."""
    identity = index % spec.identities
    uid = f"{index:032x}"
    width = sum(spec.dims)
    base = np.random.default_rng(1_000 + identity).standard_normal(width)
    noise = np.random.default_rng(index)

    def embed(rows: int) -> np.ndarray:
        return np.stack(
            [_unit_slices(base + spec.noise * noise.standard_normal(width), spec.dims) for _ in range(rows)]
        )

    name = f"a {NAMES[identity % len(NAMES)]} {SHAPES[identity % len(SHAPES)]}"
    return reinforced_sample(
        uid,
        identity_image(identity, index, spec.image_size),
        f"{name} on a grey background",
        dims=spec.dims,
        views=spec.views,
        captions=spec.captions,
        family="syn_text" if spec.layout == "v1" else "syn_text_coca",
        augmenter=augmenter,
        embed=embed,
        meta={"uid": uid, "key": f"{index:012d}", "sha256": "00" * 32, "width": spec.image_size[0]},
        synthetic=[f"{name}, picture {k}" for k in range(spec.captions)],
    )


def _unit_slices(vector: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    out, start = vector.astype(np.float32).copy(), 0
    for dim in dims:
        out[start : start + dim] /= np.linalg.norm(out[start : start + dim])
        start += dim
    return out


def build_shards(out: Path, spec: ShardSpec, start_index: int = 0) -> list[ReinforcedSample]:
    """Write `spec.shards` identity shards under `out`; return the samples in write order."""
    out.mkdir(parents=True, exist_ok=True)
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    samples = []
    for shard in range(spec.shards):
        batch = [
            identity_sample(start_index + shard * spec.per_shard + i, spec, augmenter)
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


def comparable_outputs(folder: Path) -> dict[str, bytes]:
    """Every visible file of a run folder by name, without what differs between identical runs: the
    stats files' wall-clock seconds, input path and worker device, and summary.json (run wall times)."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name == "summary.json":
            continue
        data = path.read_bytes()
        if path.name.endswith("_stats.json"):
            stats = json.loads(data)
            for timed in ("seconds", "input", "device"):
                stats.pop(timed, None)
            data = json.dumps(stats, sort_keys=True).encode()
        files[path.name] = data
    return files
