"""What a person looks at to trust a reinforced shard: the text summary and the figures, made once.

`python -m pipeline.inspect` (terminal and `--html`) and `notebooks/inspect_shards.ipynb` both call
this module, so the report and the notebook always show the same pictures. Figures are built with
matplotlib's object API (`Figure()`, never pyplot), so no global figure state leaks between calls.
Only the first `limit` samples are decoded; counts come from the manifest and stats where a run has
them, else from walking the tars' members without decoding them.
"""

from __future__ import annotations

import dataclasses
import io
from collections import Counter
from collections.abc import Iterator

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pipeline.run_folder import (
    RunFolder,
    TeacherSlice,
    infer_slices,
    open_run,
    slices_from_dims,
)
from pipeline.shard_format import ReinforcedSample, ShardEntry, iter_entries, iter_members
from pipeline.shard_stats import ShardStats, shard_name
from transforms import (
    DATACOMPDR_AUGMENTATION,
    OP_NAMES,
    PARAM_AUG_VERSION,
    AugmentationError,
    BadImageError,
    ViewAugmenter,
    ViewParams,
    decode_image,
    decode_param_aug,
)

DEFAULT_LIMIT = 64
_UNIT_TOLERANCE = 1e-2


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
    recipe = (
        (config.get("reinforce") or {}).get("image_augmentation") if run.config else DATACOMPDR_AUGMENTATION
    )
    try:
        augmenter = ViewAugmenter.from_config(recipe) if recipe else None
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
        inferred = infer_slices(samples[0].image_emb, _UNIT_TOLERANCE)
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


# -- figures --------------------------------------------------------------------------------------


