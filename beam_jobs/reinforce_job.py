"""Launch one reinforcement run: check the config, find the unfinished shards, run the graph, summarize.

The launcher loads the models once to describe them in config.json (and to fail within seconds on
a spec that cannot load, before any worker starts). On the in-process runner the workers reuse that
same loaded copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.reinforce_graph import NAMESPACE, ReinforceShardFn, ShardFn, build_graph
from beam_jobs.runners import (
    ReinforceWorkerOptions,
    create_runner,
    is_local,
    local_worker_processes,
    quiet_cluster_logs,
    wait_for_run,
    with_runner_defaults,
)
from pipeline.progress import ShardProgress
from pipeline.reinforce_shard import ShardModels
from pipeline.selection import Selection, resolve
from pipeline.settings import ReinforceSettings, build_run_config
from pipeline.worker_models import load_models as load_worker_models
from pipeline.worker_models import run_device_kind
from shards import storage
from shards.dataset_card import check_card_is_ours, write_dataset_card
from shards.lease import hold_output
from shards.remote_access import check_remote_access
from shards.run_config import ConfigError, write_or_check_run_config
from shards.run_folder import (
    RunSummary,
    check_run_output,
    remove_temporaries_after_run,
    run_result,
    shard_name,
)
from shards.run_inputs import find_input_shards, pending_inputs
from shards.storage import unusable_beam_args

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class JobOutcome:
    summary: RunSummary
    shards_already_done: int
    written_this_run: int
    wall_seconds: float
    counters: dict[str, int]  # Beam metrics of this run (empty where the runner reports none, e.g. Dask)


def beam_counters(result: Any) -> dict[str, int]:
    """This run's counters in our namespace, summed over steps; {} when the runner cannot say."""
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception:  # Dask raises NotImplementedError; remote runners may not have them yet
        return {}
    totals: Counter[str] = Counter()
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] += int(value or 0)
    return dict(sorted(totals.items()))


def describe_run(settings: ReinforceSettings, models: Any) -> dict[str, Any]:
    from transforms import PARAM_AUG_VERSION

    return build_run_config(
        settings,
        teachers=models.ensemble.describe(),
        captioner=models.captioner.describe(),
        # the augmenter's canonical config: every default spelled out, loadable by the public trainer
        image_augmentation=models.augmenter.config,
        param_aug_version=PARAM_AUG_VERSION,
        device_kind=run_device_kind(settings.device),
    )


def beam_options(beam_args: list[str]) -> PipelineOptions:
    """The Beam options of a launch; ConfigError for arguments neither we nor Beam know. Sets this
    process's filesystem options, so the launcher's own reads and writes reach s3:// and gs:// too."""
    unusable = unusable_beam_args(beam_args)
    if unusable:
        raise ConfigError(
            f"unknown arguments {' '.join(unusable)} (not ours, not Beam's; see --help). "
            "Quote globs so the shell leaves them alone: --input 'raw/*.tar'"
        )
    options = PipelineOptions(with_runner_defaults(beam_args))
    storage.use_filesystem_options(options)
    return options


def run_job(
    settings: ReinforceSettings,
    beam_args: list[str],
    *,
    show_progress: bool = True,
    load_models: Callable[[ReinforceSettings], ShardModels] = load_worker_models,
    force_takeover: bool = False,
    card_license: str | None = None,
) -> JobOutcome:
    """Run (or resume) the job; raises ConfigError / ModelLoadError before any work when misconfigured,
    RemoteAccessError when a gs:// or s3:// path lacks credentials or an endpoint, and LeaseHeldError
    when another live job is writing the same output folder, all within seconds.

    `load_models` is what every worker (and the launcher, to describe the models) calls once: the
    teachers and captioner by default; benchmarks pass stand-ins.
    """
    if settings.selection is not None:
        settings = dataclasses.replace(settings, selection=resolve_selection(settings, beam_args))
    return run_shard_job(
        settings,
        beam_args,
        ReinforceShardFn,
        load_models,
        describe_run,
        show_progress=show_progress,
        force_takeover=force_takeover,
        card_license=card_license,
    )


