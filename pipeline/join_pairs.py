"""Joining one reinforced shard with its raw images: pair by uid, check every pair, write the shard.

Plain Python, no Beam. The raw side arrives as an index: per uid, `RawRef`s that say where the image
bytes are (raw tar and offset) and carry the small things (caption, json, sha256 of the stored
bytes). Writing an output shard streams the reinforced shard in its own order and reads each
image with one ranged read, so a worker holds the shard's index (about 1 KB per sample) and one
sample at a time, never a shard of images.

A crop box is only valid on the exact image it was sampled on, so a pair is written only when the
stored image bytes hash to the reinforced json's `image_sha256` (our runs: the bytes the job decoded)
or, without it, its `sha256` (the public release), and every stored box lies inside the decoded
image; everything else is skipped and counted by reason (`JoinReason`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

from PIL import Image

from shards import storage
from shards.raw import RawSample, SkippedSample, iter_raw_shard
from shards.reinforced import IMAGE_SHA256, EmbeddingDtype, Layout, ReinforcedSample, iter_entries
from shards.run_folder import ShardStats, output_paths, shard_name, write_shard_outcome
from shards.writer import ShardWriter
from transforms.params import InvalidParamsError, decode_param_aug


class JoinReason:
    """Why a reinforced sample was not written; counted in stats, listed in the errors file."""

    IMAGE_MISSING = "image_missing"  # no raw sample has the uid (dead URL, never downloaded)
    HASH_MISMATCH = "hash_mismatch"  # the stored bytes are not the image the boxes were drawn on
    BOX_OUT_OF_BOUNDS = "box_out_of_bounds"  # a stored crop box does not fit the decoded image
    CAPTION_MISSING = "caption_missing"  # neither the raw txt/json nor the metadata parquet has one
    IMAGE_UNDECODABLE = "image_undecodable"  # the hash matches, yet the bytes are not an image
    BAD_REINFORCED_SAMPLE = "bad_reinforced_sample"  # the reinforced sample breaks contract §2
    LAYOUT_MISMATCH = "layout_mismatch"  # another layout or embedding dtype than the run's


# Outcomes a user can fix by fetching the image again (img2dataset with disable_all_reencoding).
REFETCHABLE = (JoinReason.IMAGE_MISSING, JoinReason.HASH_MISMATCH, JoinReason.BOX_OUT_OF_BOUNDS)
ON_MISMATCH = ("skip", "list")


@dataclasses.dataclass(frozen=True)
class RawRef:
    """Where one raw sample's image is, and what the join needs of it besides the bytes."""

    uid: str
    raw_path: str
    key: str
    sha256: str  # of the stored image bytes
    image_offset: int | None  # None: the bytes travel in `image` (a compressed tar cannot be seeked)
    image_length: int
    image: bytes | None
    caption: str | None  # None: the raw sample has no caption
    meta: dict[str, Any]
    url: str | None

    @property
    def order(self) -> tuple[str, str]:
        return (self.raw_path, self.key)


@dataclasses.dataclass(frozen=True)
class UidSources:
    """Everything the raw side knows about one uid: its raw samples and a metadata caption."""

    refs: tuple[RawRef, ...]
    metadata_caption: str | None = None


def index_raw_shard(path: str) -> Iterator[RawRef | SkippedSample]:
    """One RawRef per usable raw sample (tar order); bad samples as the raw reader's skips."""
    for item in iter_raw_shard(path, require_caption=False):
        yield raw_ref(path, item) if isinstance(item, RawSample) else item


def raw_ref(path: str, sample: RawSample) -> RawRef:
    return RawRef(
        uid=sample.uid,
        raw_path=path,
        key=sample.key,
        sha256=hashlib.sha256(sample.image).hexdigest(),
        image_offset=sample.image_offset,
        image_length=len(sample.image),
        image=None if sample.image_offset is not None else sample.image,
        caption=sample.caption if sample.has_caption else None,
        meta=sample.meta,
        url=sample.url,
    )


@dataclasses.dataclass(frozen=True)
class Pairing:
    ref: RawRef | None
    reason: str | None = None
    detail: str = ""
    matched_by: str | None = None  # which reinforced json hash the stored bytes matched


