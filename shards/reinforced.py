"""The reinforced-sample format of contract §2: one sample's tar members, read and written.

One in-memory form serves both public layouts. v1 stores the synthetic captions as the single
family `syn_text` with their embeddings in rows 1..S of `text_emb`; v2 stores each family
`syn_text_<tag>` with its own `syn_text_<tag>_emb`. Embeddings load as float32 whatever their
stored dtype; loading never unpickles (`allow_pickle=False`, `weights_only=True`).

`paug.json` may also hold `view_sha`, one fingerprint per view as the teachers saw it
(transforms/fingerprint.py), beside `param_aug`: the public trainer reads only `param_aug`.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
import torch
import webdataset.tariterators as wds_tar
from webdataset import TarWriter

from shards import storage

Layout = Literal["v1", "v2"]
EmbeddingDtype = Literal["fp32", "bf16"]
LAYOUTS: tuple[str, ...] = ("v1", "v2")
EMBEDDING_DTYPES: tuple[str, ...] = ("fp32", "bf16")
V1_FAMILY = "syn_text"
VIEW_SHA = "view_sha"  # paug.json key of the per-view fingerprints
# json key (ours, contract §6): sha256 of the image bytes the views were drawn on (the `jpg` member),
# beside the input's `sha256` (the original download's), so that our own output joins back.
IMAGE_SHA256 = "image_sha256"
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
# Fixed zip and tar times make every shard byte-identical across runs and workers.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
TAR_MTIME = 0.0


class ShardFormatError(ValueError):
    """A sample or shard that does not follow contract §2; `reason` is a short countable tag."""

    def __init__(self, reason: str, detail: str = "", key: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.key = key
        where = f" (sample {key})" if key else ""
        super().__init__(f"{reason}{where}: {detail}" if detail else f"{reason}{where}")


@dataclasses.dataclass
class ReinforcedSample:
    key: str
    image: bytes
    caption: str
    meta: dict[str, Any]
    param_aug: list[Any]
    image_emb: np.ndarray  # [A, D] float32, row k embeds the view param_aug[k] describes
    caption_emb: np.ndarray  # [D] float32, the original caption
    syn_captions: dict[str, list[str]]  # family -> S captions
    syn_emb: dict[str, np.ndarray]  # family -> [S, D] float32
    url: str | None = None
    image_ext: str = "jpg"
    view_sha: list[str] | None = None  # fingerprint of the view param_aug[k] describes; None in older shards

    @property
    def uid(self) -> str:
        return str(self.meta.get("uid") or self.key)

    @property
    def num_views(self) -> int:
        return int(self.image_emb.shape[0])

    @property
    def dim(self) -> int:
        return int(self.image_emb.shape[1])


def check_sample(sample: ReinforcedSample) -> None:
    """Raise ShardFormatError when the arrays and the lists they describe disagree."""
    key = sample.key
    if sample.image_emb.ndim != 2:
        raise ShardFormatError("bad_shape", f"image_emb has shape {sample.image_emb.shape}", key)
    views, dim = sample.image_emb.shape
    if views != len(sample.param_aug):
        raise ShardFormatError(
            "count_mismatch", f"{views} image embeddings for {len(sample.param_aug)} param_aug entries", key
        )
    if sample.view_sha is not None and (
        not isinstance(sample.view_sha, list)
        or len(sample.view_sha) != views
        or not all(_is_fingerprint(f) for f in sample.view_sha)
    ):
        raise ShardFormatError(
            "bad_member",
            f"{VIEW_SHA} must be {views} lowercase hex strings, got {sample.view_sha!r:.200}",
            key,
        )
    if sample.caption_emb.shape != (dim,):
        raise ShardFormatError("bad_shape", f"caption embedding {sample.caption_emb.shape}, D={dim}", key)
    if sample.syn_captions.keys() != sample.syn_emb.keys():
        raise ShardFormatError("count_mismatch", "caption families and embedding families differ", key)
    for family, captions in sample.syn_captions.items():
        emb = sample.syn_emb[family]
        if emb.shape != (len(captions), dim):
            raise ShardFormatError(
                "count_mismatch", f"{family}: {len(captions)} captions, embeddings {emb.shape}, D={dim}", key
            )


def encode_sample(
    sample: ReinforcedSample, layout: Layout = "v1", embedding_dtype: EmbeddingDtype = "fp32"
) -> dict[str, bytes | str]:
    """Members of one sample, webdataset style (`__key__` plus one entry per member suffix)."""
    check_sample(sample)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if embedding_dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"embedding_dtype must be one of {EMBEDDING_DTYPES}, not {embedding_dtype!r}")
    if layout == "v1":
        if list(sample.syn_captions) != [V1_FAMILY]:
            raise ValueError(f"the v1 layout holds exactly one caption family, {V1_FAMILY!r}")
        syn_json: dict[str, list[str]] = {V1_FAMILY: sample.syn_captions[V1_FAMILY]}
        arrays = {
            "image_emb": sample.image_emb,
            "text_emb": np.concatenate([sample.caption_emb[None], sample.syn_emb[V1_FAMILY]]),
        }
    else:
        syn_json = {v2_family(f): caps for f, caps in sample.syn_captions.items()}
        arrays = {"image_emb": sample.image_emb, "text_emb": sample.caption_emb[None]}
        arrays.update({f"{v2_family(f)}_emb": emb for f, emb in sample.syn_emb.items()})
    members: dict[str, bytes | str] = {"__key__": sample.key}  # the key is the one str member
    if sample.url is not None:
        members["url.txt"] = sample.url.encode("utf-8")
    members["txt"] = sample.caption.encode("utf-8")
    members["jpg"] = sample.image  # the original bytes under the member name public readers expect
    members["json"] = _json(sample.meta)
    members["syn.json"] = _json(syn_json)
    paug: dict[str, Any] = {"param_aug": sample.param_aug}
    if sample.view_sha is not None:
        paug[VIEW_SHA] = sample.view_sha
    members["paug.json"] = _json(paug)
    if embedding_dtype == "fp32":
        members["npz"] = _npz_bytes(arrays)
    else:
        members["pth.gz"] = _pth_gz_bytes(arrays)
    return members


def v2_family(family: str) -> str:
    """The v2 name of a caption family: `syn_text_<tag>`; a v1 family becomes `syn_text_default`."""
    if family == V1_FAMILY:
        return f"{V1_FAMILY}_default"
    if not family.startswith(f"{V1_FAMILY}_"):
        raise ValueError(f"caption family {family!r} must be named syn_text_<tag>")
    return family


def decode_sample(members: Mapping[str, Any], *, require_image: bool = True) -> ReinforcedSample:
    """Parse one sample's members (webdataset-style dict of bytes) in either public layout.

    The published DataCompDR shards carry no image (users fetch it from `url.txt`): with
    `require_image=False` such a sample decodes with empty image bytes and `image_ext` "".
    """
    key = str(members.get("__key__", ""))
    image_member = next((m for m in IMAGE_MEMBERS if m in members), None)
    if image_member is None and require_image:
        raise ShardFormatError("missing_member", "no image member (jpg/jpeg/png/webp)", key)
    for needed in ("syn.json", "paug.json"):
        if needed not in members:
            raise ShardFormatError("missing_member", f"no {needed}", key)
    if "npz" in members:
        arrays = _load_npz(members["npz"], key)
    elif "pth.gz" in members:
        arrays = _load_pth_gz(members["pth.gz"], key)
    else:
        raise ShardFormatError("missing_member", "no npz or pth.gz embeddings", key)
    syn_json = _load_json(members["syn.json"], "syn.json", key)
    paug = _load_json(members["paug.json"], "paug.json", key)
    param_aug = paug.get("param_aug")
    if isinstance(param_aug, str):  # some public shards store the list JSON-encoded
        param_aug = _parse_json(param_aug, "paug.json", key)
    if not isinstance(param_aug, list):
        raise ShardFormatError("bad_member", "paug.json has no param_aug list", key)
    meta = _load_json(members["json"], "json", key) if "json" in members else {}
    if "image_emb" not in arrays or "text_emb" not in arrays:
        raise ShardFormatError(
            "bad_member", f"embeddings hold {sorted(arrays)}, need image_emb, text_emb", key
        )
    text_emb = arrays["text_emb"]
    if text_emb.ndim != 2 or text_emb.shape[0] < 1:
        raise ShardFormatError("bad_shape", f"text_emb has shape {text_emb.shape}", key)
    families = {name: caps for name, caps in syn_json.items() if name.startswith(V1_FAMILY)}
    if V1_FAMILY in families:  # v1: synthetic captions are rows 1..S of text_emb
        syn_captions = {V1_FAMILY: _caption_list(families[V1_FAMILY], key)}
        syn_emb = {V1_FAMILY: text_emb[1:]}
    else:  # v2: one array per family
        syn_captions, syn_emb = {}, {}
        for name, caps in families.items():
            if f"{name}_emb" not in arrays:
                raise ShardFormatError("missing_member", f"no {name}_emb for caption family {name}", key)
            syn_captions[name] = _caption_list(caps, key)
            syn_emb[name] = arrays[f"{name}_emb"]
    sample = ReinforcedSample(
        key=key,
        image=_as_bytes(members[image_member]) if image_member else b"",
        caption=_as_text(members.get("txt", b"")),
        meta=meta,
        param_aug=param_aug,
        image_emb=arrays["image_emb"],
        caption_emb=text_emb[0],
        syn_captions=syn_captions,
        syn_emb=syn_emb,
        url=_as_text(members["url.txt"]) if "url.txt" in members else None,
        image_ext=image_member or "",
        view_sha=paug.get(VIEW_SHA),
    )
    check_sample(sample)
    return sample


def iter_members(path: str) -> Iterator[dict[str, Any]]:
    """Group a tar's members by key, as webdataset does, from any FileSystems path."""
    with storage.open_read(path) as stream:
        files = wds_tar.tar_file_expander([{"url": path, "stream": stream}])
        for members in wds_tar.group_by_keys(files, lcase=False):
            members.pop("__url__", None)
            members.pop("__local_path__", None)
            yield members


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    """One sample of a shard as found: its member names, and the decoded sample or why it failed."""

    key: str
    members: frozenset[str]
    sample: ReinforcedSample | None = None
    error: ShardFormatError | None = None

    @property
    def has_image(self) -> bool:
        return any(member in self.members for member in IMAGE_MEMBERS)