def views_figure(
    sample: ReinforcedSample,
    augmenter: ViewAugmenter | None,
    *,
    max_views: int = 8,
    version: int = PARAM_AUG_VERSION,
) -> Figure:
    """The decoded original with its crop boxes drawn, beside the views replayed from `param_aug`."""
    shown = sample.param_aug[:max_views]
    columns = min(4, max(1, len(shown)))
    rows = -(-len(shown) // columns) if shown else 1
    fig = Figure(figsize=(2.2 * (columns + 2), 2.3 * rows), dpi=90, layout="constrained")
    grid = fig.add_gridspec(rows, columns + 2)
    original = fig.add_subplot(grid[:, :2])
    original.set_axis_off()
    fig.suptitle(f"{sample.key}: original and replayed views", fontsize=9)
    try:
        image = decode_image(sample.image)
    except BadImageError as error:
        original.text(0.5, 0.5, f"no image to show\n({error.reason})", ha="center", va="center", fontsize=9)
        return fig
    original.imshow(np.asarray(image))
    original.set_title(f"original {image.width}x{image.height}", fontsize=8)
    for index, entry in enumerate(shown):
        axes = fig.add_subplot(grid[index // columns, 2 + index % columns])
        axes.set_axis_off()
        params = _params_or_none(entry, version)
        if params is None or augmenter is None:
            axes.text(0.5, 0.5, "cannot replay", ha="center", va="center", fontsize=8)
            continue
        i, j, h, w = params.crop
        colour = f"C{index % 10}"
        original.add_patch(Rectangle((j, i), w, h, fill=False, edgecolor=colour, linewidth=1.2))
        original.text(j + 2, i + 2, str(index), color=colour, fontsize=7, va="top")
        try:
            view = augmenter.apply(image, params)
        except (AugmentationError, ValueError) as error:
            axes.text(0.5, 0.5, f"cannot replay\n{error}", ha="center", va="center", fontsize=6, wrap=True)
            continue
        axes.imshow(view.permute(1, 2, 0).numpy())
        ops = ", ".join(OP_NAMES[op] for op, _ in params.ops or ()) or "no ops"
        axes.set_title(f"view {index}: {ops}", fontsize=7, color=colour)
    return fig


def _params_or_none(entry: object, version: int) -> ViewParams | None:
    try:
        return decode_param_aug(entry, version=version)
    except AugmentationError:
        return None


def similarity_figure(sample: ReinforcedSample, slices: list[TeacherSlice]) -> Figure:
    """One heatmap per teacher: every stored view against the original and synthetic captions."""
    labels = caption_labels(sample)
    fig = Figure(
        figsize=(
            1.2 + 0.45 * len(labels) * max(1, len(slices)) + 1.0 * len(slices),
            1.4 + 0.22 * sample.num_views,
        ),
        dpi=90,
        layout="constrained",
    )
    fig.suptitle(f"{sample.key}: view-caption similarity per teacher", fontsize=9)
    axes_list = fig.subplots(1, max(1, len(slices)), squeeze=False)[0]
    for axes, teacher in zip(axes_list, slices, strict=False):
        sims = similarities(sample, teacher)
        picture = axes.imshow(sims, cmap="viridis", aspect="auto", vmin=min(-0.1, sims.min()), vmax=1.0)
        axes.set_title(f"{teacher.name} ({teacher.dim})", fontsize=8)
        axes.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        axes.set_yticks(range(sample.num_views), [f"view {k}" for k in range(sample.num_views)], fontsize=6)
        fig.colorbar(picture, ax=axes, shrink=0.8)
    return fig


def norms_figure(samples: list[ReinforcedSample], slices: list[TeacherSlice]) -> Figure:
    """Histograms of every stored embedding's per-teacher norm: all should sit at 1."""
    fig = Figure(figsize=(3.2 * max(1, len(slices)), 2.6), dpi=90, layout="constrained")
    fig.suptitle(f"per-teacher embedding norms ({len(samples)} samples)", fontsize=9)
    axes_list = fig.subplots(1, max(1, len(slices)), squeeze=False)[0]
    for axes, teacher in zip(axes_list, slices, strict=False):
        part = slice(teacher.start, teacher.stop)
        groups = {
            "views": [s.image_emb[:, part] for s in samples],
            "captions": [caption_matrix(s)[:, part] for s in samples],
        }
        norms = {
            name: np.linalg.norm(np.concatenate(arrays), axis=1) for name, arrays in groups.items() if arrays
        }
        values = np.concatenate(list(norms.values())) if norms else np.ones(1)
        # Stored norms agree to ~1e-7: a fixed window around 1 keeps the bins finite and the scale honest.
        window = (min(float(values.min()), 1 - 1e-3), max(float(values.max()), 1 + 1e-3))
        for name, group in norms.items():
            axes.hist(group, bins=30, range=window, alpha=0.6, label=name)
        axes.set_title(teacher.name, fontsize=8)
        axes.set_xlabel("L2 norm", fontsize=7)
        axes.tick_params(labelsize=6)
        axes.ticklabel_format(axis="x", useOffset=False)
        axes.locator_params(axis="x", nbins=4)
        axes.legend(fontsize=6)
    return fig


def similarity_histogram_figure(samples: list[ReinforcedSample], slices: list[TeacherSlice]) -> Figure:
    """Per teacher: views against their own captions versus against other samples' original captions."""
    fig = Figure(figsize=(3.2 * max(1, len(slices)), 2.6), dpi=90, layout="constrained")
    fig.suptitle(f"view-caption similarity ({len(samples)} samples)", fontsize=9)
    axes_list = fig.subplots(1, max(1, len(slices)), squeeze=False)[0]
    for axes, teacher in zip(axes_list, slices, strict=False):
        groups: dict[str, list[np.ndarray]] = {"own original": [], "own synthetic": [], "other originals": []}
        part = slice(teacher.start, teacher.stop)
        originals = np.stack([s.caption_emb[part] for s in samples]) if samples else np.zeros((0, 0))
        for index, sample in enumerate(samples):
            sims = similarities(sample, teacher)
            groups["own original"].append(sims[:, 0])
            groups["own synthetic"].append(sims[:, 1:].ravel())
            others = np.delete(originals, index, axis=0)
            if len(others):
                groups["other originals"].append((sample.image_emb[:, part] @ others.T).ravel())
        for name, values in groups.items():
            if values and sum(v.size for v in values):
                axes.hist(np.concatenate(values), bins=30, alpha=0.5, density=True, label=name)
        axes.set_title(teacher.name, fontsize=8)
        axes.set_xlabel("similarity", fontsize=7)
        axes.tick_params(labelsize=6)
        axes.legend(fontsize=6)
    return fig


def stats_figure(overview: ShardOverview) -> Figure:
    """Skips by reason and wall time per stage, summed over the shards' stats files."""
    fig = Figure(figsize=(8, 2.8), dpi=90, layout="constrained")
    skipped, seconds = overview.skipped, overview.seconds
    fig.suptitle(
        f"run stats ({len(overview.stats)} of {len(overview.run.shards)} shards have stats)", fontsize=9
    )
    left, right = fig.subplots(1, 2)
    for axes, data, title, unit in (
        (left, skipped, "skipped samples by reason", "samples"),
        (right, seconds, "wall time per stage", "seconds"),
    ):
        axes.set_title(title, fontsize=8)
        if data:
            names = sorted(data)
            axes.barh(names, [data[n] for n in names], color="C1" if axes is left else "C0")
            axes.set_xlabel(unit, fontsize=7)
            axes.tick_params(labelsize=7)
        else:
            axes.set_axis_off()
            axes.text(0.5, 0.5, "none recorded", ha="center", va="center", fontsize=8)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes, for the HTML report."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
