"""What the trainer must know about the data it did not make: teacher slices, KD scales, view recipe.

Our runs record it in `config.json`; public DataCompDR shards come without one, so flags fill in
(and always override). A missing teacher width or scale is an error at start, never a guess: a
wrong split of the stored vectors would give a plausible-looking but wrong KD target.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from shards import storage
from shards.run_config import configured_families, fingerprints_checkable, image_augmentation
from shards.run_folder import CONFIG_FILE
from shards.teacher_slices import TeacherSlice, slices_from_dims
from transforms import SUPPORTED_PARAM_AUG_VERSIONS, ViewAugmenter

# Public DataCompDR shards carry no version: they use the first (and so far only) op table.
PUBLIC_PARAM_AUG_VERSION = 1


class SettingsError(ValueError):
    """The run cannot start: the data's description is missing, contradictory or unsupported."""


@dataclasses.dataclass(frozen=True)
class DataSettings:
    teacher_dims: tuple[int, ...]
    kd_logit_scales: tuple[float, ...]
    augmentation: dict[str, Any]
    param_aug_version: int
    source: str  # where the settings came from, for the log
    check_replay: bool = False  # the data's view fingerprints can be checked against our replay
    image_stack: dict[str, str] | None = None  # the decode/resize stack the views were made with
    caption_families: tuple[str, ...] | None = None  # synthetic families to draw from; None = all, pooled

    @property
    def embedding_dim(self) -> int:
        return sum(self.teacher_dims)

    @property
    def slices(self) -> list[TeacherSlice]:
        return slices_from_dims(self.teacher_dims, self.kd_logit_scales)

    def describe(self) -> dict[str, Any]:
        return {
            "teacher_dims": list(self.teacher_dims),
            "kd_logit_scales": list(self.kd_logit_scales),
            "image_augmentation": self.augmentation,
            "param_aug_version": self.param_aug_version,
            "source": self.source,
            # only when chosen, so that runs from before the choice existed resume unchanged
            **({"caption_families": list(self.caption_families)} if self.caption_families else {}),
        }


def load_run_config(path: str) -> dict[str, Any]:
    try:
        config = json.loads(storage.read_text(path))
    except (OSError, ValueError) as error:
        raise SettingsError(f"cannot read the run config {path}: {error}") from error
    if not isinstance(config, dict):
        raise SettingsError(f"{path} is not a JSON object")
    return config


def sibling_config(data_pattern: str) -> str | None:
    """`config.json` in the folder of the shards, which is where our runs write it."""
    candidate = storage.join(storage.dirname(data_pattern), CONFIG_FILE)
    try:
        return candidate if storage.exists(candidate) else None
    except Exception:  # an unreachable bucket is reported when the shards themselves are listed
        return None


def resolve_data_settings(
    config: dict[str, Any] | None,
    *,
    teacher_dims: Sequence[int] | None = None,
    kd_logit_scales: Sequence[float] | None = None,
    config_path: str | None = None,
    caption_families: Sequence[str] | None = None,
) -> DataSettings:
    """Combine the run's config (if any) with flags; flags win."""
    config = config or {}
    teachers = config.get("teachers") or []
    try:
        config_dims = [int(t["dim"]) for t in teachers]
        config_scales = [float(t["kd_logit_scale"]) for t in teachers]
    except (KeyError, TypeError, ValueError) as error:
        raise SettingsError(f"the run config's teachers lack dim/kd_logit_scale: {error}") from error
    dims = list(teacher_dims) if teacher_dims else config_dims
    scales = list(kd_logit_scales) if kd_logit_scales else config_scales
    if not dims or not scales:
        raise SettingsError(
            "teacher embedding widths and KD logit scales are unknown: pass --config RUN/config.json, or for "
            "public shards --teacher-dims and --kd-logit-scales (DataCompDR: 768,768 and 100,100; "
            "MobileCLIP2 DFNDR: 768,768 and 70,60)"
        )
    try:
        slices_from_dims(dims, scales)
    except ValueError as error:
        raise SettingsError(str(error)) from error
    try:
        augmentation = image_augmentation(config)
        ViewAugmenter.from_config(augmentation)
    except ValueError as error:
        raise SettingsError(f"the run's image_augmentation cannot be replayed: {error}") from error
    version = int(config.get("param_aug_version", PUBLIC_PARAM_AUG_VERSION))
    if version not in SUPPORTED_PARAM_AUG_VERSIONS:
        raise SettingsError(
            f"the data's param_aug version {version} is not one this trainer can replay "
            f"({sorted(SUPPORTED_PARAM_AUG_VERSIONS)}); upgrade datacompdr-reinforce"
        )
    available = configured_families(config) if config else None
    unknown = sorted(set(caption_families or ()) - set(available or ()))
    if available is not None and unknown:
        raise SettingsError(
            f"--caption-families {','.join(unknown)}: the data has no such family; it has "
            f"{', '.join(available)} (or pass all)"
        )
    source = config_path or ("flags" if not config else "config")
    stack = config.get("image_stack")
    return DataSettings(
        tuple(dims),
        tuple(scales),
        augmentation,
        version,
        source,
        check_replay=fingerprints_checkable(config),
        image_stack=stack if isinstance(stack, dict) else None,
        caption_families=tuple(caption_families) if caption_families else None,
    )


def parse_caption_families(text: str) -> tuple[str, ...] | None:
    """`--caption-families`: `all` (None: every family, pooled) or `syn_text_coca,syn_text_blip`."""
    if text.strip() == "all":
        return None
    families = tuple(part.strip() for part in text.split(",") if part.strip())
    if not families or not all(f == "syn_text" or f.startswith("syn_text_") for f in families):
        raise argparse.ArgumentTypeError(
            f"caption families look like syn_text_coca,syn_text_blip or all, not {text!r}"
        )
    return families
