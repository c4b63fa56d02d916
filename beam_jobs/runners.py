"""Runner choice and pipeline options: `--runner` names mapped to runners that work offline here.

Beam 2.77's `DirectRunner` first tries the Prism runner, which downloads a Prism binary: on a
machine without network that means a slow failure before any work. `DirectRunner` here means the
in-process `FnApiRunner`, which is what DirectRunner falls back to for batch pipelines anyway, and
still honours `--direct_num_workers` and `--direct_running_mode`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

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


class ClusterLostError(RuntimeError):
    """The run's cluster went away before its work was done (Dask: the scheduler was lost)."""


def quiet_cluster_logs(options: PipelineOptions) -> None:
    """On Dask, the client logs each failed reconnection to a lost scheduler with a traceback; the
    launcher says what happened in one line instead."""
    if runner_name(options) == DASK:
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)


def wait_for_run(result: Any) -> None:
    """Wait for a launched pipeline; ClusterLostError when the runner calls cancelled work done.

    Beam's Dask runner returns normally when its client loses the scheduler (every task is then
    cancelled, none raises), which would pass a half-done run off as finished. Its client stays
    connected after the run and would keep reconnecting: it is closed here.
    """
    try:
        result.wait_until_finish()
        futures = getattr(result, "futures", None) or []
        lost = sum(1 for future in futures if future.status != "finished")
        if lost:
            raise ClusterLostError(
                f"the Dask scheduler was lost before the run ended ({lost} of {len(futures)} tasks cancelled)"
            )
    finally:
        client = getattr(result, "client", None)
        if client is not None:
            client.close()


def with_runner_defaults(beam_args: list[str]) -> list[str]:
    """Beam's Dask runner packs 128 elements into one task and ignores Reshuffle, so a small run would
    go to one worker and a large one would end on a few workers' last batches of shards. One shard is
    minutes to hours of work: unless the user chose otherwise, each shard is its own Dask task."""
    options = PipelineOptions(beam_args)
    if runner_name(options) != DASK or any(
        arg.startswith(("--dask_npartitions", "--dask_partition_size")) for arg in beam_args
    ):
        return beam_args
    return [*beam_args, "--dask_partition_size", "1"]


def local_worker_processes(options: PipelineOptions) -> int:
    """How many worker processes a local run starts on this machine."""
    direct = options.view_as(DirectOptions)
    if runner_name(options) not in DIRECT_ALIASES or direct.direct_running_mode == "in_memory":
        return 1
    workers = direct.direct_num_workers
    if workers == 0:  # Beam's "one per core"
        return os.cpu_count() or 1
    return max(1, workers or 1)
