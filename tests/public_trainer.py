"""The public MobileCLIP trainer's DR transform builder, reduced to its rules (issue 14, contract §2).

It reads `config["reinforce"]["image_augmentation"]` and builds torchvision v1 transforms from the
keys it knows, in its own fixed order, whatever the order of the config: random_resized_crop ->
random_horizontal_flip -> rand_augment -> to_tensor -> random_erase -> normalize. A step that is
not listed is not applied (no implied to_tensor); `"enable": false` turns a listed step off;
`normalize` is required and gets the student's mean and std; `to_rgb` and keys it does not know are
ignored. Interpolations are written as names in the config and become InterpolationMode;
rand_augment's `p` is the chance the whole RandAugment applies.

Tests build the public transform list with this, never with our own reading of the config, so a
config.json that only our ViewAugmenter understands fails here.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

PUBLIC_ORDER = (
    "random_resized_crop",
    "random_horizontal_flip",
    "rand_augment",
    "to_tensor",
    "random_erase",
    "normalize",
)


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in options.items() if k != "enable"}
    if isinstance(out.get("interpolation"), str):
        out["interpolation"] = T.InterpolationMode(out["interpolation"])
    return out


def _rand_augment(options: dict[str, Any]) -> Callable[[Any], Any]:
    p = float(options.pop("p", 1.0))
    transform = T.RandAugment(**options)
    return transform if p >= 1.0 else T.RandomApply([transform], p=p)


_BUILDERS: dict[str, Callable[[dict[str, Any]], Callable[[Any], Any]]] = {
    "random_resized_crop": lambda o: T.RandomResizedCrop(**o),
    "random_horizontal_flip": lambda o: T.RandomHorizontalFlip(**o),
    "rand_augment": _rand_augment,
    "to_tensor": lambda o: T.ToTensor(),
    "random_erase": lambda o: T.RandomErasing(**o),
}


def public_transforms(config: Mapping[str, Any], mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """The Compose the public trainer builds from a run's config.json for a student with `mean`/`std`."""
    recipe = config["reinforce"]["image_augmentation"]
    if "normalize" not in recipe:
        raise KeyError("the public trainer requires image_augmentation.normalize")
    steps = []
    for name in PUBLIC_ORDER:
        options = recipe.get(name)
        if options is None or not options.get("enable", True):
            continue
        if name == "normalize":
            steps.append(T.Normalize(mean=list(mean), std=list(std)))
        else:
            steps.append(_BUILDERS[name](_options(options)))
    return T.Compose(steps)


def public_decode(image_bytes: bytes) -> Image.Image:
    """webdataset's "pilrgba" decode, then RGB: the public loader's image (contract §3)."""
    with Image.open(io.BytesIO(image_bytes)) as image:
        image.load()
        return image.convert("RGBA").convert("RGB")


def public_sample(
    config: Mapping[str, Any], image_bytes: bytes, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """One sample through the public pipeline: a normalised float tensor, or the error it raises."""
    return public_transforms(config, mean, std)(public_decode(image_bytes))
