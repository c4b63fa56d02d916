"""What a join run is: its flags, and the `config.json` its output carries.

The output must train as is, so it needs a config.json like a reinforcement run's. Our own runs
bring one (`--config`, or `config.json` beside the reinforced shards) and it is kept, plus a `join`
section. The public release has none: the teacher widths must then come from `--teacher-dims`
(DataCompDR: 768,768), the view recipe is DataCompDR's, and layout, embedding dtype and the view and
caption counts are read from the first reinforced sample.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from pipeline.join_pairs import ON_MISMATCH, JoinShardSettings
from shards import storage
from shards.reinforced import V1_FAMILY, iter_entries
from shards.run_config import SCHEMA_VERSION, ConfigError, image_augmentation, library_versions
from shards.run_folder import CONFIG_FILE
from shards.teacher_slices import infer_slices, is_unit_norm, slice_norms, slices_from_config

PUBLIC_KD_LOGIT_SCALE = 100.0  # DataCompDR's (contract §4)
PUBLIC_PARAM_AUG_VERSION = 1


@dataclasses.dataclass(frozen=True)
class JoinSettings:
    reinforced_pattern: str
    raw_pattern: str
    output_dir: str
    raw_metadata_pattern: str | None = None
    on_mismatch: str = "skip"
    config_path: str | None = None
    teacher_dims: tuple[int, ...] | None = None
    kd_logit_scales: tuple[float, ...] | None = None
    rejoin_missing: bool = False

    def validate(self) -> None:
        if self.on_mismatch not in ON_MISMATCH:
            raise ConfigError(f"--on-mismatch must be one of {', '.join(ON_MISMATCH)}")
        if self.kd_logit_scales and not self.teacher_dims:
            raise ConfigError("--kd-logit-scales needs --teacher-dims")
        if self.teacher_dims and self.kd_logit_scales and len(self.teacher_dims) != len(self.kd_logit_scales):
            raise ConfigError("--teacher-dims and --kd-logit-scales must name the same number of teachers")


@dataclasses.dataclass(frozen=True)
class SampleShape:
    """What the first good reinforced sample says about all of them."""

    layout: str
    embedding_dtype: str
    caption_family: str | None
    num_views: int
    num_captions: int
    image_emb: np.ndarray  # the first sample's, to check teacher widths against
    where: str  # that sample's key and shard, for messages


def first_sample_shape(reinforced_paths: list[str]) -> SampleShape:
    for path in reinforced_paths:
        for entry in iter_entries(path, require_image=False):
            sample = entry.sample
            if sample is None:
                continue
            families = sorted(sample.syn_captions)
            layout = "v1" if families == [V1_FAMILY] else "v2"
            return SampleShape(
                layout=layout,
                embedding_dtype="bf16" if "pth.gz" in entry.members else "fp32",
                caption_family=families[0] if len(families) == 1 else None,
                num_views=sample.num_views,
                num_captions=len(sample.syn_captions[families[0]]) if families else 0,
                image_emb=sample.image_emb,
                where=f"sample {entry.key} of {path}",
            )
    raise ConfigError("no reinforced shard holds a readable sample")


def source_config(settings: JoinSettings) -> dict[str, Any] | None:
    """The reinforced side's config.json: `--config`, else the one beside the reinforced shards."""
    path = settings.config_path or storage.join(storage.dirname(settings.reinforced_pattern), CONFIG_FILE)
    if not storage.exists(path):
        if settings.config_path:
            raise ConfigError(f"--config {path} does not exist")
        return None
    try:
        config = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is not a JSON object")
    return config


def join_run_config(
    settings: JoinSettings, shape: SampleShape, source: dict[str, Any] | None
) -> dict[str, Any]:
    """The output's config.json: the source's (flags override its teacher widths), else one built
    from the flags and the first sample."""
    join = {"on_mismatch": settings.on_mismatch}  # the inputs, which a rejoin adds to: join_inputs.json
    config = dict(source or {})
    if settings.teacher_dims:
        scales = settings.kd_logit_scales or (PUBLIC_KD_LOGIT_SCALE,) * len(settings.teacher_dims)
        config["teachers"] = [
            {"name": f"teacher {index}", "dim": dim, "kd_logit_scale": scale}
            for index, (dim, scale) in enumerate(zip(settings.teacher_dims, scales, strict=True))
        ]
    elif not config.get("teachers"):
        raise ConfigError(
            "the reinforced shards come without config.json: give the teacher widths with --teacher-dims "
            "(DataCompDR-12M/-1B: 768,768; add --kd-logit-scales 70,60 for MobileCLIP2's DFNDR) or --config"
        )
    check_teacher_widths(
        config, shape, "--teacher-dims" if settings.teacher_dims else "config.json's teachers"
    )
    config.setdefault("schema_version", SCHEMA_VERSION)
    config.setdefault("layout", shape.layout)
    config.setdefault("embedding_dtype", shape.embedding_dtype)
    config.setdefault("caption_family", shape.caption_family)
    config.setdefault("reinforce", {"image_augmentation": image_augmentation(None)})
    config.setdefault("num_views", shape.num_views)
    config.setdefault("num_captions", shape.num_captions)
    config.setdefault("param_aug_version", PUBLIC_PARAM_AUG_VERSION)
    config.setdefault("versions", library_versions())
    config["join"] = join
    return config


def check_teacher_widths(config: dict[str, Any], shape: SampleShape, given_by: str) -> None:
    """The teachers' widths must add up to the stored embeddings' and cut them into unit-norm slices
    (contract §2), or the output's config.json would describe other data than its shards."""
    try:
        slices = slices_from_config(config)
    except ValueError as error:
        raise ConfigError(f"{given_by}: {error}") from None
    assert slices is not None
    dims = ",".join(str(s.dim) for s in slices)
    width = shape.image_emb.shape[1]
    fitting = infer_slices(shape.image_emb)
    hint = f" (equal unit-norm slices would be {','.join(str(s.dim) for s in fitting)})" if fitting else ""
    if sum(s.dim for s in slices) != width:
        raise ConfigError(
            f"{given_by} {dims} add up to {sum(s.dim for s in slices)}, but the embeddings are {width} "
            f"wide ({shape.where}): give the teachers' real widths{hint}"
        )
    for teacher in slices:
        norms = slice_norms(shape.image_emb, teacher)
        if not is_unit_norm(norms).all():
            worst = float(norms[np.argmax(np.abs(norms - 1.0))])
            raise ConfigError(
                f"{given_by} {dims}: columns {teacher.start}-{teacher.stop - 1} of the embeddings are not "
                f"one teacher's unit-norm slice (norm {worst:.3g}, {shape.where}): give the "
                f"teachers' real widths{hint}"
            )


def shard_settings(settings: JoinSettings, config: dict[str, Any]) -> JoinShardSettings:
    return JoinShardSettings(
        output_dir=settings.output_dir,
        layout=config["layout"],
        embedding_dtype=config["embedding_dtype"],
        on_mismatch=settings.on_mismatch,
        teacher_dims=tuple(int(t["dim"]) for t in config["teachers"]),
    )
