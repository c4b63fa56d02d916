"""The shard jobs' Beam graph: pending shards → Reshuffle → one shard stage each → manifest.

Every output is written by a DoFn through Beam FileSystems, never by a Beam sink: the same graph
then writes the same files on every runner (Dask, for one, runs no Beam sinks), and a retried
bundle simply rewrites a shard atomically. Models are loaded on the workers from spec strings, once
per process (`Shared`), never pickled into the graph.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from pipeline.settings import ReinforceSettings
from shards import storage
from shards.run_folder import ShardStats, finalize_run, output_paths, shard_name
from teachers.devices import is_fatal_cuda_error

NAMESPACE = "datacompdr"
# The exit status of a worker process ended on a CUDA error (EX_SOFTWARE): the runner starts a new one.
EXIT_BROKEN_CUDA = 70
_LOG = logging.getLogger(__name__)


def worker_threads(explicit: int, sharing: int) -> int:
    """torch threads on this worker: explicit, else this machine's cores split between its processes."""
    if explicit > 0:
        return explicit
    return max(1, (os.cpu_count() or 1) // max(1, sharing))


def end_broken_worker(input_path: str, error: BaseException) -> None:
    """After a CUDA error or OOM this process's CUDA state cannot be trusted, and retrying the bundle
    in it would fail again (or worse, go on wrongly): end it, so the runner retries the shard in a
    fresh worker. Nothing half-written survives, since every output is committed atomically."""
    message = (
        f"CUDA failure on shard {input_path}: {type(error).__name__}: {error}; ending this worker process"
    )
    _LOG.critical(message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(EXIT_BROKEN_CUDA)


class _ModelsHolder:
    """Weak-referenceable box for `Shared` (it keeps one loaded model set per worker process)."""

    def __init__(self, models: Any) -> None:
        self.models = models


class ShardFn(beam.DoFn):
    """Input: a shard path. Output: the shard's name once its stats file (the commit) is written.

    What to load and what to do with one shard is the subclass's: `models_tag` names the model set
    `Shared` keeps per worker process, `run_shard` runs the plain-Python stage on one shard.
    """

    progress_label = "reinforcing"  # what the live progress line calls the work

    def __init__(
        self,
        settings: Any,
        threads: int,
        sharing: int,
        load_models: Callable[[Any], Any],
    ) -> None:
        self._settings = settings
        self._load_models = load_models
        self._threads = threads
        self._sharing = sharing
        self._shared = shared.Shared()
        self._holder: _ModelsHolder | None = None
        self._counters: dict[str, Any] = {}

    def models_tag(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def run_shard(self, input_path: str, models: Any, on_batch: Callable[[int], None]) -> ShardStats:
        raise NotImplementedError

    def adopt(self, models: Any) -> _ModelsHolder:
        """Hand already-loaded models to workers in this process; keep the result alive for the run."""
        holder = _ModelsHolder(models)
        return self._shared.acquire(lambda: holder, tag=self.models_tag())

    def setup(self) -> None:
        import torch

        torch.set_num_threads(worker_threads(self._threads, self._sharing))
        settings, load = self._settings, self._load_models
        self._holder = self._shared.acquire(lambda: _ModelsHolder(load(settings)), tag=self.models_tag())

    def _counter(self, name: str) -> Any:
        if name not in self._counters:
            self._counters[name] = Metrics.counter(NAMESPACE, name)
        return self._counters[name]

    def process(self, input_path: str) -> Any:
        from pipeline.reinforce_shard import ShardUnreadableError

        assert self._holder is not None
        shard = shard_name(input_path)
        if storage.exists(output_paths(self._settings.output_dir, shard)["stats"]):
            # Committed by this run already: a runner recomputing results it lost with a worker (Dask
            # redoes every finished task whose output lived on the dead worker) costs one check.
            yield shard
            return
        written = self._counter("samples_written")
        try:
            stats = self.run_shard(input_path, self._holder.models, written.inc)
        except ShardUnreadableError as exc:
            _LOG.warning("shard left for a later run: %s", exc)
            self._counter("shards_unreadable").inc()
            return
        except Exception as exc:
            if is_fatal_cuda_error(exc):
                end_broken_worker(input_path, exc)
            raise
        self._counter("samples_read").inc(stats.num_read)
        self._counter("samples_skipped").inc(stats.num_skipped)
        if stats.filtered_out:
            self._counter("samples_filtered_out").inc(stats.filtered_out)
        for reason, count in stats.skipped.items():
            self._counter(f"skipped_{reason}").inc(count)
        for reason, count in stats.shard_errors.items():
            self._counter(f"shard_error_{reason}").inc(count)
        self._counter("shards_done").inc()
        Metrics.distribution(NAMESPACE, "shard_seconds").update(int(sum(stats.seconds.values())))
        _LOG.info("shard %s: %d written, %d skipped", stats.shard, stats.num_written, stats.num_skipped)
        yield stats.shard


class ReinforceShardFn(ShardFn):
    """Raw shard path in; its reinforced shard written."""

    def models_tag(self) -> tuple[Any, ...]:
        s: ReinforceSettings = self._settings
        return (s.teachers, s.kd_logit_scales, s.captioner, s.precision, s.device)

    def run_shard(self, input_path: str, models: Any, on_batch: Callable[[int], None]) -> ShardStats:
        from pipeline.reinforce_shard import reinforce_shard

        return reinforce_shard(input_path, self._settings, models, on_batch=on_batch)


class FinalizeRunFn(beam.DoFn):
    """Runs once after every shard: manifest.jsonl and summary.json from all committed stats files."""

    def __init__(self, output_dir: str, shards: list[str]) -> None:
        self._output_dir = output_dir
        self._shards = shards

    def process(self, _done: list[str]) -> Any:
        summary = finalize_run(self._output_dir, self._shards)
        yield summary.num_written


def build_graph(
    pipeline: beam.Pipeline,
    output_dir: str,
    pending_inputs: list[str],
    all_shards: list[str],
    *,
    shard_fn: ShardFn,
) -> None:
    """`pending_inputs`: input shard paths still to do; `all_shards`: every shard name of the run."""
    done = (
        pipeline
        | "PendingShards" >> beam.Create(pending_inputs, reshuffle=False)
        # One shard is hours of work on real data: spread the shards before the heavy step.
        | "Redistribute" >> beam.Reshuffle()
        | "ReinforceShard" >> beam.ParDo(shard_fn)
        | "AllShardsDone" >> beam.combiners.ToList()
    )
    _ = done | "WriteManifest" >> beam.ParDo(FinalizeRunFn(output_dir, all_shards))
