"""Raw shards: every good sample comes through, every bad one is skipped with a countable reason."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from shards.raw import RawSample, SkippedSample, SkipReason, iter_raw_shard, split_member_name


def read(path: Path) -> tuple[list[RawSample], list[SkippedSample]]:
    items = list(iter_raw_shard(str(path)))
    return [i for i in items if isinstance(i, RawSample)], [i for i in items if isinstance(i, SkippedSample)]


def test_good_samples_keep_tar_order_bytes_caption_and_uid(raw_tar, kit):
    image = kit.jpeg_bytes(seed=3)
    members = kit.sample_members("0007", uid="a" * 32, caption="zwei Hunde\nim Schnee", image=image)
    members += kit.sample_members("0002", uid="b" * 32, image_ext="png", image=kit.jpeg_bytes(fmt="PNG"))
    good, skipped = read(raw_tar(members))
    assert skipped == []
    assert [s.key for s in good] == ["0007", "0002"]  # download order, not key order
    assert [s.uid for s in good] == ["a" * 32, "b" * 32]
    assert good[0].image == image and good[0].image_ext == "jpg"
    assert good[0].caption == "zwei Hunde\nim Schnee"
    assert good[0].url == "https://example.com/0007.jpg"
    assert good[1].image_ext == "png"


def test_uid_falls_back_to_key_when_missing_or_unsafe(raw_tar, kit):
    members = kit.sample_members("0001", meta={"uid": None}) + kit.sample_members("0002", uid="../../etc")
    good, skipped = read(raw_tar(members))
    assert skipped == []
    assert [s.uid for s in good] == ["0001", "0002"]


def test_each_bad_sample_is_skipped_with_its_reason_and_good_ones_survive(raw_tar, kit):
    ok = kit.sample_members("0000", seed=1)
    no_image = [m for m in kit.sample_members("0001") if not m[0].endswith(".jpg")]
    no_caption = [
        ("0002.jpg", kit.jpeg_bytes()),
        ("0002.json", json.dumps({"uid": "c" * 32}).encode()),
    ]
    bad_utf8 = kit.sample_members("0003", caption=b"caf\xe9 \xff")
    bad_json = [(n, b"{not json" if n.endswith(".json") else d) for n, d in kit.sample_members("0004")]
    json_list = [(n, b"[1, 2]" if n.endswith(".json") else d) for n, d in kit.sample_members("0005")]
    duplicate = kit.sample_members("0000", seed=9)
    escape = kit.sample_members("../0006")
    absolute = [("/tmp/0007.jpg", kit.jpeg_bytes()), ("/tmp/0007.txt", b"x")]
    same_uid = kit.sample_members("0008", uid="d" * 32) + kit.sample_members("0009", uid="d" * 32)
    last_ok = kit.sample_members("0010", seed=2)
    members = (
        (ok + no_image + no_caption + bad_utf8 + bad_json + json_list + duplicate + escape + absolute)
        + same_uid
        + last_ok
    )
    good, skipped = read(raw_tar(members))
    assert [s.key for s in good] == ["0000", "0008", "0010"]
    assert good[0].image == ok[0][1]  # the first of two duplicate keys is kept, not the later one
    reasons = [(s.key, s.reason) for s in skipped]
    assert reasons == [
        ("0001", SkipReason.MISSING_IMAGE),
        ("0002", SkipReason.MISSING_CAPTION),
        ("0003", SkipReason.CAPTION_NOT_UTF8),
        ("0004", SkipReason.INVALID_JSON),
        ("0005", SkipReason.INVALID_JSON),
        ("0000", SkipReason.DUPLICATE_KEY),
        ("../0006.jpg", SkipReason.UNSAFE_MEMBER_NAME),
        ("/tmp/0007.jpg", SkipReason.UNSAFE_MEMBER_NAME),
        ("0009", SkipReason.DUPLICATE_UID),
    ]


def test_caption_falls_back_to_the_json_caption(raw_tar, kit):
    members = [
        (n, d) for n, d in kit.sample_members("0001", meta={"caption": "from json"}) if not n.endswith(".txt")
    ]
    good, skipped = read(raw_tar(members))
    assert skipped == [] and good[0].caption == "from json"


def test_oversized_member_is_skipped_without_being_read(raw_tar, kit):
    members = kit.sample_members("0001", image=b"\0" * 5000) + kit.sample_members("0002")
    items = list(iter_raw_shard(str(raw_tar(members)), max_member_bytes=4096))
    assert [(i.key, i.reason) for i in items if isinstance(i, SkippedSample)] == [
        ("0001", SkipReason.MEMBER_TOO_LARGE)
    ]
    assert [i.key for i in items if isinstance(i, RawSample)] == ["0002"]


def test_truncated_tar_keeps_readable_samples_and_records_the_damage(tmp_path, kit):
    members = [m for k in range(6) for m in kit.sample_members(f"{k:04d}", seed=k)]
    full = kit.write_tar(tmp_path / "full.tar", members).read_bytes()
    with tarfile.open(tmp_path / "full.tar") as tar:
        cut_inside = next(i for i in tar.getmembers() if i.name == "0004.jpg").offset_data + 100
    truncated = tmp_path / "00000001.tar"
    truncated.write_bytes(full[:cut_inside])
    good, skipped = read(truncated)
    assert [s.key for s in good] == ["0000", "0001", "0002", "0003"]
    assert [(s.key, s.reason, s.whole_shard) for s in skipped] == [
        ("0004", SkipReason.TRUNCATED_TAR, False),  # the sample cut in half
        ("00000001.tar", SkipReason.TRUNCATED_TAR, True),
    ]


def test_empty_and_non_tar_files_are_one_shard_level_skip(tmp_path):
    (tmp_path / "empty.tar").write_bytes(b"")
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w").close()
    (tmp_path / "no_members.tar").write_bytes(buf.getvalue())
    (tmp_path / "html.tar").write_bytes(b"<html>404 not found</html>" * 40)
    for name, reason in [
        ("empty.tar", SkipReason.EMPTY_TAR),
        ("no_members.tar", SkipReason.EMPTY_TAR),
        ("html.tar", SkipReason.CORRUPT_TAR),
    ]:
        good, skipped = read(tmp_path / name)
        assert good == [] and [(s.key, s.reason, s.whole_shard) for s in skipped] == [(name, reason, True)]


def test_missing_shard_is_unreadable_not_a_crash(tmp_path):
    good, skipped = read(tmp_path / "nope.tar")
    assert good == [] and skipped[0].reason == SkipReason.UNREADABLE_SHARD


def test_member_names_split_like_webdataset():
    assert split_member_name("000000000012.jpg") == ("000000000012", "jpg")
    assert split_member_name("dir/abc.syn.JSON") == ("dir/abc", "syn.json")
    assert split_member_name("noext") == ("noext", "")


def test_image_offsets_point_at_the_image_bytes_of_a_plain_tar(raw_tar, kit, tmp_path):
    members = [m for k in range(3) for m in kit.sample_members(f"{k:04d}", seed=k)]
    path = raw_tar(members)
    samples, _ = read(path)
    data = path.read_bytes()
    assert all(data[s.image_offset : s.image_offset + len(s.image)] == s.image for s in samples)
    gz_members = tmp_path / "members.tar.gz"
    with tarfile.open(gz_members, "w:gz") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    gz_samples, _ = read(gz_members)
    assert [s.image for s in gz_samples] == [s.image for s in samples]
    assert all(s.image_offset is None for s in gz_samples)  # a compressed stream cannot be seeked


def test_a_caption_less_sample_is_kept_only_when_asked(raw_tar, kit):
    members = [m for m in kit.sample_members("0001", meta={"caption": None}) if not m[0].endswith(".txt")]
    path = raw_tar(members)
    assert [s.reason for s in iter_raw_shard(str(path))] == [SkipReason.MISSING_CAPTION]
    (kept,) = iter_raw_shard(str(path), require_caption=False)
    assert isinstance(kept, RawSample) and not kept.has_caption and kept.caption == ""


def test_a_sample_without_json_takes_uid_and_url_from_the_parquet_or_is_skipped(raw_tar, kit):
    """No usable json: the shard's img2dataset parquet (row of the same key) fills in; no url at all
    is a counted skip, never a written sample without url.txt."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def without_json(key: str) -> list:
        return [m for m in kit.sample_members(key) if not m[0].endswith(".json")]

    partial_json = [
        (n, json.dumps({"caption": "c"}).encode() if n.endswith(".json") else d)
        for n, d in kit.sample_members("0003")
    ]
    path = raw_tar(without_json("0001") + without_json("0002") + partial_json)
    rows = {
        "key": ["0001", "0003"],
        "uid": ["e" * 32, None],
        "url": ["https://x.org/1.jpg", "https://x.org/3"],
    }
    pq.write_table(pa.table(rows), path.with_suffix(".parquet"))
    good, skipped = read(path)
    assert [(s.key, s.uid, s.url) for s in good] == [
        ("0001", "e" * 32, "https://x.org/1.jpg"),
        ("0003", "0003", "https://x.org/3"),  # no uid anywhere: the key stands in, as before
    ]
    assert [(s.key, s.reason) for s in skipped] == [("0002", SkipReason.MISSING_URL)]
    path.with_suffix(".parquet").unlink()  # without the parquet, nothing ties them to a source
    assert [s.reason for s in read(path)[1]] == [SkipReason.MISSING_URL] * 3
