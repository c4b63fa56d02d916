"""A small image-text world whose captions describe the pictures, written as raw img2dataset shards.

A scene is one or two objects (shape, colour, size, position on a 2x2 grid) on a textured
background, rendered at 64 px. Captions say exactly that, in the terse words of alt-text ("large red
circle top left and small blue star on striped background"), so a model can learn the world from
them; every caption fits a 24-token context.
Four splits, each a folder of raw shards (contract §1):

- `clean`: accurate captions, for the teachers;
- `single`: the same with one object per picture: the captioner's first lesson (a ViT this small
  learns shapes from pictures of one object, not yet from pictures of two);
- `web`: the same kind of scenes with alt-text-like captions: some accurate, some partial (one object,
  some attributes, junk words), some unrelated (another scene's caption, or junk);
- `test`: one object per image, labelled with its class (colour + shape) as a `cls` member, with
  `classnames.txt` and `zeroshot_classification_templates.txt` beside the shards (what
  `trainer.evaluate` reads for zero-shot classification); its captions serve retrieval.

Everything is drawn from generators seeded by (split seed, sample index): same seed, same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from shards import storage
from shards.raw import SUCCESS, write_raw_shard

# 2: objects large enough to tell apart at 64 px (radius 10 / 15 px on a 2x2 grid, up to two per
# picture; was 7 / 12 px on 3x3, up to three), accurate captions of varying detail.
WORLD_VERSION = 2
IMAGE_SIZE = 64
_SUPERSAMPLE = 2  # drawn at 2x and box-filtered down: smooth edges, as a photo would have
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 35),
    "purple": (135, 55, 185),
    "orange": (245, 135, 25),
}
SIZES = {"small": 10.0, "large": 15.0}  # radius in px at 64 px
POSITIONS = (("top left", "top right"), ("bottom left", "bottom right"))
MAX_OBJECTS = 2
BACKGROUNDS = ("noisy", "striped", "checkered", "dotted")
CLASSNAMES = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
# Class prompts in the words the captions use (there are no "photos" in this world).
TEMPLATES = ("{c}", "small {c}", "large {c}", "{c} top left")
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"

# How alt-text goes wrong: the web split's caption kinds and their shares.
WEB_CAPTION_KINDS = (("accurate", 0.3), ("partial", 0.35), ("unrelated", 0.35))
_JUNK = (
    "IMG_{n}.jpg",
    "DSC{n}",
    "click to enlarge",
    "free stock photo",
    "best deals online",
    "untitled",
    "image {n}",
    "wallpaper hd",
    "shop now",
    "thumbnail",
)
SAMPLES_PER_SHARD = 1000
FAILED_PER_SHARD = 3  # failed downloads img2dataset records in the parquet only
_SEEDS = {"clean": 11, "web": 22, "test": 33, "single": 44}


@dataclasses.dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: str
    row: int
    column: int

    @property
    def position(self) -> str:
        return POSITIONS[self.row][self.column]

    def phrase(self, size: bool = True, position: bool = True) -> str:
        words = [self.size] * size + [self.colour, self.shape] + [self.position] * position
        return " ".join(words)


@dataclasses.dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: str

    @property
    def label(self) -> int:
        """The class of a one-object scene: its colour and shape."""
        first = self.things[0]
        return CLASSNAMES.index(f"{first.colour} {first.shape}")

    def caption(self, rng: np.random.Generator | None = None) -> str:
        """Everything about the scene; with `rng`, an accurate caption of varying detail, as people
        write them: every object by colour and shape, but its size, its position and the background
        each only half the time (so that "red circle" alone means something)."""
        detail = (lambda: True) if rng is None else (lambda: bool(rng.random() < 0.5))
        phrases = [t.phrase(size=detail(), position=detail()) for t in self.things]
        listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return f"{listed} on {self.background} background" if detail() else listed


def draw_scene(rng: np.random.Generator, objects: int) -> Scene:
    cells = rng.choice(len(POSITIONS) ** 2, size=objects, replace=False)
    things = tuple(
        Thing(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
            size=list(SIZES)[int(rng.integers(len(SIZES)))],
            row=int(cell) // len(POSITIONS),
            column=int(cell) % len(POSITIONS),
        )
        for cell in cells
    )
    return Scene(things, BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])


def _texture(rng: np.random.Generator, kind: str, side: int) -> np.ndarray:
    """A low-saturation textured background, float [side, side, 3] in 0-255."""
    tint = rng.uniform(70, 190) + rng.uniform(-20, 20, size=3)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    if kind == "noisy":
        pattern = rng.normal(0, 22, size=(side, side))
    elif kind == "striped":
        angle, period = rng.uniform(0, np.pi), rng.uniform(8, 16) * _SUPERSAMPLE
        pattern = 28 * np.sign(np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period))
    elif kind == "checkered":
        period = int(rng.integers(8, 14)) * _SUPERSAMPLE
        pattern = 28 * (((x // period) + (y // period)) % 2 * 2 - 1)
    else:
        period = int(rng.integers(8, 12)) * _SUPERSAMPLE
        pattern = -35 * ((np.hypot(x % period - period / 2, y % period - period / 2)) < period / 5)
    return np.clip(tint[None, None, :] + pattern[..., None], 0, 255)


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(np.pi / 4 + k * np.pi / 2) for k in range(4)]
        return [(cx + r * np.cos(a + turn), cy + r * np.sin(a + turn)) for a in corners]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "triangle":
        return [
            (cx + r * np.cos(a + turn), cy + r * np.sin(a + turn))
            for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)
        ]
    if shape == "star":
        return [
            (cx + rad * np.cos(a + turn), cy + rad * np.sin(a + turn))
            for k in range(10)
            for a, rad in [(-np.pi / 2 + k * np.pi / 5, r if k % 2 == 0 else 0.45 * r)]
        ]
    # cross: a plus sign of arm half-width r/3
    w = r / 3
    outline = [
        (w, r),
        (w, w),
        (r, w),
        (r, -w),
        (w, -w),
        (w, -r),
        (-w, -r),
        (-w, -w),
        (-r, -w),
        (-r, w),
        (-w, w),
        (-w, r),
    ]
    return [(cx + dx, cy + dy) for dx, dy in outline]


def render(scene: Scene, rng: np.random.Generator) -> bytes:
    """The scene as JPEG bytes at IMAGE_SIZE px."""
    side = IMAGE_SIZE * _SUPERSAMPLE
    image = Image.fromarray(_texture(rng, scene.background, side).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    cell = side / len(POSITIONS)
    for thing in scene.things:
        r = SIZES[thing.size] * _SUPERSAMPLE * rng.uniform(0.9, 1.1)
        jitter = cell / 2 - r if r < cell / 2 else 0.0
        cx = (thing.column + 0.5) * cell + rng.uniform(-1, 1) * min(jitter, 4 * _SUPERSAMPLE)
        cy = (thing.row + 0.5) * cell + rng.uniform(-1, 1) * min(jitter, 4 * _SUPERSAMPLE)
        colour = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[thing.colour])
        if thing.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            turn = rng.uniform(-0.2, 0.2) if thing.shape in ("square", "triangle", "star") else 0.0
            draw.polygon(_polygon(thing.shape, cx, cy, r, turn), fill=colour)
    image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=92)
    return out.getvalue()


def _junk(rng: np.random.Generator) -> str:
    return _JUNK[int(rng.integers(len(_JUNK)))].format(n=int(rng.integers(1000, 9999)))


def web_caption(scene: Scene, other: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """(kind, alt-text): accurate, partial (one object, some attributes, maybe junk) or unrelated."""
    kinds, shares = zip(*WEB_CAPTION_KINDS, strict=True)
    kind = kinds[int(rng.choice(len(kinds), p=shares))]
    if kind == "accurate":
        return kind, scene.caption(rng)
    if kind == "partial":
        thing = scene.things[int(rng.integers(len(scene.things)))]
        words = {
            0: f"{thing.colour} {thing.shape}",
            1: f"{thing.shape}",
            2: f"something {thing.colour}",
            3: f"{thing.size} {thing.shape}",
        }[int(rng.integers(4))]
        return kind, f"{words} | {_junk(rng)}" if rng.random() < 0.5 else words
    return kind, other.caption(rng) if rng.random() < 0.5 else _junk(rng)


def _sample(split: str, index: int, seed: int) -> tuple[Scene, dict[str, Any], bytes]:
    rng = np.random.Generator(np.random.PCG64([seed, _SEEDS[split], index]))
    objects = 1 if split in ("test", "single") else int(rng.integers(1, MAX_OBJECTS + 1))
    scene = draw_scene(rng, objects)
    image = render(scene, rng)
    extra: dict[str, Any] = {}
    if split == "web":
        kind, caption = web_caption(scene, draw_scene(rng, int(rng.integers(1, MAX_OBJECTS + 1))), rng)
        extra["caption_kind"] = kind
    else:  # the test split's captions say everything: retrieval must tell every detail apart
        caption = scene.caption(rng if split in ("clean", "single") else None)
    return scene, {"caption": caption, **extra}, image


def write_split(folder: str, split: str, samples: int, seed: int) -> dict[str, Any]:
    """Write one split's raw shards into `folder`; returns counts (and caption kinds for `web`)."""
    kinds: dict[str, int] = {}
    shards = (samples + SAMPLES_PER_SHARD - 1) // SAMPLES_PER_SHARD
    for shard in range(shards):
        rows, members = [], []
        first, last = shard * SAMPLES_PER_SHARD, min(samples, (shard + 1) * SAMPLES_PER_SHARD)
        for index in range(first, last + FAILED_PER_SHARD):
            key = f"{shard:08d}{index - first:04d}"
            uid = hashlib.md5(f"{split}/{seed}/{index}".encode()).hexdigest()
            url = f"https://shapes.example.org/{split}/{uid[:12]}.jpg"
            if index >= last:
                rows.append(
                    {
                        "uid": uid,
                        "url": url,
                        "caption": "",
                        "key": key,
                        "status": "failed_to_download",
                        "error_message": "HTTP Error 404: Not Found",
                    }
                )
                continue
            scene, text, image = _sample(split, index, seed)
            kinds[text.get("caption_kind", "accurate")] = (
                kinds.get(text.get("caption_kind", "accurate"), 0) + 1
            )
            meta = {
                "uid": uid,
                "url": url,
                "caption": text["caption"],
                "key": key,
                "status": SUCCESS,
                "error_message": None,
                "width": IMAGE_SIZE,
                "height": IMAGE_SIZE,
                "original_width": IMAGE_SIZE,
                "original_height": IMAGE_SIZE,
                "exif": None,
                "sha256": hashlib.sha256(image).hexdigest(),
                "scene": dataclasses.asdict(scene),
                **{k: v for k, v in text.items() if k != "caption"},
            }
            rows.append(meta)
            sample = {
                "__key__": key,
                "jpg": image,
                "txt": text["caption"].encode(),
                "json": json.dumps(meta).encode(),
            }
            if split == "test":
                sample["cls"] = str(scene.label).encode()
            members.append(sample)
        # img2dataset writes in download-completion order, not key order
        order = np.random.Generator(np.random.PCG64([seed, _SEEDS[split], shard, 7])).permutation(
            len(members)
        )
        write_raw_shard(folder, f"{shard:08d}", [members[i] for i in order], rows)
    if split == "test":
        storage.write_text_atomic(storage.join(folder, CLASSNAMES_FILE), "\n".join(CLASSNAMES) + "\n")
        storage.write_text_atomic(storage.join(folder, TEMPLATES_FILE), "\n".join(TEMPLATES) + "\n")
    return {"samples": samples, "shards": shards, "caption_kinds": dict(sorted(kinds.items()))}


