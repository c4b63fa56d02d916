"""`python -m pipeline.reinforce`: raw DataComp shards in, DataCompDR-style reinforced shards out.

Exit status: 0 when samples were written (skipped samples are reported, not fatal); 1 when nothing
could be processed or the pipeline failed; 2 when the configuration is wrong (bad flags, no input,
a model that cannot load, or a resume with different settings). See `--help`.
"""

from __future__ import annotations

import logging
import sys

from pipeline.progress import summary_table
from pipeline.reinforce_args import parse, settings_from_args
from shards import storage
from shards.run_config import ConfigError
from shards.run_folder import ERRORS_SUFFIX

EXIT_OK, EXIT_NOTHING_DONE, EXIT_CONFIG = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    args, beam_args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from beam_jobs.reinforce_job import run_job
    from teachers.specs import ModelLoadError

    try:
        settings = settings_from_args(args)
        outcome = run_job(settings, beam_args, show_progress=not args.no_progress)
    except (ConfigError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:  # the pipeline failed: committed shards stay, a re-run resumes after them
        print(f"error: the pipeline failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(
            f"finished shards are kept in {args.output}; run the same command again to resume",
            file=sys.stderr,
        )
        return EXIT_NOTHING_DONE
    summary = outcome.summary
    if outcome.shards_already_done:
        print(f"resumed: {outcome.shards_already_done} shard(s) were already done and were skipped")
    print(summary_table(summary, settings.output_dir, outcome.wall_seconds, outcome.written_this_run))
    if outcome.counters:
        print("beam counters: " + ", ".join(f"{name}={value}" for name, value in outcome.counters.items()))
    if summary.num_written == 0:
        print("error: no sample could be processed; see the *_errors.jsonl files for why", file=sys.stderr)
        return EXIT_NOTHING_DONE
    if summary.missing_shards:
        missing = len(summary.missing_shards)
        print(f"{missing} shard(s) could not be read; run the same command again to retry them")
    if summary.num_skipped or summary.shard_errors:
        where = storage.join(settings.output_dir, "*" + ERRORS_SUFFIX)
        print(f"{summary.num_skipped} sample(s) skipped; each is listed with its reason in {where}")
    print(f"output: {settings.output_dir} (manifest.jsonl lists the shards, config.json describes them)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
