"""Training batches from reinforced shards: stream, shuffle, replay a stored view, pair the targets.

Each loader worker (of each rank, under torchrun) owns a fixed share of the shards and streams them
endlessly, one epoch after another: tar members (read through Beam FileSystems, so local, gs://
and s3:// alike) go through a webdataset shuffle buffer as raw bytes, and only what leaves the
buffer is decoded. Per sample, the view, the synthetic caption and thus the teacher targets are
drawn from a generator seeded by (run seed, epoch, uid): the choice does not depend on worker count
or buffer order.

Every batch carries its worker's position (epoch, items taken from the shuffle buffer), so a
checkpoint knows exactly where each worker stood; a resumed run skips that many raw items per worker
(no decoding, no replay) and sees the very batches the uninterrupted run would have seen.

A bad sample (missing member, wrong embedding width, unknown param_aug version, undecodable image,
crop box outside the image, ...) is skipped and counted by reason; it never becomes a wrong target.

Replays are checked against the view fingerprints the job stored (when the run's config.json is
known): every replay when the student's size is the teachers' view size (a hash, nearly free),
else the first REPLAY_CHECKS_PER_WORKER samples of each worker, re-rendered once at the teachers'
size. A view that differs from what the teachers saw (another Pillow build) is still trained on,
and counted in `Batch.replay`; the trainer warns.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import random
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import webdataset as wds

from shards import storage
from shards.reinforced import ReinforcedSample, ShardFormatError, decode_sample, iter_members
from shards.run_inputs import folder_hint
from shards.teacher_slices import TeacherSlice, is_unit_norm, slice_norms
from trainer.distributed import shard_share
from trainer.settings import DataSettings
from transforms import ViewAugmenter, decode_image, decode_param_aug
from transforms.fingerprint import view_fingerprint
from transforms.seeding import derive_seed, draw_int

Tokenizer = Callable[[Sequence[str]], torch.Tensor]
DEFAULT_SHUFFLE_BUFFER = 1000
DEFAULT_WORKERS = 2
_PICK_DOMAIN = "datacompdr-reinforce/trainer-pick"
_SHARD_ORDER_DOMAIN = "datacompdr-reinforce/trainer-shards"
_SHUFFLE_DOMAIN = "datacompdr-reinforce/trainer-shuffle"
# Views checked at the teachers' size per worker when the student replays at another size: about 8 %
# of DataCompDR views differ between Pillow 12 and 13, so 64 checks miss such a stack 1 time in 200.
REPLAY_CHECKS_PER_WORKER = 64


class DataError(ValueError):
    """The data cannot be trained on at all (no shards, nothing usable, widths that do not match)."""


class UnusableSample(ValueError):
    """One sample is unusable; `reason` is the counter it goes to."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass
class TrainingSample:
    key: str
    image: torch.Tensor  # uint8 [3, S, S], the replayed view, not yet normalised
    tokens: torch.Tensor  # int64 [2, context]: original caption, synthetic caption
    teacher_image: np.ndarray  # [D] the stored embedding of exactly this view
    teacher_original: np.ndarray  # [D]
    teacher_synthetic: np.ndarray  # [D]
    view_index: int
    synthetic_index: int


@dataclasses.dataclass
class WorkerPosition:
    """How far one worker's stream has been consumed: items taken from the buffer in `epoch`."""

    epoch: int = 0
    offset: int = 0


@dataclasses.dataclass
class Batch:
    keys: list[str]
    images: torch.Tensor  # uint8 [B, 3, S, S]
    original_tokens: torch.Tensor  # int64 [B, context]
    synthetic_tokens: torch.Tensor  # int64 [B, context]
    teacher_image: torch.Tensor  # float32 [B, D]
    teacher_original: torch.Tensor  # float32 [B, D]
    teacher_synthetic: torch.Tensor  # float32 [B, D]
    worker: int
    position: WorkerPosition  # after the last sample of this batch
    skipped: dict[str, int]  # this worker's skips so far, by reason
    replay: dict[str, int]  # this worker's fingerprint checks so far: "checked", "differ"
    produce_seconds: float  # worker time spent reading, decoding and replaying this batch

    def __len__(self) -> int:
        return len(self.keys)


