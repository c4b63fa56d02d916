"""The parameters of one view and their ``param_aug`` encoding (contract §3).

An encoded view is a JSON list with one slot per parameter-carrying step, in the fixed order
``random_resized_crop``, ``random_horizontal_flip``, ``rand_augment``, ``random_erase``, holding
only the steps the pipeline has (this is the public ``Compose.compress`` layout):

- ``[i, j, h, w]``: the crop box in pixels of the decoded source image (always first);
- ``true``/``false``: whether the crop was flipped;
- ``[[op, mag], ...]``: RandAugment ops (index into ``OP_NAMES``, signed float32 magnitude as a
  Python float), or ``null`` when RandAugment was skipped;
- ``[i, j, h, w]``: the erased box in pixels of the view, or ``null`` when nothing was erased.

DataCompDR stores ``[[i, j, h, w], [[op, mag], [op, mag]]]``.

Older forms that :func:`decode_param_aug` also reads: the entry as a JSON string; tuples or
NumPy arrays instead of lists; op names (``"ShearX"``) instead of indices; a flat crop-only
``[i, j, h, w]``; a flat ``[i, j, h, w, op, mag, op, mag, ...]``; the uncompressed dict
``{"random_resized_crop": [...], "rand_augment": [...], ...}``; ``[-1, ...]`` for "no erase".

``PARAM_AUG_VERSION`` names the op table and this encoding. The pipeline writes it into the run's
``config.json``; a reader passes it back and gets :class:`UnsupportedParamVersionError` for a
version it does not know, instead of silently replaying different ops. Public DataCompDR data
carries no version and is version 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from transforms.crop import Box
from transforms.errors import InvalidParamsError, UnsupportedParamVersionError
from transforms.randaugment import OP_INDEX, OP_NAMES, Op

PARAM_AUG_VERSION = 1
SUPPORTED_PARAM_AUG_VERSIONS = frozenset({1})

CROP = "random_resized_crop"
FLIP = "random_horizontal_flip"
RAND_AUGMENT = "rand_augment"
ERASE = "random_erase"
STEP_ORDER: tuple[str, ...] = (CROP, FLIP, RAND_AUGMENT, ERASE)
DATACOMPDR_STEPS: tuple[str, ...] = (CROP, RAND_AUGMENT)


@dataclass(frozen=True)
class ViewParams:
    """Everything needed to re-render one view from its source image.

    ``crop`` is ``(i, j, h, w)`` in source pixels; ``ops`` the RandAugment ``(op, magnitude)``
    pairs, None when skipped; ``flip`` None when the pipeline has no flip step; ``erase`` the
    zeroed ``(i, j, h, w)`` box in view pixels or None; ``steps`` the encoded slots, in order.
    """

    crop: Box
    ops: tuple[Op, ...] | None = ()
    flip: bool | None = None
    erase: Box | None = None
    steps: tuple[str, ...] = DATACOMPDR_STEPS

    def __post_init__(self) -> None:
        _check_box(self.crop, "crop", "box_outside_image")
        if self.erase is not None:
            _check_box(self.erase, "erase", "erase_outside_view")
        if self.ops is not None:
            for pair in self.ops:
                _check_op(pair)
        if self.flip is not None and not isinstance(self.flip, bool):
            raise InvalidParamsError(f"flip must be a bool, got {self.flip!r}")
        known = set(self.steps) <= set(STEP_ORDER)
        if (
            not known
            or self.steps[:1] != (CROP,)
            or list(self.steps) != sorted(set(self.steps), key=STEP_ORDER.index)
        ):
            raise InvalidParamsError(f"steps {self.steps} are not an ordered subset of {STEP_ORDER}")
        if (self.flip is not None) != (FLIP in self.steps):
            raise InvalidParamsError("flip is set exactly when the steps include a flip")
        if self.ops and RAND_AUGMENT not in self.steps:
            raise InvalidParamsError("ops are set but the steps have no rand_augment")
        if self.erase is not None and ERASE not in self.steps:
            raise InvalidParamsError("an erase box is set but the steps have no random_erase")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_box(box: Any, name: str, outside_reason: str) -> None:
    if not (isinstance(box, tuple) and len(box) == 4 and all(_is_int(v) for v in box)):
        raise InvalidParamsError(f"{name} must be a tuple of 4 ints (i, j, h, w), got {box!r}")
    i, j, h, w = box
    if i < 0 or j < 0 or h < 1 or w < 1:
        raise InvalidParamsError(f"{name} box {box} has a negative origin or an empty side", outside_reason)


def _check_op(pair: Any) -> None:
    if not (isinstance(pair, tuple) and len(pair) == 2 and _is_int(pair[0]) and isinstance(pair[1], float)):
        raise InvalidParamsError(f"an op must be a tuple (int, float), got {pair!r}")
    op, magnitude = pair
    if not 0 <= op < len(OP_NAMES):
        raise InvalidParamsError(f"op {op} is not in the op table (0..{len(OP_NAMES) - 1})", "unknown_op")
    if not math.isfinite(magnitude):
        raise InvalidParamsError(f"magnitude {magnitude} of op {OP_NAMES[op]} is not finite", "bad_magnitude")
    if OP_NAMES[op] == "Posterize" and not 0 <= int(magnitude) <= 8:
        raise InvalidParamsError(f"posterize needs 0..8 bits, got {magnitude}", "bad_magnitude")


def encode_param_aug(params: ViewParams) -> list[Any]:
    """The JSON-ready ``param_aug`` entry of one view."""
    entry: list[Any] = [[int(v) for v in params.crop]]
    for step in params.steps[1:]:
        if step == FLIP:
            entry.append(bool(params.flip))
        elif step == RAND_AUGMENT:
            entry.append(None if params.ops is None else [[int(op), float(mag)] for op, mag in params.ops])
        else:
            entry.append(None if params.erase is None else [int(v) for v in params.erase])
    return entry


def decode_param_aug(entry: Any, *, version: int = PARAM_AUG_VERSION) -> ViewParams:
    """Parse one stored ``param_aug`` entry (any form listed in the module docstring).

    Raises :class:`UnsupportedParamVersionError` for an unknown ``version`` and
    :class:`InvalidParamsError` for anything malformed.
    """
    if version not in SUPPORTED_PARAM_AUG_VERSIONS:
        raise UnsupportedParamVersionError(
            f"param_aug version {version!r} is not supported "
            f"(this code reads {sorted(SUPPORTED_PARAM_AUG_VERSIONS)})"
        )
    entry = _plain(_parse_json(entry))
    if isinstance(entry, dict):
        return _decode_dict(entry)
    if not isinstance(entry, list) or not entry:
        raise InvalidParamsError(f"a param_aug entry must be a non-empty list, got {entry!r}")
    if not isinstance(entry[0], list):
        return _decode_flat(entry)
    return _decode_slots(entry)


def _parse_json(entry: Any) -> Any:
    if isinstance(entry, bytes | bytearray):
        entry = entry.decode("utf-8", errors="replace")
    if isinstance(entry, str):
        try:
            return json.loads(entry)
        except json.JSONDecodeError as exc:
            raise InvalidParamsError(f"param_aug entry is not valid JSON: {exc}") from exc
    return entry


def _plain(value: Any) -> Any:
    """Tuples and arrays become lists, NumPy scalars become Python scalars."""
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParamsError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise InvalidParamsError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _box(value: Any, what: str) -> Box:
    if not (isinstance(value, list) and len(value) == 4):
        raise InvalidParamsError(f"{what} must be [i, j, h, w], got {value!r}")
    i, j, h, w = (_int(v, what) for v in value)
    return (i, j, h, w)


def _op(value: Any) -> Op:
    if not (isinstance(value, list) and len(value) == 2):
        raise InvalidParamsError(f"an op must be [op, magnitude], got {value!r}")
    op, magnitude = value
    if isinstance(op, str):
        if op not in OP_INDEX:
            raise InvalidParamsError(f"unknown op name {op!r}", "unknown_op")
        op = OP_INDEX[op]
    op = _int(op, "op index")
    if isinstance(magnitude, bool) or not isinstance(magnitude, int | float):
        raise InvalidParamsError(f"magnitude must be a number, got {magnitude!r}", "bad_magnitude")
    return (op, float(magnitude))


def _ops(value: Any) -> tuple[Op, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidParamsError(f"ops must be a list of [op, magnitude] or null, got {value!r}")
    return tuple(_op(v) for v in value)


def _erase(value: Any) -> Box | None:
    if value is None or (isinstance(value, list) and value[:1] == [-1]):
        return None
    return _box(value, "erase box")


def _is_ops_slot(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, list) for v in value)


def _decode_slots(entry: list[Any]) -> ViewParams:
    crop = _box(entry[0], "crop box")
    steps = [CROP]
    flip: bool | None = None
    ops: tuple[Op, ...] | None = None
    erase: Box | None = None
    for slot in entry[1:]:
        if isinstance(slot, bool) and steps == [CROP]:
            flip, step = slot, FLIP
        elif (slot is None or _is_ops_slot(slot)) and RAND_AUGMENT not in steps and ERASE not in steps:
            ops, step = _ops(slot), RAND_AUGMENT
        elif (slot is None or isinstance(slot, list)) and ERASE not in steps:
            erase, step = _erase(slot), ERASE
        else:
            raise InvalidParamsError(f"cannot place slot {slot!r} after steps {steps} in {entry!r}")
        steps.append(step)
    return ViewParams(crop=crop, ops=ops, flip=flip, erase=erase, steps=tuple(steps))


def _decode_flat(entry: list[Any]) -> ViewParams:
    if len(entry) < 4 or len(entry) % 2:
        raise InvalidParamsError(f"a flat entry must be [i, j, h, w, op, mag, ...], got {entry!r}")
    crop = _box(entry[:4], "crop box")
    if len(entry) == 4:
        return ViewParams(crop=crop, ops=None, steps=(CROP,))
    ops = tuple(_op(entry[k : k + 2]) for k in range(4, len(entry), 2))
    return ViewParams(crop=crop, ops=ops, steps=DATACOMPDR_STEPS)


def _decode_dict(entry: dict[str, Any]) -> ViewParams:
    unknown = set(entry) - set(STEP_ORDER)
    if unknown or CROP not in entry:
        raise InvalidParamsError(
            f"a dict entry needs {CROP!r} and only keys of {STEP_ORDER}, got {sorted(entry)}"
        )
    flip = entry.get(FLIP)
    if FLIP in entry and not isinstance(flip, bool):
        raise InvalidParamsError(f"flip must be a bool, got {flip!r}")
    steps = tuple(step for step in STEP_ORDER if step in entry)
    return ViewParams(
        crop=_box(entry[CROP], "crop box"),
        ops=_ops(entry.get(RAND_AUGMENT)),
        flip=flip,
        erase=_erase(entry.get(ERASE)),
        steps=steps,
    )
