"""The run's `config.json`: written once per run, checked on resume, and read back by every consumer.

It must run as is in the public MobileCLIP trainer (contract §2), which reads only
`reinforce.image_augmentation`; the other keys are ours. Readers of public shards, which come
without one, get DataCompDR's own recipe.

`image_stack` records the decode/resize code the views were rendered with and `view_fingerprint`
what the `view_sha` fingerprints in paug.json are; a replay on another stack is noticed through
them (contract §3, docs/data-contract.md "Exact replay").
"""

from __future__ import annotations

import copy
import json
import platform
from importlib import metadata
from typing import Any

from shards import storage
from shards.reinforced import V1_FAMILY, VIEW_SHA
from shards.run_folder import CONFIG_FILE
from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter
from transforms.fingerprint import FINGERPRINT_ALGORITHM

SCHEMA_VERSION = 1
# Libraries whose versions can change the bytes we write; recorded so a run can be reproduced.
VERSIONED_LIBRARIES = (
    "datacompdr-reinforce",
    "apache-beam",
    "torch",
    "torchvision",
    "open_clip_torch",
    "transformers",
    "timm",
    "numpy",
    "pillow",
    "pyarrow",
    "webdataset",
)
# May differ on resume: a resumed run on an upgraded machine is still the same run. Its new views
# carry their own fingerprints, so a stack change shows up wherever they are replayed.
_RESUMABLE_KEYS = frozenset({"versions", "image_stack"})
# Added to config.json after runs that lack them were written; such runs still resume.
_LATER_KEYS = frozenset({"view_fingerprint", "device_kind"})
# What a device decides in config.json besides its kind: the teachers' micro-batch sizes.
_DEVICE_SIZED = ("micro_batch", "text_micro_batch")


class ConfigError(ValueError):
    """The run cannot start as configured (bad flag value, unloadable model, mismatched resume)."""


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def view_fingerprint_record() -> dict[str, str]:
    """config.json's `view_fingerprint`: what the fingerprints are and where they are stored."""
    return {"algorithm": FINGERPRINT_ALGORITHM, "member": "paug.json", "key": VIEW_SHA}


def fingerprints_checkable(config: dict[str, Any] | None) -> bool:
    """Whether stored fingerprints can be recomputed: only with the run's own view recipe (its
    config.json) and an algorithm we know (runs from before the record used ours)."""
    if not config:
        return False
    record = config.get("view_fingerprint")
    return not isinstance(record, dict) or record.get("algorithm") == FINGERPRINT_ALGORITHM


def config_bytes(config: dict[str, Any]) -> bytes:
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_or_check_run_config(
    output_dir: str, config: dict[str, Any], *, allow_device_change: bool = False
) -> bool:
    """Write config.json, or, when resuming, insist the existing one describes the same run.

    Returns True when a config was already there (a resumed run). Only library versions and the
    image stack may differ (the first ones are kept), the view recipe is compared as the augmenter
    it builds (older configs do not list to_tensor), and keys added later may be absent. A resume on
    another kind of device (`device_kind`: cpu, cuda) is refused unless `allow_device_change`.
    """
    path = storage.join(output_dir, CONFIG_FILE)
    if not storage.exists(path):
        storage.write_bytes_atomic(path, config_bytes(config))
        return False
    try:
        existing = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); remove it or pick a new --output") from exc
    before, now = existing.get("device_kind"), config.get("device_kind")
    if before and now and before != now and "auto" not in (before, now):
        if not allow_device_change:
            raise ConfigError(
                f"{path}: this run's shards were computed on {before}, and this resume would run on {now}, "
                "mixing devices in one dataset (embeddings differ in their last bits, and the teachers' "
                f"micro-batch sizes too): resume on {before}, or pass --allow-device-change to mix them "
                "knowingly (config.json keeps the first device)"
            )
        config = _as_on_device_of(existing, config)
    differing = sorted(
        key
        for key in set(existing) | set(config)
        if key not in _RESUMABLE_KEYS
        and not (key in _LATER_KEYS and key not in existing)
        and not _same_value(key, existing.get(key), json.loads(json.dumps(config.get(key))))
    )
    if differing:
        raise ConfigError(
            f"{path} was written by a run with different settings ({', '.join(differing)}); "
            "resume with the same settings or pick a new --output"
        )
    return True


def _as_on_device_of(existing: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """`config` with the existing run's device kind and device-sized settings, for comparison."""
    config = json.loads(json.dumps(config))
    config["device_kind"] = existing.get("device_kind")
    for old, new in zip(existing.get("teachers") or [], config.get("teachers") or [], strict=False):
        for key in _DEVICE_SIZED:
            if key in old:
                new[key] = old[key]
    return config


def _same_value(key: str, existing: Any, new: Any) -> bool:
    if existing == new:
        return True
    if key != "reinforce" or set(existing or {}) != set(new or {}):
        return False
    try:
        return augmenter_from_config({key: existing}) == augmenter_from_config({key: new})
    except (TypeError, ValueError, AttributeError):
        return False


def configured_families(config: dict[str, Any]) -> tuple[str, ...] | None:
    """The run's synthetic caption families (None when its config does not say): v1 `syn_text`; v2
    `caption_families` (an extended run's) or the one `caption_family`."""
    layout, family, families = (
        config.get("layout"),
        config.get("caption_family"),
        config.get("caption_families"),
    )
    if layout == "v1":
        return (V1_FAMILY,)
    if layout == "v2" and isinstance(families, dict) and families:
        return tuple(sorted(families))
    if layout == "v2" and isinstance(family, str):
        return (family,)
    return None


def image_augmentation(config: dict[str, Any] | None) -> dict[str, Any]:
    """The view recipe the data was made with: the run's, else DataCompDR's (public shards come
    without a config, and a hand-written one for them may name only the teachers)."""
    recipe = ((config or {}).get("reinforce") or {}).get("image_augmentation")
    return recipe if recipe else copy.deepcopy(DATACOMPDR_AUGMENTATION)


def augmenter_from_config(config: dict[str, Any] | None) -> ViewAugmenter:
    """The augmenter that replays the data's views; ValueError when its recipe cannot be replayed."""
    return ViewAugmenter.from_config(image_augmentation(config))