def iter_entries(path: str, *, require_image: bool = True) -> Iterator[ShardEntry]:
    """Every sample of a shard in tar order; a truncated or unreadable tar keeps what came before and
    ends with one `unreadable_tar` entry."""
    try:
        for members in iter_members(path):
            key = str(members.get("__key__", ""))
            names = frozenset(name for name in members if not name.startswith("__"))
            try:
                yield ShardEntry(key, names, sample=decode_sample(members, require_image=require_image))
            except ShardFormatError as error:
                yield ShardEntry(key, names, error=error)
    except Exception as error:
        yield ShardEntry(
            "", frozenset(), error=ShardFormatError("unreadable_tar", f"{type(error).__name__}: {error}")
        )


def iter_shard(path: str) -> Iterator[ReinforcedSample | ShardFormatError]:
    """Every sample of a shard; a malformed one is yielded as its error so callers can count it."""
    for entry in iter_entries(path):
        yield entry.sample if entry.sample is not None else entry.error


def write_shard(
    path: str,
    samples: Iterable[ReinforcedSample],
    layout: Layout = "v1",
    embedding_dtype: EmbeddingDtype = "fp32",
) -> int:
    """Write a whole tar atomically; returns the number of samples."""
    count = 0
    with storage.atomic_write(path) as f:
        writer = open_tar_writer(f)
        for sample in samples:
            writer.write(encode_sample(sample, layout, embedding_dtype))
            count += 1
        writer.close()
    return count


