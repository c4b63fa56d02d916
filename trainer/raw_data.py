"""Training batches from raw img2dataset shards: the image, a RandomResizedCrop of it, its alt-text.

This is what a plain CLIP (or CoCa) run trains on: no teachers, no stored views; the crop is drawn
on the fly. The crop of a sample in an epoch comes from a generator seeded by (run seed, epoch, uid),
so a resumed run replays the very batches of an uninterrupted one, as on reinforced shards. Samples
the raw reader rejects (missing image or caption, damaged tar, ...) and images that do not decode
are skipped and counted by reason.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from shards.raw import RawSample, SkippedSample, iter_raw_shard
from trainer.data import ShardStream, Tokenizer, UnusableSample, WorkerPosition
from transforms import decode_image
from transforms.crop import RESAMPLING, render_crop, sample_crop
from transforms.seeding import derive_seed
from transforms.tensors import to_uint8_tensor

# open_clip's training crop: most of the image, so the caption still describes what is seen.
DEFAULT_CROP_SCALE = (0.9, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
_CROP_DOMAIN = "datacompdr-reinforce/trainer-raw-crop"


@dataclasses.dataclass
class PairBatch:
    """Images and their own captions' tokens, plus the stream bookkeeping a `DataCursor` needs."""

    keys: list[str]
    images: torch.Tensor  # uint8 [B, 3, S, S]
    tokens: torch.Tensor  # int64 [B, context]
    worker: int
    position: WorkerPosition
    skipped: dict[str, int]
    produce_seconds: float

    def __len__(self) -> int:
        return len(self.keys)


@dataclasses.dataclass
class _Pair:
    key: str
    image: torch.Tensor
    tokens: torch.Tensor


class PairCropper:
    """Turns a raw sample into (crop, tokens); built once per worker."""

    def __init__(
        self, image_size: int, tokenizer: Tokenizer, seed: int, scale: tuple[float, float], interpolation: str
    ) -> None:
        self.image_size = image_size
        self.tokenizer = tokenizer
        self.seed = seed
        self.scale = scale
        self.resample = RESAMPLING[interpolation]

    def __call__(self, sample: RawSample, epoch: int) -> _Pair:
        image = decode_image(sample.image)
        rng = np.random.Generator(np.random.PCG64(derive_seed(_CROP_DOMAIN, self.seed, epoch, sample.uid)))
        box = sample_crop(rng, image.size, self.scale, CROP_RATIO, min_side=1)
        view = render_crop(image, box, self.image_size, self.resample)
        return _Pair(sample.key, to_uint8_tensor(view), self.tokenizer([sample.caption])[0])


class RawPairStream(ShardStream):
    """Endless shuffled batches of (crop, caption tokens) from raw shards; see `ShardStream`."""

    def __init__(
        self,
        shards: Sequence[str],
        *,
        image_size: int,
        tokenizer: Tokenizer,
        batch_size: int,
        seed: int = 0,
        crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE,
        interpolation: str = "bicubic",
        **stream_options: object,
    ) -> None:
        super().__init__(shards, batch_size=batch_size, seed=seed, **stream_options)  # type: ignore[arg-type]
        self.image_size = image_size
        self.tokenizer = tokenizer
        self.crop_scale = crop_scale
        self.interpolation = interpolation

    def make_replayer(self) -> PairCropper:
        return PairCropper(self.image_size, self.tokenizer, self.seed, self.crop_scale, self.interpolation)

    def read_items(self, shards: Sequence[str]) -> Iterator[RawSample | UnusableSample]:
        for shard in shards:
            for item in iter_raw_shard(shard):
                yield UnusableSample(item.reason, item.detail) if isinstance(item, SkippedSample) else item

    def collate(
        self,
        samples: list[_Pair],
        worker: int,
        position: WorkerPosition,
        skipped: collections.Counter[str],
        seconds: float,
        replayer: PairCropper,
    ) -> PairBatch:
        return PairBatch(
            keys=[s.key for s in samples],
            images=torch.stack([s.image for s in samples]),
            tokens=torch.stack([s.tokens for s in samples]),
            worker=worker,
            position=position,
            skipped=dict(skipped),
            produce_seconds=seconds,
        )
