"""Benchmark of filtering first: the score pass against the full reinforcement, on the same shards.

    python -m bench.score [--threads N] [--tiny-samples N] [--b32-samples N] [--fraction F] [--batch-size B]

For the `tiny` preset and a ViT-B-32-sized random-init one (two ViT-B-32 teachers, a CoCa ViT-B-32
captioner, A = 10, S = 5; bench/pipeline.py's), on one shard of the bundled photos:
1. `pipeline.score` (one eval view and one caption per sample, per teacher) end to end, samples/s;
2. `pipeline.reinforce` on every sample (A views, captioning, 1 + S texts), samples/s;
3. `pipeline.reinforce --scores --top-fraction F` (default 0.3, DataComp's 30 %), wall seconds.
Cost saved by filtering first = 1 - (score wall + filtered reinforce wall) / full reinforce wall,
and what it would be with no fixed costs: (1 - F) - reinforce rate / score rate.

Both jobs use `--batch-size` (16): a shard's last teacher batch is padded to it, which at a few
samples would cost the score pass more than its samples do. The runs time the job's in-process
runner from graph start (models already loaded). Random-init captioners write captions to the
length cap, so the reinforcement figures are upper bounds on its cost (a trained captioner's shorter
captions save a little less). The machine is shared, so figures move between runs. The last line
printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.pipeline import b32_settings, bundled_samples, log, settings_for, write_raw_shard


def compare(
    name: str, models: dict[str, Any], raw: Path, work: Path, threads: int, fraction: float, batch_size: int
) -> dict[str, Any]:
    from beam_jobs.reinforce_job import run_job
    from beam_jobs.score_job import run_score_job
    from pipeline.score_settings import ScoreSettings
    from pipeline.selection import Selection

    torch.set_num_threads(threads)
    beam_args = ["--model_threads", str(threads)]
    scores_dir = work / f"scores-{name}"
    score_settings = ScoreSettings(
        input_pattern=str(raw / "*.tar"),
        output_dir=str(scores_dir),
        teachers=tuple(models["teachers"]),
        batch_size=batch_size,
    )
    scored = run_score_job(score_settings, beam_args, show_progress=False)
    full_settings = settings_for(name, raw, work / f"full-{name}", models, batch_size=batch_size)
    full = run_job(full_settings, beam_args, show_progress=False)
    selection = Selection(scores=str(scores_dir), top_fraction=fraction)
    filtered_settings = dataclasses.replace(
        full_settings, output_dir=str(work / f"filtered-{name}"), selection=selection
    )
    filtered = run_job(filtered_settings, beam_args, show_progress=False)
    samples = full.written_this_run
    assert scored.written_this_run == samples, "the score pass and the reinforcement saw other samples"
    score_rate = samples / scored.wall_seconds
    reinforce_rate = samples / full.wall_seconds
    filter_first = scored.wall_seconds + filtered.wall_seconds
    saved = 1 - filter_first / full.wall_seconds
    ideal = (1 - fraction) - reinforce_rate / score_rate
    log(
        f"{name}: {samples} samples, {len(models['teachers'])} teachers, A={full_settings.num_views} "
        f"S={full_settings.num_captions}, {threads} torch thread(s)\n"
        f"  score pass: {scored.wall_seconds:.1f} s = {score_rate:.3f} samples/s\n"
        f"  reinforce every sample: {full.wall_seconds:.1f} s = {reinforce_rate:.3f} samples/s "
        f"(score pass {score_rate / reinforce_rate:.1f}x faster)\n"
        f"  reinforce the top {fraction:.0%} ({filtered.written_this_run} samples, "
        f"{filtered.summary.filtered_out} filtered out): {filtered.wall_seconds:.1f} s\n"
        f"  filter first = score + filtered reinforce = {filter_first:.1f} s against "
        f"{full.wall_seconds:.1f} s: {saved:.0%} of the cost saved (without fixed costs: {ideal:.0%})"
    )
    return {
        f"{name}_samples": samples,
        f"{name}_score_samples_per_s": round(score_rate, 4),
        f"{name}_reinforce_samples_per_s": round(reinforce_rate, 4),
        f"{name}_score_speedup": round(score_rate / reinforce_rate, 2),
        f"{name}_filtered_reinforce_seconds": round(filtered.wall_seconds, 2),
        f"{name}_filtered_kept": filtered.written_this_run,
        f"{name}_saved_pct": round(100 * saved, 1),
        f"{name}_saved_pct_without_fixed_costs": round(100 * ideal, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--tiny-samples", type=int, default=128, help="samples for the tiny preset")
    parser.add_argument("--b32-samples", type=int, default=32, help="samples for the ViT-B-32-sized preset")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="teacher batch of both jobs (a shard's last one is padded: keep it small beside the samples)",
    )
    parser.add_argument("--fraction", type=float, default=0.3, help="the top fraction reinforced")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dcdr-bench-checkpoints"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from teachers.tiny import ensure_tiny_checkpoints

    log("bench.score: figures from one run on a shared 2-core machine; expect them to move between runs")
    cache = Path(args.cache)
    tiny = ensure_tiny_checkpoints(cache / "tiny")
    figures: dict[str, Any] = {
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "fraction": args.fraction,
        "batch_size": args.batch_size,
    }
    source = bundled_samples()
    with tempfile.TemporaryDirectory(prefix="bench-score-") as scratch:
        work = Path(scratch)
        tiny_models = {
            "teachers": (tiny["clip-a"], tiny["clip-b"]),
            "captioner": tiny["coca"],
            "num_views": 4,
            "num_captions": 2,
        }
        raw_tiny = write_raw_shard(work / "raw-tiny" / "00000000.tar", args.tiny_samples, source).parent
        figures.update(
            compare("tiny", tiny_models, raw_tiny, work, args.threads, args.fraction, args.batch_size)
        )
        raw_b32 = write_raw_shard(work / "raw-b32" / "00000000.tar", args.b32_samples, source).parent
        figures.update(
            compare(
                "vit_b_32", b32_settings(cache), raw_b32, work, args.threads, args.fraction, args.batch_size
            )
        )
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