def expected_hash(meta: Mapping[str, Any]) -> tuple[str, str] | None:
    """(json key, lowercase hash) a raw image must match: our `image_sha256` (the bytes the job
    decoded) when the reinforced json has it, else `sha256` (the original download's, as published)."""
    for kind in (IMAGE_SHA256, "sha256"):
        value = meta.get(kind)
        if isinstance(value, str) and value:
            return kind, value.lower()
    return None


def choose_raw(meta: Mapping[str, Any], refs: tuple[RawRef, ...]) -> Pairing:
    """The raw sample whose stored bytes are the reinforced image; else why there is none.

    Among several raw samples of one uid (the same uid in two raw shards), the first exact match in
    (raw path, key) order wins, so the choice does not depend on the order the refs arrived in.
    """
    if not refs:
        return Pairing(None, JoinReason.IMAGE_MISSING, "no raw sample has this uid")
    ordered = sorted(refs, key=lambda ref: ref.order)
    wanted = expected_hash(meta)
    if wanted is None:
        return Pairing(None, JoinReason.HASH_MISMATCH, "the reinforced json has no sha256 to check against")
    kind, expected = wanted
    for ref in ordered:
        if ref.sha256 == expected:
            return Pairing(ref, matched_by=kind)
    first = ordered[0]
    downloaded = str(meta.get("sha256", "")).lower()
    if downloaded and str(first.meta.get("sha256", "")).lower() == downloaded:
        detail = (
            "the downloader re-encoded or resized the image: its json sha256 matches, the stored bytes "
            "do not (download again with disable_all_reencoding)"
            if kind == "sha256"
            else "the same download stored as other bytes than the ones the views were drawn on "
            "(resized or re-encoded otherwise)"
        )
    else:
        detail = f"a different image: neither the stored bytes nor the raw json's sha256 match {kind}"
    return Pairing(None, JoinReason.HASH_MISMATCH, f"{first.key}: {detail}")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the decoded pixel grid (contract §3: no EXIF rotation, first frame), read
    from the header: a pair is only checked here once its bytes hash to the image the reinforcement
    decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # Pillow's plugins raise many types on bytes that are not an image
        return None


def box_problem(param_aug: list[Any], width: int, height: int) -> str | None:
    """Why a stored view does not fit a `width` x `height` image, or None when all of them do."""
    for index, entry in enumerate(param_aug):
        try:
            i, j, h, w = decode_param_aug(entry).crop
        except InvalidParamsError as error:
            return f"param_aug[{index}]: {error}"
        if i < 0 or j < 0 or h < 1 or w < 1 or i + h > height or j + w > width:
            return f"param_aug[{index}] box (i={i}, j={j}, h={h}, w={w}) is outside {width}x{height}"
    return None


class RawReader:
    """Ranged reads of raw images, keeping the last few raw tars open (outputs visit them in runs)."""

    def __init__(self, keep_open: int = 8) -> None:
        self._keep_open = keep_open
        self._files: dict[str, BinaryIO] = {}

    def read(self, ref: RawRef) -> bytes:
        if ref.image is not None:
            return ref.image
        assert ref.image_offset is not None
        stream = self._files.pop(ref.raw_path, None) or storage.open_read(ref.raw_path)
        self._files[ref.raw_path] = stream  # most recently used last
        while len(self._files) > self._keep_open:
            oldest = next(iter(self._files))
            self._files.pop(oldest).close()
        stream.seek(ref.image_offset)
        return stream.read(ref.image_length)

    def close(self) -> None:
        for stream in self._files.values():
            stream.close()
        self._files.clear()


@dataclasses.dataclass(frozen=True)
class JoinShardSettings:
    output_dir: str
    layout: Layout
    embedding_dtype: EmbeddingDtype
    on_mismatch: str = "skip"
    teacher_dims: tuple[int, ...] = ()  # for the sidecar's per-teacher scores