def list_shards(patterns: Sequence[str]) -> list[str]:
    """Every shard matching the patterns (local, gs://, s3://), sorted and de-duplicated."""
    shards: set[str] = set()
    for pattern in patterns:
        try:
            found = storage.match(pattern)
        except Exception as error:
            raise DataError(f"cannot list {pattern}: {type(error).__name__}: {error}") from error
        shards.update(p for p in found if p.endswith(".tar"))
    if not shards:
        hints = "".join(folder_hint(pattern, "--data") for pattern in patterns[:1])
        raise DataError(f"no .tar shards match --data {' '.join(patterns)}{hints}")
    return sorted(shards)


class SampleReplayer:
    """Turns one sample's members into a training sample; built once per worker."""

    def __init__(self, settings: DataSettings, image_size: int, tokenizer: Tokenizer, seed: int) -> None:
        self.settings = settings
        self.image_size = image_size
        self.tokenizer = tokenizer
        self.seed = seed
        self.augmenter = ViewAugmenter.from_config(settings.augmentation)
        self.replay_checks: collections.Counter[str] = collections.Counter()

    def __call__(self, members: dict[str, Any], epoch: int) -> TrainingSample:
        sample = decode_sample(members)
        return self.replay(sample, epoch)

    def pick(self, sample: ReinforcedSample, epoch: int, num_synthetic: int) -> tuple[int, int]:
        """(view index, synthetic caption index), a pure function of (seed, epoch, uid)."""
        rng = np.random.Generator(np.random.PCG64(derive_seed(_PICK_DOMAIN, self.seed, epoch, sample.uid)))
        return draw_int(rng, 0, sample.num_views), draw_int(rng, 0, num_synthetic)

    def replay(self, sample: ReinforcedSample, epoch: int) -> TrainingSample:
        if sample.dim != self.settings.embedding_dim:
            raise UnusableSample(
                "embedding_width_mismatch",
                f"D={sample.dim}, the teacher widths {list(self.settings.teacher_dims)} need "
                f"{self.settings.embedding_dim}",
            )
        if sample.num_views == 0:
            raise UnusableSample("no_views")
        families = sorted(sample.syn_captions)  # v2 may hold several: pooled, in a fixed order
        if self.settings.caption_families is not None:
            families = [f for f in families if f in self.settings.caption_families]
        captions = [c for f in families for c in sample.syn_captions[f]]
        if not captions:
            raise UnusableSample(
                "no_synthetic_captions", f"none in {self.settings.caption_families or 'any family'}"
            )
        synthetic_emb = np.concatenate([sample.syn_emb[f] for f in families])
        view_index, synthetic_index = self.pick(sample, epoch, len(captions))
        targets = (sample.image_emb[view_index], sample.caption_emb, synthetic_emb[synthetic_index])
        for target in targets:
            check_unit_slices(target, self.settings.slices)
        params = decode_param_aug(sample.param_aug[view_index], version=self.settings.param_aug_version)
        image = decode_image(sample.image)
        view = self.augmenter.apply(image, params, size=self.image_size)
        self._check_replay(sample, view_index, image, params, view)
        tokens = self.tokenizer([sample.caption, captions[synthetic_index]])
        return TrainingSample(
            sample.key, view, tokens, *targets, view_index=view_index, synthetic_index=synthetic_index
        )

    def _check_replay(
        self, sample: ReinforcedSample, view_index: int, image: Any, params: Any, view: torch.Tensor
    ) -> None:
        """Compare the replayed view with the fingerprint of the view the teachers embedded."""
        if not self.settings.check_replay or sample.view_sha is None:
            return
        if self.image_size != self.augmenter.size:
            if self.replay_checks["checked"] >= REPLAY_CHECKS_PER_WORKER:
                return
            view = self.augmenter.apply(image, params)
        self.replay_checks["checked"] += 1
        if view_fingerprint(view) != sample.view_sha[view_index]:
            self.replay_checks["differ"] += 1


