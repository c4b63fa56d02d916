"""The param_aug encoding: public layout, float32 magnitudes, older forms, versions, malformed entries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from transforms import (
    DATACOMPDR_AUGMENTATION,
    PARAM_AUG_VERSION,
    InvalidParamsError,
    UnsupportedParamVersionError,
    ViewAugmenter,
    ViewParams,
    decode_param_aug,
    encode_param_aug,
    view_rng,
)
from transforms.params import CROP, ERASE, FLIP, RAND_AUGMENT

# What DataCompDR stores for one view: crop box, then two [op, float32 magnitude] pairs.
PUBLIC_ENTRY = [[12, 40, 180, 201], [[6, 0.26999998092651367], [3, -30.45317268371582]]]


def test_public_entry_decodes_and_reencodes_byte_identically() -> None:
    params = decode_param_aug(PUBLIC_ENTRY)
    assert params == ViewParams(
        crop=(12, 40, 180, 201), ops=((6, 0.26999998092651367), (3, -30.45317268371582))
    )
    assert json.dumps(encode_param_aug(params)) == json.dumps(PUBLIC_ENTRY)


def test_sampled_magnitudes_are_float32_values_and_survive_json() -> None:
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    seen = set()
    for k in range(200):
        params = augmenter.sample(view_rng(3, "uid", k), (300, 200))
        text = json.dumps(encode_param_aug(params))
        assert decode_param_aug(json.loads(text)) == params
        assert decode_param_aug(text) == params  # the entry as a JSON string (older writers)
        for _, magnitude in params.ops:
            assert float(np.float32(magnitude)) == magnitude
            seen.add(abs(magnitude))
    assert 0.26999998092651367 in seen and 0.27 not in seen


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            [[0, 0, 5, 5], True, [[1, 0.5]]],
            ViewParams((0, 0, 5, 5), ((1, 0.5),), True, None, (CROP, FLIP, RAND_AUGMENT)),
        ),
        (
            [[0, 0, 5, 5], [[1, 0.5]], None],
            ViewParams((0, 0, 5, 5), ((1, 0.5),), None, None, (CROP, RAND_AUGMENT, ERASE)),
        ),
        (
            [[0, 0, 5, 5], False, None, [1, 2, 3, 4]],
            ViewParams((0, 0, 5, 5), None, False, (1, 2, 3, 4), (CROP, FLIP, RAND_AUGMENT, ERASE)),
        ),
        ([[0, 0, 5, 5], [1, 2, 3, 4]], ViewParams((0, 0, 5, 5), None, None, (1, 2, 3, 4), (CROP, ERASE))),
        ([[0, 0, 5, 5], None], ViewParams((0, 0, 5, 5), None)),
        ([[0, 0, 5, 5], []], ViewParams((0, 0, 5, 5), ())),
        ([[0, 0, 5, 5]], ViewParams((0, 0, 5, 5), None, steps=(CROP,))),
    ],
)
def test_every_slot_layout_round_trips(entry: list, expected: ViewParams) -> None:
    assert decode_param_aug(entry) == expected
    assert encode_param_aug(expected) == entry


@pytest.mark.parametrize(
    "older",
    [
        "[[12, 40, 180, 201], [[6, 0.26999998092651367], [3, -30.45317268371582]]]",
        [12, 40, 180, 201, 6, 0.26999998092651367, 3, -30.45317268371582],
        [[12, 40, 180, 201], [["Brightness", 0.26999998092651367], ["TranslateX", -30.45317268371582]]],
        ((12, 40, 180, 201), ((6, 0.26999998092651367), (3, -30.45317268371582))),
        [np.array([12, 40, 180, 201]), np.array([[6, 0.26999998092651367], [3, -30.45317268371582]])],
        [[12.0, 40.0, 180.0, 201.0], [[6.0, 0.26999998092651367], [3.0, -30.45317268371582]]],
        {
            "random_resized_crop": [12, 40, 180, 201],
            "rand_augment": [[6, 0.26999998092651367], [3, -30.45317268371582]],
        },
    ],
)
def test_older_forms_decode_to_the_same_view(older) -> None:
    assert decode_param_aug(older) == decode_param_aug(PUBLIC_ENTRY)


def test_flat_crop_only_and_no_erase_marker() -> None:
    assert decode_param_aug([1, 2, 3, 4]) == ViewParams((1, 2, 3, 4), None, steps=(CROP,))
    assert decode_param_aug([[1, 2, 3, 4], None, [-1, -1, -1, -1]]).erase is None


def test_unknown_version_is_refused() -> None:
    assert decode_param_aug(PUBLIC_ENTRY, version=PARAM_AUG_VERSION).crop == (12, 40, 180, 201)
    with pytest.raises(UnsupportedParamVersionError) as error:
        decode_param_aug(PUBLIC_ENTRY, version=PARAM_AUG_VERSION + 1)
    assert error.value.reason == "unsupported_param_version"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("not json", "malformed_params"),
        ([], "malformed_params"),
        ([[1, 2, 3]], "malformed_params"),
        ([[1, 2, 3, 4.5], None], "malformed_params"),
        ([[-1, 0, 3, 4], None], "box_outside_image"),
        ([[0, 0, 0, 4], None], "box_outside_image"),
        ([[0, 0, 3, 4], [[14, 0.0]]], "unknown_op"),
        ([[0, 0, 3, 4], [["Invert", 0.0]]], "unknown_op"),
        ([[0, 0, 3, 4], [[6, float("nan")]]], "bad_magnitude"),
        ([[0, 0, 3, 4], [[6, "0.27"]]], "bad_magnitude"),
        ([[0, 0, 3, 4], [[10, 9.0]]], "bad_magnitude"),
        ([[0, 0, 3, 4], [[1, 0.1, 2]]], "malformed_params"),
        ([[0, 0, 3, 4], [[1, 0.1]], None, None], "malformed_params"),
        ([[0, 0, 3, 4], [[1, 0.1]], True], "malformed_params"),
        ({"rand_augment": []}, "malformed_params"),
        ([[True, 0, 3, 4], None], "malformed_params"),
    ],
)
def test_malformed_entries_raise_a_countable_error(entry, reason: str) -> None:
    with pytest.raises(InvalidParamsError) as error:
        decode_param_aug(entry)
    assert error.value.reason == reason


@pytest.mark.parametrize(
    "steps", [(), ("rand_augment",), ("random_resized_crop", "mixup"), ("random_resized_crop",) * 2]
)
def test_view_params_refuse_unknown_or_unordered_steps(steps: tuple[str, ...]) -> None:
    with pytest.raises(InvalidParamsError):
        ViewParams(crop=(0, 0, 1, 1), ops=None, steps=steps)
