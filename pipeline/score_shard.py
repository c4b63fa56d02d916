"""One raw shard in, its score file out: decode → each teacher's eval view → embeddings → cosines.

Plain Python, no Beam. The cheap pass before a reinforcement: one view per teacher (the whole image
through the teacher's own evaluation transform, open_clip's `preprocess`) and one text (the original
caption) per sample, against A views and 1 + S texts when reinforcing. Reading, decoding, skips,
fixed-size teacher batches and the commit are the reinforce job's own (pipeline/reinforce_shard.py),
so a score does not depend on which samples share its batch, and a bad sample is skipped by the same
reason.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.feed import ordered_map
from pipeline.reinforce_shard import (
    FixedBatches,
    ImageEmbedder,
    StageClock,
    embed_text_rows,
    embed_view_rows,
    feed_stream,
    prepare_or_skip,
    read_ahead,
    timed_reads,
)
from pipeline.score_settings import ScoreSettings
from shards.raw import RawSample, SkippedSample, iter_raw_shard
from shards.run_folder import ShardStats, output_paths, shard_name, write_shard_outcome
from shards.scores import score_values, slice_cosines, write_score_file
from transforms import DEFAULT_MIN_SIDE, decode_image
from transforms.crop import check_min_side


@dataclasses.dataclass(frozen=True)
class EvalGeometry:
    """A teacher's evaluation transform, as plain values a feed process can take."""

    image_size: tuple[int, int]
    interpolation: str
    resize_mode: str

    @classmethod
    def of(cls, teacher: Any) -> EvalGeometry:
        return cls(tuple(teacher.image_size), teacher.interpolation, teacher.resize_mode)


@dataclasses.dataclass
class ScoreModels:
    """What a worker loads once: the ensemble (texts, widths, description) and each teacher alone."""

    ensemble: Any  # TeacherEnsemble: embed_texts, dims, describe()
    teachers: list[ImageEmbedder]  # one single-teacher ensemble per teacher, in order
    geometries: list[EvalGeometry]
    device: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Prepared:
    raw: RawSample
    size: tuple[int, int]  # the decoded image's width, height
    views: list[np.ndarray] | None  # per teacher, uint8 [3, H, W], until queued


@functools.cache
def _eval_transform(geometry: EvalGeometry) -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's own eval preprocess for this geometry, with an identity Normalize: pixels in [0, 1]."""
    import open_clip

    return open_clip.image_transform(
        geometry.image_size,
        is_train=False,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        resize_mode=geometry.resize_mode,
        interpolation=geometry.interpolation,
    )


def eval_view(image: Image.Image, geometry: EvalGeometry) -> np.ndarray:
    """uint8 [3, H, W]: the whole image as the teacher's preprocess sees it before Normalize. ToTensor
    gives k/255 exactly, so rounding back is lossless and the ensemble's normalising is bit-equal."""
    pixels = _eval_transform(geometry)(image)
    return (pixels * 255.0).round().to(torch.uint8).numpy()


def prepare_for_scoring(
    max_pixels: int, geometries: tuple[EvalGeometry, ...], raw: RawSample, seconds: dict[str, float]
) -> _Prepared:
    clock = StageClock()
    with clock.stage("decode"):
        image = decode_image(raw.image, max_pixels=max_pixels)
        check_min_side(image.size, DEFAULT_MIN_SIDE)  # what the job could not reinforce is not scored
    with clock.stage("eval_transform"):
        views = [eval_view(image, geometry) for geometry in geometries]
    seconds.update(clock.seconds)
    return _Prepared(raw=raw, size=image.size, views=views)


def score_shard(
    input_path: str,
    settings: ScoreSettings,
    models: ScoreModels,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> ShardStats:
    """Score one raw shard into `settings.output_dir`; the stats file, written last, commits it."""
    shard = shard_name(input_path)
    stats = ShardStats(shard=shard, input_path=input_path, device=models.device)
    skips: list[SkippedSample] = []
    clock = StageClock()

    def skip(item: SkippedSample) -> None:
        skips.append(item)
        stats.count(item)

    stream = _ScoreStream(settings.batch_size, models, clock, on_batch)
    prepare = functools.partial(prepare_for_scoring, settings.max_image_pixels, tuple(models.geometries))
    depth = max(8, settings.batch_size)
    prepared = ordered_map(
        functools.partial(prepare_or_skip, prepare),
        timed_reads(iter_raw_shard(input_path)),
        workers=settings.feed_workers,
        depth=depth,
    )
    feed_stream(read_ahead(prepared, depth=depth, clock=clock), stats, skip, stream)
    with clock.stage("write"):
        path = output_paths(settings.output_dir, shard)["parquet"]
        write_score_file(path, stream.rows, len(models.teachers))
    stats.num_written = len(stream.rows)
    stats.seconds = dict(clock.seconds)
    write_shard_outcome(settings.output_dir, stats, skips)
    return stats


class _ScoreStream:
    """Each teacher's eval views and the captions into fixed-size batches; score rows in input order."""

    def __init__(
        self,
        batch_size: int,
        models: ScoreModels,
        clock: StageClock,
        on_batch: Callable[[int], None] | None,
    ) -> None:
        self._models = models
        self._clock = clock
        self._on_batch = on_batch
        self._dims = list(models.ensemble.dims)
        self._images = [
            FixedBatches(batch_size, functools.partial(self._embed_images, teacher), None)
            for teacher in models.teachers
        ]
        self._texts = FixedBatches(batch_size, self._embed_texts, "")
        self._waiting: deque[_Prepared] = deque()
        self.rows: list[dict[str, Any]] = []

    def _embed_images(self, teacher: ImageEmbedder, views: list[Any]) -> np.ndarray:
        with self._clock.stage("embed_images"):
            return embed_view_rows(teacher, views)

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        with self._clock.stage("embed_texts"):
            return embed_text_rows(self._models.ensemble, texts)

    def add(self, prepared: _Prepared) -> None:
        assert prepared.views is not None
        for batches, view in zip(self._images, prepared.views, strict=True):
            batches.push([torch.from_numpy(view)])
        prepared.views = None  # the teachers' queues hold them now
        self._texts.push([prepared.raw.caption])
        self._waiting.append(prepared)
        self._score_ready()

    def finish(self) -> None:
        for batches in self._images:
            batches.flush()
        self._texts.flush()
        self._score_ready()

    def _score_ready(self) -> None:
        count = min(len(self._waiting), self._texts.ready, *(b.ready for b in self._images))
        if count == 0:
            return
        images = np.concatenate([b.take(count) for b in self._images], axis=1)
        cosines = slice_cosines(images, self._texts.take(count), self._dims)
        for row in cosines:
            prepared = self._waiting.popleft()
            raw = prepared.raw
            width, height = prepared.size
            self.rows.append(
                {
                    "uid": raw.uid,
                    "url": raw.url,
                    **score_values(row),
                    "width": width,
                    "height": height,
                    "caption_length": len(raw.caption),
                }
            )
        if self._on_batch is not None:
            self._on_batch(count)
