"""One reinforced shard in, the same shard grown out: a new teacher's slice, or a new caption family.

Plain Python, no Beam: the Beam DoFn, the benchmark and the tests all call `extend_shard`. It runs
on the reinforce stage's own machinery (pipeline/reinforce_shard.py), so what it adds is what a
fresh run with the grown setup writes, byte for byte on CPU:

- a new teacher embeds the *stored* views, replayed from `paug.json` on the decoded image with the
  job's `render_views`, and every text row (original caption, then each family's captions), in the
  job's fixed-size batches; its L2-normalised slice is appended to every row;
- a new captioner captions the decoded image with the job's seeds, `caption_seed(run seed, uid)`;
  the input's teachers embed those captions into `syn_text_<tag>_emb` (v2 layout).

Samples stream through and are written in input order; the stats file, written last, commits the shard.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.extend_settings import ExtendSettings
from pipeline.reinforce_shard import (
    CAPTION_FAILED,
    SAMPLE_FAILED,
    Augmenter,
    CaptionModel,
    FixedBatches,
    ImageEmbedder,
    ShardUnreadableError,
    StageClock,
    caption_group_size,
    caption_problem,
    caption_seed,
    embed_text_rows,
    embed_view_rows,
    feed_stream,
    read_ahead,
    render_views,
    skip_reason_for_image_error,
)
from shards import storage
from shards.raw import SkippedSample
from shards.reinforced import ReinforcedSample, iter_entries
from shards.run_folder import ShardStats, output_paths, shard_name, write_shard_outcome
from shards.writer import ShardWriter
from transforms import AugmentationError, BadImageError, decode_image, decode_param_aug
from transforms.fingerprint import view_fingerprint

WIDTH_MISMATCH = "embedding_width_mismatch"
FAMILY_EXISTS = "caption_family_exists"
NO_VIEWS = "no_views"
# The stored view fingerprints say this machine renders other pixels than the teachers saw: a new
# teacher's slice would describe different views than the other slices do.
REPLAY_DIFFERS = "replay_differs"
UNREADABLE_TAR = "unreadable_tar"
_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class ExtendModels:
    """What a worker loads once: the input run's view recipe, and the added teacher or captioner."""

    augmenter: Augmenter
    new_teacher: ImageEmbedder | None = None  # the added teacher alone
    teachers: ImageEmbedder | None = None  # the input's teachers, to embed a new caption family
    captioner: CaptionModel | None = None


@dataclasses.dataclass
class _Prepared:
    sample: ReinforcedSample
    image: Image.Image
    views: torch.Tensor | None  # [A, 3, S, S] uint8 replayed views (adding a teacher), until queued


