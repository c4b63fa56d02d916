"""A composed view pipeline built from a DataCompDR-form config: sample parameters, then render.

Steps run in the public DataCompDR order whatever the order of the config's keys:
RandomResizedCrop -> horizontal flip -> RandAugment (on the crop at the size it was sampled for)
-> uint8 tensor -> random erasing. ``normalize`` is kept in the config for the model side and
applied with :func:`transforms.normalize`; ``to_rgb``/``to_tensor`` are accepted and implied (older
configs without them still load), and :attr:`ViewAugmenter.config` always lists ``to_tensor``, since
the public trainer builds only the transforms a config lists.

Sampling and rendering are separate pure steps: ``sample`` draws everything from the generator
it is given and the source size; ``apply`` is deterministic, and can render at another size from
the same parameters (the crop box is in source pixels; translate and erase are not rescaled).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from transforms.crop import RESAMPLING, render_crop, sample_crop
from transforms.erasing import erase, sample_erase
from transforms.params import CROP, ERASE, FLIP, RAND_AUGMENT, STEP_ORDER, ViewParams
from transforms.randaugment import Fill, apply_op, op_magnitudes, sample_ops
from transforms.seeding import draw_unit
from transforms.tensors import to_uint8_tensor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The DataCompDR-12M/1B view recipe (contract §3), in the public config's form. Copy before editing.
DATACOMPDR_AUGMENTATION: dict[str, Any] = {
    "random_resized_crop": {
        "size": 224,
        "scale": [0.08, 1.0],
        "ratio": [3.0 / 4.0, 4.0 / 3.0],
        "interpolation": "bicubic",
    },
    "rand_augment": {"enable": True, "p": 1.0, "num_ops": 2, "magnitude": 9, "num_magnitude_bins": 31},
    "normalize": {"mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)},
    "to_rgb": {"enable": True},
    "to_tensor": {"enable": True},
}

# Images with a shorter side are refused at sampling time: a 1x1 or 3x2000 source gives a view that
# is one smeared pixel column, not a photo. Our choice; callers count ImageTooSmallError.
DEFAULT_MIN_SIDE = 16

TO_TENSOR = "to_tensor"
_IMPLIED_STEPS = frozenset({"to_rgb", TO_TENSOR, "normalize"})


@dataclass(frozen=True)
class _CropConfig:
    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    interpolation: str


@dataclass(frozen=True)
class _RandAugmentConfig:
    p: float
    num_ops: int
    magnitude: int
    num_magnitude_bins: int
    interpolation: str
    fill: Fill | None


@dataclass(frozen=True)
class _EraseConfig:
    p: float
    scale: tuple[float, float]
    ratio: tuple[float, float]


class ViewAugmenter:
    """Samples view parameters and renders views; build it with :meth:`from_config`."""

    def __init__(
        self,
        crop: _CropConfig,
        rand_augment: _RandAugmentConfig | None,
        flip_p: float | None,
        erase_cfg: _EraseConfig | None,
        normalize: dict[str, list[float]] | None,
        min_side: int,
    ) -> None:
        self._crop = crop
        self._rand_augment = rand_augment
        self._flip_p = flip_p
        self._erase = erase_cfg
        self._normalize = normalize
        self.min_side = min_side
        self._crop_resample = RESAMPLING[crop.interpolation]
        # Replayed ops render with the configured interpolation and fill; torchvision's defaults otherwise.
        self._op_resample = RESAMPLING[rand_augment.interpolation if rand_augment else "nearest"]
        self._fill: Fill = (rand_augment.fill if rand_augment else None) or (0, 0, 0)
        self.steps: tuple[str, ...] = tuple(
            step
            for step, present in zip(
                STEP_ORDER,
                (True, flip_p is not None, rand_augment is not None, erase_cfg is not None),
                strict=True,
            )
            if present
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, min_side: int = DEFAULT_MIN_SIDE) -> ViewAugmenter:
        """Build from a DataCompDR-form dict; steps with ``"enable": false`` are left out.

        Raises ``ValueError`` for keys or values it does not understand: a config we would only
        half-apply would store views nobody can replay.
        """
        steps: dict[str, dict[str, Any]] = {}
        for name, options in config.items():
            if not isinstance(options, Mapping):
                raise ValueError(f"config entry {name!r} must be a dict, got {options!r}")
            options = dict(options)
            if options.pop("enable", True):
                steps[name] = options
        unknown = set(steps) - set(STEP_ORDER) - _IMPLIED_STEPS
        if unknown:
            raise ValueError(f"unsupported augmentation steps {sorted(unknown)}; known: {STEP_ORDER}")
        if CROP not in steps:
            raise ValueError(f"the config needs a {CROP!r} step: views are crops of the source image")
        return cls(
            crop=_parse_crop(steps[CROP]),
            rand_augment=_parse_rand_augment(steps[RAND_AUGMENT]) if RAND_AUGMENT in steps else None,
            flip_p=_parse_flip(steps[FLIP]) if FLIP in steps else None,
            erase_cfg=_parse_erase(steps[ERASE]) if ERASE in steps else None,
            normalize=_parse_normalize(steps["normalize"]) if "normalize" in steps else None,
            min_side=_positive_int(min_side, "min_side"),
        )

    @property
    def size(self) -> int:
        """Side of the square views the parameters are sampled for (the teachers' input size)."""
        return self._crop.size

    @property
    def config(self) -> dict[str, Any]:
        """The canonical config, every default spelled out; ``from_config(a.config)`` equals ``a``.

        It runs as is in the public trainer, which builds exactly the listed transforms in its fixed
        order: so ``to_tensor`` is listed (without it the trainer's Normalize gets a PIL image), the
        optional steps carry ``"enable": true`` as the published DataCompDR config does, and no key
        is one it would pass on to torchvision and choke on. ``normalize`` is listed when configured;
        the public trainer requires it (and replaces mean and std with its student's).
        """
        crop = self._crop
        out: dict[str, Any] = {
            CROP: {
                "size": crop.size,
                "scale": list(crop.scale),
                "ratio": list(crop.ratio),
                "interpolation": crop.interpolation,
            }
        }
        if self._flip_p is not None:
            out[FLIP] = {"enable": True, "p": self._flip_p}
        if (ra := self._rand_augment) is not None:
            out[RAND_AUGMENT] = {
                "enable": True,
                "p": ra.p,
                "num_ops": ra.num_ops,
                "magnitude": ra.magnitude,
                "num_magnitude_bins": ra.num_magnitude_bins,
            }
            if ra.interpolation != "nearest":
                out[RAND_AUGMENT]["interpolation"] = ra.interpolation
            if ra.fill is not None:
                out[RAND_AUGMENT]["fill"] = list(ra.fill)
        out[TO_TENSOR] = {"enable": True}
        if (er := self._erase) is not None:
            out[ERASE] = {
                "enable": True,
                "p": er.p,
                "scale": list(er.scale),
                "ratio": list(er.ratio),
                "value": 0,
            }
        if self._normalize is not None:
            out["normalize"] = copy.deepcopy(self._normalize)
        return out

    @property
    def mean(self) -> tuple[float, ...] | None:
        return None if self._normalize is None else tuple(self._normalize["mean"])

    @property
    def std(self) -> tuple[float, ...] | None:
        return None if self._normalize is None else tuple(self._normalize["std"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ViewAugmenter) and (self.config, self.min_side) == (
            other.config,
            other.min_side,
        )

    def __hash__(self) -> int:
        return hash((repr(self.config), self.min_side))

    def __repr__(self) -> str:
        return f"ViewAugmenter({self.config!r}, min_side={self.min_side})"

    def sample(self, rng: np.random.Generator, image_size: tuple[int, int]) -> ViewParams:
        """Draw the parameters of one view of a ``(width, height)`` source image.

        Raises :class:`ImageTooSmallError` when the source has a side below ``min_side``.
        """
        width, height = (int(v) for v in image_size)
        crop = self._crop
        box = sample_crop(rng, (width, height), crop.scale, crop.ratio, self.min_side)
        flip = None if self._flip_p is None else draw_unit(rng) < self._flip_p
        ops = None
        if (ra := self._rand_augment) is not None and (ra.p >= 1.0 or draw_unit(rng) < ra.p):
            magnitudes = op_magnitudes(ra.num_magnitude_bins, ra.magnitude, crop.size, crop.size)
            ops = sample_ops(rng, ra.num_ops, magnitudes)
        erase_box = None
        if (er := self._erase) is not None and draw_unit(rng) < er.p:
            erase_box = sample_erase(rng, crop.size, er.scale, er.ratio)
        return ViewParams(crop=box, ops=ops, flip=flip, erase=erase_box, steps=self.steps)

    def apply(self, image: Image.Image, params: ViewParams, size: int | None = None) -> torch.Tensor:
        """Render a view as uint8 ``[3, size, size]`` (un-normalised); ``size`` defaults to :attr:`size`.

        Raises :class:`InvalidParamsError` when the stored box does not fit this image.
        """
        if image.mode != "RGB":
            raise ValueError(f"views are rendered from RGB images (use decode_image), got mode {image.mode}")
        size = self.size if size is None else int(size)
        if size < 1:
            raise ValueError(f"view size must be positive, got {size}")
        view = render_crop(image, params.crop, size, self._crop_resample)
        if params.flip:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for op, magnitude in params.ops or ():
            view = apply_op(view, op, magnitude, self._op_resample, self._fill)
        tensor = to_uint8_tensor(view)
        if params.erase is not None:
            erase(tensor, params.erase)
        return tensor


def _pair(value: Any, name: str) -> tuple[float, float]:
    if not (isinstance(value, Sequence) and len(value) == 2):
        raise ValueError(f"{name} must be a pair of numbers, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not 0 < low <= high:
        raise ValueError(f"{name} must satisfy 0 < low <= high, got {value!r}")
    return (low, high)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _probability(value: Any, name: str) -> float:
    p = float(value)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return p


def _interpolation(value: Any, name: str) -> str:
    # torchvision's InterpolationMode (what the public trainer passes in) carries the name in .value.
    text = str(getattr(value, "value", value)).lower()
    text = {"cubic": "bicubic"}.get(text, text)  # the public config's alias; torchvision knows "bicubic"
    if text not in RESAMPLING:
        raise ValueError(f"{name} interpolation {value!r} is not one of {sorted(RESAMPLING)}")
    return text


def _check_keys(options: Mapping[str, Any], allowed: set[str], step: str) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unsupported {step} options {sorted(unknown)}; known: {sorted(allowed)}")


def _parse_crop(options: dict[str, Any]) -> _CropConfig:
    # antialias is accepted and dropped: Pillow always antialiases, as torchvision documents for PIL images.
    _check_keys(options, {"size", "scale", "ratio", "interpolation", "antialias"}, CROP)
    size = options.get("size")
    if isinstance(size, Sequence) and not isinstance(size, str):
        if len(size) not in (1, 2) or len(set(size)) != 1:
            raise ValueError(f"views are square; {CROP} size must be one int, got {size!r}")
        size = size[0]
    return _CropConfig(
        size=_positive_int(size, f"{CROP} size"),
        scale=_pair(options.get("scale", (0.08, 1.0)), f"{CROP} scale"),
        ratio=_pair(options.get("ratio", (3.0 / 4.0, 4.0 / 3.0)), f"{CROP} ratio"),
        interpolation=_interpolation(options.get("interpolation", "bilinear"), CROP),
    )


def _parse_rand_augment(options: dict[str, Any]) -> _RandAugmentConfig:
    _check_keys(
        options, {"p", "num_ops", "magnitude", "num_magnitude_bins", "interpolation", "fill"}, RAND_AUGMENT
    )
    num_ops, magnitude, bins = (
        int(options.get(k, d)) for k, d in (("num_ops", 2), ("magnitude", 9), ("num_magnitude_bins", 31))
    )
    if num_ops < 0 or bins < 2 or not 0 <= magnitude < bins:
        raise ValueError(
            f"{RAND_AUGMENT} needs num_ops >= 0 and 0 <= magnitude < num_magnitude_bins, got {options}"
        )
    fill = options.get("fill")
    if fill is not None:
        values = [fill] * 3 if isinstance(fill, int | float) else list(fill)
        values = values * 3 if len(values) == 1 else values
        if len(values) != 3:
            raise ValueError(f"{RAND_AUGMENT} fill must be one number or three, got {fill!r}")
        fill = (int(values[0]), int(values[1]), int(values[2]))
    interpolation = _interpolation(options.get("interpolation", "nearest"), RAND_AUGMENT)
    if interpolation not in ("nearest", "bilinear", "bicubic"):
        raise ValueError(
            f"{RAND_AUGMENT} interpolation must be nearest, bilinear or bicubic, got {interpolation}"
        )
    return _RandAugmentConfig(
        p=_probability(options.get("p", 1.0), f"{RAND_AUGMENT} p"),
        num_ops=num_ops,
        magnitude=magnitude,
        num_magnitude_bins=bins,
        interpolation=interpolation,
        fill=fill,
    )


def _parse_flip(options: dict[str, Any]) -> float:
    _check_keys(options, {"p"}, FLIP)
    return _probability(options.get("p", 0.5), f"{FLIP} p")


def _parse_erase(options: dict[str, Any]) -> _EraseConfig:
    _check_keys(options, {"p", "scale", "ratio", "value", "inplace"}, ERASE)
    if options.get("value", 0) != 0:
        raise ValueError(
            f"{ERASE} only erases with zeros (as the public DataCompDR code does), got {options['value']!r}"
        )
    return _EraseConfig(
        p=_probability(options.get("p", 0.5), f"{ERASE} p"),
        scale=_pair(options.get("scale", (0.02, 0.33)), f"{ERASE} scale"),
        ratio=_pair(options.get("ratio", (0.3, 3.3)), f"{ERASE} ratio"),
    )


def _parse_normalize(options: dict[str, Any]) -> dict[str, list[float]]:
    _check_keys(options, {"mean", "std", "inplace"}, "normalize")
    mean, std = [float(v) for v in options["mean"]], [float(v) for v in options["std"]]
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        raise ValueError(f"normalize needs 3 means and 3 non-zero stds, got {options}")
    return {"mean": mean, "std": std}
