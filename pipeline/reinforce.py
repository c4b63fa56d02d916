"""`python -m pipeline.reinforce`: raw DataComp shards in, DataCompDR-style reinforced shards out.

Exit status: 0 when samples were written (skipped samples are reported, not fatal); 1 when nothing
could be processed or the pipeline failed; 2 when the configuration is wrong (bad flags, no input,
a model that cannot load, a resume with different settings, an output folder that cannot be written
or that another job is writing). See `--help`.
"""

from __future__ import annotations

import errno
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

from pipeline.progress import summary_table
from pipeline.reinforce_args import parse, settings_from_args
from shards import storage
from shards.interrupt import exit_on_interrupt
from shards.run_config import ConfigError
from shards.run_folder import ERRORS_SUFFIX, committed_shards
from shards.write_guard import OutputRefused

EXIT_OK, EXIT_NOTHING_DONE, EXIT_CONFIG = 0, 1, 2

# Errors about the output location that running the same command again cannot cure.
_OUTPUT_UNUSABLE = {
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "is not writable (permission denied)",
    errno.EPERM: "is not writable (operation not permitted)",
    errno.ENOTDIR: "is (or lies under) a file, not a folder",
    errno.EEXIST: "is (or lies under) a file, not a folder",
    errno.EISDIR: "holds a folder where a file must go",
}
_OUTPUT_FULL = (errno.ENOSPC, errno.EDQUOT)
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]")


def os_errno(exc: BaseException) -> int | None:
    """The errno behind a failure, through causes and Beam's wrappers (which keep only the text)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current.errno
        details = getattr(current, "exception_details", None)  # BeamIOError: {path: exception}
        for inner in details.values() if isinstance(details, dict) else ():
            if isinstance(inner, BaseException) and (found := os_errno(inner)) is not None:
                return found
        current = current.__cause__ or current.__context__
    match = _ERRNO_TEXT.search(str(exc))
    return int(match.group(1)) if match else None


def failure_advice(exc: BaseException, output: str) -> tuple[str, int]:
    """What to tell the user after a failed run, and the exit code: a re-run resumes only when the
    failure was not about the output location itself."""
    code = os_errno(exc)
    if code in _OUTPUT_UNUSABLE:
        return (
            f"--output {output} {_OUTPUT_UNUSABLE[code]}: a re-run cannot fix this; choose another --output",
            EXIT_CONFIG,
        )
    if code in _OUTPUT_FULL:
        return (
            f"no space left for {output}: free some, then run the same command again to resume",
            EXIT_NOTHING_DONE,
        )
    return f"finished shards are kept in {output}; run the same command again to resume", EXIT_NOTHING_DONE


def resume_hint(output: str) -> Callable[[], str]:
    """What a job's Ctrl-C says: finished shards stay, the same command resumes."""

    def hint() -> str:
        try:
            done = len(committed_shards(output))
        except Exception:  # no such folder yet, or a store out of reach
            done = 0
        if not done:
            return f"no shard was finished in {output} yet; run the same command again to start"
        return f"{done} finished shard(s) are kept in {output}; run the same command again to resume"

    return hint


def launch(start: Callable[[], Any], output: str) -> tuple[Any, int]:
    """Run a job (reinforce, join, extend): its outcome and EXIT_OK, or None and the exit code after
    saying why it could not start (bad settings, a model, device or bucket out of reach, an output
    folder it must not write) or failed; on Ctrl-C, one line and exit 130."""
    from shards.remote_access import RemoteAccessError
    from teachers.devices import DeviceError
    from teachers.specs import ModelLoadError

    try:
        with exit_on_interrupt(resume_hint(output)):
            return start(), EXIT_OK
    except (ConfigError, ModelLoadError, RemoteAccessError, DeviceError, OutputRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None, EXIT_CONFIG
    except Exception as exc:  # the pipeline failed: committed shards stay, a re-run resumes after them
        advice, code = failure_advice(exc, output)
        print(f"error: the job failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(advice, file=sys.stderr)
        return None, code


def report_run(outcome: Any, output: str) -> Any:
    """What every job's command line prints first: resume, the summary table, Beam's counters."""
    if outcome.shards_already_done:
        print(f"resumed: {outcome.shards_already_done} shard(s) were already done and were skipped")
    print(summary_table(outcome.summary, output, outcome.wall_seconds, outcome.written_this_run))
    if outcome.counters:
        print("beam counters: " + ", ".join(f"{name}={value}" for name, value in outcome.counters.items()))
    return outcome.summary


def finish_run(outcome: Any, output: str, verb: str, closing: str) -> int:
    """Every shard job's last words and exit code: the report, then a run that wrote nothing, shards
    to retry, skipped samples and where the output is (`closing`)."""
    summary = report_run(outcome, output)
    if summary.num_written == 0:
        print(f"error: no sample could be {verb}; see the *_errors.jsonl files for why", file=sys.stderr)
        return EXIT_NOTHING_DONE
    if summary.missing_shards:
        missing = len(summary.missing_shards)
        print(f"{missing} shard(s) could not be read; run the same command again to retry them")
    if summary.num_skipped or summary.shard_errors:
        where = storage.join(output, "*" + ERRORS_SUFFIX)
        print(f"{summary.num_skipped} sample(s) skipped; each is listed with its reason in {where}")
    print(closing)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args, beam_args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with exit_on_interrupt(resume_hint(args.output)):
        return _reinforce(args, beam_args)


def _reinforce(args: Any, beam_args: list[str]) -> int:
    from beam_jobs.reinforce_job import run_job

    def start() -> Any:
        settings = settings_from_args(args)
        return run_job(
            settings,
            beam_args,
            show_progress=not args.no_progress,
            force_takeover=args.force_takeover,
            card_license=args.license,
        )

    outcome, code = launch(start, args.output)
    if outcome is None:
        return code
    return finish_run(
        outcome,
        args.output,
        "processed",
        f"output: {args.output} (manifest.jsonl lists the shards, config.json describes them)",
    )


if __name__ == "__main__":
    sys.exit(main())
