"""The bundled raw shards are what `tools.sample_shards` builds, and follow contract §1."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from tools import sample_shards


def test_committed_samples_rebuild_byte_for_byte(tmp_path: Path, sample_raw_dir: Path) -> None:
    sample_shards.main(["--out", str(tmp_path)])
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == sorted(p.name for p in sample_raw_dir.iterdir())
    for name in built:
        assert (tmp_path / name).read_bytes() == (sample_raw_dir / name).read_bytes(), name


def test_samples_follow_the_img2dataset_layout(sample_raw_dir: Path) -> None:
    tars = sorted(sample_raw_dir.glob("*.tar"))
    assert [t.stem for t in tars] == ["00000000", "00000001", "00000002"]
    modes, formats, sizes = set(), set(), []
    for tar in tars:
        assert (sample_raw_dir / f"{tar.stem}.parquet").exists()
        stats = json.loads((sample_raw_dir / f"{tar.stem}_stats.json").read_text())
        rows = pq.read_table(sample_raw_dir / f"{tar.stem}.parquet").to_pylist()
        assert stats["count"] == len(rows) and stats["successes"] == sum(
            r["status"] == "success" for r in rows
        )
        with tarfile.open(tar) as archive:
            members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
        keys = sorted({name.split(".", 1)[0] for name in members})
        assert len(keys) == stats["successes"]
        assert keys != [name.split(".", 1)[0] for name in members][::3]  # not written in key order
        for key in keys:
            assert re.fullmatch(rf"{tar.stem}\d{{4}}", key)
            meta = json.loads(members[f"{key}.json"])
            assert re.fullmatch(r"[0-9a-f]{32}", meta["uid"]) and meta["key"] == key
            assert members[f"{key}.txt"].decode() == meta["caption"]
            (image_name,) = [
                n for n in members if n.startswith(f"{key}.") and n.split(".", 1)[1] not in ("json", "txt")
            ]
            image = Image.open(io.BytesIO(members[image_name]))
            assert image.size == (meta["width"], meta["height"])
            modes.add(image.mode)
            formats.add(image.format)
            sizes.append(max(image.size))
    assert {"RGB", "L", "P", "RGBA", "CMYK"} <= modes
    assert {"JPEG", "PNG", "WEBP"} <= formats
    assert min(sizes) <= 100 and max(sizes) >= 1200
    assert sum(p.stat().st_size for p in sample_raw_dir.iterdir()) < 5_000_000
