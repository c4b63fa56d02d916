"""How many calibration samples `pipeline.plan` needs for a stable figure.

    python -m bench.plan_calibration [--preset tiny] [--draws 2000]

Times each bundled sample's decode + augment and captioning alone with the plan's own models and
code, then draws random subsets of n samples (without replacement) and reports the 5-95 % range of
the per-sample estimate they give: how far a plan calibrated on n samples can land from another.
Captioning dominates and its cost follows each image's caption lengths, so few samples swing the
figure (`pipeline.plan.MIN_CALIBRATION_SAMPLES` is set from this). Subsets of the 32 bundled samples
understate the spread as n nears 32. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from pipeline import plan
from pipeline.reinforce_shard import caption_seed, prepare_sample

SIZES = (2, 4, 8, 16, 24)


def per_sample_seconds(preset: str) -> list[float]:
    """Each bundled sample's decode + augment and captioning seconds, timed alone."""
    settings = plan.job_settings(plan.build_parser().parse_args(["--preset", preset, "--samples", "1"]))
    models, _, _ = plan.load_models(settings)
    seconds = []
    for raw in plan.raw_samples(settings.input_pattern, 64):
        stages: dict[str, float] = {}
        prepared = prepare_sample(raw, settings, models.augmenter, stages)
        start = time.perf_counter()
        seed = caption_seed(settings.seed, raw.uid)
        models.captioner.caption([prepared.image], [seed], settings.num_captions)
        seconds.append(sum(stages.values()) + time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="the preset whose models are timed (default tiny)")
    parser.add_argument("--draws", type=int, default=2000, help="random subsets per size (default 2000)")
    args = parser.parse_args(argv)
    seconds = per_sample_seconds(args.preset)
    rng = random.Random(0)
    spread = {}
    for n in (size for size in SIZES if size < len(seconds)):
        estimates = sorted(sum(rng.sample(seconds, n)) / n for _ in range(args.draws))
        low, high = estimates[args.draws // 20], estimates[args.draws - args.draws // 20]
        spread[n] = round(high / low, 2)
        print(f"n={n:2d}: per-sample estimate {low:.3f}-{high:.3f} s (5-95 %), high/low {spread[n]:.2f}")
    print(json.dumps({"preset": args.preset, "samples": len(seconds), "high_over_low": spread}))


if __name__ == "__main__":
    main()
