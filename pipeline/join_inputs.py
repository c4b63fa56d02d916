"""What a join output was made from, and what a rerun into it may add.

Each join records its inputs in the output (`join_inputs.json`: per run the globs and the raw and
metadata files they matched). A rerun must use the same raw side, or its shards would be joined from
other images than the finished ones; `--rejoin-missing` is the one way to add raw inputs: the finished
shards whose pairs were missing (no image, another image, a caption missing) are joined again with
every raw input so far plus the new ones, so the output equals one join made with all of them at once.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pipeline.join_pairs import JoinReason
from pipeline.join_settings import JoinSettings
from shards import storage
from shards.run_config import ConfigError
from shards.run_folder import JOIN_INPUTS_FILE, committed_stats

# Pairs that other raw inputs can complete: an image fetched (again, unchanged), a caption found.
REJOINABLE = (
    JoinReason.IMAGE_MISSING,
    JoinReason.HASH_MISMATCH,
    JoinReason.BOX_OUT_OF_BOUNDS,
    JoinReason.CAPTION_MISSING,
)


@dataclasses.dataclass(frozen=True)
class JoinInputs:
    """The raw side a run joins with, the shards it (re)writes, and the record it leaves."""

    raw_paths: list[str]
    metadata_paths: list[str]
    pending: list[str]  # output shard names to write: unfinished ones, and finished ones to rejoin
    rejoined: list[str]  # finished shards among `pending`
    rejoined_written: int  # pairs those shards held before
    record: dict[str, Any]  # the new join_inputs.json


def read_record(output_dir: str) -> dict[str, Any] | None:
    path = storage.join(output_dir, JOIN_INPUTS_FILE)
    if not storage.exists(path):
        return None
    try:
        record = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid JSON ({error}); join into a new --output") from None
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
        raise ConfigError(f"{path} is not a join's record of its inputs; join into a new --output")
    return record


def _recorded(record: dict[str, Any], key: str) -> list[str]:
    return sorted({path for run in record["runs"] for path in run.get(key, [])})


def _describe(record: dict[str, Any]) -> str:
    globs = sorted({run["raw"] for run in record["runs"]})
    return f"--raw {' '.join(repr(glob) for glob in globs)} ({len(_recorded(record, 'raw_files'))} files)"


def plan_inputs(
    output_dir: str,
    shards: list[str],
    run: dict[str, Any],
    *,
    rejoin_missing: bool,
) -> JoinInputs:
    """`run`: this run's globs (`reinforced`, `raw`, `raw_metadata`) and matched files (`raw_files`,
    `metadata_files`). Raises ConfigError, before anything is written, when the rerun cannot be done."""
    record = read_record(output_dir)
    done = committed_stats(output_dir, shards)
    unfinished = [shard for shard in shards if shard not in done]
    raw, metadata = run["raw_files"], run["metadata_files"]
    if record is None or not done:  # a new join (or one that finished no shard: its inputs may change)
        if rejoin_missing:
            raise ConfigError(
                f"--rejoin-missing adds raw inputs to a finished join, and {output_dir} holds none with "
                "its inputs recorded: run the join without --rejoin-missing"
            )
        return JoinInputs(raw, metadata, unfinished, [], 0, {"runs": [run]})
    known_raw, known_metadata = _recorded(record, "raw_files"), _recorded(record, "metadata_files")
    if not rejoin_missing:
        if (raw, metadata) != (known_raw, known_metadata):
            raise ConfigError(
                f"{output_dir} was joined with other raw inputs ({_describe(record)}): to join the pairs it "
                "lists missing with these as well, add --rejoin-missing; to start over, pick a new --output"
            )
        return JoinInputs(raw, metadata, unfinished, [], 0, record)
    new = sorted(set(raw + metadata) - set(known_raw + known_metadata))
    if not new and not unfinished:
        raise ConfigError(
            f"--rejoin-missing: every file of --raw {run['raw']!r} (and --raw-metadata) is already joined "
            f"into {output_dir}: give the newly fetched shards, e.g. --raw 'REFETCHED/*.tar'"
        )
    gone = _gone(record, known_raw + known_metadata)
    if gone:
        raise ConfigError(
            f"--rejoin-missing joins the shards again with the earlier raw inputs too, and {len(gone)} of "
            f"them are gone (e.g. {gone[0]}): put them back, or join everything into a new --output"
        )
    rejoined = sorted(shard for shard, stats in done.items() if set(stats.skipped) & set(REJOINABLE))
    return JoinInputs(
        raw_paths=sorted(set(known_raw) | set(raw)),
        metadata_paths=sorted(set(known_metadata) | set(metadata)),
        pending=sorted(unfinished + rejoined),
        rejoined=rejoined,
        rejoined_written=sum(done[shard].num_written for shard in rejoined),
        record={"runs": [*record["runs"], run]} if new else record,
    )


def _gone(record: dict[str, Any], files: list[str]) -> list[str]:
    """Recorded files that no longer exist: one listing per recorded glob, not one request per file."""
    present: set[str] = set()
    for run in record["runs"]:
        for key in ("raw", "raw_metadata"):
            if run.get(key):
                present.update(storage.match(run[key]))
    return [path for path in files if path not in present]


def run_record(settings: JoinSettings, raw_files: list[str], metadata_files: list[str]) -> dict[str, Any]:
    """This run's entry of the record: its globs and the files they matched."""
    return {
        "reinforced": settings.reinforced_pattern,
        "raw": settings.raw_pattern,
        "raw_metadata": settings.raw_metadata_pattern,
        "raw_files": sorted(raw_files),
        "metadata_files": sorted(metadata_files),
    }


def record_bytes(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=1, sort_keys=True) + "\n").encode("utf-8")
