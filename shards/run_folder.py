"""The output folder of a run: every file name in it, and reading and writing its run files.

Written by the job: per shard `NNNNNNNN.tar`/`.parquet` (shards/writer.py), `NNNNNNNN_errors.jsonl` and
`NNNNNNNN_stats.json`, and for the run `config.json` (shards/run_config.py), `manifest.jsonl` and
`summary.json`, and the dataset card `README.md` (shards/dataset_card.py); the join adds
`NNNNNNNN_refetch.jsonl` and `refetch.parquet` with `--on-mismatch list`; while a job runs, its lease
`.lease.json` (shards/lease.py). A shard is done exactly when its stats file exists: it is written
last, so a resumed run redoes any shard whose stats file is missing. Stats hold wall-clock times per
stage and so differ between runs; every other output file is byte-identical.

img2dataset writes `NNNNN_stats.json` files too, so a stats file is ours by its content (`written_by`,
or for runs from before that field, its known fields), and a job only writes into a folder that
`check_run_output` found new, empty or ours: inside it, a listed stats file is a commit marker.

Read by inspect, validate and the trainer through `open_run(PATH)`: a PATH is one shard, a glob of
shards, or an output folder. Public DataCompDR shards have no run files, so every run file is
optional when reading, and reading one never raises: a missing or unreadable file comes back as None
plus a problem string for the validator to report.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shards import storage
from shards.raw import SkippedSample
from shards.teacher_slices import TeacherSlice, slices_from_config
from shards.write_guard import OutputRefused, check_output_folder

CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.jsonl"
SUMMARY_FILE = "summary.json"
CARD_FILE = "README.md"  # the Hugging Face dataset card (shards/dataset_card.py)
LEASE_FILE = ".lease.json"  # while a job writes the folder: who (shards/lease.py)
STATS_SUFFIX = "_stats.json"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
ERRORS_SUFFIX = "_errors.jsonl"
# The join's `--on-mismatch list`: per shard, then for the run, the samples whose image to fetch again.
REFETCH_SUFFIX = "_refetch.jsonl"
REFETCH_FILE = "refetch.parquet"
JOIN_INPUTS_FILE = "join_inputs.json"  # a join's record of its inputs (pipeline/join_inputs.py)
_GLOB_CHARS = frozenset("*?[")
# The stats files' `written_by`: this project wrote the file (img2dataset's stats have the same name).
WRITTEN_BY = "datacompdr-reinforce"
# The fields every config.json of ours has (reinforce, extend, join, score), whatever its version.
_CONFIG_FIELDS = ("schema_version", "teachers")


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
        "refetch": storage.join(output_dir, f"{shard}{REFETCH_SUFFIX}"),
    }


def remove_stale_temporaries(output_dir: str, shards: Iterable[str]) -> int:
    """Delete what killed attempts at these (unfinished) shards left half-written (hidden
    `.NAME.tmp-*` files). One listing of the folder, however many shards.

    Only the holder of the folder's lease may call this: another live job's temporaries look the same.
    """
    wanted = set(shards)
    stale = [
        path
        for path in storage.match(storage.join(output_dir, ".*.tmp-*"))
        if _temporary_of(storage.basename(path)) in wanted
    ]
    storage.delete_all(stale)
    return len(stale)


def remove_temporaries_after_run(output_dir: str) -> int:
    """Delete every temporary in the folder but the lease's: what workers lost inside a shard (a
    killed process, a preempted VM) and runs killed while writing a run file left behind. Only once
    the run's pipeline is over, by the holder of the folder's lease: no writer is left then."""
    lease_temporaries = f".{LEASE_FILE}.tmp-"
    stale = [
        path
        for path in storage.match(storage.join(output_dir, ".*.tmp-*"))
        if not storage.basename(path).startswith(lease_temporaries)
    ]
    storage.delete_all(stale)
    return len(stale)


def _temporary_of(name: str) -> str | None:
    """The shard a `.NNNNNNNN.tar.tmp-*` / `.NNNNNNNN_stats.json.tmp-*` file belongs to."""
    final = name[1:].rsplit(".tmp-", 1)[0]
    for suffix in (".tar", ".parquet", ERRORS_SUFFIX, STATS_SUFFIX, REFETCH_SUFFIX):
        if final.endswith(suffix):
            return final[: -len(suffix)]
    return None


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
    device: dict[str, Any] = dataclasses.field(default_factory=dict)  # where the worker ran the models
    matched_by: dict[str, int] = dataclasses.field(default_factory=dict)  # join: pairs written per hash kind
    filtered_out: int = 0  # left out by the run's selection (--keep-uids, --scores): read, not errors

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def count(self, record: SkippedSample) -> None:
        """Count a skip by reason: damage to the shard itself apart from skipped samples."""
        counts = self.shard_errors if record.whole_shard else self.skipped
        counts[record.reason] = counts.get(record.reason, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "input": self.input_path,
            "num_read": self.num_read,
            "num_written": self.num_written,
            "num_skipped": self.num_skipped,
            "filtered_out": self.filtered_out,
            "skipped": dict(sorted(self.skipped.items())),
            "shard_errors": dict(sorted(self.shard_errors.items())),
            "seconds": {k: round(v, 4) for k, v in sorted(self.seconds.items())},
            **({"device": self.device} if self.device else {}),
            **({"matched_by": dict(sorted(self.matched_by.items()))} if self.matched_by else {}),
            "written_by": WRITTEN_BY,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardStats:
        """A stats file read back; ValueError for one this project did not write (img2dataset's)."""
        if not is_our_stats(data):
            raise ValueError("not a stats file written by this project (img2dataset's own stats file?)")
        return cls(
            shard=str(data["shard"]),
            input_path=str(data.get("input", "")),
            num_read=int(data.get("num_read", 0)),
            num_written=int(data.get("num_written", 0)),
            filtered_out=int(data.get("filtered_out", 0)),
            skipped={str(k): int(v) for k, v in data.get("skipped", {}).items()},
            shard_errors={str(k): int(v) for k, v in data.get("shard_errors", {}).items()},
            seconds={str(k): float(v) for k, v in data.get("seconds", {}).items()},
            device=dict(data.get("device") or {}),
            matched_by={str(k): int(v) for k, v in (data.get("matched_by") or {}).items()},
        )


def is_our_stats(data: Any) -> bool:
    """A stats file of ours: its `written_by`, or, written before that field, its known fields."""
    if not isinstance(data, dict):
        return False
    if "written_by" in data:
        return data["written_by"] == WRITTEN_BY
    return (
        isinstance(data.get("shard"), str)
        and isinstance(data.get("num_written"), int)
        and isinstance(data.get("skipped"), dict)
        and isinstance(data.get("seconds"), dict)
    )


def is_run_config(data: Any) -> bool:
    """A config.json of ours (reinforce, extend, join or score), by the fields they all have."""
    return isinstance(data, dict) and all(field in data for field in _CONFIG_FIELDS)


def check_run_output(output_dir: str, inputs: list[str]) -> None:
    """Refuse, before a job writes anything, an output folder it must not fill: a file, the folder of
    its inputs, a folder that holds anything but one of our runs, or one holding stats files that
    are not ours (img2dataset's output). OutputRefused says which, in one line."""
    check_output_folder(
        output_dir,
        "--output",
        lambda folder: is_run_config(_read_json(storage.join(folder, CONFIG_FILE), [])),
        "a run folder of ours (no config.json written by this project)",
        inputs=inputs,
    )
    try:
        first = storage.match(storage.join(output_dir, f"*{STATS_SUFFIX}"), limit=1)
    except Exception:  # no such folder (yet)
        first = []
    if first and not is_our_stats(_read_json(first[0], [])):
        raise OutputRefused(
            f"--output {output_dir} holds {storage.basename(first[0])}, a stats file this project did not "
            "write (img2dataset's output?); name a new or empty folder"
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
    matched_by: dict[str, int] = dataclasses.field(default_factory=dict)  # join: pairs written per hash kind
    filtered_out: int = 0  # samples the run's selection left out

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        """A summary.json read back (its seconds rounded to the millisecond)."""
        return cls(
            shards_total=int(data["shards_total"]),
            shards_done=int(data["shards_done"]),
            num_read=int(data["num_read"]),
            num_written=int(data["num_written"]),
            skipped={str(k): int(v) for k, v in data["skipped"].items()},
            shard_errors={str(k): int(v) for k, v in data["shard_errors"].items()},
            seconds={str(k): float(v) for k, v in data["seconds"].items()},
            missing_shards=[str(shard) for shard in data["missing_shards"]],
            matched_by={str(k): int(v) for k, v in (data.get("matched_by") or {}).items()},
            filtered_out=int(data.get("filtered_out", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["num_skipped"] = self.num_skipped
        data["seconds"] = {k: round(v, 3) for k, v in sorted(self.seconds.items())}
        if not self.matched_by:
            del data["matched_by"]
        return data


def summarize_run(shards: list[str], stats: dict[str, ShardStats]) -> RunSummary:
    skipped: Counter[str] = Counter()
    shard_errors: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    matched_by: Counter[str] = Counter()
    for item in stats.values():
        skipped.update(item.skipped)
        shard_errors.update(item.shard_errors)
        seconds.update(item.seconds)
        matched_by.update(item.matched_by)
    return RunSummary(
        shards_total=len(shards),
        shards_done=sum(1 for shard in shards if shard in stats),
        num_read=sum(s.num_read for s in stats.values()),
        num_written=sum(s.num_written for s in stats.values()),
        skipped=dict(sorted(skipped.items())),
        shard_errors=dict(sorted(shard_errors.items())),
        seconds=dict(seconds),
        missing_shards=[shard for shard in shards if shard not in stats],
        matched_by=dict(sorted(matched_by.items())),
        filtered_out=sum(s.filtered_out for s in stats.values()),
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
    return set(_committed_updates(output_dir))


def _committed_updates(output_dir: str) -> dict[str, float]:
    """Committed shard -> when its stats file was written, from one listing."""
    updated = storage.match_updated(storage.join(output_dir, f"*{STATS_SUFFIX}"))
    return {storage.basename(path)[: -len(STATS_SUFFIX)]: when for path, when in updated.items()}


def committed_stats(output_dir: str, shards: list[str]) -> dict[str, ShardStats]:
    """The stats of every committed shard among `shards` (this run's and earlier runs')."""
    done = committed_shards(output_dir)
    return _read_stats(output_dir, [shard for shard in shards if shard in done])


def _read_stats(output_dir: str, committed: list[str]) -> dict[str, ShardStats]:
    def load(shard: str) -> ShardStats:  # listed just now: read it without asking whether it exists
        path = output_paths(output_dir, shard)["stats"]
        try:
            return ShardStats.from_dict(json.loads(storage.read_text(path)))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    # Many small reads from an object store: overlap their latency (more threads gain nothing on moto).
    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(zip(committed, pool.map(load, committed), strict=True))


def run_result(output_dir: str, shards: list[str]) -> tuple[RunSummary, dict[str, int]]:
    """The run's summary and the samples written per committed shard, as a launcher reports them once
    finalize_run is done: from summary.json and manifest.jsonl (one listing, three small requests)
    when they describe exactly the shards committed now and are no older than any of their stats
    files; else (a run killed before or while finalizing, a folder changed since) from every committed
    stats file, as finalize_run reads them. One read per shard is what made the launcher's read-back
    as slow as finalize itself on an object store."""
    committed = _committed_updates(output_dir)
    done = [shard for shard in shards if shard in committed]
    newest = max((committed[shard] for shard in done), default=0.0)
    finalized = _finalized_result(output_dir, shards, done, newest)
    if finalized is not None:
        return finalized
    stats = _read_stats(output_dir, done)
    return summarize_run(shards, stats), {shard: item.num_written for shard, item in stats.items()}


def _finalized_result(
    output_dir: str, shards: list[str], done: list[str], newest_stats: float
) -> tuple[RunSummary, dict[str, int]] | None:
    """summary.json and manifest.jsonl, when both are complete and current; None otherwise."""
    manifest_path = storage.join(output_dir, MANIFEST_FILE)
    summary_path = storage.join(output_dir, SUMMARY_FILE)
    for path in (manifest_path, summary_path):
        updated = list(storage.match_updated(path).values())
        if len(updated) != 1 or updated[0] < newest_stats:  # absent, or a shard committed after it
            return None
    try:
        lines = [json.loads(line) for line in storage.read_text(manifest_path).splitlines()]
        written = {str(line["shard"]): int(line["num_samples"]) for line in lines}
        summary = RunSummary.from_dict(json.loads(storage.read_text(summary_path)))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    missing = [shard for shard in shards if shard not in written]
    if (
        list(written) != sorted(done)  # never trust a manifest that does not list every committed shard
        or len(lines) != len(done)
        or (summary.shards_total, summary.shards_done) != (len(shards), len(done))
        or summary.missing_shards != missing
        or summary.num_written != sum(written.values())
    ):
        return None
    return summary, written


def finalize_run(output_dir: str, shards: list[str]) -> RunSummary:
    """Write manifest.jsonl and summary.json from every committed shard's stats."""
    stats = committed_stats(output_dir, shards)
    storage.write_bytes_atomic(storage.join(output_dir, MANIFEST_FILE), manifest_bytes(shards, stats))
    summary = summarize_run(shards, stats)
    storage.write_bytes_atomic(
        storage.join(output_dir, SUMMARY_FILE), (json.dumps(summary.to_dict(), indent=2) + "\n").encode()
    )
    return summary


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
        return output_paths(self.root, shard_name(shard))["stats"]

    def errors_path(self, shard: str) -> str:
        return output_paths(self.root, shard_name(shard))["errors"]

    def parquet_path(self, shard: str) -> str:
        return output_paths(self.root, shard_name(shard))["parquet"]

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
        try:
            return slices_from_config(self.config or {})
        except ValueError as error:
            self.problems.append((self.config_path, str(error)))
            return None


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
