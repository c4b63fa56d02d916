"""ViewAugmenter: config handling, bad sizes and boxes, sampling that behaves like torchvision's."""

from __future__ import annotations

import copy
import math
import pickle
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from tests.public_trainer import public_transforms
from transforms import (
    DATACOMPDR_AUGMENTATION,
    AugmentationError,
    ImageTooSmallError,
    InvalidParamsError,
    ViewAugmenter,
    ViewParams,
    normalize,
    view_rng,
)
from transforms.crop import sample_crop


@pytest.fixture(scope="module")
def augmenter() -> ViewAugmenter:
    return ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)


@pytest.fixture(scope="module")
def photo(make_pixels) -> Image.Image:
    return Image.fromarray(make_pixels(150, 100, 11), "RGB")


def test_datacompdr_config_is_understood(augmenter: ViewAugmenter) -> None:
    assert augmenter.size == 224
    assert augmenter.config == {
        "random_resized_crop": {
            "size": 224,
            "scale": [0.08, 1.0],
            "ratio": [0.75, 4 / 3],
            "interpolation": "bicubic",
        },
        "rand_augment": {"enable": True, "p": 1.0, "num_ops": 2, "magnitude": 9, "num_magnitude_bins": 31},
        "to_tensor": {"enable": True},
        "normalize": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    }
    assert ViewAugmenter.from_config(augmenter.config) == augmenter


def test_configs_written_before_to_tensor_was_listed_still_load(augmenter: ViewAugmenter) -> None:
    older = {k: v for k, v in augmenter.config.items() if k != "to_tensor"}
    older["rand_augment"] = {k: v for k, v in older["rand_augment"].items() if k != "enable"}
    assert ViewAugmenter.from_config(older) == augmenter


def test_config_key_order_and_disabled_steps_and_interpolation_enums() -> None:
    config = copy.deepcopy(DATACOMPDR_AUGMENTATION)
    shuffled = dict(reversed(list(config.items())))
    shuffled["random_erase"] = {"enable": False, "p": 1.0}
    shuffled["random_resized_crop"]["interpolation"] = (
        InterpolationMode.BICUBIC
    )  # as the public trainer passes it
    assert ViewAugmenter.from_config(shuffled) == ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    assert (
        DATACOMPDR_AUGMENTATION["random_resized_crop"]["interpolation"] == "bicubic"
    )  # input left untouched


@pytest.mark.parametrize(
    "change",
    [
        {"mixup": {"alpha": 1.0}},
        {"random_resized_crop": {"size": [224, 256]}},
        {"random_resized_crop": {"size": 224, "scale": [1.0, 0.08]}},
        {"random_resized_crop": {"size": 224, "interpolation": "fancy"}},
        {"rand_augment": {"magnitude": 31}},
        {"rand_augment": {"p": 1.5}},
        {"rand_augment": {"typo": 1}},
        {"random_erase": {"value": "random"}},
        {"normalize": {"mean": [0.5], "std": [0.0]}},
    ],
)
def test_configs_we_cannot_honour_are_refused(change: dict) -> None:
    config = copy.deepcopy(DATACOMPDR_AUGMENTATION) | change
    with pytest.raises(ValueError):
        ViewAugmenter.from_config(config)


def test_a_crop_step_is_required() -> None:
    with pytest.raises(ValueError, match="random_resized_crop"):
        ViewAugmenter.from_config({"rand_augment": {}})


@pytest.mark.parametrize("size", [(1, 1), (3, 2000), (2000, 3), (15, 400)])
def test_degenerate_images_are_refused_at_sampling(augmenter: ViewAugmenter, size: tuple[int, int]) -> None:
    with pytest.raises(ImageTooSmallError) as error:
        augmenter.sample(view_rng(0, "u", 0), size)
    assert error.value.reason == "image_too_small"
    assert isinstance(error.value, AugmentationError | ValueError)


def test_the_minimum_side_is_a_choice() -> None:
    tiny_ok = ViewAugmenter.from_config({"random_resized_crop": {"size": 8}}, min_side=1)
    image = Image.new("RGB", (1, 1), (10, 200, 30))
    view = tiny_ok.apply(image, tiny_ok.sample(view_rng(0, "u", 0), image.size))
    assert view.shape == (3, 8, 8) and view.reshape(3, -1).unique(dim=1).tolist() == [[10], [200], [30]]