def check_unit_slices(vector: np.ndarray, slices: Sequence[TeacherSlice]) -> None:
    """Each teacher's slice of a stored vector must be unit length, or the split is wrong."""
    for k, teacher in enumerate(slices):
        norm = slice_norms(vector[None], teacher)
        if not is_unit_norm(norm).all():
            raise UnusableSample(
                "teacher_slice_not_unit",
                f"teacher {k} slice [{teacher.start}:{teacher.stop}] has norm {float(norm[0]):.3f}",
            )


def skip_reason(error: Exception) -> str:
    return str(getattr(error, "reason", None) or f"error_{type(error).__name__}")


class ShardStream(torch.utils.data.IterableDataset):
    """A stream of batches, endless by default; each worker of each rank streams its own shards
    (`trainer.distributed.shard_share`: shards[w::W] in a one-process run).

    Subclasses say how a shard is read (`read_items`), how one item becomes a training sample
    (`make_replayer`) and how samples become a batch (`collate`); shuffling, epochs, positions and
    skip counting are shared, so every kind of training data resumes exactly.
    """

    def __init__(
        self,
        shards: Sequence[str],
        *,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        start: Sequence[WorkerPosition] | None = None,
        skipped: Sequence[dict[str, int]] | None = None,
        epochs: int | None = None,
        keep_uids: frozenset[str] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        self.shards = list(shards)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.start = list(start) if start else None
        self.skipped = list(skipped) if skipped else None
        self.epochs = epochs  # None: endless, as training wants; else the last batch may be short
        self.keep_uids = keep_uids  # train only on these samples (`--keep-uids`); None: all
        self.rank, self.world_size = rank, world_size  # this process's share of the shards

    def make_replayer(self) -> Callable[[Any, int], Any]:
        """A callable (item, epoch) -> training sample, built once per worker; raises to skip."""
        raise NotImplementedError

    def read_items(self, shards: Sequence[str]) -> Iterator[Any]:
        """The shards' raw items in order; an error item (an Exception) is counted as a skip."""
        return _raw_items(shards)

    def collate(
        self,
        samples: list[Any],
        worker: int,
        position: WorkerPosition,
        skipped: collections.Counter[str],
        seconds: float,
        replayer: Any,
    ) -> Any:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.start is not None and len(self.start) != workers:
            raise DataError(f"the stream was positioned for {len(self.start)} workers, not {workers}")
        position = dataclasses.replace(self.start[worker]) if self.start else WorkerPosition()
        skipped = collections.Counter(self.skipped[worker] if self.skipped else {})
        replayer = self.make_replayer()
        shards = shard_share(self.shards, self.rank, self.world_size, worker, workers)
        stream_index = self.rank * workers + worker  # seeds this worker's order, unique in the world
        samples = self._samples(shards, worker, stream_index, position, skipped, replayer)
        while True:
            began = time.perf_counter()
            chunk = list(itertools.islice(samples, self.batch_size))
            if not chunk:
                return
            position = chunk[-1][1]
            seconds = time.perf_counter() - began
            yield self.collate([s for s, _ in chunk], worker, position, skipped, seconds, replayer)

    def _samples(
        self,
        shards: list[str],
        worker: int,
        stream_index: int,
        start: WorkerPosition,
        skipped: collections.Counter[str],
        replayer: Callable[[Any, int], Any],
    ) -> Iterator[tuple[Any, WorkerPosition]]:
        if not shards:
            raise DataError(f"loader worker {worker} has no shard: use at most as many workers as shards")
        epoch, resume_offset = start.epoch, start.offset
        while self.epochs is None or epoch < self.epochs:
            produced = 0
            for offset, item in enumerate(self._shuffled(shards, stream_index, epoch), start=1):
                if offset <= resume_offset:
                    continue
                if isinstance(item, Exception):
                    skipped[skip_reason(item)] += 1
                    continue
                try:
                    sample = replayer(item, epoch)
                except Exception as error:  # bad input never stops training; it is counted
                    skipped[skip_reason(error)] += 1
                    continue
                produced += 1
                yield sample, WorkerPosition(epoch, offset)
            if produced == 0 and resume_offset == 0:
                raise DataError(
                    f"a full pass over {len(shards)} shards ({shards[0]} ...) gave no usable sample; "
                    f"skipped so far: {dict(skipped)}"
                )
            epoch, resume_offset = epoch + 1, 0

    def _shuffled(self, shards: list[str], stream_index: int, epoch: int) -> Iterator[Any]:
        order = list(shards)
        random.Random(derive_seed(_SHARD_ORDER_DOMAIN, self.seed, epoch, stream_index)).shuffle(order)
        rng = random.Random(derive_seed(_SHUFFLE_DOMAIN, self.seed, epoch, stream_index))
        initial = min(self.shuffle_buffer, 100)
        items = self.read_items(order)
        if self.keep_uids is not None:  # before the shuffle: positions count only the samples kept
            items = filter(self._wanted, items)
        return wds.filters.shuffle(self.shuffle_buffer, initial, rng=rng)(items)

    def _wanted(self, item: Any) -> bool:
        """Errors always pass on (they are counted as skips); samples when `keep_uids` lists them."""
        return isinstance(item, Exception) or sample_uid(item) in (self.keep_uids or ())


def sample_uid(item: Any) -> str | None:
    """A read item's uid: a reinforced sample's tar key (its DataComp uid), a raw sample's uid."""
    return item.get("__key__") if isinstance(item, dict) else getattr(item, "uid", None)


class ReinforcedStream(ShardStream):
    """Batches of replayed views, their captions' tokens and the stored teacher targets."""

    def __init__(
        self,
        shards: Sequence[str],
        settings: DataSettings,
        *,
        image_size: int,
        tokenizer: Tokenizer,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        start: Sequence[WorkerPosition] | None = None,
        skipped: Sequence[dict[str, int]] | None = None,
        epochs: int | None = None,
        keep_uids: frozenset[str] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(
            shards,
            batch_size=batch_size,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            start=start,
            skipped=skipped,
            epochs=epochs,
            keep_uids=keep_uids,
            rank=rank,
            world_size=world_size,
        )
        self.settings = settings
        self.image_size = image_size
        self.tokenizer = tokenizer

    def make_replayer(self) -> SampleReplayer:
        return SampleReplayer(self.settings, self.image_size, self.tokenizer, self.seed)

    def collate(
        self,
        samples: list[TrainingSample],
        worker: int,
        position: WorkerPosition,
        skipped: collections.Counter[str],
        seconds: float,
        replayer: SampleReplayer,
    ) -> Batch:
        return _collate(samples, worker, position, skipped, replayer.replay_checks, seconds)


def _raw_items(shards: Sequence[str]) -> Iterator[dict[str, Any] | ShardFormatError]:
    """Raw member dicts; an unreadable or truncated tar ends as one error item after its good samples.

    Errors travel through the shuffle buffer like samples, so each one has a stream position and a
    resumed run neither loses nor double-counts it.
    """
    for shard in shards:
        try:
            yield from iter_members(shard)
        except Exception as error:
            yield ShardFormatError("unreadable_tar", f"{shard}: {type(error).__name__}: {error}")


def _collate(
    samples: list[TrainingSample],
    worker: int,
    position: WorkerPosition,
    skipped: collections.Counter[str],
    replay: collections.Counter[str],
    seconds: float,
) -> Batch:
    tokens = torch.stack([s.tokens for s in samples])
    return Batch(
        keys=[s.key for s in samples],
        images=torch.stack([s.image for s in samples]),
        original_tokens=tokens[:, 0],
        synthetic_tokens=tokens[:, 1],
        teacher_image=torch.from_numpy(np.stack([s.teacher_image for s in samples])),
        teacher_original=torch.from_numpy(np.stack([s.teacher_original for s in samples])),
        teacher_synthetic=torch.from_numpy(np.stack([s.teacher_synthetic for s in samples])),
        worker=worker,
        position=position,
        skipped=dict(skipped),
        replay={"checked": replay["checked"], "differ": replay["differ"]},
        produce_seconds=seconds,
    )


@dataclasses.dataclass
class DataCursor:
    """The consumed position of every worker and the skip counts: what a checkpoint must remember."""

    workers: int
    positions: list[WorkerPosition]
    skipped: list[dict[str, int]]
    batches: int = 0  # consumed so far; batch n comes from worker n % workers

    @classmethod
    def fresh(cls, workers: int) -> DataCursor:
        n = max(1, workers)
        return cls(workers, [WorkerPosition() for _ in range(n)], [{} for _ in range(n)])

    @property
    def next_worker(self) -> int:
        return self.batches % max(1, self.workers)

    def advance(self, batch: Any) -> None:
        """Record a consumed batch (a `Batch` or `trainer.raw_data.PairBatch`: worker, position, skips)."""
        if batch.worker != self.next_worker:
            raise RuntimeError(f"batch from worker {batch.worker}, expected worker {self.next_worker}")
        self.positions[batch.worker] = batch.position
        self.skipped[batch.worker] = dict(batch.skipped)
        self.batches += 1

    def total_skipped(self) -> dict[str, int]:
        total: collections.Counter[str] = collections.Counter()
        for counts in self.skipped:
            total.update(counts)
        return dict(sorted(total.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "positions": [dataclasses.asdict(p) for p in self.positions],
            "skipped": self.skipped,
            "batches": self.batches,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DataCursor:
        return cls(
            int(data["workers"]),
            [WorkerPosition(int(p["epoch"]), int(p["offset"])) for p in data["positions"]],
            [dict(s) for s in data["skipped"]],
            int(data["batches"]),
        )


def _limit_threads(_: int) -> None:
    """Loader workers replay with PIL; one torch thread each leaves the cores to the training step."""
    torch.set_num_threads(1)


def make_loader(stream: ShardStream, workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over the stream; with workers > 0 their batches arrive in strict round-robin order."""
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_limit_threads if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )


def in_worker_order(batches: Iterator[Any], workers: int, first_worker: int = 0) -> Generator[Any]:
    """Batches in the order worker `first_worker`, next, ... (round robin).

    A DataLoader always starts its round robin at worker 0; a resumed run must start where the
    interrupted one stopped, so batches that arrive early wait (at most one per other worker).
    """
    waiting: dict[int, collections.deque[Any]] = collections.defaultdict(collections.deque)
    expected = first_worker
    count = max(1, workers)
    for batch in batches:
        waiting[batch.worker].append(batch)
        while waiting[expected]:
            yield waiting[expected].popleft()
            expected = (expected + 1) % count


def probe(
    shards: Sequence[str], settings: DataSettings, tokenizer: Tokenizer, image_size: int, limit: int = 64
) -> dict[str, Any]:
    """Check the first usable sample against the settings; raise DataError with the reason if none.

    Run before training so that a wrong teacher width, a wrong slice split or an unsupported
    param_aug version is one clear error at start, not a run that skips every sample.
    """
    replayer = SampleReplayer(settings, image_size, tokenizer, seed=0)
    reasons: collections.Counter[str] = collections.Counter()
    families: set[str] = set()  # what the data holds, for a --caption-families that matches none
    seen = 0
    for item in _raw_items(shards[:4]):
        if isinstance(item, Exception):
            reasons[skip_reason(item)] += 1
            continue
        seen += 1
        try:
            sample = decode_sample(item)
            families.update(sample.syn_captions)
            replayer.replay(sample, epoch=0)
        except Exception as error:
            reasons[skip_reason(error)] += 1
            if seen >= limit:
                break
            continue
        return {"key": sample.key, "dim": sample.dim, "num_views": sample.num_views, "skipped": dict(reasons)}
    hint = ""
    if "embedding_width_mismatch" in reasons or "teacher_slice_not_unit" in reasons:
        hint = (
            f" The teacher widths {list(settings.teacher_dims)} (from {settings.source}) do not match the "
            "stored embeddings; pass the right --teacher-dims or --config."
        )
    if "no_synthetic_captions" in reasons and families:
        hint = (
            f" The data's caption families are {', '.join(sorted(families))}: pick from them with "
            "--caption-families."
        )
    if "unsupported_param_version" in reasons:
        hint += " The data's param_aug version is not one this trainer can replay."
    raise DataError(f"no usable sample among the first {seen} of {shards[:4]}: {dict(reasons)}.{hint}")
