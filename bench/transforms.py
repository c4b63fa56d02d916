"""Views per second: ours (sample + render) against the equivalent torchvision v1 pipeline, one run.

Both render 30 DataCompDR views (RandomResizedCrop 224 bicubic + RandAugment 2 ops at bin 9 of 31)
of the same decoded 512x512 photo on one thread, as uint8 and as normalised float32. Rounds
alternate between the two so background load hits both alike; we report the median round. The
machine is shared, so absolute numbers are noisy: read the ratio. Last line: one JSON object.

    python -m bench.transforms [--rounds 7]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import skimage.data
import torch
import torchvision.transforms as T
from PIL import Image

from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter, decode_image, normalize, view_rng

VIEWS = 30


def _photo_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _ours(augmenter: ViewAugmenter, image: Image.Image, normalized: bool) -> Callable[[int], None]:
    mean, std = augmenter.mean, augmenter.std

    def run(round_index: int) -> None:
        for k in range(VIEWS):
            view = augmenter.apply(image, augmenter.sample(view_rng(round_index, "bench", k), image.size))
            if normalized:
                normalize(view, mean, std)

    return run


def _torchvision(augmenter: ViewAugmenter, image: Image.Image, normalized: bool) -> Callable[[int], None]:
    crop = augmenter.config["random_resized_crop"]
    steps: list = [
        T.RandomResizedCrop(crop["size"], crop["scale"], crop["ratio"], T.InterpolationMode.BICUBIC),
        T.RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=31),
    ]
    steps += [T.ToTensor(), T.Normalize(augmenter.mean, augmenter.std)] if normalized else [T.PILToTensor()]
    pipeline = T.Compose(steps)

    def run(round_index: int) -> None:
        torch.manual_seed(round_index)
        for _ in range(VIEWS):
            pipeline(image)

    return run


def _median_views_per_s(runs: dict[str, Callable[[int], None]], rounds: int) -> dict[str, float]:
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up: imports, caches, first allocations
        run(-1)
    for round_index in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run(round_index)
            seconds[name].append(time.perf_counter() - start)
    return {name: VIEWS / statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = _photo_bytes()
    start = time.perf_counter()
    image = decode_image(data)
    decode_ms = (time.perf_counter() - start) * 1e3
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)

    rates = _median_views_per_s(
        {
            "ours_uint8": _ours(augmenter, image, normalized=False),
            "torchvision_uint8": _torchvision(augmenter, image, normalized=False),
            "ours_normalized": _ours(augmenter, image, normalized=True),
            "torchvision_normalized": _torchvision(augmenter, image, normalized=True),
        },
        args.rounds,
    )
    load = os.getloadavg()[0]
    print(f"image: astronaut {image.size[0]}x{image.size[1]} JPEG, decoded in {decode_ms:.1f} ms")
    print(
        f"{VIEWS} views per round, median of {args.rounds} alternating rounds, 1 thread, load avg {load:.1f}"
    )
    print("(shared machine: absolute numbers are noisy, compare the columns of one run)")
    for kind in ("uint8", "normalized"):
        ours, theirs = rates[f"ours_{kind}"], rates[f"torchvision_{kind}"]
        print(
            f"{kind:>10}: ours {ours:7.1f} views/s   torchvision v1 {theirs:7.1f} views/s"
            f"   ratio {ours / theirs:.2f}"
        )
    figures = {name: round(rate, 1) for name, rate in rates.items()}
    figures |= {
        "speedup_uint8": round(rates["ours_uint8"] / rates["torchvision_uint8"], 3),
        "speedup_normalized": round(rates["ours_normalized"] / rates["torchvision_normalized"], 3),
        "views_per_round": VIEWS,
        "rounds": args.rounds,
        "image_px": list(image.size),
        "decode_ms": round(decode_ms, 2),
        "load_avg_1min": round(load, 2),
        "numpy": np.__version__,
        "torch": torch.__version__,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
