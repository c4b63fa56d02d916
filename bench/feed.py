"""The CPU feed: decoded and augmented images/s at A = 30 views, by number of feed processes.

    python -m bench.feed [--images 48] [--views 30] [--workers 0,1,2,3] [--rounds 2]

Runs the job's own per-sample step (decode, sample parameters, render uint8 views) through
`pipeline.feed.ordered_map` on the bundled real photos. 0 workers is today's single read-ahead
thread. Rounds alternate the worker counts so that load from other processes hits them alike; the
best round counts. Last line: one JSON object with `images_per_s` per worker count.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    from pipeline.feed import ordered_map
    from pipeline.reinforce_shard import _prepare_item, _timed_reads
    from pipeline.settings import ReinforceSettings
    from shards.raw import RawSample, iter_raw_shard
    from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--views", type=int, default=30)
    parser.add_argument("--workers", default="0,1,2,3")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    photos = [
        item
        for shard in sorted((REPO / "samples" / "raw").glob("*.tar"))
        for item in iter_raw_shard(str(shard))
        if isinstance(item, RawSample)
    ]
    samples = [dataclasses.replace(photos[i % len(photos)], uid=f"{i:032x}") for i in range(args.images)]
    settings = ReinforceSettings(
        input_pattern="", output_dir="", preset="bench", teachers=("-",), kd_logit_scales=(1.0,),
        captioner="-", num_views=args.views, num_captions=1,
    )  # fmt: skip
    step = functools.partial(_prepare_item, settings, ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION))
    counts = [int(w) for w in args.workers.split(",")]
    for workers in counts:  # start the pools (spawn + torch import) outside the timing
        list(ordered_map(step, _timed_reads(iter(samples[:2])), workers=workers, depth=2))
    best: dict[int, float] = {}
    for _ in range(args.rounds):
        for workers in counts:
            start = time.perf_counter()
            done = sum(
                1
                for _ in ordered_map(
                    step, _timed_reads(iter(samples)), workers=workers, depth=2 * max(1, workers)
                )
            )
            rate = done / (time.perf_counter() - start)
            best[workers] = max(best.get(workers, 0.0), rate)
            print(f"{workers} feed process(es): {rate:.2f} images/s at A={args.views}", flush=True)
    base = best[counts[0]]
    for workers in counts:
        print(f"best {workers}: {best[workers]:.2f} images/s (x{best[workers] / base:.2f} vs {counts[0]})")
    print(
        json.dumps(
            {
                "images_per_s": {str(w): round(r, 3) for w, r in best.items()},
                "speedup_vs_thread": {str(w): round(r / base, 3) for w, r in best.items()},
                "views": args.views,
                "images": args.images,
            }
        )
    )


if __name__ == "__main__":
    main()
