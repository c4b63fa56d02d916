"""Launch one join run: list both sides, write or check config.json, run the graph on the pending shards.

A shard is done when its stats file exists; a rerun joins only the others, with the same raw inputs
(`--rejoin-missing` adds raw inputs: pipeline/join_inputs.py). The raw side is indexed again on every
run (which raw tar holds a uid is only known by reading them all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.join_graph import build_graph
from beam_jobs.reinforce_job import JobOutcome, beam_counters
from beam_jobs.runners import create_runner, is_local, quiet_cluster_logs, wait_for_run, with_runner_defaults
from pipeline.join_inputs import plan_inputs, record_bytes, run_record
from pipeline.join_settings import (
    JoinSettings,
    first_sample_shape,
    join_run_config,
    shard_settings,
    source_config,
)
from pipeline.progress import ShardProgress
from shards import storage
from shards.dataset_card import check_card_is_ours, write_dataset_card
from shards.run_config import ConfigError, write_or_check_run_config
from shards.run_folder import (
    CONFIG_FILE,
    check_run_output,
    committed_shards,
    remove_stale_temporaries,
    remove_temporaries_after_run,
    run_result,
    shard_name,
)
from shards.run_inputs import find_input_shards
from shards.storage import unusable_beam_args

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class JoinOutcome(JobOutcome):
    rejoined: int = 0  # finished shards joined again with new raw inputs (--rejoin-missing)
    rejoined_before: int = 0  # pairs they held before


def _match(pattern: str, flag: str, suffix: str) -> list[str]:
    try:
        paths = [p for p in storage.match(pattern) if p.endswith(suffix)]
    except Exception as exc:  # BeamIOError for an unreachable bucket or a bad scheme
        raise ConfigError(f"cannot list {flag} {pattern!r}: {exc}") from exc
    if not paths:
        raise ConfigError(f"no {suffix} files match {flag} {pattern!r}")
    return paths


def run_join(
    settings: JoinSettings,
    beam_args: list[str],
    *,
    show_progress: bool = True,
    card_license: str | None = None,
) -> JoinOutcome:
    """Run (or resume) the join; raises ConfigError before any work when misconfigured. Ends by
    writing the dataset card (README.md; `card_license`, else the card's own, else unknown)."""
    settings.validate()
    unusable = unusable_beam_args(beam_args)
    if unusable:
        raise ConfigError(
            f"unknown arguments {' '.join(unusable)} (not ours, not Beam's; see --help). "
            "Quote globs so the shell leaves them alone: --raw 'raw/*.tar'"
        )
    options = PipelineOptions(with_runner_defaults(beam_args))  # on Dask, one shard per task
    storage.use_filesystem_options(options)
    check_card_is_ours(settings.output_dir)
    reinforced = find_input_shards(settings.reinforced_pattern, "--reinforced")
    raw = _match(settings.raw_pattern, "--raw", ".tar")
    metadata = (
        _match(settings.raw_metadata_pattern, "--raw-metadata", ".parquet")
        if settings.raw_metadata_pattern
        else []
    )
    check_run_output(settings.output_dir, [*reinforced, *raw])  # before anything is written
    config = join_run_config(settings, first_sample_shape(reinforced), source_config(settings))
    if storage.exists(storage.join(settings.output_dir, CONFIG_FILE)):
        write_or_check_run_config(settings.output_dir, config)  # a rerun: the same settings, or stop now
    shards = [shard_name(p) for p in reinforced]
    run = run_record(settings, raw, metadata)
    inputs = plan_inputs(settings.output_dir, shards, run, rejoin_missing=settings.rejoin_missing)
    paths = {shard_name(p): p for p in reinforced}
    pending = {shard: paths[shard] for shard in inputs.pending}
    remove_stale_temporaries(settings.output_dir, pending)  # a killed earlier attempt's
    _LOG.info(
        "%d output shards, %d already done, %d to do (%d of them joined again with new raw inputs)",
        len(shards),
        len(shards) - len(pending),
        len(pending),
        len(inputs.rejoined),
    )

    start = time.monotonic()
    pipeline = beam.Pipeline(runner=create_runner(options), options=options)
    build_graph(
        pipeline,
        shard_settings(settings, config),
        pending=pending,
        all_shards=shards,
        raw_paths=inputs.raw_paths,
        metadata_paths=inputs.metadata_paths,
        config=config,
        record=record_bytes(inputs.record),
    )
    local = is_local(options)
    with (
        ShardProgress(settings.output_dir, sorted(pending), label="joining")
        if show_progress and local and pending
        else contextlib.nullcontext()
    ):
        quiet_cluster_logs(options)
        result = pipeline.run()
        wait_for_run(result)
    wall = time.monotonic() - start
    remove_temporaries_after_run(settings.output_dir)  # a lost worker's, while the runner redid its shard
    if pending and not committed_shards(settings.output_dir) & set(pending):
        raise ConfigError(
            f"no raw sample of --raw {settings.raw_pattern!r} ({len(inputs.raw_paths)} tar files) has the "
            f"uid of a sample in the {len(pending)} reinforced shard(s) to join, so nothing was written: "
            "give --raw the shards img2dataset downloaded for these reinforced shards"
        )
    summary, written = run_result(settings.output_dir, shards)
    write_dataset_card(settings.output_dir, summary, card_license)
    return JoinOutcome(
        summary=summary,
        shards_already_done=len(shards) - len(pending),
        written_this_run=sum(written.get(shard, 0) for shard in pending),
        wall_seconds=wall,
        counters=beam_counters(result),
        rejoined=len(inputs.rejoined),
        rejoined_before=inputs.rejoined_written,
    )
