"""The pictures of a reinforced shard: replayed views, similarities, norms, run stats.

The HTML report and the notebook draw with these same functions. Figures are built with matplotlib's
object API (`Figure()`, never pyplot), so no global figure state leaks between calls.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from inspection.overview import ShardOverview, caption_labels, caption_matrix, similarities
from shards.reinforced import ReinforcedSample
from shards.teacher_slices import TeacherSlice
from transforms import (
    OP_NAMES,
    PARAM_AUG_VERSION,
    AugmentationError,
    BadImageError,
    ViewAugmenter,
    ViewParams,
    decode_image,
    decode_param_aug,
)

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
