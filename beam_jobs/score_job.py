"""Launch one score run on the reinforce job's graph and launcher: only the shard stage differs.

Same per-shard commit, resume, lease, counters, manifest and summary (beam_jobs/reinforce_graph.py,
reinforce_job.py); the output holds score files instead of reinforced shards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from beam_jobs.reinforce_graph import ShardFn
from beam_jobs.reinforce_job import JobOutcome, run_shard_job
from pipeline.score_settings import ScoreSettings, build_score_config
from pipeline.score_shard import ScoreModels
from pipeline.worker_models import load_score_models, run_device_kind
from shards.run_folder import ShardStats


class ScoreShardFn(ShardFn):
    """Raw shard path in; its score file written."""

    progress_label = "scoring"

    def models_tag(self) -> tuple[Any, ...]:
        s: ScoreSettings = self._settings
        return ("score", s.teachers, s.precision, s.device)

    def run_shard(self, input_path: str, models: Any, on_batch: Callable[[int], None]) -> ShardStats:
        from pipeline.score_shard import score_shard

        return score_shard(input_path, self._settings, models, on_batch=on_batch)


def describe_score_run(settings: ScoreSettings, models: ScoreModels) -> dict[str, Any]:
    return build_score_config(
        settings, teachers=models.ensemble.describe(), device_kind=run_device_kind(settings.device)
    )


def run_score_job(
    settings: ScoreSettings,
    beam_args: list[str],
    *,
    show_progress: bool = True,
    load_models: Callable[[ScoreSettings], ScoreModels] = load_score_models,
    force_takeover: bool = False,
) -> JobOutcome:
    """Run (or resume) a score run; ConfigError / ModelLoadError before any work when misconfigured."""
    return run_shard_job(
        settings,
        beam_args,
        ScoreShardFn,
        load_models,
        describe_score_run,
        show_progress=show_progress,
        force_takeover=force_takeover,
    )
