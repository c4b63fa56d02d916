"""Teacher images per second in fp32 and bf16 weights, their agreement, and the share of matmul peak.

One random-init open_clip ViT-B-32 teacher (no weights can be downloaded here) embeds the same
224x224 views of real photos through `TeacherEnsemble`, once with fp32 weights and once with bf16
weights (no autocast: on CPU it is 10-20x slower). Reported per precision: images/s (median of
alternating rounds), the FLOPs one image costs (counted by torch's FlopCounterMode on this model),
and the fraction of this machine's measured matmul peak in that dtype that the rate reaches. Also
the minimum and mean cosine similarity between the fp32 and bf16 embedding of each view and of
each of a set of captions (what `--precision bf16` costs in agreement). The machine is shared with
other jobs, so absolute numbers are noisy.

    python -m bench.teachers [--views 64] [--rounds 3]

Last line: one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import open_clip
import skimage.data
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from teachers import TeacherEnsemble
from teachers.tiny import write_random_checkpoint

ARCH = "ViT-B-32"
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field")
_CAPTIONS = [
    f"a {adjective} photo of {thing}"
    for adjective in ("blurry", "close-up", "bright", "dark", "black and white", "cropped", "small", "large")
    for thing in ("a cat", "an astronaut", "a cup of coffee", "a rocket on its pad", "a galaxy", "two dogs")
]


def _views(count: int) -> torch.Tensor:
    """224x224 crops of real photos (real image statistics matter for the bf16 comparison)."""
    rng = np.random.default_rng(0)
    photos = [np.asarray(getattr(skimage.data, name)())[..., :3] for name in _PHOTOS]
    views = []
    for i in range(count):
        photo = photos[i % len(photos)]
        top = int(rng.integers(0, photo.shape[0] - 224 + 1))
        left = int(rng.integers(0, photo.shape[1] - 224 + 1))
        views.append(torch.from_numpy(photo[top : top + 224, left : left + 224].copy()).permute(2, 0, 1))
    return torch.stack(views)


def _matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of a large square matmul in `dtype` (this machine's practical peak)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def _flops_per_image(ensemble: TeacherEnsemble) -> float:
    """Counted on the unfused path: the counter cannot see inside the fused attention fast path."""
    teacher = ensemble.teachers[0]
    pixels = torch.zeros(1, 3, *teacher.image_size)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            teacher.encode_pixels(pixels)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        write_random_checkpoint(scratch, open_clip.get_model_config(ARCH), {}, seed=0)
        spec = f"local-dir:{scratch}"
        ensembles = {
            precision: TeacherEnsemble.load([spec], precision=precision, micro_batch=args.micro_batch)
            for precision in ("fp32", "bf16")
        }
    views = _views(args.views)
    embeddings = {p: e.embed_images(views[: args.micro_batch]) for p, e in ensembles.items()}  # warm-up
    timings: dict[str, list[float]] = {p: [] for p in ensembles}
    for _ in range(args.rounds):
        for precision, ensemble in ensembles.items():
            started = time.perf_counter()
            embeddings[precision] = ensemble.embed_images(views)
            timings[precision].append(time.perf_counter() - started)
            print(f"{precision} round: {args.views / timings[precision][-1]:7.2f} images/s", flush=True)

    flops = _flops_per_image(ensembles["fp32"])
    peaks = {"fp32": _matmul_peak(torch.float32), "bf16": _matmul_peak(torch.bfloat16)}
    rate = {p: args.views / statistics.median(t) for p, t in timings.items()}
    cosine = F.cosine_similarity(embeddings["fp32"], embeddings["bf16"], dim=-1)
    texts = {p: e.embed_texts(_CAPTIONS) for p, e in ensembles.items()}
    text_cosine = F.cosine_similarity(texts["fp32"], texts["bf16"], dim=-1)
    figures = {
        "model": f"{ARCH} (random init)",
        "views": args.views,
        "micro_batch": args.micro_batch,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "gflop_per_image": round(flops / 1e9, 3),
        "images_per_s_fp32": round(rate["fp32"], 2),
        "images_per_s_bf16": round(rate["bf16"], 2),
        "bf16_speedup": round(rate["bf16"] / rate["fp32"], 2),
        "min_cosine_fp32_vs_bf16": round(float(cosine.min()), 6),
        "mean_cosine_fp32_vs_bf16": round(float(cosine.mean()), 6),
        "captions": len(_CAPTIONS),
        "min_text_cosine_fp32_vs_bf16": round(float(text_cosine.min()), 6),
        "mean_text_cosine_fp32_vs_bf16": round(float(text_cosine.mean()), 6),
        "matmul_peak_gflops_fp32": round(peaks["fp32"] / 1e9, 1),
        "matmul_peak_gflops_bf16": round(peaks["bf16"] / 1e9, 1),
        "fraction_of_peak_fp32": round(rate["fp32"] * flops / peaks["fp32"], 3),
        "fraction_of_peak_bf16": round(rate["bf16"] * flops / peaks["bf16"], 3),
        "note": "shared 2-core machine; absolute rates are noisy",
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
