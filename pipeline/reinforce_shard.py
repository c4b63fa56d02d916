"""One raw shard in, one reinforced shard out: decode → caption → views → embeddings → write.

Plain Python, no Beam: the Beam DoFn, the benchmark and the tests all call `reinforce_shard`.
Samples stream through and are written in input order; only about one model batch of them is held
at a time, so memory is bounded by the batch, not the shard.

Teachers always see batches of exactly `batch_size` views (or texts), filled across samples and
zero-padded only at the end of the shard. On CPU and GPU, a row's result depends on the shape of its
batch but not on the other rows, so a sample's embeddings do not depend on which samples share its
batch (tests/pipeline checks this byte for byte). The captioner pads its own fixed-size chunks the
same way, and draws each sample's captions from a seed of (run seed, uid).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from queue import Full, Queue
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from pipeline.feed import ordered_map
from pipeline.selection import kept_uids, select
from pipeline.settings import ReinforceSettings
from shards.raw import RawSample, SkippedSample, SkipReason, iter_raw_shard
from shards.reinforced import IMAGE_SHA256, ReinforcedSample
from shards.run_folder import ShardStats, output_paths, shard_name, write_shard_outcome
from shards.writer import ShardWriter
from transforms import (
    AugmentationError,
    BadImageError,
    decode_image,
    derive_seed,
    encode_param_aug,
    view_rng,
)
from transforms.fingerprint import view_fingerprint

CAPTION_FAILED = "caption_failed"
SAMPLE_FAILED = "sample_failed"
_LOG = logging.getLogger(__name__)
_CAPTION_DOMAIN = "datacompdr-reinforce/caption"


class ShardUnreadableError(OSError):
    """The raw shard could not be opened at all: nothing is committed, so a re-run tries it again."""


class ImageEmbedder(Protocol):
    @property
    def dims(self) -> list[int]: ...  # each teacher's width, in slice order
    def embed_images(self, views: torch.Tensor) -> torch.Tensor: ...
    def embed_texts(self, texts: list[str]) -> torch.Tensor: ...


class CaptionModel(Protocol):
    def caption(self, images: list[Image.Image], seeds: list[int], num_captions: int) -> list[Any]: ...


class Augmenter(Protocol):
    config: dict[str, Any]

    def sample(self, rng: np.random.Generator, size: tuple[int, int]) -> Any: ...
    def apply(self, image: Image.Image, params: Any) -> torch.Tensor: ...


def caption_group_size(wanted: int, captioner: CaptionModel) -> int:
    """Images per captioner call, about `wanted` but whole multiples of its own fixed chunk, so it never
    pads mid-shard."""
    chunk = max(1, int(getattr(captioner, "micro_batch", 1)))
    return max(chunk, wanted // chunk * chunk)


@dataclasses.dataclass
class ShardModels:
    """What a worker loads once and reuses for every shard it is given."""

    ensemble: ImageEmbedder
    captioner: CaptionModel
    augmenter: Augmenter
    device: dict[str, Any] = dataclasses.field(default_factory=dict)  # facts for each shard's stats


@dataclasses.dataclass
class PreparedSample:
    raw: RawSample
    image: Image.Image
    params: list[Any]
    views: np.ndarray | None  # [A, 3, S, S] uint8, until handed to the teachers' queue
    view_sha: list[str]  # the views' fingerprints, stored so a replay can tell it matches


class StageClock:
    """Wall seconds per stage, for the stats file (the only output that may differ between runs)."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


def skip_reason_for_image_error(exc: BadImageError | AugmentationError) -> str:
    """Image problems counted as `image_<reason>` (image_undecodable, image_too_many_pixels, ...)."""
    return exc.reason if exc.reason.startswith("image_") else f"image_{exc.reason}"


def caption_seed(seed: int, uid: str) -> int:
    return derive_seed(_CAPTION_DOMAIN, seed, uid)


def caption_problem(result: Any, num_captions: int) -> str | None:
    """Why a captioner result is unusable (a CaptionFailure, a wrong count), or None when it is fine."""
    if isinstance(result, list) and len(result) == num_captions:
        return None
    why = f"{getattr(result, 'reason', '')} {getattr(result, 'detail', '')}".strip()
    return why[:200] or "wrong number of captions"


