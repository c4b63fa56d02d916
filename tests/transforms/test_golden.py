"""Golden values: a NumPy, Pillow, libjpeg or torch upgrade that changes stored views fails loudly here.

If one of these fails after an upgrade, views sampled before it no longer replay bit for bit: do not
update the hashes without deciding what happens to data already written (and bumping
PARAM_AUG_VERSION if the parameters themselves changed).

The hashes belong to GOLDEN_PILLOW (issue 14). Pillow 12.3 decodes every image here identically but
resizes crops taller than the output and taller than wide differently (CROP_SHAPES
"tall_above_narrower"; measured: 196 of 3,200 DataCompDR views of the bundled photos, all of them
tall crops above 224 px, up to 7 levels): such a failure means views replay differently from what the
teachers saw, which the stored view fingerprints also report (docs/data-contract.md, "Exact replay").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import PIL
import pytest

from transforms import (
    DATACOMPDR_AUGMENTATION,
    ViewAugmenter,
    decode_image,
    decode_param_aug,
    encode_param_aug,
    view_rng,
)

DATA = Path(__file__).parent / "data"
GOLDEN_PILLOW = "13.0.0"  # the Pillow every hash below was made with

EVERYTHING_ON = {
    "random_resized_crop": {"size": 96, "interpolation": "bilinear"},
    "random_horizontal_flip": {"p": 0.5},
    "rand_augment": {"num_ops": 3, "magnitude": 20},
    "random_erase": {"p": 1.0},
}

DECODED = {
    "chelsea_226x150.jpg": "27c156623d78a49bd95a46b01f388137277b45b14b5490f265d289acec9238c9",
    "coffee_cmyk_150x100.jpg": "c288a3c0508a6accd1474fb0796c534625d7a1bb8a91d2415869ebde7a478c26",
    # skimage's "cell" (CC0) as bundled in samples/raw/00000000.tar (member 000000000011.jpg)
    "cell_667x800.jpg": "fa3e93aff211cbc0b860f1ef47ccd25cc14405064d9d835bc1a4a455e527b1a4",
}

# (file, config, view index) -> (stored param_aug entry, sha256 of the uint8 view)
VIEWS = {
    ("chelsea_226x150.jpg", "datacompdr", 0): (
        "[[86, 0, 51, 67], [[1, 0.09000000357627869], [8, -0.26999998092651367]]]",
        "d75bd190383f62a7977e5aec27e56cc0b218840f4157e1469f1d9b2aaa01ce01",
    ),
    ("chelsea_226x150.jpg", "datacompdr", 1): (
        "[[42, 127, 100, 79], [[7, 0.26999998092651367], [2, -0.09000000357627869]]]",
        "aed2c4821b792b7ae32df4ca96de1d2f15059dde040ff194faf129cfe10afe7d",
    ),
    ("coffee_cmyk_150x100.jpg", "datacompdr", 0): (
        "[[34, 68, 47, 52], [[11, 178.5], [3, -30.45317268371582]]]",
        "9cd38fa78328565290d9f363efe3e70ef3b57fb5a810d4759ac5ac589ede38be",
    ),
    ("coffee_cmyk_150x100.jpg", "datacompdr", 1): (
        "[[34, 72, 58, 55], [[12, 0.0], [8, -0.26999998092651367]]]",
        "bfead8f276f249ae495f8cc504e1a9ddd8964bb06d4f92a7cb74e28acfce9ac1",
    ),
    ("chelsea_226x150.jpg", "everything_on", 0): (
        "[[86, 0, 51, 67], false, [[9, 0.5999999642372131], [1, 0.20000000298023224], [10, 5.0]], "
        "[57, 19, 36, 75]]",
        "a99d39da8c19b26889bcc5019ecc87cc0acbf8b3a5fe5510a1e77c438a8f24c1",
    ),
    ("coffee_cmyk_150x100.jpg", "everything_on", 0): (
        "[[34, 68, 47, 52], true, [[3, -29.003021240234375], [11, 85.0], [8, -0.5999999642372131]], "
        "[41, 13, 40, 74]]",
        "7cb354fa5601bcc64b18f53e708208e5d1f0c860115c5b8aed33222fd7c1361f",
    ),
}

# The same DataCompDR view (index 1) rendered at the student's 256 px.
STUDENT_VIEWS = {
    "chelsea_226x150.jpg": "069a13a788fc0f12850384b1d5f8469bdaf15beb4137279d4b049d99e60e3d79",
    "coffee_cmyk_150x100.jpg": "c3e72776bfcd140e6d76a6bf37869f028ddb4e93a86d18f076facff19afb5edf",
}

# Crops of cell_667x800.jpg taller / wider than the 224 output and smaller than it, rendered with the
# DataCompDR recipe: name -> (param_aug entry, sha256 of the view at 224, at the student's 256).
CROP_SHAPES = {
    "tall_above_narrower": (  # h > 224 > w: every such crop differs between Pillow 12.3 and 13
        [[100, 200, 400, 180], [[0, 0.0], [0, 0.0]]],
        "a719c575edd613eb27a155139fa546683c5dcddbc0befaf42b36e8a4540848b5",
        "13eee6a086a6379d424d914d97e32d5662da2e5901554a6e6ad32650ea8f6aef",
    ),
    "tall_above_narrower_then_ops": (  # AutoContrast, then Solarize amplifies a level's difference
        [[100, 200, 400, 180], [[12, 0.0], [11, 178.5]]],
        "b085627ed83c69e3ddef90b203d09f53d2fe6adaba1e32e462b3fcb5013631b3",
        "89dbcf6016c6287d86687cfffe2dc0bc5e0f96a9a9c7174d60c6e5ba2df288ef",
    ),
    "tall_above": (
        [[50, 50, 600, 450], [[0, 0.0], [0, 0.0]]],
        "f20c1ee9317cb267f8cc4e0f0c8343acb85c8ee285d918166c37f64f19a1bb64",
        "9f2953be8e9756dbccd23c27077790cc3c1a69b1f9f5f06ef13c87dd6d4ece6b",
    ),
    "wide_above": (
        [[200, 50, 300, 500], [[0, 0.0], [0, 0.0]]],
        "275fd0450ba0295b3e700a7d45c76fe7970518e9d888e2ba5d959416acf5ea54",
        "4ada8331f90f8e984333d7ff7d4799e434b37fbf123d8b6120f91c1471a2ae26",
    ),
    "tall_below": (
        [[300, 300, 200, 150], [[0, 0.0], [0, 0.0]]],
        "617c2819916a6c432752d054254b59fd057a7b183aeda48ab31ff3df091f97c9",
        "6ab5693234fde41a266e5a5cab335224d178c4a2fcbe1e3b2efe6da8f72bb8a4",
    ),
    "wide_below": (
        [[300, 300, 150, 200], [[0, 0.0], [0, 0.0]]],
        "f75cf95e243e9d2e31bf4b03db62aa37a69b2d6988df866faa8b0511d5d59fe2",
        "56af91f0c217364d9a344d597c0b16ac15a0f4176a281a6ec5148229efcb2534",
    ),
}

CONFIGS = {"datacompdr": DATACOMPDR_AUGMENTATION, "everything_on": EVERYTHING_ON}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pillow_note() -> str:
    return f"goldens made with Pillow {GOLDEN_PILLOW}, this is Pillow {PIL.__version__}"


@pytest.mark.parametrize("name", sorted(DECODED))
def test_decoded_pixels(name: str) -> None:
    assert _sha(decode_image((DATA / name).read_bytes()).tobytes()) == DECODED[name], _pillow_note()


@pytest.mark.parametrize("shape", sorted(CROP_SHAPES))
def test_crop_shapes_above_and_below_the_output_size(shape: str) -> None:
    entry, at_224, at_256 = CROP_SHAPES[shape]
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    image = decode_image((DATA / "cell_667x800.jpg").read_bytes())
    params = decode_param_aug(entry)
    _, _, h, w = params.crop
    assert ("tall" if h > w else "wide", "above" if max(h, w) > 224 else "below") == tuple(
        shape.split("_")[:2]
    )
    assert _sha(augmenter.apply(image, params).numpy().tobytes()) == at_224, _pillow_note()
    assert _sha(augmenter.apply(image, params, size=256).numpy().tobytes()) == at_256, _pillow_note()


@pytest.mark.parametrize("key", sorted(VIEWS))
def test_sampled_parameters_and_rendered_pixels(key: tuple[str, str, int]) -> None:
    name, config, k = key
    augmenter = ViewAugmenter.from_config(CONFIGS[config])
    image = decode_image((DATA / name).read_bytes())
    params = augmenter.sample(view_rng(2024, name, k), image.size)
    expected_entry, expected_hash = VIEWS[key]
    assert json.dumps(encode_param_aug(params)) == expected_entry
    assert _sha(augmenter.apply(image, params).numpy().tobytes()) == expected_hash, _pillow_note()


@pytest.mark.parametrize("name", sorted(STUDENT_VIEWS))
def test_student_size_render(name: str) -> None:
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    image = decode_image((DATA / name).read_bytes())
    params = augmenter.sample(view_rng(2024, name, 1), image.size)
    assert _sha(augmenter.apply(image, params, size=256).numpy().tobytes()) == STUDENT_VIEWS[name], (
        _pillow_note()
    )
