"""The reinforced-shard format (contract §2): public layouts read back exactly, writes are atomic
and byte-deterministic, and malformed members are refused with a countable reason."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from shards.reinforced import (
    ReinforcedSample,
    ShardFormatError,
    decode_sample,
    encode_sample,
    iter_members,
    iter_shard,
    write_shard,
)
from shards.writer import ROWS_PER_GROUP, ShardWriter
from tests.support import reinforced_sample


def make_sample(
    i: int, views: int = 3, captions: int = 2, dim: int = 8, family: str = "syn_text"
) -> ReinforcedSample:
    uid = f"{i:032x}"
    return reinforced_sample(
        uid,
        bytes(np.random.default_rng(i).integers(0, 256, 64, dtype=np.uint8)),
        f"caption {i} é",
        dims=(dim,),
        views=views,
        captions=captions,
        family=family,
        meta={"uid": uid, "key": f"{i:012d}", "sha256": "00" * 32, "width": 40, "height": 30},
        url=f"http://example.com/{i}.jpg",
        synthetic=[f"syn {i} {k}" for k in range(captions)],
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("layout", ["v1", "v2"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_round_trip_and_byte_determinism(tmp_path: Path, layout: str, dtype: str) -> None:
    samples = [make_sample(i) for i in range(4)]
    paths = []
    for run in range(2):
        tar, parquet = tmp_path / f"{run}.tar", tmp_path / f"{run}.parquet"
        with ShardWriter(str(tar), str(parquet), layout, dtype) as writer:
            for sample in samples:
                writer.write(sample)
        paths.append((tar, parquet))
    assert sha(paths[0][0]) == sha(paths[1][0]) and sha(paths[0][1]) == sha(paths[1][1])

    back = list(iter_shard(str(paths[0][0])))
    assert len(back) == len(samples)
    atol = 0.0 if dtype == "fp32" else 2e-2
    for original, read in zip(samples, back, strict=True):
        assert isinstance(read, ReinforcedSample)
        assert read.key == original.key and read.image == original.image and read.caption == original.caption
        assert (
            read.param_aug == original.param_aug and read.meta == original.meta and read.url == original.url
        )
        np.testing.assert_allclose(read.image_emb, original.image_emb, atol=atol)
        np.testing.assert_allclose(read.caption_emb, original.caption_emb, atol=atol)
        (family,) = read.syn_captions
        assert family == ("syn_text" if layout == "v1" else "syn_text_default")
        assert read.syn_captions[family] == original.syn_captions["syn_text"]
        np.testing.assert_allclose(read.syn_emb[family], original.syn_emb["syn_text"], atol=atol)

    table = pq.read_table(paths[0][1])
    assert table.num_rows == len(samples)
    assert table.column("uid").to_pylist() == [s.uid for s in samples]
    stored = np.asarray(table.column("image_emb").to_pylist()[1], dtype=np.float32)
    np.testing.assert_allclose(stored, back[1].image_emb, atol=0)  # parquet holds what the tar holds


def test_v1_members_match_the_public_layout() -> None:
    members = encode_sample(make_sample(7, views=5, captions=3))
    assert set(members) == {"__key__", "url.txt", "txt", "jpg", "json", "syn.json", "paug.json", "npz"}
    assert json.loads(members["paug.json"])["param_aug"][0] == [
        [0, 1, 20, 20],
        [[1, 0.09000000357627869], [5, -9.0]],
    ]
    assert len(json.loads(members["syn.json"])["syn_text"]) == 3
    with np.load(io.BytesIO(members["npz"]), allow_pickle=False) as npz:
        assert npz["image_emb"].shape == (5, 8) and npz["text_emb"].shape == (4, 8)
        assert npz["image_emb"].dtype == np.float32


def test_reads_public_variants_param_aug_string_and_v2_families() -> None:
    sample = make_sample(3, family="syn_text_coca")
    members = encode_sample(sample, "v2", "bf16")
    members["paug.json"] = json.dumps({"param_aug": json.dumps(sample.param_aug)}).encode()
    read = decode_sample(members)
    assert read.param_aug == sample.param_aug
    assert list(read.syn_captions) == ["syn_text_coca"]
    loaded = torch.load(io.BytesIO(gzip.decompress(members["pth.gz"])), weights_only=True)
    assert loaded["syn_text_coca_emb"].dtype == torch.bfloat16


def _with_view_sha(members: dict, view_sha: object) -> None:
    paug = json.loads(members["paug.json"])
    members["paug.json"] = json.dumps(paug | {"view_sha": view_sha}).encode()


def test_view_fingerprints_sit_beside_param_aug_and_round_trip() -> None:
    sample = make_sample(5, views=3)
    assert json.loads(encode_sample(sample)["paug.json"]) == {
        "param_aug": sample.param_aug
    }  # none: as before
    sample.view_sha = ["0123456789abcdef", "fedcba9876543210", "00000000000000ff"]
    members = encode_sample(sample, "v2", "bf16")
    assert json.loads(members["paug.json"]) == {"param_aug": sample.param_aug, "view_sha": sample.view_sha}
    assert decode_sample(members).view_sha == sample.view_sha
    assert decode_sample(encode_sample(make_sample(5))).view_sha is None


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: m.pop("jpg"), "missing_member"),
        (lambda m: m.pop("npz"), "missing_member"),
        (lambda m: m.update({"paug.json": b"{not json"}), "bad_member"),
        (lambda m: m.update({"npz": b"not a zip"}), "bad_member"),
        (
            lambda m: m.update({"paug.json": json.dumps({"param_aug": [[[0, 0, 1, 1], []]]}).encode()}),
            "count_mismatch",
        ),
        (lambda m: _with_view_sha(m, ["0123456789abcdef"] * 2), "bad_member"),  # 3 views
        (lambda m: _with_view_sha(m, ["not hex!"] * 3), "bad_member"),
        (lambda m: _with_view_sha(m, "0123456789abcdef"), "bad_member"),
    ],
)
def test_malformed_samples_are_refused_with_a_reason(mutate, reason: str) -> None:
    members = encode_sample(make_sample(1))
    mutate(members)
    with pytest.raises(ShardFormatError) as caught:
        decode_sample(members)
    assert caught.value.reason == reason and caught.value.key == make_sample(1).key


def test_published_samples_without_an_image_decode_only_when_asked() -> None:
    members = encode_sample(make_sample(4))
    del members["jpg"], members["txt"]
    with pytest.raises(ShardFormatError, match="missing_member"):
        decode_sample(members)
    sample = decode_sample(members, require_image=False)
    assert sample.image == b"" and sample.image_ext == "" and sample.caption == ""
    assert sample.num_views == 3


def test_pickled_embeddings_are_never_loaded() -> None:
    members = encode_sample(make_sample(2))
    buffer = io.BytesIO()
    np.savez(buffer, image_emb=np.array([object()], dtype=object), text_emb=np.zeros((3, 8)))
    members["npz"] = buffer.getvalue()
    with pytest.raises(ShardFormatError, match="bad_member"):
        decode_sample(members)


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    tar, parquet = tmp_path / "00000000.tar", tmp_path / "00000000.parquet"
    with pytest.raises(RuntimeError), ShardWriter(str(tar), str(parquet)) as writer:
        writer.write(make_sample(0))
        raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []


def test_parquet_row_groups_do_not_depend_on_the_shard_size(tmp_path: Path) -> None:
    count = ROWS_PER_GROUP + 3
    tar, parquet = tmp_path / "a.tar", tmp_path / "a.parquet"
    with ShardWriter(str(tar), str(parquet)) as writer:
        for i in range(count):
            writer.write(make_sample(i, views=1, captions=1, dim=4))
    meta = pq.ParquetFile(parquet).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [ROWS_PER_GROUP, 3]


def test_truncated_tar_keeps_the_readable_samples(tmp_path: Path) -> None:
    tar = tmp_path / "t.tar"
    write_shard(str(tar), [make_sample(i) for i in range(6)])
    data = tar.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) * 2 // 3])
    results = list(iter_shard(str(tmp_path / "cut.tar")))
    good = [r for r in results if isinstance(r, ReinforcedSample)]
    assert 1 <= len(good) < 6
    assert isinstance(results[-1], ShardFormatError) and results[-1].reason in {
        "unreadable_tar",
        "missing_member",
    }


def test_tar_members_are_owner_and_time_free(tmp_path: Path) -> None:
    tar = tmp_path / "x.tar"
    write_shard(str(tar), [make_sample(0)])
    with tarfile.open(tar) as archive:
        infos = archive.getmembers()
    assert {(i.mtime, i.uname, i.gname, i.mode) for i in infos} == {(0, "", "", 0o444)}
    assert [i.name.split(".", 1)[1] for i in infos][:2] == ["jpg", "json"]  # webdataset writes members sorted
    assert sum(1 for _ in iter_members(str(tar))) == 1
