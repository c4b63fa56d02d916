"""`python -m pipeline.score`: raw DataComp shards in, per-shard image-text scores out.

The cheap pass to run before a reinforcement: score the pool with the teachers, then reinforce only
what agrees (`pipeline.reinforce --scores SCORES --top-fraction F`). Exit status as
`pipeline.reinforce`: 0 when samples were scored; 1 when nothing could be or the pipeline failed;
2 when the configuration is wrong. See `--help`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pipeline.presets import PRESETS, resolve_preset
from pipeline.score_settings import ScoreSettings
from pipeline.settings import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IMAGE_PIXELS
from shards import storage
from shards.run_config import ConfigError

EPILOG = """\
Per input shard NNNNNNNN.tar the output folder gets NNNNNNNN.parquet (one row per scored sample: uid,
url, score_0 .. score_<T-1> (one per teacher, in --teachers order), score_mean, width, height,
caption_length), NNNNNNNN_errors.jsonl (skipped samples: key, reason; the reinforce job's reasons) and
NNNNNNNN_stats.json (written last: the shard is done); per run config.json, manifest.jsonl and
summary.json. A score is the cosine of the teacher's embeddings of the whole image (its own
evaluation transform) and of the original caption. Re-running the same command resumes. Any other
--flag is a Beam pipeline option (see `python -m pipeline.reinforce --help`).

Then: python -m pipeline.reinforce --input 'RAW/*.tar' --scores SCORES --top-fraction 0.3 ...
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.score",
        description="Score raw image-text shards with CLIP teachers (DataComp's CLIP score), to filter "
        "before reinforcing.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="glob of raw shards: local, gs:// or s3://")
    parser.add_argument("--output", required=True, help="output folder for the score files")
    parser.add_argument(
        "--teachers", help="comma-separated CLIP teacher specs, as pipeline.reinforce takes them"
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="score with this preset's teachers (unless --teachers)"
    )
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="teacher weights")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="images (and captions) per teacher forward pass, filled across samples. Default %(default)s",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="images with more pixels are skipped unread; default %(default)s (as pipeline.reinforce)",
    )
    parser.add_argument("--device", default="auto", help="auto (a GPU when the worker has one), cpu, cuda:N")
    parser.add_argument(
        "--feed-workers", type=int, default=0, help="decode processes per worker; 0 = one read-ahead thread"
    )
    parser.add_argument(
        "--allow-device-change", action="store_true", help="let a resume run on another kind of device"
    )
    parser.add_argument("--no-progress", action="store_true", help="no live progress line on local runs")
    parser.add_argument(
        "--force-takeover", action="store_true", help="take the output folder's lease from a dead job"
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> ScoreSettings:
    if args.teachers:
        teachers = tuple(part.strip() for part in args.teachers.split(",") if part.strip())
    elif args.preset:
        teachers = resolve_preset(args.preset).teachers
    else:
        raise ConfigError("name the teachers: --teachers SPEC,... or --preset P")
    settings = ScoreSettings(
        input_pattern=args.input,
        output_dir=args.output,
        teachers=teachers,
        preset=None if args.teachers else args.preset,
        precision=args.precision,
        batch_size=args.batch_size,
        max_image_pixels=args.max_image_pixels,
        device=args.device,
        allow_device_change=args.allow_device_change,
        feed_workers=args.feed_workers,
    )
    settings.validate()
    return settings


def main(argv: list[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from beam_jobs.score_job import run_score_job
    from pipeline.reinforce import finish_run, launch

    def start() -> Any:
        return run_score_job(
            settings_from_args(args),
            beam_args,
            show_progress=not args.no_progress,
            force_takeover=args.force_takeover,
        )

    outcome, code = launch(start, args.output)
    if outcome is None:
        return code
    closing = f"scores: {storage.join(args.output, '*.parquet')} (config.json names the teachers)"
    return finish_run(outcome, args.output, "scored", closing)


if __name__ == "__main__":
    sys.exit(main())
