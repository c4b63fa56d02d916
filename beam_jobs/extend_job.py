"""Launch one extend run: read the input run's config, write the grown one, run the shard graph.

The reinforce job's graph and launcher do the work (beam_jobs/reinforce_graph.py, reinforce_job.py):
same per-shard commit, resume, counters, manifest and summary; only the shard stage differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from beam_jobs.reinforce_graph import ShardFn
from beam_jobs.reinforce_job import JobOutcome, run_shard_job
from pipeline.extend_settings import ExtendSettings, build_extended_config
from pipeline.extend_shard import ExtendModels
from pipeline.worker_models import load_extend_models
from shards.run_folder import ShardStats


class ExtendShardFn(ShardFn):
    """Reinforced shard path in; the same shard, grown, written."""

    progress_label = "extending"

    def models_tag(self) -> tuple[Any, ...]:
        s: ExtendSettings = self._settings
        return ("extend", s.add_teacher, s.kd_logit_scale, s.add_captioner, s.precision, s.device)

    def run_shard(self, input_path: str, models: Any, on_batch: Callable[[int], None]) -> ShardStats:
        from pipeline.extend_shard import extend_shard

        return extend_shard(input_path, self._settings, models, on_batch=on_batch)


def describe_extension(settings: ExtendSettings, models: ExtendModels) -> dict[str, Any]:
    return build_extended_config(
        settings,
        teacher=models.new_teacher.describe()[0] if models.new_teacher is not None else None,
        captioner=models.captioner.describe() if models.captioner is not None else None,
    )


def run_extend_job(
    settings: ExtendSettings,
    beam_args: list[str],
    *,
    show_progress: bool = True,
    load_models: Callable[[ExtendSettings], ExtendModels] = load_extend_models,
    card_license: str | None = None,
) -> JobOutcome:
    """Run (or resume) the extend; raises ConfigError / ModelLoadError before any work when misconfigured."""
    return run_shard_job(
        settings,
        beam_args,
        ExtendShardFn,
        load_models,
        describe_extension,
        show_progress=show_progress,
        card_license=card_license,
    )