def build_world(out: str | Path, sizes: dict[str, int], seed: int = 0) -> dict[str, Any]:
    """Write every split under `out/<split>/`; returns what was written, per split."""
    summary = {}
    for split, samples in sizes.items():
        folder = storage.join(str(out), split)
        Path(folder).mkdir(parents=True, exist_ok=True)
        summary[split] = write_split(folder, split, samples, seed)
    return summary


def definition() -> dict[str, Any]:
    """Everything that defines the world's pictures and captions (with the version of their code): the
    teachers' cache key, and the setting a run states."""
    return {
        "version": WORLD_VERSION,
        "image_size": IMAGE_SIZE,
        "shapes": SHAPES,
        "colours": COLOURS,
        "sizes": SIZES,
        "positions": POSITIONS,
        "max_objects": MAX_OBJECTS,
        "backgrounds": BACKGROUNDS,
        "web_caption_kinds": WEB_CAPTION_KINDS,
        "classes": len(CLASSNAMES),
    }


def names_every_object(caption: str, scene: dict[str, Any]) -> bool:
    """Whether `caption` names each object of `scene` (a raw json's "scene") by colour and shape: the
    least a caption must say to teach this world's classes."""
    return all(f"{thing['colour']} {thing['shape']}" in caption for thing in scene["things"])


def split_pattern(out: str | Path, split: str) -> str:
    return storage.join(str(out), split, "*.tar")