def join_shard(
    reinforced_path: str,
    sources: Mapping[str, UidSources],
    settings: JoinShardSettings,
    *,
    on_sample: Callable[[], None] | None = None,
) -> ShardStats:
    """Write the joined shard for one reinforced shard: tar, parquet, errors, optional refetch list,
    then stats (the commit). `sources` maps each of its uids to what the raw side has for it."""
    start = time.monotonic()
    shard = shard_name(reinforced_path)
    paths = output_paths(settings.output_dir, shard)
    stats = ShardStats(shard, reinforced_path)
    skips: list[SkippedSample] = []
    refetch: list[dict[str, Any]] = []
    embedding_member = "npz" if settings.embedding_dtype == "fp32" else "pth.gz"
    storage.delete(paths["stats"])  # a finished shard joined again is not done until its new stats
    reader = RawReader()
    try:
        with ShardWriter(
            paths["tar"], paths["parquet"], settings.layout, settings.embedding_dtype, settings.teacher_dims
        ) as writer:
            for entry in iter_entries(reinforced_path, require_image=False):
                if entry.error is not None and entry.error.reason == "unreadable_tar":
                    stats.shard_errors[entry.error.reason] = stats.shard_errors.get(entry.error.reason, 0) + 1
                    skips.append(
                        SkippedSample(shard, entry.error.reason, entry.error.detail, whole_shard=True)
                    )
                    continue
                stats.num_read += 1
                if entry.sample is None:
                    assert entry.error is not None
                    skip = SkippedSample(entry.key, JoinReason.BAD_REINFORCED_SAMPLE, str(entry.error))
                elif embedding_member not in entry.members:
                    skip = SkippedSample(entry.key, JoinReason.LAYOUT_MISMATCH, f"no {embedding_member}")
                else:
                    result = _join_sample(entry.sample, sources.get(entry.key), reader)
                    if isinstance(result, SkippedSample):
                        skip = result
                    else:
                        joined, kind = result
                        skip = None
                        try:
                            writer.write(joined)
                        except ValueError as error:  # a caption family the run's layout cannot hold
                            skip = SkippedSample(entry.key, JoinReason.LAYOUT_MISMATCH, str(error))
                        else:
                            stats.num_written += 1
                            stats.matched_by[kind] = stats.matched_by.get(kind, 0) + 1
                if skip is not None:
                    stats.skipped[skip.reason] = stats.skipped.get(skip.reason, 0) + 1
                    skips.append(skip)
                    if skip.reason in REFETCHABLE and entry.sample is not None:
                        refetch.append({"uid": entry.key, "url": entry.sample.url, "reason": skip.reason})
                if on_sample is not None:
                    on_sample()
    finally:
        reader.close()
    if settings.on_mismatch == "list":
        lines = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in refetch)
        storage.write_bytes_atomic(paths["refetch"], lines.encode("utf-8"))
    stats.seconds["join"] = time.monotonic() - start
    write_shard_outcome(settings.output_dir, stats, skips)
    return stats


def _join_sample(
    sample: ReinforcedSample, sources: UidSources | None, reader: RawReader
) -> tuple[ReinforcedSample, str] | SkippedSample:
    """The joined sample and the json hash its image matched, or why it cannot be joined."""
    uid = sample.key
    pairing = choose_raw(sample.meta, sources.refs if sources else ())
    if pairing.ref is None:
        return SkippedSample(uid, str(pairing.reason), pairing.detail)
    ref = pairing.ref
    image = reader.read(ref)
    if hashlib.sha256(image).hexdigest() != ref.sha256:  # the raw tar changed since it was indexed
        return SkippedSample(uid, JoinReason.HASH_MISMATCH, f"{ref.key}: raw tar changed while joining")
    size = image_size(image)
    if size is None:
        return SkippedSample(uid, JoinReason.IMAGE_UNDECODABLE, ref.key)
    width, height = size
    problem = box_problem(sample.param_aug, width, height)
    if problem is not None:
        return SkippedSample(uid, JoinReason.BOX_OUT_OF_BOUNDS, problem)
    caption = ref.caption if ref.caption is not None else (sources.metadata_caption if sources else None)
    if caption is None:
        return SkippedSample(uid, JoinReason.CAPTION_MISSING, "no raw txt and no metadata text")
    # The raw json's fields, then the reinforced json's (uid, the checked hashes), then the hash of the
    # bytes written (so that this output joins back too) and the true size.
    meta = {**ref.meta, **sample.meta, IMAGE_SHA256: ref.sha256, "width": width, "height": height}
    joined = dataclasses.replace(
        sample, image=image, image_ext="jpg", caption=caption, meta=meta, url=sample.url or ref.url
    )
    return joined, str(pairing.matched_by)
