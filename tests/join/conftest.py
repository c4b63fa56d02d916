"""Held-out-style join input built from the bundled real photos.

The raw side is what img2dataset writes with `disable_all_reencoding` (json `sha256` = the stored
bytes'). The reinforced side is made from it with real crop boxes (tests/support.py), then
stripped to the public layout (no `jpg`, no `txt`) and sharded 2 x 18. The raw side is resharded
5 ways in a shuffled order with new keys, and damaged on purpose: some images missing, some
re-encoded by "the stock downloader", captions moved to a metadata parquet or lost.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from shards.raw import RawSample, iter_raw_shard
from shards.reinforced import encode_sample
from tests.support import reinforced_sample, write_members, write_public_half
from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter

DIMS = (8, 12)
VIEWS, CAPTIONS = 3, 2
REINFORCED_SHARDS = 2
RAW_SHARDS = 5


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _reencode(image: bytes) -> bytes:
    """What DataComp's stock downloader does: resize to at most 64 px a side and save as JPEG."""
    with Image.open(io.BytesIO(image)) as picture:
        small = picture.convert("RGB")
        small.thumbnail((64, 64))
        out = io.BytesIO()
        small.save(out, format="JPEG", quality=70)
        return out.getvalue()


@pytest.fixture(scope="session")
def join_input(tmp_path_factory: pytest.TempPathFactory, sample_raw_dir: Path) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("join-input")
    originals: list[RawSample] = [
        item
        for path in sorted(sample_raw_dir.glob("*.tar"))
        for item in iter_raw_shard(str(path))
        if isinstance(item, RawSample)
    ]
    for index, sample in enumerate(originals):  # as downloaded without re-encoding
        sample.meta["sha256"] = hashlib.sha256(sample.image).hexdigest()
        sample.meta["key"] = f"{index:09d}"
    uids = [s.uid for s in originals]

    # Reinforced side, public layout: 2 shards in uid-sorted order; one box pushed off its image.
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    reinforced = {
        s.uid: reinforced_sample(
            s.uid,
            s.image,
            s.caption,
            dims=DIMS,
            views=VIEWS,
            captions=CAPTIONS,
            augmenter=augmenter,
            meta=dict(s.meta),
            url=s.url,
            image_ext=s.image_ext,
        )
        for s in originals
    }
    order = sorted(uids)
    bad_box = order[5]
    box = reinforced[bad_box].param_aug[1][0]
    reinforced[bad_box].param_aug[1][0] = [box[0] + 5000, box[1], box[2], box[3]]
    per_shard = len(order) // REINFORCED_SHARDS
    public = root / "public"
    public.mkdir()
    shard_order: dict[str, list[str]] = {}
    for shard in range(REINFORCED_SHARDS):
        chunk = order[shard * per_shard : (shard + 1) * per_shard]
        members = []
        for uid in chunk:
            encoded = encode_sample(reinforced[uid])
            del encoded["jpg"], encoded["txt"]
            members.append(encoded)
        write_members(public / f"{shard:08d}.tar", members)
        shard_order[f"{shard:08d}"] = chunk

    # Raw side: shuffled, resharded, renamed, damaged.
    rng = random.Random(3)
    shuffled = list(originals)
    rng.shuffle(shuffled)
    missing = {shuffled[0].uid, shuffled[1].uid, shuffled[2].uid}
    reencoded = {shuffled[3].uid, shuffled[4].uid, shuffled[5].uid}
    caption_in_metadata = shuffled[6].uid
    caption_lost = shuffled[7].uid
    assert bad_box not in missing | reencoded | {caption_in_metadata, caption_lost}
    kept = [s for s in shuffled if s.uid not in missing]
    raw = root / "raw"
    per_raw = -(-len(kept) // RAW_SHARDS)
    for shard in range(RAW_SHARDS):
        members: list[tuple[str, bytes]] = []
        for index, sample in enumerate(kept[shard * per_raw : (shard + 1) * per_raw]):
            key = f"{shard:04d}{index:04d}"
            image = _reencode(sample.image) if sample.uid in reencoded else sample.image
            meta = dict(sample.meta, key=key)
            members.append((f"{key}.{sample.image_ext}", image))
            if sample.uid in (caption_in_metadata, caption_lost):
                meta.pop("caption", None)
            else:
                members.append((f"{key}.txt", sample.caption.encode("utf-8")))
            members.append((f"{key}.json", json.dumps(meta).encode()))
        _tar(raw / f"{shard:05d}.tar", members)
    metadata = root / "metadata"
    metadata.mkdir()
    by_uid = {s.uid: s for s in originals}
    rows = [{"uid": caption_in_metadata, "text": by_uid[caption_in_metadata].caption}]
    rows += [{"uid": f"{k:032x}", "text": "a row of another shard"} for k in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), metadata / "part-0.parquet")
    return SimpleNamespace(
        public=public,
        raw=raw,
        metadata=metadata,
        originals=by_uid,
        reinforced=reinforced,
        shard_order=shard_order,
        expected={
            "image_missing": sorted(missing),
            "hash_mismatch": sorted(reencoded),
            "box_out_of_bounds": [bad_box],
            "caption_missing": [caption_lost],
        },
        caption_in_metadata=caption_in_metadata,
    )


def _join_args(data: SimpleNamespace, out: Path, *extra: str) -> list[str]:
    return [
        "--reinforced", f"{data.public}/*.tar", "--raw", f"{data.raw}/*.tar", "--output", str(out),
        "--raw-metadata", f"{data.metadata}/*.parquet", "--teacher-dims", "8,12", "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def joined(join_input: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.join import main

    out = tmp_path_factory.mktemp("joined") / "out"
    assert main(_join_args(join_input, out, "--on-mismatch", "list", "--runner", "DirectRunner")) == 0
    return out


@pytest.fixture(scope="session")
def join_args() -> Callable[..., list[str]]:
    """`join_args(data, out, *extra)`: the CLI arguments of a join of the test input."""
    return _join_args


@pytest.fixture(scope="session")
def own_run(
    tmp_path_factory: pytest.TempPathFactory, sample_raw_dir: Path, tiny_checkpoints: dict[str, str]
) -> SimpleNamespace:
    """Our job's output on the bundled raw shards (tiny models, seeded), and its public-layout half:
    every sample without `jpg` and `txt`, as the public release is, with the run's config.json."""
    from pipeline.reinforce import main

    root = tmp_path_factory.mktemp("own-run")
    reinforced = root / "reinforced"
    args = [
        "--input", f"{sample_raw_dir}/*.tar", "--output", str(reinforced), "--preset", "tiny",
        "--teachers", f"{tiny_checkpoints['clip-a']},{tiny_checkpoints['clip-b']}",
        "--captioner", tiny_checkpoints["coca"], "--num-views", "2", "--num-captions", "1",
        "--batch-size", "8", "--seed", "7", "--no-progress", "--model_threads", "1",
    ]  # fmt: skip
    assert main(args) == 0
    public = root / "public"
    public.mkdir()
    for tar in sorted(reinforced.glob("*.tar")):
        write_public_half(tar, public / tar.name)
    shutil.copy(reinforced / "config.json", public / "config.json")
    return SimpleNamespace(reinforced=reinforced, public=public)


@pytest.fixture
def refusal(capsys: pytest.CaptureFixture[str]) -> Callable[[], str]:
    """`refusal()`: the one line a refused command printed (on stderr, no traceback, nothing else)."""

    def line() -> str:
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert "Traceback" not in captured.err + captured.out
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        return lines[0]

    return line
