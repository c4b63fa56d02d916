"""The settings of one reinforcement run, and what of them goes into the run's `config.json`.

`ReinforceSettings` is what every worker needs (plain values, cheap to pickle into the Beam graph;
models travel as spec strings, never as objects). `config.json` is written once, atomically, before
any shard (shards/run_config.py): a resumed run must have the same config, or its shards would not
belong together.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.selection import Selection
from shards.run_config import SCHEMA_VERSION, ConfigError, library_versions, view_fingerprint_record
from transforms.fingerprint import image_stack

PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
# Decompression-bomb cap (≈ 5800² px): far above DataComp's 512-px images, far below a worker's memory.
DEFAULT_MAX_IMAGE_PIXELS = 2**25
DEFAULT_BATCH_SIZE = 64


@dataclasses.dataclass(frozen=True)
class ReinforceSettings:
    input_pattern: str
    output_dir: str
    preset: str
    teachers: tuple[str, ...]
    kd_logit_scales: tuple[float, ...]
    captioner: str
    num_views: int
    num_captions: int
    seed: int = 0
    precision: str = "fp32"
    embedding_dtype: str = "fp32"
    layout: str = "v1"
    caption_tag: str = "coca"
    batch_size: int = DEFAULT_BATCH_SIZE
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    device: str = "auto"  # where workers run the models: auto = the worker's GPU if it has one
    allow_device_change: bool = False  # a resume may run on another device kind than the run began on
    feed_workers: int = 0  # decode/augment processes per worker; 0 = one read-ahead thread (no bytes change)
    selection: Selection | None = None  # which samples to reinforce (pipeline/selection.py); None = all

    def validate(self) -> None:
        problems = []
        if not self.teachers:
            problems.append("at least one teacher is needed")
        if len(self.kd_logit_scales) != len(self.teachers):
            problems.append(f"{len(self.teachers)} teachers but {len(self.kd_logit_scales)} KD logit scales")
        if any(scale <= 0 for scale in self.kd_logit_scales):
            problems.append("KD logit scales must be positive")
        if not self.captioner:
            problems.append("a captioner spec is needed")
        if self.num_views < 1:
            problems.append("--num-views must be at least 1")
        if self.num_captions < 1:
            problems.append("--num-captions must be at least 1")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {PRECISIONS}")
        if self.embedding_dtype not in ("fp32", "bf16"):
            problems.append("--embedding-dtype must be fp32 or bf16")
        if self.layout not in ("v1", "v2"):
            problems.append("--layout must be v1 or v2")
        if not self.caption_tag.replace("_", "").isalnum():
            problems.append("--caption-tag must be letters, digits and underscores")
        if self.batch_size < 1:
            problems.append("--batch-size must be at least 1")
        if self.feed_workers < 0:
            problems.append("--feed-workers must be 0 or more")
        if self.max_image_pixels < 1:
            problems.append("--max-image-pixels must be at least 1")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            problems.append(f"--device must be one of {DEVICES} or cuda:N")
        if not 0 <= self.seed < 2**63:
            problems.append("--seed must be in [0, 2**63)")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def caption_family(self) -> str:
        """v1 stores the one family `syn_text`; v2 names it `syn_text_<tag>` as the public v2 shards do."""
        return "syn_text" if self.layout == "v1" else f"syn_text_{self.caption_tag}"

    @property
    def caption_group(self) -> int:
        """Images per captioner call, so that it generates about `batch_size` captions at once."""
        return max(1, self.batch_size // self.num_captions)


def build_run_config(
    settings: ReinforceSettings,
    *,
    teachers: list[dict[str, Any]],
    captioner: dict[str, Any],
    image_augmentation: dict[str, Any],
    param_aug_version: int,
    device_kind: str,
) -> dict[str, Any]:
    """The run's config.json content; `teachers`/`captioner` come from the loaded models' describe()."""
    return {
        "schema_version": SCHEMA_VERSION,
        "layout": settings.layout,
        "embedding_dtype": settings.embedding_dtype,
        "teachers": teachers,
        "captioner": {**captioner, "num_captions": settings.num_captions},
        "caption_family": settings.caption_family,
        "reinforce": {"image_augmentation": image_augmentation},
        "num_views": settings.num_views,
        "num_captions": settings.num_captions,
        "param_aug_version": param_aug_version,
        "seed": settings.seed,
        "preset": settings.preset,
        "max_image_pixels": settings.max_image_pixels,
        "device_kind": device_kind,  # cpu or cuda (auto: each worker's, in its shards' stats)
        "versions": library_versions(),
        # exact replay needs the same decode/resize code; each view's fingerprint says if a replay matches
        "image_stack": image_stack(),
        "view_fingerprint": view_fingerprint_record(),
        # only when chosen, so that runs of every sample keep the config they always had
        **({"selection": settings.selection.record()} if settings.selection else {}),
    }
