"""Stream raw img2dataset shards (contract §1) sample by sample, turning bad input into counted skips.

A raw shard is read once, front to back, never held whole in memory: members are grouped into a
sample while their key stays the same (webdataset writes a sample's members together), and each
finished group is checked and yielded. Nothing here decodes images; that is the shard stage's job.
A sample whose json lacks its uid or url (or has no json) gets them from img2dataset's parquet beside
the tar, row of the same key; one with no url in either is skipped (`missing_url`), since every
written sample carries its url.txt (contract §2).
A damaged tar keeps every sample read before the damage and ends with one shard-level skip.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from webdataset import TarWriter

from shards import storage

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"
META_EXTENSION = "json"
# DataComp images are at most 512 px a side (a few hundred KB); a member far beyond that is not an image
# we want, and reading it would put the worker's memory at the mercy of the input.
DEFAULT_MAX_MEMBER_BYTES = 64 * 1024 * 1024
# An output `__key__` becomes member names of the output tar: keep it to plain, path-free characters.
_SAFE_UID = re.compile(r"^[0-9A-Za-z_-]{1,128}$")


class SkipReason:
    """Why a sample (or the rest of a shard) was skipped: short tags, counted in stats and errors files."""

    MISSING_IMAGE = "missing_image"
    MISSING_CAPTION = "missing_caption"
    CAPTION_NOT_UTF8 = "caption_not_utf8"
    INVALID_JSON = "invalid_json"
    DUPLICATE_KEY = "duplicate_key"
    DUPLICATE_UID = "duplicate_uid"
    DUPLICATE_MEMBER = "duplicate_member"
    UNSAFE_MEMBER_NAME = "unsafe_member_name"
    MEMBER_TOO_LARGE = "member_too_large"
    TRUNCATED_TAR = "truncated_tar"
    CORRUPT_TAR = "corrupt_tar"
    EMPTY_TAR = "empty_tar"
    UNREADABLE_SHARD = "unreadable_shard"
    MISSING_URL = "missing_url"


@dataclasses.dataclass(frozen=True)
class RawSample:
    """One well-formed input sample; `uid` is the output key (the DataComp uid, else the input key)."""

    key: str
    uid: str
    image: bytes
    image_ext: str
    caption: str
    meta: dict[str, Any]
    url: str  # from the json, else from the shard's parquet; a sample with neither is skipped
    # Where the image bytes start in the tar, for a later ranged read (None in a compressed tar).
    image_offset: int | None = None
    has_caption: bool = True  # False only with `require_caption=False`: `caption` is then ""


@dataclasses.dataclass(frozen=True)
class SkippedSample:
    """A sample that will not be written; with `whole_shard`, `key` is the shard and the rest is unread."""

    key: str
    reason: str
    detail: str = ""
    whole_shard: bool = False


def split_member_name(name: str) -> tuple[str, str]:
    """(key, extension) the webdataset way: the key ends at the first dot of the basename."""
    directory, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    key = posixpath.join(directory, stem) if directory else stem
    return key, ext.lower() if dot else ""


def is_unsafe_member_name(name: str) -> bool:
    """Absolute paths and `..` components could escape a directory if anyone ever extracted them."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return True
    return any(part == ".." for part in re.split(r"[/\\]", name))


class _ShardParquet:
    """What img2dataset's `NNNNNNNN.parquet` beside the tar knows of a key (uid, url): read only when
    a sample's json lacks them, and then once per shard."""

    COLUMNS = ("key", "uid", "url")

    def __init__(self, tar_path: str) -> None:
        self.path = tar_path[: -len(".tar")] + ".parquet" if tar_path.endswith(".tar") else None
        self._rows: dict[str, dict[str, Any]] | None = None

    def lookup(self, key: str) -> dict[str, Any]:
        if self._rows is None:
            self._rows = self._read()
        return self._rows.get(key, {})

    def _read(self) -> dict[str, dict[str, Any]]:
        import pyarrow.parquet as pq

        if self.path is None:
            return {}
        try:
            with storage.open_read(self.path) as f:
                parquet = pq.ParquetFile(f)
                columns = [name for name in self.COLUMNS if name in parquet.schema_arrow.names]
                if "key" not in columns:
                    return {}
                rows = parquet.read(columns=columns).to_pylist()
        except Exception:  # no parquet, or not one: the json was all there is
            return {}
        return {str(row.pop("key")): row for row in rows}


@dataclasses.dataclass
class _Group:
    key: str
    members: dict[str, bytes] = dataclasses.field(default_factory=dict)
    offsets: dict[str, int] = dataclasses.field(default_factory=dict)
    problem: SkippedSample | None = None


