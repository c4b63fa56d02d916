"""Rebuild the bundled raw shards: real photos in img2dataset/DataComp layout (contract §1).

The photos are the CC0 / public-domain images that scikit-image ships (see samples/README.md), so
the demo and tests run offline on real pixels. Every size, mode, format and member order below is
chosen to exercise what real shards hold; the output is byte-identical on every rebuild.

    python -m tools.sample_shards --out samples/raw
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shards.raw import SUCCESS, write_raw_shard

SAMPLES_PER_SHARD = 10_000  # nominal, as in DataComp: it sets the key width (8 + 4 = 12 digits)
SHARD_DIGITS = 8
INDEX_DIGITS = 4
SEED = 20241122


@dataclass(frozen=True)
class Photo:
    name: str  # scikit-image data function
    caption: str
    licence: str


PHOTOS = (
    Photo(
        "astronaut",
        "Astronaut Eileen Collins in her orange flight suit, official NASA portrait",
        "public domain (NASA)",
    ),
    Photo("chelsea", "a ginger tabby cat named Chelsea looking to the side", "CC0 (Stefan van der Walt)"),
    Photo("coffee", "A cup of coffee on a saucer with a spoon, top view", "CC0 (Rachel Michetti)"),
    Photo(
        "rocket",
        "Falcon 9 rocket carrying DSCOVR lifts off at night from Cape Canaveral",
        "public domain (SpaceX)",
    ),
    Photo("hubble_deep_field", "hubble deep field: thousands of distant galaxies", "public domain (NASA)"),
    Photo("camera", "black and white photo of a man with a camera on a tripod", "CC0 (Lav Varshney)"),
    Photo("coins", "Greek coins from Pompeii on a dark background", "no known copyright (Brooklyn Museum)"),
    Photo("retina", "Fundus photograph of a human retina showing the optic disc", "CC0 (Häggström)"),
    Photo("brick", "Old red brick wall texture close up", "CC0 (cc0textures)"),
    Photo("grass", "green grass texture, lawn background", "CC0 (linolafett)"),
    Photo("gravel", "Gravel stones on the ground, texture", "CC0 (cc0textures)"),
    Photo("cell", "microscopy image of a cell", "CC0 (cell tracking challenge)"),
)

# (longest side, mode, format, member extension): every size band, mode and format real shards hold.
RECIPES = (
    (512, "RGB", "JPEG", "jpg"),
    (384, "L", "JPEG", "jpg"),
    (1200, "RGB", "JPEG", "jpg"),
    (256, "RGBA", "PNG", "png"),
    (300, "P", "PNG", "png"),
    (448, "CMYK", "JPEG", "jpg"),
    (200, "RGB", "WEBP", "webp"),
    (100, "RGB", "PNG", "jpg"),  # a `.jpg` member holding PNG bytes, as img2dataset output can
    (640, "RGB", "JPEG", "jpeg"),
    (160, "L", "WEBP", "webp"),
    (512, "RGBA", "WEBP", "webp"),
    (800, "RGB", "JPEG", "jpg"),
)

CAPTION_VARIANTS = (
    "{}",
    "{}",
    "{} — photo © free to use, café style",
    "{}\nshot on film\n",
    "",  # empty alt-text is common in DataComp and still a valid sample
    "{0}. " * 12,  # very long alt-text
)

SHARDS = ((0, 12), (1, 12), (2, 8))  # (shard id, samples)
FAILED_PER_SHARD = 2  # parquet rows of downloads that failed, as img2dataset records them


def load_photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(np.asarray(getattr(data, name)()))


def render(
    photo: Image.Image, longest: int, mode: str, fmt: str, rng: random.Random
) -> tuple[bytes, int, int]:
    scale = longest / max(photo.size)
    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    image = photo.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    if mode == "P":
        image = image.quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    elif mode == "RGBA":
        alpha = Image.linear_gradient("L").resize(size).point(lambda v: 64 + v * 3 // 4)
        image.putalpha(alpha)
    elif mode != "RGB":
        image = image.convert(mode)
    out = io.BytesIO()
    options: dict = {"quality": 85} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "JPEG" and mode == "RGB" and rng.random() < 0.5:
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90": the decoding convention ignores it (contract §3)
        options["exif"] = exif.tobytes()
    image.save(out, format=fmt, **options)
    return out.getvalue(), image.width, image.height


def build_shard(shard: int, count: int, photos: dict[str, Image.Image], out: Path) -> None:
    rng = random.Random(f"{SEED}-{shard}")
    rows, samples = [], []
    for index in range(count + FAILED_PER_SHARD):
        key = f"{shard:0{SHARD_DIGITS}d}{index:0{INDEX_DIGITS}d}"
        photo = PHOTOS[(shard * 5 + index) % len(PHOTOS)]
        uid = hashlib.md5(f"{SEED}/{key}".encode()).hexdigest()
        url = f"https://images.example.org/{photo.name}/{uid[:8]}.jpg"
        caption = CAPTION_VARIANTS[(shard + index) % len(CAPTION_VARIANTS)].format(photo.caption)
        row = {"uid": uid, "url": url, "caption": caption, "key": key}
        if index >= count:
            rows.append(row | {"status": "failed_to_download", "error_message": "HTTP Error 404: Not Found"})
            continue
        longest, mode, fmt, ext = RECIPES[(shard * 7 + index) % len(RECIPES)]
        data, width, height = render(photos[photo.name], longest, mode, fmt, rng)
        source = photos[photo.name]
        meta = row | {
            "status": SUCCESS,
            "error_message": None,
            "width": width,
            "height": height,
            "original_width": source.width,
            "original_height": source.height,
            "exif": None,
            "sha256": hashlib.sha256(f"downloaded:{url}".encode()).hexdigest(),
        }
        rows.append(meta)
        samples.append(
            {"__key__": key, ext: data, "txt": caption.encode(), "json": json.dumps(meta).encode()}
        )
    rng.shuffle(samples)  # members come in download-completion order, not key order
    write_raw_shard(str(out), f"{shard:0{SHARD_DIGITS}d}", samples, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("samples/raw"), help="folder to (re)write")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    photos = {p.name: load_photo(p.name) for p in PHOTOS}
    for shard, count in SHARDS:
        build_shard(shard, count, photos, args.out)
    total = sum(f.stat().st_size for f in args.out.iterdir())
    print(
        f"wrote {len(SHARDS)} shards, {sum(c for _, c in SHARDS)} samples, {total / 1e6:.2f} MB to {args.out}"
    )


if __name__ == "__main__":
    main()
