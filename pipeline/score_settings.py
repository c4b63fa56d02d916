"""The settings of one score run, and its `config.json`.

A score run reads raw shards as the reinforce job does (same decoding, same `--max-image-pixels`) and
writes one score file per shard (shards/scores.py); its config records the teachers in column order,
so `score_<k>` names the k-th of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.settings import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IMAGE_PIXELS, DEVICES, PRECISIONS
from shards.run_config import SCHEMA_VERSION, ConfigError, library_versions
from shards.scores import MEAN_COLUMN, score_columns
from transforms.fingerprint import image_stack

SCORE_JOB = "score"  # config.json's `job`: what tells a score run's folder from a reinforced one


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
    input_pattern: str
    output_dir: str
    teachers: tuple[str, ...]
    preset: str | None = None  # where the teachers came from, when no --teachers named them
    precision: str = "fp32"
    batch_size: int = DEFAULT_BATCH_SIZE
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    device: str = "auto"
    allow_device_change: bool = False
    feed_workers: int = 0

    def validate(self) -> None:
        problems = []
        if not self.teachers:
            problems.append("name the teachers: --teachers SPEC,... or --preset P")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {PRECISIONS}")
        if self.batch_size < 1:
            problems.append("--batch-size must be at least 1")
        if self.max_image_pixels < 1:
            problems.append("--max-image-pixels must be at least 1")
        if self.feed_workers < 0:
            problems.append("--feed-workers must be 0 or more")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            problems.append(f"--device must be one of {DEVICES} or cuda:N")
        if problems:
            raise ConfigError("; ".join(problems))


def build_score_config(
    settings: ScoreSettings, *, teachers: list[dict[str, Any]], device_kind: str
) -> dict[str, Any]:
    """The score run's config.json; `teachers` from the loaded ensemble's describe()."""
    return {
        "schema_version": SCHEMA_VERSION,
        "job": SCORE_JOB,
        "preset": settings.preset,
        "teachers": teachers,
        "score": {
            "columns": score_columns(len(teachers)),
            "mean": MEAN_COLUMN,
            "image": "the whole decoded image through each teacher's own evaluation transform",
            "text": "the original caption",
        },
        "max_image_pixels": settings.max_image_pixels,
        "device_kind": device_kind,
        "versions": library_versions(),
        "image_stack": image_stack(),
    }
