"""Runner choice and pipeline options: `--runner` names mapped to runners that work offline here.

Beam 2.77's `DirectRunner` first tries the Prism runner, which downloads a Prism binary: on a
machine without network that means a slow failure before any work. `DirectRunner` here means the
in-process `FnApiRunner`, which is what DirectRunner falls back to for batch pipelines anyway, and
still honours `--direct_num_workers` and `--direct_running_mode`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline import storage

DIRECT_ALIASES = frozenset({"DirectRunner", "FnApiRunner", "SwitchingDirectRunner"})
DASK = "DaskRunner"


class ReinforceWorkerOptions(PipelineOptions):
    """Options of ours that every worker reads (they travel with the pipeline options)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument(
            "--model_threads",
            type=int,
            default=0,
            help="torch threads per worker process; 0 = this machine's cores / worker processes per machine",
        )
        parser.add_argument(
            "--workers_per_machine",
            type=int,
            default=0,
            help="worker processes sharing one machine's cores (for --model_threads 0); 0 = guess from "
            "--direct_num_workers on local runners, 1 elsewhere",
        )


def runner_name(options: PipelineOptions) -> str:
    return options.view_as(StandardOptions).runner or "DirectRunner"


def is_local(options: PipelineOptions) -> bool:
    """Runs whose workers share the launcher's machine and disk (progress line, tiny preset)."""
    return runner_name(options) in DIRECT_ALIASES


def create_runner(options: PipelineOptions) -> Any:
    """A runner object for the names we map, else the name itself for Beam to resolve."""
    name = runner_name(options)
    if name in DIRECT_ALIASES:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    if name == DASK:
        from apache_beam.runners.dask.dask_runner import DaskRunner

        return DaskRunner()
    return name


def local_worker_processes(options: PipelineOptions) -> int:
    """How many worker processes a local run starts on this machine."""
    direct = options.view_as(DirectOptions)
    if runner_name(options) not in DIRECT_ALIASES or direct.direct_running_mode == "in_memory":
        return 1
    workers = direct.direct_num_workers
    if workers == 0:  # Beam's "one per core"
        return os.cpu_count() or 1
    return max(1, workers or 1)


def parse_known_beam_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Our flags into the namespace; the rest, as `beam_args`, must be Beam options (typos are refused)
    and set the filesystem options of this process, so gs:// and s3:// paths work in every CLI."""
    args, beam_args = parser.parse_known_args(argv)
    unusable = unusable_beam_args(beam_args)
    if unusable:
        parser.error(f"unrecognized arguments: {' '.join(unusable)}")
    storage.use_filesystem_options(beam_args)
    args.beam_args = beam_args
    return args


def unusable_beam_args(beam_args: list[str]) -> list[str]:
    """Arguments neither we nor Beam understand: Beam would drop them with a log line, we refuse them.

    A mistyped flag (`--num-view 3`) or an unquoted glob that the shell expanded into several paths
    would otherwise run a job with settings the user did not ask for.
    """
    if any(arg in ("--runner=DaskRunner", DASK) for arg in beam_args):
        import apache_beam.runners.dask.dask_runner  # noqa: F401  (registers the --dask_* options)
    known = PipelineOptions(beam_args).get_all_options(display_warnings=False)
    retained = PipelineOptions(beam_args).get_all_options(retain_unknown_options=True, display_warnings=False)
    unknown = [f"--{name}" for name in sorted(set(retained) - set(known))]
    stray = [
        arg
        for i, arg in enumerate(beam_args)
        if not arg.startswith("-")
        and (i == 0 or not beam_args[i - 1].startswith("--") or "=" in beam_args[i - 1])
    ]
    return unknown + stray
