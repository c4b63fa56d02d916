"""Resolve what a user points inspect/validate at, and read the run files beside its shards.

A PATH is one shard (`.../00000000.tar`), a glob of shards, or an output folder. Shards of our own
runs sit beside `config.json`, `manifest.jsonl` and per-shard stats/errors files; public DataCompDR
shards have none of these, so every run file here is optional and reading one never raises: a file
that is missing or unreadable comes back as None plus a problem string for the validator to report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.run_config import CONFIG_FILE
from pipeline.shard_stats import ERRORS_SUFFIX, MANIFEST_FILE, STATS_SUFFIX, ShardStats, shard_name

_GLOB_CHARS = frozenset("*?[")
MAX_INFERRED_TEACHERS = 8


@dataclasses.dataclass(frozen=True)
class TeacherSlice:
    """Columns [start, stop) of the D-wide embeddings belong to one teacher, L2-normalised on their own."""

    name: str
    start: int
    stop: int

    @property
    def dim(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass
class RunFolder:
    """The shards a PATH names, and the run files found beside them (None where absent)."""

    path: str
    root: str  # the folder holding the shards (and run files, when there are any)
    shards: list[str]  # tar paths, sorted
    is_folder: bool  # PATH named a whole output folder, so every run file is expected to describe it
    config: dict[str, Any] | None = None
    manifest: list[dict[str, Any]] | None = None
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, what)

    @property
    def config_path(self) -> str:
        return storage.join(self.root, CONFIG_FILE)

    @property
    def manifest_path(self) -> str:
        return storage.join(self.root, MANIFEST_FILE)

    def stats_path(self, shard: str) -> str:
        return storage.join(self.root, f"{shard_name(shard)}{STATS_SUFFIX}")

    def errors_path(self, shard: str) -> str:
        return storage.join(self.root, f"{shard_name(shard)}{ERRORS_SUFFIX}")

    def parquet_path(self, shard: str) -> str:
        return storage.join(self.root, f"{shard_name(shard)}.parquet")

    def stats(self, shard: str) -> ShardStats | None:
        """The shard's committed stats, or None (public shards, unfinished shards, unreadable files)."""
        data = _read_json(self.stats_path(shard), self.problems)
        if data is None:
            return None
        try:
            return ShardStats.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            self.problems.append((self.stats_path(shard), f"not a stats file: {error}"))
            return None

    def errors(self, shard: str) -> list[dict[str, Any]] | None:
        """The shard's errors-file records (`key`, `reason`, ...); None when there is no such file."""
        return _read_jsonl(self.errors_path(shard), self.problems)

    def teacher_slices(self) -> list[TeacherSlice] | None:
        """Per-teacher column ranges from config.json, or None when there is no usable config."""
        teachers = (self.config or {}).get("teachers")
        if not isinstance(teachers, list) or not teachers:
            return None
        slices, start = [], 0
        for index, teacher in enumerate(teachers):
            dim = teacher.get("dim") if isinstance(teacher, dict) else None
            if not isinstance(dim, int) or dim < 1:
                self.problems.append((self.config_path, f"teachers[{index}] has no positive integer dim"))
                return None
            name = str(teacher.get("name") or teacher.get("spec") or f"teacher {index}")
            slices.append(TeacherSlice(name, start, start + dim))
            start += dim
        return slices


def open_run(path: str) -> RunFolder:
    """Resolve PATH into its shards and read the run files beside them."""
    path = path.rstrip("/") if len(path) > 1 else path
    if any(char in _GLOB_CHARS for char in path):
        shards, root, is_folder = storage.match(path), storage.dirname(path), False
    elif path.endswith(".tar"):
        shards, root, is_folder = [path], storage.dirname(path), False
    else:
        shards, root, is_folder = storage.match(storage.join(path, "*.tar")), path, True
    run = RunFolder(path=path, root=root, shards=shards, is_folder=is_folder)
    run.config = _read_json(run.config_path, run.problems)
    run.manifest = _read_jsonl(run.manifest_path, run.problems, required="shard")
    return run


def parse_teacher_dims(text: str) -> list[int]:
    """`768,768` -> [768, 768]: the `--teacher-dims` type of validate and inspect."""
    try:
        dims = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"teacher widths look like 768,768, not {text!r}") from None
    if any(dim < 1 for dim in dims):
        raise argparse.ArgumentTypeError(f"teacher widths must be positive, not {text!r}")
    return dims


def slices_from_dims(dims: list[int], names: list[str] | None = None) -> list[TeacherSlice]:
    """Teacher slices from explicit widths (e.g. `--teacher-dims 768,768` for public shards)."""
    slices, start = [], 0
    for index, dim in enumerate(dims):
        name = names[index] if names and index < len(names) else f"teacher {index}"
        slices.append(TeacherSlice(name, start, start + dim))
        start += dim
    return slices


def infer_slices(image_emb: np.ndarray, tolerance: float) -> list[TeacherSlice] | None:
    """Teacher widths of a shard without config: the fewest equal slices, each unit-norm in every row."""
    dim = image_emb.shape[1]
    for count in range(1, MAX_INFERRED_TEACHERS + 1):
        if dim % count:
            continue
        slices = slices_from_dims([dim // count] * count)
        if all(
            np.allclose(np.linalg.norm(image_emb[:, s.start : s.stop], axis=1), 1.0, atol=tolerance)
            for s in slices
        ):
            return slices
    return None


def _read_json(path: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    if not storage.exists(path):
        return None
    try:
        data = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError, OSError) as error:
        problems.append((path, f"unreadable JSON: {error}"))
        return None
    if not isinstance(data, dict):
        problems.append((path, "not a JSON object"))
        return None
    return data


def _read_jsonl(
    path: str, problems: list[tuple[str, str]], *, required: str | None = None
) -> list[dict[str, Any]] | None:
    """The JSON objects of a JSON-lines file, None when it is missing. A line that is not an object,
    or whose `required` field is not a string, is left out and recorded as a problem."""
    if not storage.exists(path):
        return None
    records = []
    for number, line in enumerate(storage.read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append((path, f"line {number} is not JSON: {error}"))
            continue
        if not isinstance(record, dict):
            problems.append((path, f"line {number} is not a JSON object"))
        elif required is not None and not isinstance(record.get(required), str):
            problems.append((path, f"line {number} has no {required}"))
        else:
            records.append(record)
    return records