def extend_shard(
    input_path: str,
    settings: ExtendSettings,
    models: ExtendModels,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> ShardStats:
    """Grow one reinforced shard into `settings.output_dir`; the stats file, written last, commits it."""
    _check_readable(input_path)
    shard = shard_name(input_path)
    paths = output_paths(settings.output_dir, shard)
    stats = ShardStats(shard=shard, input_path=input_path)
    skips: list[SkippedSample] = []
    clock = StageClock()

    def skip(record: SkippedSample) -> None:
        skips.append(record)
        stats.count(record)

    with ShardWriter(
        paths["tar"],
        paths["parquet"],
        layout=settings.layout,
        embedding_dtype=settings.embedding_dtype,
        teacher_dims=grown_teacher_dims(settings, models),
    ) as writer:
        stream = _GrowthStream(settings, models, writer, skip, clock, on_batch)
        prepared = _prepared(input_path, settings, models.augmenter)
        feed_stream(read_ahead(prepared, depth=max(8, stream.group_size), clock=clock), stats, skip, stream)
        stats.num_written = writer.count
    stats.seconds = dict(clock.seconds)
    write_shard_outcome(settings.output_dir, stats, skips)
    return stats


def grown_teacher_dims(settings: ExtendSettings, models: ExtendModels) -> list[int]:
    """The output's teacher widths: the input's, and an added teacher's last."""
    added = models.new_teacher.dims if models.new_teacher is not None else []
    return [*settings.input_dims, *added]


def _check_readable(input_path: str) -> None:
    """A shard that cannot be opened at all is left uncommitted (a flaky bucket): a re-run retries it.
    One damaged later on keeps the samples before the damage, as the reinforce job does."""
    try:
        with storage.open_read(input_path) as stream:
            stream.read(1)
    except Exception as exc:
        raise ShardUnreadableError(f"{input_path}: {type(exc).__name__}: {exc}") from exc


def _prepared(
    input_path: str, settings: ExtendSettings, augmenter: Augmenter
) -> Iterator[tuple[_Prepared | SkippedSample, dict[str, float]]]:
    """Read, decode and replay, in shard order; each item comes with the seconds it took per stage."""
    entries = iter_entries(input_path)
    while True:
        start = time.perf_counter()
        entry = next(entries, None)
        seconds = {"read": time.perf_counter() - start}
        if entry is None:
            return
        item: _Prepared | SkippedSample
        if entry.error is not None:
            error = entry.error
            item = SkippedSample(
                entry.key, error.reason, error.detail[:200], whole_shard=error.reason == UNREADABLE_TAR
            )
        else:
            sample = entry.sample
            assert sample is not None
            try:
                item = _prepare(sample, settings, augmenter, seconds)
            except (BadImageError, AugmentationError) as exc:
                item = SkippedSample(sample.key, skip_reason_for_image_error(exc), str(exc)[:200])
            except Exception as exc:  # an input no check foresaw must cost one sample, not the shard
                _LOG.warning("sample %s of %s skipped: %r", sample.key, input_path, exc)
                item = SkippedSample(sample.key, SAMPLE_FAILED, f"{type(exc).__name__}: {exc}"[:200])
        yield item, seconds


def _prepare(
    sample: ReinforcedSample, settings: ExtendSettings, augmenter: Augmenter, seconds: dict[str, float]
) -> _Prepared | SkippedSample:
    if sample.dim != settings.input_dim:
        return SkippedSample(
            sample.key, WIDTH_MISMATCH, f"D={sample.dim}, the config's teachers make {settings.input_dim}"
        )
    if settings.add_captioner is not None and settings.new_family in map(
        settings.renamed, sample.syn_captions
    ):
        return SkippedSample(sample.key, FAMILY_EXISTS, f"the sample already holds {settings.new_family}")
    if settings.add_teacher is not None and not sample.param_aug:
        return SkippedSample(sample.key, NO_VIEWS, "no stored view to embed")
    start = time.perf_counter()
    image = decode_image(sample.image, max_pixels=settings.max_image_pixels)
    decoded = time.perf_counter()
    seconds["decode"] = decoded - start
    views = None
    if settings.add_teacher is not None:
        params = [decode_param_aug(entry, version=settings.param_aug_version) for entry in sample.param_aug]
        views = render_views(augmenter, image, params)
        seconds["augment"] = time.perf_counter() - decoded
        if sample.view_sha is not None and [view_fingerprint(v) for v in views] != list(sample.view_sha):
            return SkippedSample(sample.key, REPLAY_DIFFERS, "replayed views differ from the stored view_sha")
    return _Prepared(sample=sample, image=image, views=views)


def _text_rows(sample: ReinforcedSample) -> list[str]:
    """Every text row of a sample: the original caption, then each family's captions in stored order."""
    return [sample.caption, *(c for captions in sample.syn_captions.values() for c in captions)]


class _GrowthStream:
    """Feed the new model fixed-size batches across samples; write each sample grown, in input order."""

    def __init__(
        self,
        settings: ExtendSettings,
        models: ExtendModels,
        writer: ShardWriter,
        skip: Callable[[SkippedSample], None],
        clock: StageClock,
        on_batch: Callable[[int], None] | None,
    ) -> None:
        self._settings = settings
        self._models = models
        self._writer = writer
        self._skip = skip
        self._clock = clock
        self._on_batch = on_batch
        adding_teacher = settings.add_teacher is not None
        self._text_model = models.new_teacher if adding_teacher else models.teachers
        self._images = FixedBatches(settings.batch_size, self._embed_images, None) if adding_teacher else None
        self._texts = FixedBatches(settings.batch_size, self._embed_texts, "")
        self._group: list[_Prepared] = []
        self.group_size = (
            1 if adding_teacher else caption_group_size(settings.caption_group, models.captioner)
        )
        self._waiting: deque[tuple[_Prepared, list[str] | None]] = deque()

    def _embed_images(self, views: list[Any]) -> np.ndarray:
        with self._clock.stage("embed_images"):
            return embed_view_rows(self._models.new_teacher, views)

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        with self._clock.stage("embed_texts"):
            return embed_text_rows(self._text_model, texts)

    def add(self, prepared: _Prepared) -> None:
        if self._images is not None:
            self._queue(prepared, None)
            self._write_ready()
            return
        self._group.append(prepared)
        if len(self._group) == self.group_size:
            self._caption_group()

    def finish(self) -> None:
        self._caption_group()
        if self._images is not None:
            self._images.flush()
        self._texts.flush()
        self._write_ready()

    def _caption_group(self) -> None:
        if not self._group:
            return
        group, self._group = self._group, []
        settings, count = self._settings, self._settings.num_captions
        with self._clock.stage("caption"):
            seeds = [caption_seed(settings.seed, p.sample.uid) for p in group]
            results = self._models.captioner.caption([p.image for p in group], seeds, count)
        for prepared, result in zip(group, results, strict=True):
            problem = caption_problem(result, count)
            if problem is not None:
                self._skip(SkippedSample(prepared.sample.key, CAPTION_FAILED, problem))
            else:
                self._queue(prepared, list(result))
        self._write_ready()

    def _queue(self, prepared: _Prepared, captions: list[str] | None) -> None:
        if self._images is not None:
            self._images.push(list(prepared.views))
            prepared.views = None  # the teacher's queue holds them now; keep one copy only
            self._texts.push(_text_rows(prepared.sample))
        else:
            self._texts.push(captions)
        self._waiting.append((prepared, captions))

    def _write_ready(self) -> None:
        written = 0
        while self._waiting:
            prepared, captions = self._waiting[0]
            sample = prepared.sample
            views = sample.num_views if self._images is not None else 0
            texts = len(_text_rows(sample)) if captions is None else len(captions)
            if (self._images is not None and self._images.ready < views) or self._texts.ready < texts:
                break
            self._waiting.popleft()
            text_rows = self._texts.take(texts)
            if self._images is not None:
                grown = _with_teacher(sample, self._images.take(views), text_rows)
            else:
                grown = self._with_family(sample, captions, text_rows)
            with self._clock.stage("write"):
                self._writer.write(grown)
            written += 1
        if written and self._on_batch is not None:
            self._on_batch(written)

    def _with_family(
        self, sample: ReinforcedSample, captions: list[str], emb: np.ndarray
    ) -> ReinforcedSample:
        renamed = self._settings.renamed
        syn_captions = {renamed(f): caps for f, caps in sample.syn_captions.items()}
        syn_emb = {renamed(f): rows for f, rows in sample.syn_emb.items()}
        family = self._settings.new_family
        syn_captions[family] = captions
        syn_emb[family] = np.ascontiguousarray(emb, dtype=np.float32)
        return dataclasses.replace(sample, syn_captions=syn_captions, syn_emb=syn_emb)


def _with_teacher(
    sample: ReinforcedSample, image_rows: np.ndarray, text_rows: np.ndarray
) -> ReinforcedSample:
    """The new teacher's columns appended to every row (teachers are concatenated in config order)."""
    syn_emb, row = {}, 1
    for family, captions in sample.syn_captions.items():
        syn_emb[family] = np.concatenate(
            [sample.syn_emb[family], text_rows[row : row + len(captions)]], axis=1
        )
        row += len(captions)
    return dataclasses.replace(
        sample,
        image_emb=np.concatenate([sample.image_emb, image_rows], axis=1),
        caption_emb=np.concatenate([sample.caption_emb, text_rows[0]]),
        syn_emb=syn_emb,
    )
