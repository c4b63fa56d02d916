"""`python -m pipeline.extend`: grow finished reinforced shards by a teacher or a caption family.

Exit status as `pipeline.reinforce`: 0 when samples were written; 1 when nothing could be processed
or the pipeline failed; 2 when the configuration is wrong (bad flags, no input or input config, a
model that cannot load, or a resume with different settings). See `--help`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline.extend_settings import (
    DEFAULT_KD_LOGIT_SCALE,
    DEFAULT_V1_CAPTION_TAG,
    ExtendSettings,
    read_input_config,
)
from pipeline.reinforce import finish_run, launch, resume_hint
from pipeline.settings import DEFAULT_BATCH_SIZE
from shards.dataset_card import add_license_argument
from shards.interrupt import exit_on_interrupt

EPILOG = """\
The input is the output folder of a reinforce (or an earlier extend) run: its config.json says the
teachers, views, seed and layout. The output is a new folder with the same files (tar, parquet,
errors, stats per shard; config.json, manifest.jsonl, summary.json, README.md) and the same samples grown:

  --add-teacher SPEC: the teacher embeds the stored views (replayed from paug.json) and every
    caption; its L2-normalised slice is appended to every row, and config.json's teachers gain it.
  --add-captioner SPEC --caption-tag TAG: captions syn_text_TAG drawn with the run's seeds, embedded
    by every existing teacher; the output is v2 (a v1 input's syn_text becomes syn_text_<v1 tag>).

Re-running the same command resumes. Any other --flag is a Beam pipeline option (see
`python -m pipeline.reinforce --help`).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.extend",
        description="Grow reinforced shards without redoing them: add a teacher or a caption family.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="glob of reinforced shards, e.g. 'OUT/*.tar'")
    parser.add_argument("--output", required=True, help="a new output folder (local, gs:// or s3://)")
    parser.add_argument("--input-config", help="the input run's config.json (default: beside the shards)")
    parser.add_argument("--add-teacher", metavar="SPEC", help="a CLIP teacher spec to append")
    parser.add_argument(
        "--kd-logit-scale",
        type=float,
        default=DEFAULT_KD_LOGIT_SCALE,
        help="the added teacher's KD logit scale (default %(default)s)",
    )
    parser.add_argument("--add-captioner", metavar="SPEC", help="a captioner spec whose captions to add")
    parser.add_argument("--caption-tag", help="the added captions are stored as syn_text_<tag>")
    parser.add_argument(
        "--v1-caption-tag",
        default=DEFAULT_V1_CAPTION_TAG,
        help="a v1 input's syn_text family becomes syn_text_<this> in the v2 output (default %(default)s, "
        "as the reinforce job's --caption-tag)",
    )
    parser.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16"], help="the added model's weights"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="views (and texts) per forward pass, filled across samples. Default %(default)s",
    )
    parser.add_argument("--device", default="auto", help="auto (a GPU when the worker has one), cpu, cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line on local runs")
    add_license_argument(parser)
    return parser


def absolute_spec(spec: str | None) -> str | None:
    """A `local-dir:` spec with an absolute path: config.json must name the model wherever it is read."""
    from teachers.specs import LOCAL_DIR

    if spec is None or not spec.startswith(LOCAL_DIR) or "://" in spec:
        return spec
    return LOCAL_DIR + os.path.abspath(spec.removeprefix(LOCAL_DIR))


def settings_from_args(args: argparse.Namespace) -> ExtendSettings:
    settings = ExtendSettings(
        input_pattern=args.input,
        output_dir=args.output,
        input_config=read_input_config(args.input, args.input_config),
        add_teacher=absolute_spec(args.add_teacher),
        kd_logit_scale=args.kd_logit_scale,
        add_captioner=absolute_spec(args.add_captioner),
        caption_tag=args.caption_tag,
        v1_caption_tag=args.v1_caption_tag,
        precision=args.precision,
        batch_size=args.batch_size,
        device=args.device,
    )
    settings.validate()
    return settings


def main(argv: list[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with exit_on_interrupt(resume_hint(args.output)):
        return _extend(args, beam_args)


def _extend(args: argparse.Namespace, beam_args: list[str]) -> int:
    from beam_jobs.extend_job import run_extend_job

    outcome, code = launch(
        lambda: run_extend_job(
            settings_from_args(args),
            beam_args,
            show_progress=not args.no_progress,
            card_license=args.license,
        ),
        args.output,
    )
    if outcome is None:
        return code
    closing = f"output: {args.output} (config.json lists what was extended)"
    return finish_run(outcome, args.output, "extended", closing)


if __name__ == "__main__":
    sys.exit(main())