def open_tar_writer(fileobj: Any) -> TarWriter:
    """A TarWriter whose output depends on the samples only (fixed time, owner and mode)."""
    return TarWriter(fileobj, encoder=False, mtime=TAR_MTIME, user="", group="", mode=0o444)


def to_float32_rounded(array: np.ndarray, embedding_dtype: EmbeddingDtype) -> np.ndarray:
    """The float32 values a reader gets back after storage in `embedding_dtype`."""
    if embedding_dtype == "fp32":
        return np.asarray(array, dtype=np.float32)
    return torch.from_numpy(np.asarray(array, dtype=np.float32)).to(torch.bfloat16).float().numpy()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")).encode("utf-8")


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """`numpy.savez_compressed`'s format with fixed zip times (savez stamps the current time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            payload = io.BytesIO()
            np.lib.format.write_array(
                payload, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False
            )
            archive.writestr(info, payload.getvalue())
    return buffer.getvalue()


def _pth_gz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    tensors = {
        name: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.bfloat16)
        for name, a in arrays.items()
    }
    payload = io.BytesIO()
    torch.save(tensors, payload)
    return gzip.compress(payload.getvalue(), mtime=0)


def _load_npz(data: bytes, key: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(_as_bytes(data)), allow_pickle=False) as npz:
            return {name: np.asarray(npz[name], dtype=np.float32) for name in npz.files}
    except Exception as error:
        raise ShardFormatError("bad_member", f"npz: {type(error).__name__}: {error}", key) from error


def _load_pth_gz(data: bytes, key: str) -> dict[str, np.ndarray]:
    try:
        loaded = torch.load(
            io.BytesIO(gzip.decompress(_as_bytes(data))), weights_only=True, map_location="cpu"
        )
    except Exception as error:
        raise ShardFormatError("bad_member", f"pth.gz: {type(error).__name__}: {error}", key) from error
    if not isinstance(loaded, dict):
        raise ShardFormatError("bad_member", "pth.gz does not hold a dict of tensors", key)
    return {name: torch.as_tensor(t).float().numpy() for name, t in loaded.items()}


def _load_json(data: Any, member: str, key: str) -> dict[str, Any]:
    value = _parse_json(_as_text(data), member, key)
    if not isinstance(value, dict):
        raise ShardFormatError("bad_member", f"{member} is not a JSON object", key)
    return value


def _parse_json(text: str, member: str, key: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ShardFormatError("bad_member", f"{member} is not valid JSON: {error}", key) from error


def _is_fingerprint(value: Any) -> bool:
    return isinstance(value, str) and len(value) > 0 and all(c in "0123456789abcdef" for c in value)


def _caption_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ShardFormatError("bad_member", "synthetic captions are not a list of strings", key)
    return value


def _as_bytes(data: Any) -> bytes:
    return data if isinstance(data, bytes) else bytes(data)


def _as_text(data: Any) -> str:
    if isinstance(data, str):
        return data
    try:
        return _as_bytes(data).decode("utf-8")
    except UnicodeDecodeError as error:
        raise ShardFormatError("bad_member", f"text member is not UTF-8: {error}") from error