def test_smallest_accepted_image_renders(augmenter: ViewAugmenter, make_pixels, reference) -> None:
    image = Image.fromarray(make_pixels(16, 16, 1), "RGB")
    for k in range(20):
        params = augmenter.sample(view_rng(1, "small", k), image.size)
        assert torch.equal(augmenter.apply(image, params), reference(image, params, 224))


@pytest.mark.parametrize("box", [(0, 0, 101, 10), (95, 0, 10, 10), (0, 141, 10, 10), (0, 0, 10, 151)])
def test_a_stored_box_outside_the_image_is_refused_at_replay(augmenter, photo, box) -> None:
    with pytest.raises(InvalidParamsError) as error:
        augmenter.apply(photo, ViewParams(crop=box, ops=()))
    assert error.value.reason == "box_outside_image"
    augmenter.apply(photo, ViewParams(crop=(0, 0, 100, 150), ops=()))  # the whole image is fine


def test_an_erase_box_that_does_not_fit_a_smaller_render_is_refused(photo) -> None:
    augmenter = ViewAugmenter.from_config({"random_resized_crop": {"size": 64}, "random_erase": {"p": 1.0}})
    params = ViewParams(crop=(0, 0, 50, 50), ops=None, erase=(40, 40, 20, 20), steps=augmenter.steps)
    view = augmenter.apply(photo, params)
    assert int(view[:, 40:60, 40:60].max()) == 0 and int(view.max()) > 0
    with pytest.raises(InvalidParamsError) as error:
        augmenter.apply(photo, params, size=48)
    assert error.value.reason == "erase_outside_view"


def test_only_rgb_images_are_rendered(augmenter) -> None:
    with pytest.raises(ValueError, match="RGB"):
        augmenter.apply(Image.new("L", (32, 32)), ViewParams(crop=(0, 0, 32, 32)))


def test_same_seed_same_view_different_seed_different_view(augmenter, photo) -> None:
    first = augmenter.sample(view_rng(5, "abc", 0), photo.size)
    assert augmenter.sample(view_rng(5, "abc", 0), photo.size) == first
    others = {
        augmenter.sample(view_rng(*key), photo.size) for key in [(6, "abc", 0), (5, "abd", 0), (5, "abc", 1)]
    }
    assert first not in others and len(others) == 3


def test_no_global_random_state_is_read_or_written(augmenter, photo) -> None:
    def global_states() -> tuple:
        return (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist())

    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    before = global_states()
    params = augmenter.sample(view_rng(9, "x", 2), photo.size)
    augmenter.apply(photo, params)
    assert global_states() == before  # nothing written
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    assert augmenter.sample(view_rng(9, "x", 2), photo.size) == params  # nothing read
    random.setstate(saved[0])
    np.random.set_state(saved[1])
    torch.set_rng_state(saved[2])


def test_crop_sampling_has_torchvision_distribution() -> None:
    """Same law as T.RandomResizedCrop.get_params: compare means over 3,000 draws (fixed seeds, exact)."""
    image = Image.new("RGB", (320, 240))
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    torch_state = torch.get_rng_state()
    torch.manual_seed(1234)
    theirs = np.array([T.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(3000)])
    torch.set_rng_state(torch_state)
    rng = view_rng(0, "distribution", 0)
    ours = np.array([sample_crop(rng, image.size, scale, ratio, 1) for _ in range(3000)])
    for boxes in (ours, theirs):
        assert boxes[:, 0].min() >= 0 and (boxes[:, 0] + boxes[:, 2]).max() <= 240
    area = lambda b: (b[:, 2] * b[:, 3]).mean() / (320 * 240)  # noqa: E731
    log_aspect = lambda b: np.log(b[:, 3] / b[:, 2]).mean()  # noqa: E731
    centre = lambda b: (b[:, 1] + b[:, 3] / 2).mean()  # noqa: E731
    assert area(ours) == pytest.approx(area(theirs), abs=0.02)
    assert log_aspect(ours) == pytest.approx(log_aspect(theirs), abs=0.03)
    assert centre(ours) == pytest.approx(centre(theirs), abs=3)