def render_views(augmenter: Augmenter, image: Image.Image, params: list[Any]) -> torch.Tensor:
    """uint8 [A, 3, S, S]: the views the teachers see, at the augmenter's size (the job's and a replay's)."""
    return torch.stack([augmenter.apply(image, p) for p in params])


def embed_view_rows(embedder: ImageEmbedder, views: list[Any]) -> np.ndarray:
    """float32 [N, D] for one fixed-size batch of views; None rows (padding) embed a blank view."""
    template = next(v for v in views if v is not None)
    batch = torch.stack([v if v is not None else torch.zeros_like(template) for v in views])
    return embedder.embed_images(batch).float().cpu().numpy()


def embed_text_rows(embedder: ImageEmbedder, texts: list[str]) -> np.ndarray:
    return embedder.embed_texts(texts).float().cpu().numpy()


def reinforce_shard(
    input_path: str,
    settings: ReinforceSettings,
    models: ShardModels,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> ShardStats:
    """Reinforce one raw shard into `settings.output_dir`; the stats file, written last, commits it."""
    shard = shard_name(input_path)
    paths = output_paths(settings.output_dir, shard)
    stats = ShardStats(shard=shard, input_path=input_path, device=models.device)
    skips: list[SkippedSample] = []
    clock = StageClock()

    def skip(item: SkippedSample) -> None:
        skips.append(item)
        stats.count(item)

    left_out: list[str] = []  # appended by the read-ahead thread, read once it has ended
    selected = select(iter_raw_shard(input_path), kept_uids(settings.selection, shard), left_out)
    with ShardWriter(
        paths["tar"],
        paths["parquet"],
        layout=settings.layout,
        embedding_dtype=settings.embedding_dtype,
        teacher_dims=models.ensemble.dims,
    ) as writer:
        stream = _SampleStream(settings, models, writer, skip, clock, on_batch)
        depth = max(8, stream.group_size)
        prepared_items = ordered_map(
            functools.partial(_prepare_item, settings, models.augmenter),
            timed_reads(selected),
            workers=settings.feed_workers,
            depth=depth,
        )
        feed_stream(read_ahead(prepared_items, depth=depth, clock=clock), stats, skip, stream)
        stats.num_written = writer.count
    stats.filtered_out = len(left_out)
    stats.num_read += stats.filtered_out
    stats.seconds = dict(clock.seconds)
    write_shard_outcome(settings.output_dir, stats, skips)
    return stats


def feed_stream(
    items: Iterable[Any], stats: ShardStats, skip: Callable[[SkippedSample], None], stream: Any
) -> None:
    """Every item of a shard, in order: each sample read is counted, good ones go to `stream`, skips
    to `skip` (damage to the shard itself is not a sample). Shared by the reinforce and extend stages."""
    for item in items:
        if isinstance(item, SkippedSample) and item.reason == SkipReason.UNREADABLE_SHARD:
            # Possibly transient (a flaky bucket, a missing mount): leave the shard uncommitted.
            raise ShardUnreadableError(f"{stats.input_path}: {item.detail}")
        if isinstance(item, SkippedSample) and item.whole_shard:
            skip(item)
            continue
        stats.num_read += 1
        if isinstance(item, SkippedSample):
            skip(item)
        else:
            stream.add(item)
    stream.finish()


def timed_reads(items: Iterator[RawSample | SkippedSample]) -> Iterator[tuple[Any, dict[str, float]]]:
    """The raw shard's items in order, each with the seconds its read took."""
    while True:
        start = time.perf_counter()
        item = next(items, None)
        seconds = {"read": time.perf_counter() - start}
        if item is None:
            return
        yield item, seconds


def _prepare_item(
    settings: ReinforceSettings, augmenter: Augmenter, entry: tuple[Any, dict[str, float]]
) -> tuple[PreparedSample | SkippedSample, dict[str, float]]:
    """Decode and augment one raw sample (in this process or a feed process); bad ones become skips."""
    return prepare_or_skip(functools.partial(prepare_sample, settings=settings, augmenter=augmenter), entry)


def prepare_or_skip(
    prepare: Callable[..., Any], entry: tuple[Any, dict[str, float]]
) -> tuple[Any, dict[str, float]]:
    """`prepare(raw, seconds=...)` on one raw sample; a bad image, or any failure, becomes its skip.
    Shared by the reinforce and score stages."""
    item, seconds = entry
    if not isinstance(item, RawSample):
        return item, seconds
    try:
        return prepare(item, seconds=seconds), seconds
    except (BadImageError, AugmentationError) as exc:
        return SkippedSample(item.key, skip_reason_for_image_error(exc), str(exc)[:200]), seconds
    except Exception as exc:  # an image no check foresaw must cost one sample, not the shard
        _LOG.warning("sample %s skipped: %r", item.key, exc)
        return SkippedSample(item.key, SAMPLE_FAILED, f"{type(exc).__name__}: {exc}"[:200]), seconds


def read_ahead(
    items: Iterator[tuple[Any, dict[str, float]]], *, depth: int, clock: StageClock
) -> Iterator[Any]:
    """Run `items` in a helper thread up to `depth` items ahead, so that decoding and augmenting (PIL,
    mostly outside the GIL) overlap the models' work. Order, and so every output byte, is unchanged."""
    queue: Queue[tuple[str, Any]] = Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry: tuple[str, Any]) -> bool:
        """Put unless the consumer has gone away (it may have stopped on an error of its own)."""
        while not stop.is_set():
            try:
                queue.put(entry, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(("item", item)):
                    return
            offer(("done", None))
        except BaseException as exc:  # handed to the consuming thread, which raises it
            offer(("error", exc))

    worker = threading.Thread(target=produce, name="shard-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, payload = queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise payload
            item, seconds = payload
            clock.seconds.update(seconds)
            yield item
    finally:
        stop.set()
        worker.join()


def prepare_sample(
    raw: RawSample, settings: ReinforceSettings, augmenter: Augmenter, seconds: dict[str, float]
) -> PreparedSample:
    start = time.perf_counter()
    image = decode_image(raw.image, max_pixels=settings.max_image_pixels)
    decoded = time.perf_counter()
    seconds["decode"] = decoded - start
    rngs = [view_rng(settings.seed, raw.uid, k) for k in range(settings.num_views)]
    params = [augmenter.sample(rng, image.size) for rng in rngs]
    views = render_views(augmenter, image, params)
    view_sha = [view_fingerprint(view) for view in views]
    views = views.numpy()  # plain arrays cross from feed processes without torch's shared memory
    seconds["augment"] = time.perf_counter() - decoded
    return PreparedSample(raw=raw, image=image, params=params, views=views, view_sha=view_sha)


class FixedBatches:
    """Rows in, results out in the same order; `embed` always gets exactly `size` rows.

    The last, partial batch of a shard is padded with `pad` rows whose results are dropped.
    """

    def __init__(self, size: int, embed: Callable[[list[Any]], np.ndarray], pad: Any) -> None:
        self._size = size
        self._embed = embed
        self._pad = pad
        self._rows: list[Any] = []
        self._results: list[np.ndarray] = []
        self.ready = 0  # result rows not yet taken

    def push(self, rows: list[Any]) -> None:
        self._rows.extend(rows)
        while len(self._rows) >= self._size:
            self._run(self._rows[: self._size], self._size)
            self._rows = self._rows[self._size :]

    def flush(self) -> None:
        if self._rows:
            count = len(self._rows)
            self._run(self._rows + [self._pad] * (self._size - count), count)
            self._rows = []

    def _run(self, rows: list[Any], keep: int) -> None:
        result = self._embed(rows)
        self._results.append(result[:keep])
        self.ready += keep

    def take(self, count: int) -> np.ndarray:
        out = np.concatenate(self._results) if len(self._results) > 1 else self._results[0]
        taken, rest = out[:count], out[count:]
        self._results = [rest] if len(rest) else []
        self.ready -= count
        return taken


class _SampleStream:
    """Caption groups of samples, feed their views and texts to fixed-size teacher batches, write in order."""

    def __init__(
        self,
        settings: ReinforceSettings,
        models: ShardModels,
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
        self._group: list[PreparedSample] = []
        self.group_size = caption_group_size(settings.caption_group, models.captioner)
        self._waiting: deque[tuple[PreparedSample, list[str]]] = deque()  # captioned, embeddings pending
        self._images = FixedBatches(settings.batch_size, self._embed_images, None)
        self._texts = FixedBatches(settings.batch_size, self._embed_texts, "")

    def _embed_images(self, views: list[Any]) -> np.ndarray:
        with self._clock.stage("embed_images"):
            return embed_view_rows(self._models.ensemble, views)

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        with self._clock.stage("embed_texts"):
            return embed_text_rows(self._models.ensemble, texts)

    def add(self, prepared: PreparedSample) -> None:
        self._group.append(prepared)
        if len(self._group) == self.group_size:
            self._caption_group()

    def finish(self) -> None:
        self._caption_group()
        self._images.flush()
        self._texts.flush()
        self._write_ready()

    def _caption_group(self) -> None:
        if not self._group:
            return
        group, self._group = self._group, []
        settings = self._settings
        with self._clock.stage("caption"):
            seeds = [caption_seed(settings.seed, p.raw.uid) for p in group]
            results = self._models.captioner.caption([p.image for p in group], seeds, settings.num_captions)
        for prepared, result in zip(group, results, strict=True):
            problem = caption_problem(result, settings.num_captions)
            if problem is not None:
                self._skip(SkippedSample(prepared.raw.key, CAPTION_FAILED, problem))
                continue
            self._waiting.append((prepared, result))
            self._images.push(list(torch.from_numpy(prepared.views)))
            self._texts.push([prepared.raw.caption, *result])
            prepared.views = None  # the teachers' queue holds them now; keep one copy only
        self._write_ready()

    def _write_ready(self) -> None:
        settings = self._settings
        views, rows = settings.num_views, 1 + settings.num_captions
        written = 0
        while self._waiting and self._images.ready >= views and self._texts.ready >= rows:
            prepared, captions = self._waiting.popleft()
            image_emb = self._images.take(views)
            text_emb = self._texts.take(rows)
            with self._clock.stage("write"):
                self._writer.write(
                    reinforced_sample(
                        prepared,
                        captions,
                        image_emb=image_emb,
                        caption_emb=text_emb[0],
                        syn_emb=text_emb[1:],
                        family=settings.caption_family,
                    )
                )
            written += 1
        if written and self._on_batch is not None:
            self._on_batch(written)


def reinforced_sample(
    prepared: PreparedSample,
    captions: list[str],
    *,
    image_emb: np.ndarray,
    caption_emb: np.ndarray,
    syn_emb: np.ndarray,
    family: str,
) -> ReinforcedSample:
    raw = prepared.raw
    width, height = prepared.image.size
    meta = dict(raw.meta)
    meta["uid"] = raw.uid
    meta.setdefault("key", raw.key)
    image_sha256 = hashlib.sha256(raw.image).hexdigest()
    if not isinstance(meta.get("sha256"), str):
        # img2dataset's sha256 is of the downloaded bytes and is kept as is; only a missing one is filled.
        meta["sha256"] = image_sha256
    meta[IMAGE_SHA256] = image_sha256  # the bytes the boxes refer to: what a join checks (contract §6)
    # Crop boxes refer to the decoded pixel grid, so the sizes we store are that grid's.
    meta["width"], meta["height"] = width, height
    return ReinforcedSample(
        key=raw.uid,
        image=raw.image,
        image_ext=raw.image_ext,
        caption=raw.caption,
        url=raw.url,
        meta=meta,
        param_aug=[encode_param_aug(p) for p in prepared.params],
        view_sha=prepared.view_sha,
        image_emb=np.ascontiguousarray(image_emb, dtype=np.float32),
        caption_emb=np.ascontiguousarray(caption_emb, dtype=np.float32),
        syn_captions={family: list(captions)},
        syn_emb={family: np.ascontiguousarray(syn_emb, dtype=np.float32)},
    )