def iter_raw_shard(
    path: str, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES, require_caption: bool = True
) -> Iterator[RawSample | SkippedSample]:
    """Yield the shard's samples in tar order; every skip is a SkippedSample with a reason.

    `require_caption=False` keeps a sample that has no caption (`has_caption` False), for readers
    that can find the caption elsewhere (the join's metadata parquet).
    """
    shard = storage.basename(path)
    try:
        stream = storage.open_read(path)
    except Exception as exc:  # a missing or unreadable object: the whole shard is one skip
        yield SkippedSample(shard, SkipReason.UNREADABLE_SHARD, _short(exc), whole_shard=True)
        return
    with stream:
        yield from _iter_stream(stream, shard, max_member_bytes, require_caption, _ShardParquet(path))


def _iter_stream(
    stream: Any, shard: str, max_member_bytes: int, require_caption: bool, side: _ShardParquet
) -> Iterator[RawSample | SkippedSample]:
    seen_keys: set[str] = set()
    seen_uids: set[str] = set()
    group: _Group | None = None
    members_read = 0
    damage: SkippedSample | None = None
    try:
        archive = _open_stream_tar(stream)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        # tarfile cannot even read a first header: an empty file, or bytes that are not a tar.
        empty = "empty" in str(exc).lower()
        reason = SkipReason.EMPTY_TAR if empty else SkipReason.CORRUPT_TAR
        yield SkippedSample(shard, reason, _short(exc), whole_shard=True)
        return
    # Member offsets are positions in the file only when the tar is not compressed.
    seekable = getattr(archive.fileobj, "comptype", "tar") == "tar"
    with archive:
        try:
            for info in archive:
                if not info.isfile():
                    continue  # directories and links carry no sample data
                members_read += 1
                key, ext = split_member_name(info.name)
                if group is not None and key != group.key:
                    yield from _finish(group, seen_keys, seen_uids, require_caption, side)
                    group = None
                if group is None:
                    group = _Group(key)
                    if is_unsafe_member_name(info.name):
                        group.problem = SkippedSample(info.name, SkipReason.UNSAFE_MEMBER_NAME)
                    elif key in seen_keys:
                        group.problem = SkippedSample(key, SkipReason.DUPLICATE_KEY)
                if group.problem is not None:
                    continue  # the rest of a rejected sample's members are not even read
                if is_unsafe_member_name(info.name):
                    group.problem = SkippedSample(key, SkipReason.UNSAFE_MEMBER_NAME, info.name)
                elif info.size > max_member_bytes:
                    group.problem = SkippedSample(
                        key, SkipReason.MEMBER_TOO_LARGE, f"{info.name}: {info.size} bytes"
                    )
                elif ext in group.members:
                    group.problem = SkippedSample(key, SkipReason.DUPLICATE_MEMBER, info.name)
                else:
                    member = archive.extractfile(info)
                    group.members[ext] = member.read() if member is not None else b""
                    if seekable:
                        group.offsets[ext] = info.offset_data
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            truncated = isinstance(exc, EOFError) or "unexpected end" in str(exc).lower()
            reason = SkipReason.TRUNCATED_TAR if truncated else SkipReason.CORRUPT_TAR
            damage = SkippedSample(shard, reason, _short(exc), whole_shard=True)
    if group is not None:
        for item in _finish(group, seen_keys, seen_uids, require_caption, side):
            if damage is not None and isinstance(item, SkippedSample):
                # The damage cut this sample short: that, not a missing member, is why it is lost.
                item = SkippedSample(item.key, damage.reason, item.reason)
            yield item
    if damage is not None:
        yield damage
    elif members_read == 0:
        yield SkippedSample(shard, SkipReason.EMPTY_TAR, "the tar holds no files", whole_shard=True)


def _open_stream_tar(stream: Any) -> tarfile.TarFile:
    """A forward-only reader (`r|*`): plain or compressed tars, no seeking, no whole-file buffering."""
    return tarfile.open(fileobj=stream, mode="r|*")


def _finish(
    group: _Group, seen_keys: set[str], seen_uids: set[str], require_caption: bool, side: _ShardParquet
) -> Iterator[RawSample | SkippedSample]:
    if group.problem is not None:
        if group.problem.reason != SkipReason.DUPLICATE_KEY:
            seen_keys.add(group.key)
        yield group.problem
        return
    seen_keys.add(group.key)
    yield _to_sample(group, seen_uids, require_caption, side)


