"""Captions per second: our CoCa captioner against open_clip's `generate` as the public generator calls it.

Two random-init CoCa models (no weights can be downloaded here), both with flat next-token
distributions (open_clip's initialisation spreads the probability over the whole vocabulary, so the
nucleus holds tens of thousands of tokens and no caption ends early):
- `small`: the tiny test CoCa's architecture (32-wide text and decoder towers, 49,408-word
  vocabulary), where decoding cost is all token choice and vocabulary projection;
- `b32`: `coca_ViT-B-32`, where the towers' arithmetic dominates.

Both sides caption the same B photos (8 by default; `--b32-images 4` halves the slow b32 reference),
S samples each, nucleus sampling (top_p 0.9), 30 tokens. The reference is called the way the public
DataCompDR generator calls it: once per caption index over the batch (S calls),
`generation_type="top_p"`, `fixed_output_length=True`, so each call re-encodes the images and re-runs
the whole prefix at every token. Ours encodes each image once and decodes all B x S rows together
with a key/value cache. Rounds alternate between the two so background load hits both alike; the
median round is reported. The machine is shared with other jobs: read the ratios.

For ours, one decoding is also timed step by step, split into the model's step and token choice.

    python -m bench.captioner [--images 8] [--b32-images 8] [--samples 5] [--rounds 1] [--cases small,b32]
                              [--threads 1]

Last line: one JSON object of figures, with `speedup_small` and `speedup_b32`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import open_clip
import skimage.data
import torch
from PIL import Image

from teachers import Captioner
from teachers.sampling import choose_tokens, uniform_table
from teachers.tiny import TINY_CAPTIONER, TINY_CONFIGS, write_random_checkpoint

_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "cat",
    "retina",
    "hubble_deep_field",
    "immunohistochemistry",
)
SOT, EOT, PAD = 49406, 49407, 0
_PROFILED_STEPS = 10


def _photos(count: int) -> list[Image.Image]:
    names = [_PHOTOS[i % len(_PHOTOS)] for i in range(count)]
    return [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in names]


def _model_configs() -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """Case name -> (description, open_clip model config, preprocess config)."""
    tiny = TINY_CONFIGS[TINY_CAPTIONER]
    return {
        "small": (
            "tiny CoCa architecture, flat decoder (random init)",
            tiny["model_cfg"],
            tiny["preprocess_cfg"],
        ),
        "b32": ("coca_ViT-B-32 (random init)", open_clip.get_model_config("coca_ViT-B-32"), {}),
    }


def _step_breakdown(
    ours: Captioner, pixels: torch.Tensor, seeds: list[int], samples: int
) -> dict[str, float]:
    """Milliseconds per decoding step of ours, model step vs token choice, for all rows at once."""
    backend, settings = ours.backend, ours.settings
    decoder = backend.start(pixels, samples, settings.seq_len)
    rows = pixels.shape[0] * samples
    uniforms = uniform_table(seeds, samples, settings.seq_len, decoder.device)
    last = torch.full((rows,), backend.start_id, dtype=torch.long)
    model = choice = 0.0
    steps = min(_PROFILED_STEPS, settings.seq_len - 2)
    with torch.inference_mode():
        for pos in range(1, steps + 1):
            started = time.perf_counter()
            logits = decoder.step(last)
            middle = time.perf_counter()
            last = choose_tokens(logits, pos, uniforms[:, :, pos], backend.eos_id, settings)
            model += middle - started
            choice += time.perf_counter() - middle
    return {
        "rows": rows,
        "model_ms_per_step": 1000 * model / steps,
        "choice_ms_per_step": 1000 * choice / steps,
    }


def _run_case(name: str, images: int, args: argparse.Namespace) -> dict[str, Any]:
    description, model_cfg, preprocess_cfg = _model_configs()[name]
    with tempfile.TemporaryDirectory() as scratch:
        write_random_checkpoint(scratch, model_cfg, preprocess_cfg, seed=0)
        spec = f"local-dir:{scratch}"
        ours = Captioner.load(spec, micro_batch=images, seq_len=args.seq_len)
        reference, _, preprocess = open_clip.create_model_and_transforms(spec)
    reference.eval()
    pixels = torch.stack([preprocess(image) for image in _photos(images)])
    seeds = list(range(images))

    def run_ours() -> list[int]:
        tokens = ours.caption_tokens(pixels, seeds, args.samples)
        return [len(seq) for per_image in tokens for seq in per_image]

    def run_reference() -> list[int]:
        lengths = []
        with torch.no_grad():
            for _ in range(args.samples):  # the public generator: one generate call per caption index
                out = reference.generate(
                    pixels, generation_type="top_p", top_p=0.9, seq_len=args.seq_len, fixed_output_length=True
                )
                for row in out.tolist():
                    stop = next((i for i, t in enumerate(row[1:], 1) if t in (EOT, PAD)), len(row) - 1)
                    lengths.append(stop + 1)
        return lengths

    runs: dict[str, Callable[[], list[int]]] = {"ours": run_ours, "open_clip": run_reference}
    timings: dict[str, list[float]] = {"ours": [], "open_clip": []}
    lengths: dict[str, list[int]] = {}
    ours.caption_tokens(pixels[:1], seeds[:1], 1)  # warm-up (allocator, kernels), outside the timed rounds
    for _ in range(args.rounds):
        for side, run in runs.items():
            started = time.perf_counter()
            lengths[side] = run()
            timings[side].append(time.perf_counter() - started)
            print(f"{name:5s} {side:9s} round: {timings[side][-1]:7.2f} s", flush=True)
    breakdown = _step_breakdown(ours, pixels, seeds, args.samples)
    captions = images * args.samples
    rate = {side: captions / statistics.median(t) for side, t in timings.items()}
    speedup = rate["ours"] / rate["open_clip"]
    print(
        f"{name:5s} ours {rate['ours']:.2f} captions/s, open_clip {rate['open_clip']:.2f} captions/s, "
        f"speedup {speedup:.2f}x; ours per step ({breakdown['rows']} rows): model "
        f"{breakdown['model_ms_per_step']:.1f} ms, token choice {breakdown['choice_ms_per_step']:.1f} ms",
        flush=True,
    )
    return {
        "model": description,
        "captions_per_s_ours": round(rate["ours"], 3),
        "captions_per_s_open_clip": round(rate["open_clip"], 3),
        "speedup": round(speedup, 2),
        "mean_tokens_ours": round(statistics.mean(lengths["ours"]), 2),
        "mean_tokens_open_clip": round(statistics.mean(lengths["open_clip"]), 2),
        "ours_model_ms_per_step": round(breakdown["model_ms_per_step"], 2),
        "ours_choice_ms_per_step": round(breakdown["choice_ms_per_step"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="photos for the small case")
    parser.add_argument(
        "--b32-images", type=int, default=8, help="photos for the b32 case (4 halves its slow reference)"
    )
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=30)
    parser.add_argument("--cases", default="small,b32", help="comma-separated: small, b32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(_model_configs())
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}")

    figures: dict[str, Any] = {
        "images": {"small": args.images, "b32": args.b32_images},
        "samples_per_image": args.samples,
        "seq_len": args.seq_len,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
    }
    for name in cases:
        case = _run_case(name, args.b32_images if name == "b32" else args.images, args)
        figures[f"speedup_{name}"] = case.pop("speedup")
        figures[name] = case
    figures["note"] = "shared 2-core machine; absolute rates are noisy, the ratios less so"
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
