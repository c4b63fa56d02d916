"""Golden values: a NumPy, Pillow, libjpeg or torch upgrade that changes stored views fails loudly here.

If one of these fails after an upgrade, views sampled before it no longer replay bit for bit: do not
update the hashes without deciding what happens to data already written (and bumping
PARAM_AUG_VERSION if the parameters themselves changed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter, decode_image, encode_param_aug, view_rng

DATA = Path(__file__).parent / "data"

EVERYTHING_ON = {
    "random_resized_crop": {"size": 96, "interpolation": "bilinear"},
    "random_horizontal_flip": {"p": 0.5},
    "rand_augment": {"num_ops": 3, "magnitude": 20},
    "random_erase": {"p": 1.0},
}

DECODED = {
    "chelsea_226x150.jpg": "27c156623d78a49bd95a46b01f388137277b45b14b5490f265d289acec9238c9",
    "coffee_cmyk_150x100.jpg": "c288a3c0508a6accd1474fb0796c534625d7a1bb8a91d2415869ebde7a478c26",
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

CONFIGS = {"datacompdr": DATACOMPDR_AUGMENTATION, "everything_on": EVERYTHING_ON}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", sorted(DECODED))
def test_decoded_pixels(name: str) -> None:
    assert _sha(decode_image((DATA / name).read_bytes()).tobytes()) == DECODED[name]


@pytest.mark.parametrize("key", sorted(VIEWS))
def test_sampled_parameters_and_rendered_pixels(key: tuple[str, str, int]) -> None:
    name, config, k = key
    augmenter = ViewAugmenter.from_config(CONFIGS[config])
    image = decode_image((DATA / name).read_bytes())
    params = augmenter.sample(view_rng(2024, name, k), image.size)
    expected_entry, expected_hash = VIEWS[key]
    assert json.dumps(encode_param_aug(params)) == expected_entry
    assert _sha(augmenter.apply(image, params).numpy().tobytes()) == expected_hash


@pytest.mark.parametrize("name", sorted(STUDENT_VIEWS))
def test_student_size_render(name: str) -> None:
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    image = decode_image((DATA / name).read_bytes())
    params = augmenter.sample(view_rng(2024, name, 1), image.size)
    assert _sha(augmenter.apply(image, params, size=256).numpy().tobytes()) == STUDENT_VIEWS[name]
