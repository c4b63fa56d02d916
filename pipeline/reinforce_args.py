"""Command-line flags of `python -m pipeline.reinforce`: a preset first, then flags that override it.

Flags we do not know are Beam pipeline options (`--runner`, `--direct_num_workers`,
`--s3_endpoint_url`, `--temp_location`, ...) and go to Beam unchanged.
"""

from __future__ import annotations

import argparse

from pipeline.presets import PRESETS, resolve_preset
from pipeline.selection import selection_from_flags
from pipeline.settings import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IMAGE_PIXELS, ReinforceSettings
from shards.dataset_card import add_license_argument
from shards.run_config import ConfigError

EPILOG = """\
Any other --flag is a Beam pipeline option, e.g. --runner DirectRunner (in-process, never downloads
anything), --direct_num_workers 2 --direct_running_mode multi_processing, --runner PortableRunner
--job_endpoint localhost:8099 --environment_type LOOPBACK, --runner DataflowRunner --project P
--region R --temp_location gs://B/tmp, --s3_endpoint_url http://127.0.0.1:5000.
Our own worker options: --model_threads N (torch threads per worker; default cores / workers).

Output per input shard NNNNNNNN.tar: NNNNNNNN.tar (reinforced samples), NNNNNNNN.parquet (one row per
sample), NNNNNNNN_errors.jsonl (skipped samples: key, reason) and NNNNNNNN_stats.json (written last: the
shard is done). Per run: config.json, manifest.jsonl, summary.json and README.md (a Hugging Face dataset
card, regenerated on every run; an edited one is never overwritten). Re-running the same command
resumes: shards with a stats file are skipped.
"""


def build_parser() -> argparse.ArgumentParser:
    presets = "; ".join(f"{p.name}: {p.summary}" for p in PRESETS.values())
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.reinforce",
        description="Reinforce raw DataComp (img2dataset) shards into DataCompDR-style shards on Apache "
        "Beam: synthetic captions, augmented views with their parameters, teacher-ensemble embeddings.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input", required=True, help="glob of raw shards: local, gs:// or s3://, e.g. 'raw/*.tar'"
    )
    parser.add_argument(
        "--output", required=True, help="output folder (local, gs:// or s3://); created if missing"
    )
    parser.add_argument(
        "--preset", required=True, choices=sorted(PRESETS), help=f"settings of contract §4. {presets}"
    )
    parser.add_argument(
        "--teachers",
        help="comma-separated CLIP teacher specs overriding the preset, in embedding order: "
        "'ViT-L-14@openai', 'hf-hub:ORG/NAME' or 'local-dir:PATH'",
    )
    parser.add_argument(
        "--kd-logit-scales",
        help="comma-separated KD logit scale per teacher (default: the preset's, or 100 each)",
    )
    parser.add_argument("--captioner", help="CoCa captioner spec overriding the preset")
    parser.add_argument("--num-views", type=int, help="augmented views A per image (preset: 30 / 10)")
    parser.add_argument("--num-captions", type=int, help="synthetic captions S per image (preset: 5)")
    parser.add_argument(
        "--seed", type=int, default=0, help="run seed: views and captions derive from (seed, uid)"
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="model weights precision (teachers and captioner); contract default fp32",
    )
    parser.add_argument(
        "--embedding-dtype",
        default="fp32",
        choices=["fp32", "bf16"],
        help="stored embeddings: fp32 as npz, or bf16 as pth.gz (half the size)",
    )
    parser.add_argument(
        "--layout",
        default="v1",
        choices=["v1", "v2"],
        help="v1: syn_text in text_emb rows; v2: syn_text_<tag>",
    )
    parser.add_argument(
        "--caption-tag", default="coca", help="v2 layout only: captions stored as syn_text_<tag>"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="views (and texts) per teacher forward pass, filled across samples; captioner calls get "
        "batch-size / num-captions images. Default %(default)s",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="images with more pixels are skipped unread (decompression bombs); default %(default)s",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="where workers run the models: auto (a GPU when the worker has one), cpu, cuda or cuda:N",
    )
    parser.add_argument(
        "--feed-workers",
        type=int,
        default=0,
        help="processes per worker that decode and augment ahead of the models (GPU workers: cores - 1); "
        "0 = one read-ahead thread. Output bytes do not depend on it",
    )
    parser.add_argument(
        "--allow-device-change",
        action="store_true",
        help="let a resume run on another kind of device (cpu/cuda) than the run began on; their "
        "embeddings differ in the last bits",
    )
    parser.add_argument(
        "--keep-uids",
        metavar="PARQUET",
        help="reinforce only the samples whose uid this parquet's `uid` column lists",
    )
    parser.add_argument(
        "--scores",
        metavar="SCORES",
        help="a score run's folder (python -m pipeline.score): with --min-score or --top-fraction, "
        "reinforce only the samples whose image and caption agree",
    )
    parser.add_argument("--min-score", type=float, help="keep samples whose score_mean is at least this")
    parser.add_argument(
        "--top-fraction",
        type=float,
        help="keep the best-scoring fraction F of the score run's pool (DataComp: one threshold, the "
        "(1-F) quantile of score_mean over every score file, recorded in config.json)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no live progress line on local runs")
    parser.add_argument(
        "--force-takeover",
        action="store_true",
        help="take the output folder's lease from a job you know is dead (a live job is refused: one "
        "job per output folder; a dead one on this host, or silent for 10 minutes, is taken over anyway)",
    )
    add_license_argument(parser)
    return parser


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def settings_from_args(args: argparse.Namespace) -> ReinforceSettings:
    """The preset's values, overridden by every flag the user gave; raises ConfigError when invalid."""
    if args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    # Resolving builds the tiny checkpoints; not needed when the flags name every model.
    preset = PRESETS[args.preset] if args.teachers and args.captioner else resolve_preset(args.preset)
    teachers = _csv(args.teachers) if args.teachers else preset.teachers
    if args.kd_logit_scales:
        try:
            scales = tuple(float(s) for s in _csv(args.kd_logit_scales))
        except ValueError as exc:
            raise ConfigError(f"--kd-logit-scales must be numbers: {exc}") from exc
    elif args.teachers and len(teachers) != len(preset.kd_logit_scales):
        scales = (100.0,) * len(teachers)
    else:
        scales = preset.kd_logit_scales
    settings = ReinforceSettings(
        input_pattern=args.input,
        output_dir=args.output,
        preset=args.preset,
        teachers=teachers,
        kd_logit_scales=scales,
        captioner=args.captioner or preset.captioner,
        num_views=args.num_views if args.num_views is not None else preset.num_views,
        num_captions=args.num_captions if args.num_captions is not None else preset.num_captions,
        seed=args.seed,
        precision=args.precision,
        embedding_dtype=args.embedding_dtype,
        layout=args.layout,
        caption_tag=args.caption_tag,
        batch_size=args.batch_size,
        max_image_pixels=args.max_image_pixels,
        device=args.device,
        feed_workers=args.feed_workers,
        allow_device_change=args.allow_device_change,
        selection=selection_from_flags(args.keep_uids, args.scores, args.min_score, args.top_fraction),
    )
    settings.validate()
    return settings


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Our flags, and the rest for Beam."""
    return build_parser().parse_known_args(argv)