def test_centre_crop_fallback_equals_torchvision() -> None:
    """An impossible scale makes every try miss: both fall back to the same centre crop."""
    for width, height in [(20, 300), (300, 20), (100, 100), (17, 23)]:
        image = Image.new("RGB", (width, height))
        expected = T.RandomResizedCrop.get_params(image, [50.0, 60.0], [3 / 4, 4 / 3])
        ours = sample_crop(view_rng(0, "c", 0), (width, height), (50.0, 60.0), (3 / 4, 4 / 3), 16)
        assert ours == tuple(expected)


def test_randaugment_choices_are_uniform_and_signs_balanced(augmenter) -> None:
    counts = np.zeros(14, dtype=int)
    negative = positive = 0
    for k in range(2000):
        for op, magnitude in augmenter.sample(view_rng(2, "ops", k), (256, 256)).ops:
            counts[op] += 1
            negative += magnitude < 0
            positive += magnitude > 0
    assert counts.sum() == 4000 and counts.min() > 4000 / 14 * 0.8 and counts.max() < 4000 / 14 * 1.2
    assert 0.4 < negative / (negative + positive) < 0.5  # signed ops flip half the time; 5 of 14 are unsigned


def test_probabilities_skip_steps() -> None:
    augmenter = ViewAugmenter.from_config(
        {
            "random_resized_crop": {"size": 32},
            "random_horizontal_flip": {"p": 0.5},
            "rand_augment": {"p": 0.25},
            "random_erase": {"p": 0.5},
        }
    )
    draws = [augmenter.sample(view_rng(4, "p", k), (64, 64)) for k in range(1000)]
    assert 0.45 < np.mean([d.flip for d in draws]) < 0.55
    assert 0.2 < np.mean([d.ops is not None for d in draws]) < 0.3
    assert 0.45 < np.mean([d.erase is not None for d in draws]) < 0.55


def test_student_size_renders_the_same_box_not_a_rescaled_one(augmenter, photo, reference) -> None:
    params = augmenter.sample(view_rng(8, "student", 0), photo.size)
    student = augmenter.apply(photo, params, size=256)
    assert torch.equal(student, reference(photo, params, 256))
    only_crop = ViewParams(crop=params.crop, ops=())
    i, j, h, w = params.crop
    manual = F.pil_to_tensor(photo.crop((j, i, j + w, i + h)).resize((256, 256), Image.Resampling.BICUBIC))
    assert torch.equal(augmenter.apply(photo, only_crop, size=256), manual)


def test_normalize_equals_to_tensor_then_normalize(augmenter, photo) -> None:
    views = torch.stack(
        [augmenter.apply(photo, augmenter.sample(view_rng(0, "n", k), photo.size)) for k in range(3)]
    )
    mean, std = augmenter.mean, augmenter.std
    pipeline = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    expected = torch.stack([pipeline(F.to_pil_image(v)) for v in views])
    ours = normalize(views, mean, std)
    assert ours.dtype == torch.float32 and torch.equal(ours, expected)
    assert math.isclose(float(ours.mean()), float(expected.mean()))
    with pytest.raises(TypeError):
        normalize(views.float(), mean, std)


def test_augmenter_pickles_for_beam(augmenter, photo) -> None:
    clone = pickle.loads(pickle.dumps(augmenter))
    assert clone == augmenter
    params = clone.sample(view_rng(1, "pickle", 0), photo.size)
    assert params == augmenter.sample(view_rng(1, "pickle", 0), photo.size)
    assert torch.equal(clone.apply(photo, params), augmenter.apply(photo, params))


def test_canonical_config_with_every_step_runs_in_the_public_trainer(photo) -> None:
    """Built by the public trainer's rules (tests/public_trainer.py): every listed step, in its order."""
    config = ViewAugmenter.from_config(
        copy.deepcopy(DATACOMPDR_AUGMENTATION)
        | {"random_horizontal_flip": {"p": 0.5}, "random_erase": {"p": 0.25}}
    ).config
    run_config = {"reinforce": {"image_augmentation": config}}
    compose = public_transforms(run_config, (0.5,) * 3, (0.25,) * 3)
    assert [type(t) for t in compose.transforms] == [
        T.RandomResizedCrop,
        T.RandomHorizontalFlip,
        T.RandAugment,
        T.ToTensor,
        T.RandomErasing,
        T.Normalize,
    ]
    pixels = compose(photo)
    assert pixels.dtype == torch.float32 and pixels.shape == (3, 224, 224)
