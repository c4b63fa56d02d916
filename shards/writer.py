"""Stream reinforced samples into a shard's tar and parquet, both committed atomically together.

Memory stays bounded by one parquet row group, never the shard. Row groups hold a fixed number of
rows, so the parquet bytes depend on the samples alone, not on how callers batched them.

Given the teachers' widths, each row also carries the sample's image-text scores (shards/scores.py)
computed from what is stored: the original caption's row (`text_emb` row 0) against the first
view's row (`image_emb` row 0), per teacher slice, so a finished dataset filters with pandas or DuckDB.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards import storage
from shards.reinforced import (
    IMAGE_SHA256,
    EmbeddingDtype,
    Layout,
    ReinforcedSample,
    encode_sample,
    open_tar_writer,
    to_float32_rounded,
)
from shards.scores import score_fields, score_values, slice_cosines

ROWS_PER_GROUP = 256


def parquet_schema(dim: int | None, families: list[str], num_teachers: int = 0) -> pa.Schema:
    """One row per sample; embeddings as fixed-size float lists once the width is known; a score
    column per teacher and their mean when the teachers are known."""
    vector = pa.list_(pa.float32(), dim) if dim else pa.list_(pa.float32())
    fields = [
        pa.field("uid", pa.string()),
        pa.field("key", pa.string()),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field(IMAGE_SHA256, pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("param_aug", pa.string()),
        pa.field("image_emb", pa.list_(vector)),
        pa.field("caption_emb", vector),
    ]
    for family in families:
        fields.append(pa.field(family, pa.list_(pa.string())))
        fields.append(pa.field(f"{family}_emb", pa.list_(vector)))
    if num_teachers:
        fields.extend(score_fields(num_teachers))
    return pa.schema(fields)


class ShardWriter:
    """`with ShardWriter(tar, parquet) as w: w.write(sample)`; nothing appears unless the block succeeds."""

    def __init__(
        self,
        tar_path: str,
        parquet_path: str,
        layout: Layout = "v1",
        embedding_dtype: EmbeddingDtype = "fp32",
        teacher_dims: Sequence[int] = (),
    ) -> None:
        self.tar_path = tar_path
        self.parquet_path = parquet_path
        self.layout = layout
        self.embedding_dtype = embedding_dtype
        self.teacher_dims = list(teacher_dims)  # none: no score columns
        # Learnt from the first sample; the schema of an empty shard's parquet leaves them open.
        self.embedding_dim: int | None = None
        self.families: list[str] | None = None
        self.count = 0
        self._files: list[tuple[str, str, BinaryIO]] = []
        self._tar: Any = None
        self._parquet: pq.ParquetWriter | None = None
        self._parquet_file: BinaryIO | None = None
        self._rows: list[dict[str, Any]] = []

    def __enter__(self) -> ShardWriter:
        self._tar = open_tar_writer(self._open(self.tar_path))
        self._parquet_file = self._open(self.parquet_path)
        return self

    def _open(self, path: str) -> BinaryIO:
        tmp, f = storage.create_temporary(path)
        self._files.append((tmp, path, f))
        return f

    def write(self, sample: ReinforcedSample) -> None:
        self._tar.write(encode_sample(sample, self.layout, self.embedding_dtype))
        self._rows.append(self._row(sample))
        self.count += 1
        if len(self._rows) >= ROWS_PER_GROUP:
            self._flush_rows()

    def _row(self, sample: ReinforcedSample) -> dict[str, Any]:
        if self.embedding_dim is None:
            self.embedding_dim = sample.dim
        if self.families is None:
            self.families = sorted(sample.syn_captions)
        meta = sample.meta
        row = {
            "uid": sample.uid,
            "key": str(meta.get("key", sample.key)),
            "url": sample.url,
            "caption": sample.caption,
            "sha256": meta.get("sha256"),
            IMAGE_SHA256: meta.get(IMAGE_SHA256),
            "width": meta.get("width"),
            "height": meta.get("height"),
            "param_aug": json.dumps(sample.param_aug),
            "image_emb": self._stored(sample.image_emb),
            "caption_emb": self._stored(sample.caption_emb)[None],
        }
        for family in self.families:
            row[family] = sample.syn_captions[family]
            row[f"{family}_emb"] = self._stored(sample.syn_emb[family])
        if self.teacher_dims:
            first_view, caption = row["image_emb"][:1], row["caption_emb"]
            cosines = (
                slice_cosines(first_view, caption, self.teacher_dims)[0]
                if len(first_view)
                else np.full(len(self.teacher_dims), np.nan)  # no view stored: no score
            )
            row.update(score_values(cosines))
        return row

    def _stored(self, array: np.ndarray) -> np.ndarray:
        return to_float32_rounded(array, self.embedding_dtype)

    def _flush_rows(self) -> None:
        schema = parquet_schema(self.embedding_dim, self.families or [], len(self.teacher_dims))
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._parquet_file, schema, compression="zstd")
        if self._rows:
            columns = {}
            for field in schema:
                values = [row[field.name] for row in self._rows]
                columns[field.name] = (
                    self._vectors(values, field.type)
                    if field.name.endswith("_emb")
                    else pa.array(values, field.type)
                )
            table = pa.table(columns, schema=schema)
            self._parquet.write_table(table, row_group_size=ROWS_PER_GROUP)
            self._rows = []

    def _vectors(self, arrays: list[np.ndarray], column_type: pa.DataType) -> pa.Array:
        """[n_i, D] arrays as a list<vector> column, or [1, D] ones as a plain vector column."""
        flat = pa.array(np.concatenate([a.reshape(-1) for a in arrays]), pa.float32())
        vectors = pa.FixedSizeListArray.from_arrays(flat, self.embedding_dim)
        if not pa.types.is_list(column_type):
            return vectors
        offsets = np.concatenate([[0], np.cumsum([a.shape[0] for a in arrays])]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), vectors)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._flush_rows()
            self._parquet.close()
            self._tar.close()
            for _, _, f in self._files:
                f.close()
            for tmp, path, _ in self._files:
                storage.commit(tmp, path)
            return
        with contextlib.suppress(Exception):
            self._tar.close()
        for tmp, _, f in self._files:
            with contextlib.suppress(Exception):
                f.close()
            with contextlib.suppress(Exception):
                storage.delete(tmp)
