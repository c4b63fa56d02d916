"""Which raw samples a reinforce run takes: all, those a uid list names, or those a score run rates.

`--keep-uids PARQUET` keeps the uids of any parquet's `uid` column. `--scores SCORES` with
`--min-score X` keeps the samples whose `score_mean` in the score run (pipeline/score.py) is at least
X; with `--top-fraction F`, X is DataComp's threshold: the (1 - F) quantile of `score_mean` over the
whole score run (every committed score file, linear interpolation as numpy and pandas compute it),
found once at launch and recorded in config.json's `selection` with the score run it came from.
A sample a score run skipped has no score and is left out. Samples left out are counted as
`filtered_out` in their shard's stats, never decoded, and never change a kept sample's bytes.

Workers get the selection's plain values; each reads the uid list once per process, or its own
shard's score file, never the whole pool.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from shards import storage
from shards.raw import RawSample, SkippedSample
from shards.run_config import ConfigError
from shards.run_folder import CONFIG_FILE, committed_shards, output_paths, shard_name
from shards.scores import MEAN_COLUMN, read_columns


@dataclasses.dataclass(frozen=True)
class Selection:
    keep_uids: str | None = None  # a parquet with a `uid` column
    scores: str | None = None  # a score run's output folder
    min_score: float | None = None  # keep score_mean >= this: given, or found from top_fraction
    top_fraction: float | None = None
    score_run: dict[str, Any] | None = None  # what the score run was, once resolved

    def record(self) -> dict[str, Any]:
        """config.json's `selection`."""
        if self.keep_uids is not None:
            return {"keep_uids": self.keep_uids}
        return {
            "scores": self.scores,
            "column": MEAN_COLUMN,
            "min_score": self.min_score,
            "top_fraction": self.top_fraction,
            "score_run": self.score_run,
        }


def selection_from_flags(
    keep_uids: str | None, scores: str | None, min_score: float | None, top_fraction: float | None
) -> Selection | None:
    """The selection the flags ask for (unresolved), None for every sample; ConfigError when they clash."""
    if keep_uids is None and scores is None:
        if min_score is not None or top_fraction is not None:
            raise ConfigError("--min-score and --top-fraction need --scores SCORES (a score run's folder)")
        return None
    if keep_uids is not None and scores is not None:
        raise ConfigError("give --keep-uids or --scores, not both")
    if scores is not None and (min_score is None) == (top_fraction is None):
        raise ConfigError("--scores needs exactly one of --min-score X and --top-fraction F")
    if top_fraction is not None and not 0.0 < top_fraction <= 1.0:
        raise ConfigError("--top-fraction must be in (0, 1]")
    if keep_uids is not None and (min_score is not None or top_fraction is not None):
        raise ConfigError("--min-score and --top-fraction go with --scores, not --keep-uids")
    return Selection(keep_uids=keep_uids, scores=scores, min_score=min_score, top_fraction=top_fraction)


def resolve(selection: Selection, input_shards: list[str]) -> Selection:
    """Check the selection's files against the input shards, and find the top-fraction threshold."""
    if selection.keep_uids is not None:
        try:
            read_columns(selection.keep_uids, ["uid"]).slice(0, 0)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--keep-uids {selection.keep_uids}: {exc}") from exc
        return selection
    assert selection.scores is not None
    config = _score_run_config(selection.scores)
    scored = sorted(committed_shards(selection.scores))
    unscored = [name for name in map(shard_name, input_shards) if name not in scored]
    if unscored:
        raise ConfigError(
            f"the score run {selection.scores} has not scored {len(unscored)} input shard(s) "
            f"({', '.join(unscored[:5])}): run `python -m pipeline.score` on them first (same --output)"
        )
    paths = [output_paths(selection.scores, name)["parquet"] for name in scored]
    with ThreadPoolExecutor(max_workers=16) as pool:  # many small reads from an object store
        values = np.concatenate([np.empty(0), *pool.map(_mean_scores, paths)])
    min_score = selection.min_score
    if selection.top_fraction is not None:
        if not len(values):
            raise ConfigError(f"the score run {selection.scores} scored no sample: no threshold to find")
        min_score = float(np.quantile(values, 1.0 - selection.top_fraction))
    score_run = {
        "teachers": [t.get("spec") for t in config.get("teachers", [])],
        "shards": len(scored),
        "samples": len(values),
    }
    return dataclasses.replace(selection, min_score=min_score, score_run=score_run)


def _score_run_config(folder: str) -> dict[str, Any]:
    from pipeline.score_settings import SCORE_JOB

    path = storage.join(folder, CONFIG_FILE)
    try:
        config = json.loads(storage.read_text(path))
    except Exception as exc:  # missing, unreadable, not JSON
        raise ConfigError(f"--scores {folder}: cannot read {path} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(config, dict) or config.get("job") != SCORE_JOB:
        raise ConfigError(f"--scores {folder} is not a score run's folder (python -m pipeline.score)")
    return config


def _mean_scores(path: str) -> np.ndarray:
    return read_columns(path, [MEAN_COLUMN]).column(MEAN_COLUMN).to_numpy(zero_copy_only=False)


@functools.lru_cache(maxsize=2)
def _uid_list(path: str) -> frozenset[str]:
    """The uids of a `--keep-uids` parquet, read once per worker process."""
    return frozenset(str(uid) for uid in read_columns(path, ["uid"]).column("uid").to_pylist())


def kept_uids(selection: Selection | None, shard: str) -> frozenset[str] | None:
    """The uids of this shard's samples to reinforce; None for all."""
    if selection is None:
        return None
    if selection.keep_uids is not None:
        return _uid_list(selection.keep_uids)
    assert selection.scores is not None and selection.min_score is not None
    table = read_columns(output_paths(selection.scores, shard)["parquet"], ["uid", MEAN_COLUMN])
    uids, scores = table.column("uid").to_pylist(), table.column(MEAN_COLUMN).to_numpy(zero_copy_only=False)
    return frozenset(uid for uid, score in zip(uids, scores, strict=True) if score >= selection.min_score)


def select(
    items: Iterator[RawSample | SkippedSample], keep: frozenset[str] | None, left_out: list[str]
) -> Iterator[RawSample | SkippedSample]:
    """The items to process: every raw sample whose uid `keep` holds (all when None), and every skip
    (a bad sample is reported whether or not it was wanted). The uids left out go to `left_out`."""
    for item in items:
        if keep is not None and isinstance(item, RawSample) and item.uid not in keep:
            left_out.append(item.uid)
            continue
        yield item
