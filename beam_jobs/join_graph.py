"""The join's Beam graph: index both sides by uid, CoGroupByKey, route to output shards, write them.

    reinforced shards ─ (uid, shard) ────┐
    raw shards ─ (uid, RawRef) ──────────┼─ CoGroupByKey(uid) ─ route ─┐
    metadata parquet ─ (uid, text) ──────┘        └─ count matched uids ─ run files (side input)
                                                                       ├─ CoGroupByKey(shard)
    pending reinforced shards ─ (shard, path) ─────────────────────────┘     ─ join shard ─ finalize

Nothing is written before the uid join has found at least one uid on both sides: a run whose raw
side holds none of the reinforced uids (a wrong --raw) writes no config.json, no shard, no manifest,
rather than shards of skipped pairs that would count as done.

Only small records cross the shuffles: a reinforced uid with its shard name, and per raw sample a
`RawRef` (where its image is, its sha256, caption and json; the image bytes themselves only for a
compressed raw tar). The worker that writes an output shard holds that shard's refs (about 1 KB per
sample) and streams the reinforced shard and one image at a time. Output shard = the reinforced
shard it came from, so it is resumable and deterministic whatever order the shuffle delivers in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from beam_jobs.reinforce_graph import NAMESPACE, FinalizeRunFn
from pipeline.join_pairs import JoinShardSettings, RawRef, UidSources, index_raw_shard, join_shard
from shards import storage
from shards.reinforced import iter_members
from shards.run_config import write_or_check_run_config
from shards.run_folder import JOIN_INPUTS_FILE, REFETCH_FILE, committed_shards, output_paths

_LOG = logging.getLogger(__name__)
METADATA_COLUMNS = ("uid", "text")  # DataComp's metadata parquet: the uid and the original alt-text


def _count(name: str, value: int = 1) -> None:
    Metrics.counter(NAMESPACE, name).inc(value)


class ReinforcedKeysFn(beam.DoFn):
    """Input: (shard name, reinforced tar path). Output: (uid, shard name) per sample."""

    def process(self, item: tuple[str, str]) -> Iterable[tuple[str, str]]:
        shard, path = item
        try:
            for members in iter_members(path):
                yield str(members.get("__key__", "")), shard
        except Exception as exc:  # a damaged tar: the shard step reads what it can and records it
            _LOG.warning("reinforced shard %s: %s", path, exc)


class IndexRawFn(beam.DoFn):
    """Input: a raw tar path. Output: (uid, RawRef) per usable raw sample; bad ones are counted."""

    def process(self, path: str) -> Iterable[tuple[str, RawRef]]:
        for item in index_raw_shard(path):
            if isinstance(item, RawRef):
                _count("raw_samples_indexed")
                yield item.uid, item
            else:
                _count(f"raw_skipped_{item.reason}")


class MetadataCaptionsFn(beam.DoFn):
    """Input: a DataComp metadata parquet path. Output: (uid, text), read one row group at a time."""

    def process(self, path: str) -> Iterable[tuple[str, str]]:
        with storage.open_read(path) as stream:
            parquet = pq.ParquetFile(stream)
            for batch in parquet.iter_batches(columns=list(METADATA_COLUMNS)):
                for uid, text in zip(
                    batch.column("uid").to_pylist(), batch.column("text").to_pylist(), strict=True
                ):
                    if isinstance(uid, str) and isinstance(text, str):
                        yield uid, text


def route_to_shards(
    item: tuple[str, dict[str, Iterable[Any]]],
) -> Iterable[tuple[str, tuple[str, UidSources]]]:
    """Per uid: what the raw side has for it, sent to every output shard that holds the uid."""
    uid, sides = item
    shards = sorted(set(sides["reinforced"]))
    refs = tuple(sorted(sides["raw"], key=lambda ref: ref.order))
    if not shards:  # uids no pending reinforced shard holds
        _count("raw_samples_unused", len(refs))
        return
    captions = sorted(sides["metadata"])
    sources = UidSources(refs, captions[0] if captions else None)
    for shard in shards:
        yield shard, (uid, sources)


def has_both_sides(item: tuple[str, dict[str, Iterable[Any]]]) -> int:
    """1 for a uid that some pending reinforced shard holds and some raw sample has."""
    sides = item[1]
    return int(any(True for _ in sides["reinforced"]) and any(True for _ in sides["raw"]))


class WriteRunFilesFn(beam.DoFn):
    """Runs once, when the uids are joined: config.json and the inputs record, unless there were
    shards to join and no uid matched. Output: whether the shards and the manifest may be written."""

    def __init__(self, output_dir: str, config: dict[str, Any], record: bytes, *, any_pending: bool) -> None:
        self._output_dir = output_dir
        self._config = config
        self._record = record
        self._any_pending = any_pending

    def process(self, _start: None, matched: int) -> Iterable[bool]:
        _count("uids_matched", matched)
        ready = bool(matched) or not self._any_pending  # a finished run's rerun only finalizes again
        if ready:
            write_or_check_run_config(self._output_dir, self._config)
            storage.write_bytes_atomic(storage.join(self._output_dir, JOIN_INPUTS_FILE), self._record)
        yield ready


class JoinShardFn(beam.DoFn):
    """Input: (shard name, {"path": [tar path], "pairs": [(uid, UidSources)]}) and whether the run
    files are written. Output: the shard name once its stats file (the commit) is written."""

    def __init__(self, settings: JoinShardSettings) -> None:
        self._settings = settings

    def process(self, item: tuple[str, dict[str, Iterable[Any]]], ready: bool) -> Iterable[str]:
        shard, sides = item
        paths = list(sides["path"])
        if paths and ready:  # else: uids of a shard an earlier run already finished, or a refused run
            yield self._join(shard, paths[0], dict(sides["pairs"]))

    def _join(self, shard: str, path: str, sources: dict[str, UidSources]) -> str:
        done = Metrics.counter(NAMESPACE, "samples_done")
        stats = join_shard(path, sources, self._settings, on_sample=done.inc)
        _count("samples_written", stats.num_written)
        _count("samples_read", stats.num_read)
        for reason, count in stats.skipped.items():
            _count(f"skipped_{reason}", count)
        for reason, count in stats.shard_errors.items():
            _count(f"shard_error_{reason}", count)
        _count("shards_done")
        _LOG.info("shard %s: %d joined, %d skipped", shard, stats.num_written, stats.num_skipped)
        return shard


class WriteRefetchListFn(beam.DoFn):
    """Runs once, after the manifest: `refetch.parquet` (uid, url, reason) from the per-shard lists, in
    shard order; img2dataset reads it with `--input_format parquet --url_col url`."""

    def __init__(self, output_dir: str, shards: list[str]) -> None:
        self._output_dir = output_dir
        self._shards = shards

    def process(self, _finalized: int) -> Iterable[int]:
        import json

        rows: list[dict[str, Any]] = []
        done = committed_shards(self._output_dir)
        for shard in sorted(self._shards):
            path = output_paths(self._output_dir, shard)["refetch"]
            if shard in done and storage.exists(path):
                rows.extend(json.loads(line) for line in storage.read_text(path).splitlines() if line)
        schema = pa.schema([("uid", pa.string()), ("url", pa.string()), ("reason", pa.string())])
        table = pa.Table.from_pylist(rows, schema=schema)
        with storage.atomic_write(storage.join(self._output_dir, REFETCH_FILE)) as f:
            pq.write_table(table, f, compression="zstd")
        yield len(rows)


def build_graph(
    pipeline: beam.Pipeline,
    settings: JoinShardSettings,
    *,
    pending: dict[str, str],
    all_shards: list[str],
    raw_paths: list[str],
    metadata_paths: list[str],
    config: dict[str, Any],
    record: bytes,
) -> None:
    """`pending`: output shard name -> its reinforced tar, for shards to (re)write; `config` and
    `record`: the run's config.json and inputs record, written once a uid matched."""
    pending_items = sorted(pending.items())
    shard_paths = pipeline | "PendingShards" >> beam.Create(pending_items, reshuffle=False)
    reinforced = (
        shard_paths
        | "SpreadReinforced" >> beam.Reshuffle()
        | "ReinforcedKeys" >> beam.ParDo(ReinforcedKeysFn())
    )
    raw = (
        pipeline
        | "RawShards" >> beam.Create(raw_paths, reshuffle=False)
        | "SpreadRaw" >> beam.Reshuffle()
        | "IndexRaw" >> beam.ParDo(IndexRawFn())
    )
    metadata = (
        pipeline
        | "MetadataFiles" >> beam.Create(metadata_paths, reshuffle=False)
        | "MetadataCaptions" >> beam.ParDo(MetadataCaptionsFn())
    )
    by_uid = {"reinforced": reinforced, "raw": raw, "metadata": metadata} | "JoinByUid" >> beam.CoGroupByKey()
    routed = by_uid | "RouteToShards" >> beam.FlatMap(route_to_shards)
    matched = (
        by_uid | "HasBothSides" >> beam.Map(has_both_sides) | "CountMatched" >> beam.CombineGlobally(sum)
    )
    ready = beam.pvalue.AsSingleton(
        pipeline
        | "Start" >> beam.Create([None])
        | "WriteRunFiles"
        >> beam.ParDo(
            WriteRunFilesFn(settings.output_dir, config, record, any_pending=bool(pending)),
            beam.pvalue.AsSingleton(matched),
        )
    )
    done = (
        {"path": shard_paths, "pairs": routed}
        | "GroupByShard" >> beam.CoGroupByKey()
        | "JoinShard" >> beam.ParDo(JoinShardFn(settings), ready)
        | "AllShardsDone" >> beam.combiners.ToList()
        | "OnlyIfMatched" >> beam.Filter(lambda _shards, ready: ready, ready)
    )
    finalized = done | "WriteManifest" >> beam.ParDo(FinalizeRunFn(settings.output_dir, all_shards))
    if settings.on_mismatch == "list":
        # After the manifest, not beside it: Beam's Dask runner computes only the graph's last step
        # (and what it depends on), so a second leaf would never run there.
        _ = finalized | "WriteRefetchList" >> beam.ParDo(WriteRefetchListFn(settings.output_dir, all_shards))