def _to_sample(
    group: _Group, seen_uids: set[str], require_caption: bool, side: _ShardParquet
) -> RawSample | SkippedSample:
    key, members = group.key, group.members
    image_exts = [ext for ext in IMAGE_EXTENSIONS if ext in members]
    if not image_exts:
        return SkippedSample(key, SkipReason.MISSING_IMAGE)
    if len(image_exts) > 1:
        return SkippedSample(key, SkipReason.DUPLICATE_MEMBER, f"images {', '.join(image_exts)}")
    meta: dict[str, Any] = {}
    if META_EXTENSION in members:
        try:
            meta = json.loads(members[META_EXTENSION].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            return SkippedSample(key, SkipReason.INVALID_JSON, _short(exc))
        if not isinstance(meta, dict):
            return SkippedSample(key, SkipReason.INVALID_JSON, f"a JSON {type(meta).__name__}, not an object")
    if CAPTION_EXTENSION in members:
        try:
            caption = members[CAPTION_EXTENSION].decode("utf-8")
        except UnicodeDecodeError as exc:
            return SkippedSample(key, SkipReason.CAPTION_NOT_UTF8, _short(exc))
    elif isinstance(meta.get("caption"), str):
        caption = meta["caption"]  # the same alt-text, stored by img2dataset in the json too
    elif require_caption:
        return SkippedSample(key, SkipReason.MISSING_CAPTION)
    else:
        caption = None
    raw_uid, url = meta.get("uid"), meta.get("url")
    if not (_usable_uid(raw_uid) and _usable_url(url)):  # a lost or partial json: ask the parquet
        known = side.lookup(key)
        raw_uid = raw_uid if _usable_uid(raw_uid) else known.get("uid")
        url = url if _usable_url(url) else known.get("url")
    if not _usable_url(url):
        # Contract §2 gives every output sample its url.txt; a sample no record ties to a source is
        # skipped rather than written half-described.
        return SkippedSample(key, SkipReason.MISSING_URL, "neither its json nor the shard's parquet has one")
    uid = raw_uid if _usable_uid(raw_uid) else key
    if uid in seen_uids:
        return SkippedSample(key, SkipReason.DUPLICATE_UID, uid)
    seen_uids.add(uid)
    ext = image_exts[0]
    return RawSample(
        key=key,
        uid=uid,
        image=members[ext],
        image_ext=ext,
        caption=caption or "",
        meta=meta,
        url=url,
        image_offset=group.offsets.get(ext),
        has_caption=caption is not None,
    )


def _usable_uid(uid: Any) -> bool:
    return isinstance(uid, str) and bool(_SAFE_UID.match(uid))


def _usable_url(url: Any) -> bool:
    return isinstance(url, str) and bool(url.strip())


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# The parquet columns img2dataset writes for DataComp (one row per URL, failed downloads included).
PARQUET_COLUMNS = (
    "uid",
    "url",
    "caption",
    "key",
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "exif",
    "sha256",
)
SUCCESS = "success"


def write_raw_shard(
    folder: str, name: str, samples: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]
) -> None:
    """Write `name`.tar, `name`.parquet and `name`_stats.json the way img2dataset does (contract §1).

    `samples` are webdataset dicts (`__key__` and member bytes) in the order they go into the tar;
    `rows` hold every attempted download, failed ones with `status` and `error_message`. Each file
    appears atomically, the stats file last. The bytes depend on the inputs only.
    """
    tar = io.BytesIO()
    writer = TarWriter(tar, encoder=False, mtime=0.0, user="", group="")
    for sample in samples:
        writer.write(sample)
    writer.close()
    storage.write_bytes_atomic(storage.join(folder, f"{name}.tar"), tar.getvalue())
    table = pa.Table.from_pylist([{c: r.get(c) for c in PARQUET_COLUMNS} for r in rows])
    parquet = io.BytesIO()
    pq.write_table(table, parquet)
    storage.write_bytes_atomic(storage.join(folder, f"{name}.parquet"), parquet.getvalue())
    statuses = collections.Counter(
        SUCCESS if r["status"] == SUCCESS else str(r.get("error_message")) for r in rows
    )
    successes = statuses.get(SUCCESS, 0)
    stats = {
        "count": len(rows),
        "successes": successes,
        "failed_to_download": len(rows) - successes,
        "failed_to_resize": 0,
        "duration": 0.0,
        "status_dict": dict(statuses),
    }
    storage.write_text_atomic(storage.join(folder, f"{name}_stats.json"), json.dumps(stats, indent=4) + "\n")
