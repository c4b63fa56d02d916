"""Benchmark of the join: samples/s end to end, and peak memory on a 100- vs a 10,000-sample shard.

    python -m bench.join [--sizes 100,10000] [--dims 256,256] [--views 10] [--captions 5]

For each size N, one public-layout reinforced shard of N samples (real crop boxes on the bundled
photos, random unit embeddings of the given widths, fp32 npz) and its raw side in 4 raw shards in
another order are built, then `python -m pipeline.join --runner DirectRunner` runs in a child
process (the in-process FnApiRunner: launcher, shuffles and the shard writer share one process,
so its peak RSS is the whole job's). Samples/s is joined samples over the child's wall time,
including Beam's start-up; the shard writer's own rate (pairing, checks, ranged reads, writing
tar and parquet) is joined samples over the time its stats record. The machine is shared (2 cores),
so figures move between runs. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(message, flush=True)


def build_input(root: Path, size: int, dims: list[int], views: int, captions: int) -> None:
    """`root/public/00000000.tar` (N samples, no image, no caption) and `root/raw/*.tar`."""
    from shards.raw import RawSample, iter_raw_shard
    from shards.reinforced import ReinforcedSample, encode_sample, open_tar_writer
    from tests.support import unit_rows
    from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter, decode_image, encode_param_aug, view_rng

    photos = [
        item
        for path in sorted((REPO / "samples" / "raw").glob("*.tar"))
        for item in iter_raw_shard(str(path))
        if isinstance(item, RawSample)
    ]
    sizes = [decode_image(photo.image).size for photo in photos]
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    rng = np.random.default_rng(0)
    (root / "public").mkdir(parents=True)
    raw_samples = []
    with open(root / "public" / "00000000.tar", "wb") as f:
        writer = open_tar_writer(f)
        for index in range(size):
            photo, photo_size = photos[index % len(photos)], sizes[index % len(photos)]
            uid = f"{index:032x}"
            sha = hashlib.sha256(photo.image).hexdigest()
            sample = ReinforcedSample(
                key=uid,
                image=b"",
                caption="",
                meta={"uid": uid, "sha256": sha},
                param_aug=[
                    encode_param_aug(augmenter.sample(view_rng(0, uid, k), photo_size)) for k in range(views)
                ],
                image_emb=unit_rows(rng, views, dims),
                caption_emb=unit_rows(rng, 1, dims)[0],
                syn_captions={"syn_text": [f"caption {k}" for k in range(captions)]},
                syn_emb={"syn_text": unit_rows(rng, captions, dims)},
                url=f"https://example.com/{uid}.jpg",
            )
            members = encode_sample(sample)
            del members["jpg"], members["txt"]
            writer.write(members)
            meta = {"uid": uid, "url": sample.url, "key": f"{index:09d}", "status": "success", "sha256": sha}
            raw_samples.append((photo.image_ext, photo.image, photo.caption, meta))
        writer.close()
    random.Random(1).shuffle(raw_samples)
    per_shard = -(-size // 4)
    (root / "raw").mkdir()
    for shard in range(4):
        with open(root / "raw" / f"{shard:05d}.tar", "wb") as f:
            writer = open_tar_writer(f)
            for index, (ext, image, caption, meta) in enumerate(
                raw_samples[shard * per_shard : (shard + 1) * per_shard]
            ):
                key = f"{shard:04d}{index:06d}"
                writer.write(
                    {"__key__": key, ext: image, "txt": caption.encode(), "json": json.dumps(meta).encode()}
                )
            writer.close()


def run_child(root: Path, dims: list[int]) -> dict[str, Any]:
    """The join in a fresh process; its wall time, peak RSS (VmHWM) and summary."""
    command = [sys.executable, "-m", "bench.join", "--child", str(root), "--dims", ",".join(map(str, dims))]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"join child failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = wall
    return result


def child(root: Path, dims: str) -> None:
    from pipeline.join import main

    out = root / "out"
    args = [
        "--reinforced", f"{root}/public/*.tar", "--raw", f"{root}/raw/*.tar", "--output", str(out),
        "--teacher-dims", dims, "--no-progress", "--runner", "DirectRunner",
    ]  # fmt: skip
    code = main(args)
    peak_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    summary = json.loads((out / "summary.json").read_text())
    print(
        json.dumps({"exit": code, "peak_kb": peak_kb, "written": summary["num_written"], "summary": summary})
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,10000", help="samples per shard, comma-separated")
    parser.add_argument("--dims", default="256,256", help="teacher widths of the stored embeddings")
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--captions", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(Path(args.child), args.dims)
        return
    dims = [int(d) for d in args.dims.split(",")]
    figures: dict[str, Any] = {"dims": dims, "views": args.views, "captions": args.captions}
    with tempfile.TemporaryDirectory(prefix="bench-join-") as work:
        for size in (int(s) for s in args.sizes.split(",")):
            root = Path(work) / f"n{size}"
            start = time.monotonic()
            build_input(root, size, dims, args.views, args.captions)
            tar_mb = (root / "public" / "00000000.tar").stat().st_size / 1e6
            log(f"built {size} samples ({tar_mb:.0f} MB reinforced tar) in {time.monotonic() - start:.0f} s")
            result = run_child(root, dims)
            rate = result["written"] / result["wall_seconds"]
            shard_seconds = result["summary"]["seconds"]["join"]
            shard_rate = result["written"] / shard_seconds
            peak_mb = result["peak_kb"] / 1024
            log(
                f"join {size}/shard: {result['written']} joined in {result['wall_seconds']:.1f} s "
                f"({rate:.0f} samples/s end to end, {shard_rate:.0f} samples/s in the shard writer), "
                f"peak RSS {peak_mb:.0f} MB"
            )
            figures[f"samples_per_s_{size}"] = round(rate, 1)
            figures[f"shard_writer_samples_per_s_{size}"] = round(shard_rate, 1)
            figures[f"peak_rss_mb_{size}"] = round(peak_mb, 1)
            figures[f"reinforced_tar_mb_{size}"] = round(tar_mb, 1)
    sizes = [int(s) for s in args.sizes.split(",")]
    if len(sizes) == 2:
        small, large = sizes
        ratio = figures[f"peak_rss_mb_{large}"] / figures[f"peak_rss_mb_{small}"]
        figures["peak_rss_ratio"] = round(ratio, 2)
        log(f"peak RSS {large} vs {small} samples per shard: x{ratio:.2f} for x{large // small} the samples")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
