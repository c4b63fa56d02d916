"""`python -m pipeline.join`: public DataCompDR shards (no images, no captions) + raw img2dataset shards
in, complete reinforced shards out, paired by uid and checked pair by pair.

Exit status: 0 when samples were joined (skipped pairs are reported, not fatal); 1 when none could
be joined or the pipeline failed; 2 when the configuration is wrong.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.join_pairs import ON_MISMATCH
from pipeline.reinforce import EXIT_NOTHING_DONE, EXIT_OK, launch, report_run
from shards import storage
from shards.dataset_card import add_license_argument
from shards.run_folder import ERRORS_SUFFIX, REFETCH_FILE
from shards.teacher_slices import parse_teacher_dims

EPILOG = """\
Output per reinforced shard NNNNNNNN.tar (same name): NNNNNNNN.tar and .parquet (the joined samples,
in the reinforced shard's order), NNNNNNNN_errors.jsonl (every pair not written: uid, reason, detail),
NNNNNNNN_stats.json (written last: the shard is done; `skipped` counts by reason), and with
--on-mismatch list NNNNNNNN_refetch.jsonl. Per run: config.json, manifest.jsonl, summary.json,
README.md (the Hugging Face dataset card) and, with --on-mismatch list, refetch.parquet (uid, url,
reason) for img2dataset. Reasons: image_missing, hash_mismatch, box_out_of_bounds, caption_missing,
image_undecodable, bad_reinforced_sample, layout_mismatch. Re-running the same command resumes after
the done shards; join_inputs.json records each run's inputs, and a rerun with other --raw inputs is
refused unless --rejoin-missing.
Any other --flag is a Beam pipeline option (--runner DirectRunner, --direct_num_workers 2, ...).
"""


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"numbers separated by commas, e.g. 100,100, not {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.join",
        description="Join public DataCompDR shards with your raw img2dataset shards by uid on Apache Beam.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--reinforced", required=True, help="glob of reinforced shards, e.g. 'DCDR/*.tar'")
    parser.add_argument("--raw", required=True, help="glob of raw img2dataset shards, e.g. 'DATACOMP/*.tar'")
    parser.add_argument("--output", required=True, help="output folder (local, gs:// or s3://)")
    parser.add_argument(
        "--raw-metadata",
        help="glob of DataComp metadata parquet (columns uid, text): captions for raw samples without txt",
    )
    parser.add_argument(
        "--on-mismatch",
        choices=ON_MISMATCH,
        default="skip",
        help="skip: count and record mismatched pairs; list: also write their uid and url to refetch",
    )
    parser.add_argument(
        "--config", help="config.json describing the reinforced shards (default: the one beside them)"
    )
    parser.add_argument(
        "--teacher-dims",
        type=parse_teacher_dims,
        help="teacher widths when the shards come without config.json (DataCompDR: 768,768)",
    )
    parser.add_argument(
        "--kd-logit-scales",
        type=_floats,
        help="KD logit scale per teacher with --teacher-dims (default 100 each)",
    )
    parser.add_argument(
        "--rejoin-missing",
        action="store_true",
        help="add raw inputs to a finished join (e.g. the images of refetch.parquet, fetched again): the "
        "shards with missing pairs are joined again with the earlier and the new raw shards",
    )
    parser.add_argument("--no-progress", action="store_true", help="no live progress line on local runs")
    add_license_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from beam_jobs.join_job import run_join
    from pipeline.join_settings import JoinSettings

    settings = JoinSettings(
        reinforced_pattern=args.reinforced,
        raw_pattern=args.raw,
        output_dir=args.output,
        raw_metadata_pattern=args.raw_metadata,
        on_mismatch=args.on_mismatch,
        config_path=args.config,
        teacher_dims=tuple(args.teacher_dims) if args.teacher_dims else None,
        kd_logit_scales=args.kd_logit_scales,
        rejoin_missing=args.rejoin_missing,
    )
    outcome, code = launch(
        lambda: run_join(settings, beam_args, show_progress=not args.no_progress, card_license=args.license),
        args.output,
    )
    if outcome is None:
        return code
    summary = report_run(outcome, args.output)
    if args.rejoin_missing:
        print(
            f"rejoined {outcome.rejoined} finished shard(s) with missing pairs, using every raw input so "
            f"far: they held {outcome.rejoined_before} pairs; this run wrote {outcome.written_this_run}"
        )
    if summary.matched_by:
        kinds = ", ".join(f"{kind} {count}" for kind, count in summary.matched_by.items())
        print(f"pairs joined by the reinforced json hash their image matched: {kinds}")
    if summary.num_skipped or summary.shard_errors:
        where = storage.join(args.output, "*" + ERRORS_SUFFIX)
        print(f"{summary.num_skipped} pair(s) not joined; each is listed with its reason in {where}")
    if args.on_mismatch == "list" and summary.num_skipped:
        print(f"images to fetch again: {storage.join(args.output, REFETCH_FILE)}")
    if summary.num_written == 0:
        print("error: no sample could be joined; see the *_errors.jsonl files for why", file=sys.stderr)
        return EXIT_NOTHING_DONE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
