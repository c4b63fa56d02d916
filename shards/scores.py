"""Image-text scores: how well a sample's image and its original caption agree under each teacher.

Two places carry them, with the same column names so one query filters either:
- a score run's `NNNNNNNN.parquet` (`python -m pipeline.score`): uid, url, `score_<k>` per teacher
  (config order), `score_mean`, the decoded image's width and height, the caption's length;
- every reinforced shard's parquet sidecar (shards/writer.py): `score_<k>` and `score_mean` of the
  stored original-caption row against the stored first view.

A score is the cosine of the two embeddings within one teacher's slice, in float64 (DataComp's CLIP
score, without its ×100 or clamp at 0), and `score_mean` their mean over teachers.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards import storage

MEAN_COLUMN = "score_mean"
ROWS_PER_GROUP = 256  # as the reinforced parquet: the bytes depend on the rows alone


def score_columns(num_teachers: int) -> list[str]:
    """`score_0` .. `score_<T-1>`: one per teacher, in config.json's `teachers` order."""
    return [f"score_{k}" for k in range(num_teachers)]


def slice_cosines(images: np.ndarray, texts: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """float64 [N, T]: per teacher slice, the cosine of row i of `images` and row i of `texts` ([N, D])."""
    images, texts = np.atleast_2d(images).astype(np.float64), np.atleast_2d(texts).astype(np.float64)
    if images.shape != texts.shape or images.shape[1] != sum(dims):
        raise ValueError(f"rows {images.shape} and {texts.shape} do not hold teachers of widths {list(dims)}")
    columns, start = [], 0
    for dim in dims:
        a, b = images[:, start : start + dim], texts[:, start : start + dim]
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        columns.append(np.einsum("nd,nd->n", a, b) / np.where(norms > 0, norms, 1.0))
        start += dim
    return np.stack(columns, axis=1)


def score_values(cosines: np.ndarray) -> dict[str, Any]:
    """One sample's score columns from its [T] cosines: `score_<k>` and `score_mean`."""
    names = score_columns(len(cosines))
    values: dict[str, Any] = {name: float(c) for name, c in zip(names, cosines, strict=True)}
    values[MEAN_COLUMN] = float(np.mean(cosines))
    return values


def score_fields(num_teachers: int) -> list[pa.Field]:
    return [pa.field(name, pa.float64()) for name in [*score_columns(num_teachers), MEAN_COLUMN]]


def score_file_schema(num_teachers: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("uid", pa.string()),
            pa.field("url", pa.string()),
            *score_fields(num_teachers),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("caption_length", pa.int32()),
        ]
    )


def write_score_file(path: str, rows: list[dict[str, Any]], num_teachers: int) -> None:
    """One shard's score rows as parquet, atomically under its final name."""
    schema = score_file_schema(num_teachers)
    table = pa.table({f.name: pa.array([row[f.name] for row in rows], f.type) for f in schema}, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=ROWS_PER_GROUP)
    storage.write_bytes_atomic(path, buffer.getvalue())


def read_columns(path: str, columns: list[str]) -> pa.Table:
    """Some columns of any parquet, local or remote; ValueError naming what is missing."""
    parquet = pq.ParquetFile(io.BytesIO(storage.read_bytes(path)))
    missing = [c for c in columns if c not in parquet.schema_arrow.names]
    if missing:
        raise ValueError(f"{path} has no column {', '.join(missing)}")
    return parquet.read(columns=columns)