def resolve_selection(settings: ReinforceSettings, beam_args: list[str]) -> Selection:
    """The run's selection checked against its inputs, with the top-fraction threshold found once
    over the whole score run, before any worker starts."""
    assert settings.selection is not None
    wanted = [p for p in (settings.selection.keep_uids, settings.selection.scores) if p is not None]
    check_remote_access([settings.input_pattern, *wanted], beam_options(beam_args))
    return resolve(settings.selection, find_input_shards(settings.input_pattern))


def run_shard_job(
    settings: Any,
    beam_args: list[str],
    shard_fn_type: type[ShardFn],
    load_models: Callable[[Any], Any],
    describe: Callable[[Any, Any], dict[str, Any]],
    *,
    show_progress: bool,
    force_takeover: bool = False,
    card_license: str | None = None,
) -> JobOutcome:
    """Any shard job: check the flags, remote access and output folder (new, empty or one of our runs,
    never the inputs' folder), take the output folder's lease, load the
    models once to describe them in config.json (written, or checked on resume), then run the shard
    stage on every input shard not yet committed in `settings.output_dir`, and write the manifest,
    summary and dataset card (README.md; `card_license`, else the card's own, else unknown)."""
    options = beam_options(beam_args)
    check_remote_access([settings.input_pattern, settings.output_dir], options)
    check_card_is_ours(settings.output_dir)
    inputs = find_input_shards(settings.input_pattern)
    check_run_output(settings.output_dir, inputs)
    with hold_output(settings.output_dir, force=force_takeover):
        outcome = _run_held(settings, options, inputs, shard_fn_type, load_models, describe, show_progress)
        write_dataset_card(settings.output_dir, outcome.summary, card_license)
        return outcome


def _run_held(
    settings: Any,
    options: PipelineOptions,
    inputs: list[str],
    shard_fn_type: type[ShardFn],
    load_models: Callable[[Any], Any],
    describe: Callable[[Any, Any], dict[str, Any]],
    show_progress: bool,
) -> JobOutcome:
    """The run itself, while this job holds the output folder's lease."""
    local = is_local(options)
    # Remote workers load their own models: the launcher only describes them, on its CPU.
    models = load_models(settings) if local else load_models(settings, describe_only=True)
    write_or_check_run_config(
        settings.output_dir,
        describe(settings, models),
        allow_device_change=getattr(settings, "allow_device_change", False),
    )
    output_dir = settings.output_dir
    shards = [shard_name(p) for p in inputs]
    pending = pending_inputs(output_dir, inputs)
    _LOG.info(
        "%d input shards, %d already done, %d to do", len(inputs), len(inputs) - len(pending), len(pending)
    )

    ours = options.view_as(ReinforceWorkerOptions)
    sharing = ours.workers_per_machine or local_worker_processes(options)
    shard_fn = shard_fn_type(settings, ours.model_threads, sharing, load_models)
    # The in-process worker uses the launcher's copy instead of loading a second one.
    adopted = shard_fn.adopt(models) if local and local_worker_processes(options) == 1 else None
    del models
    start = time.monotonic()
    pipeline = beam.Pipeline(runner=create_runner(options), options=options)
    build_graph(pipeline, output_dir, pending, shards, shard_fn=shard_fn)
    with (
        ShardProgress(output_dir, [shard_name(p) for p in pending], label=shard_fn_type.progress_label)
        if show_progress and local and pending
        else contextlib.nullcontext()
    ):
        quiet_cluster_logs(options)
        result = pipeline.run()
        wait_for_run(result)
    wall = time.monotonic() - start
    del adopted
    remove_temporaries_after_run(output_dir)  # a lost worker's, while the runner redid its shard
    summary, written = run_result(output_dir, shards)
    return JobOutcome(
        summary=summary,
        shards_already_done=len(inputs) - len(pending),
        written_this_run=sum(written.get(shard_name(p), 0) for p in pending),
        wall_seconds=wall,
        counters=beam_counters(result),
    )
