"""What a person reads to trust a reinforced shard: the overview of a PATH and its text summary.

`python -m pipeline.inspect` (terminal and `--html`) and `notebooks/inspect_shards.ipynb` both start
from `load_overview`, so the report and the notebook always describe the same samples. Only the first
`limit` samples are decoded; counts come from the manifest and stats where a run has them, else from
walking the tars' members without decoding them.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator

import numpy as np

from shards.reinforced import ReinforcedSample, ShardEntry, iter_entries, iter_members
from shards.run_config import augmenter_from_config
from shards.run_folder import RunFolder, ShardStats, open_run, shard_name
from shards.teacher_slices import TeacherSlice, infer_slices, slices_from_dims
from transforms import (
    OP_NAMES,
    PARAM_AUG_VERSION,
    AugmentationError,
    ViewAugmenter,
    decode_param_aug,
)

DEFAULT_LIMIT = 64


@dataclasses.dataclass
class ShardOverview:
    """A PATH's shards, how they were made, and the first few decoded samples."""

    run: RunFolder
    slices: list[TeacherSlice]
    slices_source: str  # "config", "--teacher-dims", "inferred from norms" or "unknown"
    augmenter: ViewAugmenter | None
    param_aug_version: int
    samples: list[ReinforcedSample]
    sample_members: dict[str, frozenset[str]]  # key -> member names, for the samples above
    format_errors: Counter[str]  # among the decoded samples, by reason
    counts: dict[str, int | None]  # shard name -> samples (manifest, stats or counted); None: unknown
    stats: dict[str, ShardStats]  # shard name -> committed stats

    @property
    def num_samples(self) -> int | None:
        values = list(self.counts.values())
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    @property
    def skipped(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for stats in self.stats.values():
            total.update(stats.skipped)
            total.update({f"shard: {reason}": n for reason, n in stats.shard_errors.items()})
        return total

    @property
    def seconds(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for stats in self.stats.values():
            total.update(stats.seconds)
        return total

    @property
    def layout(self) -> str:
        families = {f for s in self.samples for f in s.syn_captions}
        if not families:
            return "unknown"
        return "v1" if families == {"syn_text"} else "v2"

    @property
    def storage(self) -> str:
        kinds = {m for members in self.sample_members.values() for m in members if m in ("npz", "pth.gz")}
        if kinds == {"npz"}:
            return "npz (fp32)"
        if kinds == {"pth.gz"}:
            return "pth.gz (bf16)"
        return " + ".join(sorted(kinds)) or "unknown"

    def find(self, key: str) -> ReinforcedSample | None:
        return next((s for s in self.samples if s.key == key), None)


def load_overview(
    path: str,
    *,
    limit: int = DEFAULT_LIMIT,
    sample_key: str | None = None,
    teacher_dims: list[int] | None = None,
) -> ShardOverview:
    """Read PATH: run files, counts, and up to `limit` decoded samples (plus `sample_key` wherever it is)."""
    run = open_run(path)
    config = run.config or {}
    samples: list[ReinforcedSample] = []
    members: dict[str, frozenset[str]] = {}
    errors: Counter[str] = Counter()
    for entry in _entries(run, limit, sample_key):
        if entry.sample is None:
            errors[entry.error.reason if entry.error else "unknown"] += 1
            continue
        samples.append(entry.sample)
        members[entry.key] = entry.members
    slices, source = _teacher_slices(run, teacher_dims, samples)
    try:
        augmenter: ViewAugmenter | None = augmenter_from_config(run.config)
    except (TypeError, ValueError):
        augmenter = None
    version = config.get("param_aug_version")
    stats = {shard_name(s): st for s in run.shards if (st := run.stats(s)) is not None}
    listed = {e["shard"]: e.get("num_samples") for e in run.manifest or []}
    counts: dict[str, int | None] = {}
    for shard in run.shards:
        name = shard_name(shard)
        if isinstance(listed.get(name), int):
            counts[name] = listed[name]
        elif name in stats:
            counts[name] = stats[name].num_written
        elif len(run.shards) == 1:  # walk one tar's members; a folder of 2 GB shards would take too long
            counts[name] = _count_samples(shard)
        else:
            counts[name] = None
    return ShardOverview(
        run=run,
        slices=slices,
        slices_source=source,
        augmenter=augmenter,
        param_aug_version=version if isinstance(version, int) else PARAM_AUG_VERSION,
        samples=samples,
        sample_members=members,
        format_errors=errors,
        counts=counts,
        stats=stats,
    )


def _entries(run: RunFolder, limit: int, sample_key: str | None) -> Iterator[ShardEntry]:
    """The first `limit` entries, then, if `sample_key` was not among them, that sample alone."""
    taken, found = 0, sample_key is None
    for shard in run.shards:
        for entry in iter_entries(shard, require_image=False):  # published shards carry no image
            if taken < limit:
                taken += 1
                found = found or entry.key == sample_key
                yield entry
            elif not found and entry.key == sample_key:
                yield entry
                return
            elif found:
                return


def _count_samples(shard: str) -> int | None:
    try:
        return sum(1 for _ in iter_members(shard))
    except Exception:  # a damaged tar: its count is unknown, and validate says why
        return None


def _teacher_slices(
    run: RunFolder, teacher_dims: list[int] | None, samples: list[ReinforcedSample]
) -> tuple[list[TeacherSlice], str]:
    if teacher_dims:
        return slices_from_dims(teacher_dims), "--teacher-dims"
    configured = run.teacher_slices()
    if configured:
        return configured, "config"
    if samples:
        inferred = infer_slices(samples[0].image_emb)
        if inferred:
            return inferred, "inferred from norms"
        return slices_from_dims([samples[0].dim]), "unknown (whole vector)"
    return [], "unknown"


# -- text -----------------------------------------------------------------------------------------


def summary_lines(overview: ShardOverview, show: int = 3) -> list[str]:
    """The terminal summary: what the shards hold, how they were made, and a few samples' captions."""
    run = overview.run
    config = run.config or {}
    total = overview.num_samples
    lines = [
        f"path: {run.path}",
        f"shards: {len(run.shards)}, samples: {total if total is not None else _partial_count(overview)}",
        f"layout: {overview.layout}, embeddings: {overview.storage}",
    ]
    if config:
        lines.append(
            f"run: preset {config.get('preset', '?')}, seed {config.get('seed', '?')}, "
            f"views {config.get('num_views', '?')}, captions {config.get('num_captions', '?')}, "
            f"param_aug version {config.get('param_aug_version', '?')}"
        )
    else:
        lines.append("run: no config.json beside the shards (a public or copied shard)")
    dim = overview.slices[-1].stop if overview.slices else "?"
    lines.append(f"teachers ({overview.slices_source}), D = {dim}:")
    teachers = config.get("teachers") if isinstance(config.get("teachers"), list) else []
    for index, teacher_slice in enumerate(overview.slices):
        extra = ""
        if index < len(teachers) and isinstance(teachers[index], dict):
            t = teachers[index]
            extra = f", KD logit scale {t.get('kd_logit_scale', '?')}, spec {t.get('spec', '?')}"
        lines.append(
            f"  {teacher_slice.name}: dim {teacher_slice.dim} "
            f"(columns {teacher_slice.start}:{teacher_slice.stop}){extra}"
        )
    if overview.samples:
        views = sorted({s.num_views for s in overview.samples})
        families = Counter(f"{f} x{len(c)}" for s in overview.samples for f, c in s.syn_captions.items())
        lines.append(
            f"decoded {len(overview.samples)} sample(s): views {views}, "
            f"synthetic captions {', '.join(sorted(families))}"
        )
    if overview.format_errors:
        errors = ", ".join(f"{r} {n}" for r, n in sorted(overview.format_errors.items()))
        lines.append(f"undecodable samples among those read: {errors}")
    if overview.stats:
        read = sum(s.num_read for s in overview.stats.values())
        written = sum(s.num_written for s in overview.stats.values())
        lines.append(f"stats: read {read}, written {written}, skipped {read - written}")
        for reason, count in sorted(overview.skipped.items()):
            lines.append(f"  skipped {reason}: {count}")
        seconds = overview.seconds
        if seconds:
            stages = ", ".join(f"{stage} {secs:.2f}s" for stage, secs in sorted(seconds.items()))
            lines.append(f"  time per stage: {stages}")
    for sample in overview.samples[:show]:
        lines.append("")
        lines.extend(caption_lines(sample))
    return lines


def _partial_count(overview: ShardOverview) -> str:
    known = [count for count in overview.counts.values() if count is not None]
    missing = len(overview.counts) - len(known)
    return f"{sum(known)} in shards with a manifest or stats, {missing} shard(s) not counted"


def caption_lines(sample: ReinforcedSample) -> list[str]:
    lines = [f"sample {sample.key}" + (f"  {sample.url}" if sample.url else "")]
    lines.append(f"  caption: {_one_line(sample.caption) or '(none stored)'}")
    for family, captions in sorted(sample.syn_captions.items()):
        for caption in captions:
            lines.append(f"  {family}: {_one_line(caption)}")
    return lines


def sample_lines(
    sample: ReinforcedSample, slices: list[TeacherSlice], version: int = PARAM_AUG_VERSION
) -> list[str]:
    """Everything about one sample: metadata, captions, views, per-teacher norms and similarities."""
    lines = caption_lines(sample)
    meta = ", ".join(
        f"{k}={sample.meta[k]}" for k in ("uid", "sha256", "width", "height") if k in sample.meta
    )
    lines.append(f"  json: {meta}")
    lines.append(
        f"  image: {len(sample.image)} bytes" if sample.image else "  image: not stored (published layout)"
    )
    for index, entry in enumerate(sample.param_aug):
        lines.append(f"  view {index}: {describe_view(entry, version)}")
    for teacher in slices:
        sims = similarities(sample, teacher)
        image_norms = np.linalg.norm(sample.image_emb[:, teacher.start : teacher.stop], axis=1)
        lines.append(
            f"  {teacher.name}: image norms {image_norms.min():.4f}..{image_norms.max():.4f}, "
            f"view-caption similarity (rows views, columns {', '.join(caption_labels(sample))}):"
        )
        lines.extend("    " + " ".join(f"{v:+.3f}" for v in row) for row in sims)
    return lines


def describe_view(entry: object, version: int = PARAM_AUG_VERSION) -> str:
    try:
        params = decode_param_aug(entry, version=version)
    except AugmentationError as error:
        return f"undecodable ({error.reason}: {error})"
    i, j, h, w = params.crop
    text = f"crop top {i} left {j} {h}x{w}"
    if params.flip:
        text += ", flipped"
    if params.ops:
        text += ", " + ", ".join(f"{OP_NAMES[op]} {mag:+.4g}" for op, mag in params.ops)
    if params.erase is not None:
        text += f", erase {list(params.erase)}"
    return text


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# -- numbers behind the figures -------------------------------------------------------------------


def caption_labels(sample: ReinforcedSample) -> list[str]:
    labels = ["original"]
    for family, captions in sorted(sample.syn_captions.items()):
        short = family.removeprefix("syn_text").strip("_") or "syn"
        labels.extend(f"{short}{k}" for k in range(len(captions)))
    return labels


def caption_matrix(sample: ReinforcedSample) -> np.ndarray:
    """[1+S, D]: the original caption's embedding, then every family's in `caption_labels` order."""
    rows = [sample.caption_emb[None]] + [sample.syn_emb[f] for f in sorted(sample.syn_emb)]
    return np.concatenate(rows, axis=0)


def similarities(sample: ReinforcedSample, teacher: TeacherSlice) -> np.ndarray:
    """[A, 1+S] dot products of one teacher's view and caption embeddings (cosines when unit-norm)."""
    part = slice(teacher.start, teacher.stop)
    return sample.image_emb[:, part] @ caption_matrix(sample)[:, part].T
