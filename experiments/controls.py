"""Negative controls: copies of reinforced shards whose teacher image embeddings no longer fit.

- `shuffled`: each sample gets another sample's image embeddings (all its views): the KD targets
  describe a different picture;
- `permuted`: within each sample, the view parameters are rotated against the embedding rows, so
  the replayed view is a different crop than the one the stored embedding is of.

Everything else (images, captions, synthetic captions, text embeddings, config.json) is copied as
is, through the project's shard reader and writer. If reinforcement helps because the targets carry
what the teachers saw, both controls must lose most of the gain.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from shards import storage
from shards.reinforced import ReinforcedSample, ShardFormatError, iter_shard
from shards.run_folder import CONFIG_FILE
from shards.writer import ShardWriter

CONTROLS = ("shuffled", "permuted")


def _shuffled(samples: list[ReinforcedSample], rng: np.random.Generator) -> list[ReinforcedSample]:
    # A rotation of a random order: no sample keeps its own embeddings.
    order = rng.permutation(len(samples))
    donor = {int(order[k]): int(order[(k + 1) % len(order)]) for k in range(len(order))}
    return [dataclasses.replace(s, image_emb=samples[donor[i]].image_emb) for i, s in enumerate(samples)]


def _permuted(samples: list[ReinforcedSample], rng: np.random.Generator) -> list[ReinforcedSample]:
    out = []
    for sample in samples:
        views = len(sample.param_aug)
        shift = int(rng.integers(1, views)) if views > 1 else 0  # every view moves when A > 1
        out.append(dataclasses.replace(sample, param_aug=sample.param_aug[shift:] + sample.param_aug[:shift]))
    return out


def write_control(source: str, output: str, control: str, seed: int = 0) -> dict[str, int]:
    """Rewrite every shard of the reinforced folder `source` into `output`; returns sample counts."""
    if control not in CONTROLS:
        raise ValueError(f"unknown control {control!r}; choose one of {CONTROLS}")
    transform = _shuffled if control == "shuffled" else _permuted
    config = storage.read_bytes(storage.join(source, CONFIG_FILE))
    stored = json.loads(config)
    layout, dtype = stored.get("layout", "v1"), stored.get("embedding_dtype", "fp32")
    counts = {"samples": 0, "skipped": 0}
    for index, shard in enumerate(sorted(storage.match(storage.join(source, "*.tar")))):
        samples = []
        for item in iter_shard(shard):
            if isinstance(item, ShardFormatError):
                counts["skipped"] += 1
            else:
                samples.append(item)
        name = storage.basename(shard)[: -len(".tar")]
        rng = np.random.Generator(np.random.PCG64([seed, index, CONTROLS.index(control)]))
        tar, parquet = storage.join(output, f"{name}.tar"), storage.join(output, f"{name}.parquet")
        with ShardWriter(tar, parquet, layout=layout, embedding_dtype=dtype) as writer:
            for sample in transform(samples, rng) if samples else []:
                writer.write(sample)
        counts["samples"] += len(samples)
    storage.write_bytes_atomic(storage.join(output, CONFIG_FILE), config)
    return counts
