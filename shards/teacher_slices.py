"""Which columns of the stored D-wide embeddings belong to which teacher, and the one unit-norm rule.

Contract §2: each teacher's embedding is L2-normalised on its own, then the teachers are concatenated
in config order. The job, the validator, the report and the trainer all split vectors the same way
and all judge "unit norm" with the same tolerance, which bf16 storage (≈ 3 significant digits) sets.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

# bf16 keeps 8 significant bits: a unit vector stored in it has a norm within ~4e-3 of 1.
UNIT_NORM_TOLERANCE = 1e-2
MAX_INFERRED_TEACHERS = 8


@dataclasses.dataclass(frozen=True)
class TeacherSlice:
    """Columns [start, start + dim) of the stored vectors; `kd_logit_scale` when the trainer needs it."""

    name: str
    start: int
    dim: int
    kd_logit_scale: float | None = None

    @property
    def stop(self) -> int:
        return self.start + self.dim


def slices_from_dims(
    dims: Sequence[int],
    kd_logit_scales: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> list[TeacherSlice]:
    """Slices from widths (config.json's or `--teacher-dims 768,768` for public shards), in order."""
    if not dims:
        raise ValueError("at least one teacher is needed")
    if kd_logit_scales is not None and len(kd_logit_scales) != len(dims):
        raise ValueError(f"{len(dims)} teacher widths but {len(kd_logit_scales)} KD logit scales")
    if any(int(d) < 1 for d in dims) or any(s <= 0 for s in kd_logit_scales or ()):
        raise ValueError(
            f"teacher widths must be >= 1 and KD scales > 0, got {list(dims)}, {kd_logit_scales}"
        )
    slices, start = [], 0
    for index, dim in enumerate(dims):
        name = names[index] if names and index < len(names) else f"teacher {index}"
        scale = float(kd_logit_scales[index]) if kd_logit_scales is not None else None
        slices.append(TeacherSlice(name, start, int(dim), scale))
        start += int(dim)
    return slices


def slices_from_config(config: dict[str, Any]) -> list[TeacherSlice] | None:
    """Slices named and scaled by config.json's `teachers`; None when it lists none.

    Raises ValueError when a listed teacher has no usable positive `dim`.
    """
    teachers = config.get("teachers")
    if not isinstance(teachers, list) or not teachers:
        return None
    dims, names, scales = [], [], []
    for index, teacher in enumerate(teachers):
        dim = teacher.get("dim") if isinstance(teacher, dict) else None
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"teachers[{index}] has no positive integer dim")
        dims.append(dim)
        names.append(str(teacher.get("name") or teacher.get("spec") or f"teacher {index}"))
        scales.append(teacher.get("kd_logit_scale"))
    usable_scales = all(isinstance(s, int | float) and s > 0 for s in scales)
    return slices_from_dims(dims, [float(s) for s in scales] if usable_scales else None, names)


def parse_teacher_dims(text: str) -> list[int]:
    """`768,768` -> [768, 768]: the `--teacher-dims` type of every command that takes it."""
    try:
        dims = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"teacher widths look like 768,768, not {text!r}") from None
    if any(dim < 1 for dim in dims):
        raise argparse.ArgumentTypeError(f"teacher widths must be positive, not {text!r}")
    return dims


def slice_norms(rows: np.ndarray, teacher: TeacherSlice) -> np.ndarray:
    return np.linalg.norm(np.asarray(rows, dtype=np.float32)[:, teacher.start : teacher.stop], axis=1)


def is_unit_norm(norms: np.ndarray) -> np.ndarray:
    """Per row: within the tolerance of 1 (NaN is not)."""
    return np.abs(norms - 1.0) <= UNIT_NORM_TOLERANCE


def infer_slices(image_emb: np.ndarray) -> list[TeacherSlice] | None:
    """Teacher widths of a shard without config: the fewest equal slices, each unit-norm in every row."""
    dim = image_emb.shape[1]
    for count in range(1, MAX_INFERRED_TEACHERS + 1):
        if dim % count:
            continue
        slices = slices_from_dims([dim // count] * count)
        if all(is_unit_norm(slice_norms(image_emb, s)).all() for s in slices):
            return slices
    return None
