"""Per-shard outcome files (errors, stats = commit marker) and the run-level manifest and summary.

A shard is done exactly when its `NNNNNNNN_stats.json` exists: it is written last, after the tar,
parquet and errors file, so a resumed run redoes any shard whose stats file is missing. Stats hold
wall-clock times per stage and so differ between runs; every other output file is byte-identical.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline import storage
from pipeline.raw_shards import SkippedSample

MANIFEST_FILE = "manifest.jsonl"
SUMMARY_FILE = "summary.json"
STATS_SUFFIX = "_stats.json"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
ERRORS_SUFFIX = "_errors.jsonl"


def shard_name(input_path: str) -> str:
    """The shard's base name (`00000000` for `.../00000000.tar`), shared by all its output files."""
    name = storage.basename(input_path)
    return name[: -len(".tar")] if name.endswith(".tar") else name


def output_paths(output_dir: str, shard: str) -> dict[str, str]:
    return {
        "tar": storage.join(output_dir, f"{shard}.tar"),
        "parquet": storage.join(output_dir, f"{shard}.parquet"),
        "errors": storage.join(output_dir, f"{shard}{ERRORS_SUFFIX}"),
        "stats": storage.join(output_dir, f"{shard}{STATS_SUFFIX}"),
    }


def remove_stale_temporaries(output_dir: str, shard: str) -> int:
    """Delete what a killed attempt at an unfinished shard left half-written (hidden `.NAME.tmp-*` files)."""
    stale = storage.match(storage.join(output_dir, f".{shard}[._]*.tmp-*"))
    for path in stale:
        storage.delete(path)
    return len(stale)


def _skip_json(record: SkippedSample) -> str:
    """One line of the errors file: which sample (or, whole_shard, which shard) and why."""
    line: dict[str, Any] = {"key": record.key, "reason": record.reason}
    if record.detail:
        # Library messages can name objects by address ("<_io.BytesIO object at 0x7f...>"), which
        # would make the errors file differ between identical runs.
        line["detail"] = _ADDRESS.sub("", record.detail)
    if record.whole_shard:
        line["whole_shard"] = True
    return json.dumps(line, ensure_ascii=False, sort_keys=True)


@dataclasses.dataclass
class ShardStats:
    shard: str
    input_path: str
    num_read: int = 0  # samples met in the tar, good or bad (whole-shard errors are not samples)
    num_written: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # sample skips by reason
    shard_errors: dict[str, int] = dataclasses.field(default_factory=dict)  # damage to the shard itself
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # wall time per stage

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "input": self.input_path,
            "num_read": self.num_read,
            "num_written": self.num_written,
            "num_skipped": self.num_skipped,
            "skipped": dict(sorted(self.skipped.items())),
            "shard_errors": dict(sorted(self.shard_errors.items())),
            "seconds": {k: round(v, 4) for k, v in sorted(self.seconds.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardStats:
        return cls(
            shard=str(data["shard"]),
            input_path=str(data.get("input", "")),
            num_read=int(data.get("num_read", 0)),
            num_written=int(data.get("num_written", 0)),
            skipped={str(k): int(v) for k, v in data.get("skipped", {}).items()},
            shard_errors={str(k): int(v) for k, v in data.get("shard_errors", {}).items()},
            seconds={str(k): float(v) for k, v in data.get("seconds", {}).items()},
        )


def write_shard_outcome(output_dir: str, stats: ShardStats, skips: Iterable[SkippedSample]) -> None:
    """Errors file, then the stats file, which commits the shard."""
    paths = output_paths(output_dir, stats.shard)
    lines = "".join(_skip_json(record) + "\n" for record in skips)
    storage.write_bytes_atomic(paths["errors"], lines.encode("utf-8"))
    storage.write_bytes_atomic(paths["stats"], (json.dumps(stats.to_dict(), indent=2) + "\n").encode())


def read_shard_stats(output_dir: str, shard: str) -> ShardStats | None:
    path = output_paths(output_dir, shard)["stats"]
    if not storage.exists(path):
        return None
    return ShardStats.from_dict(json.loads(storage.read_text(path)))


@dataclasses.dataclass
class RunSummary:
    shards_total: int
    shards_done: int
    num_read: int
    num_written: int
    skipped: dict[str, int]
    shard_errors: dict[str, int]
    seconds: dict[str, float]
    missing_shards: list[str]

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["num_skipped"] = self.num_skipped
        data["seconds"] = {k: round(v, 3) for k, v in sorted(self.seconds.items())}
        return data


def summarize(shards: list[str], stats: dict[str, ShardStats]) -> RunSummary:
    skipped: Counter[str] = Counter()
    shard_errors: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    for item in stats.values():
        skipped.update(item.skipped)
        shard_errors.update(item.shard_errors)
        seconds.update(item.seconds)
    return RunSummary(
        shards_total=len(shards),
        shards_done=sum(1 for shard in shards if shard in stats),
        num_read=sum(s.num_read for s in stats.values()),
        num_written=sum(s.num_written for s in stats.values()),
        skipped=dict(sorted(skipped.items())),
        shard_errors=dict(sorted(shard_errors.items())),
        seconds=dict(seconds),
        missing_shards=[shard for shard in shards if shard not in stats],
    )


def manifest_bytes(shards: list[str], stats: dict[str, ShardStats]) -> bytes:
    """One `{"shard", "num_samples"}` line per committed shard, sorted by shard name."""
    lines = [
        json.dumps({"shard": shard, "num_samples": stats[shard].num_written})
        for shard in sorted(shards)
        if shard in stats
    ]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def committed_shards(output_dir: str) -> set[str]:
    """Names of the shards whose stats file exists: one listing, not one request per shard."""
    paths = storage.match(storage.join(output_dir, f"*{STATS_SUFFIX}"))
    return {storage.basename(p)[: -len(STATS_SUFFIX)] for p in paths}


def committed_stats(output_dir: str, shards: list[str]) -> dict[str, ShardStats]:
    """The stats of every committed shard among `shards` (this run's and earlier runs')."""
    done = committed_shards(output_dir)
    wanted = [shard for shard in shards if shard in done]
    # Many small reads from an object store: overlap their latency.
    with ThreadPoolExecutor(max_workers=16) as pool:
        loaded = pool.map(lambda shard: read_shard_stats(output_dir, shard), wanted)
        return {shard: stats for shard, stats in zip(wanted, loaded, strict=True) if stats is not None}


def finalize_run(output_dir: str, shards: list[str]) -> RunSummary:
    """Write manifest.jsonl and summary.json from every committed shard's stats."""
    stats = committed_stats(output_dir, shards)
    storage.write_bytes_atomic(storage.join(output_dir, MANIFEST_FILE), manifest_bytes(shards, stats))
    summary = summarize(shards, stats)
    storage.write_bytes_atomic(
        storage.join(output_dir, SUMMARY_FILE), (json.dumps(summary.to_dict(), indent=2) + "\n").encode()
    )
    return summary
