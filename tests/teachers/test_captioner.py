"""The captioner: open_clip-equivalent greedy output, seeded reproducible sampling, per-image failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from teachers import Captioner, CaptionFailure
from teachers.captioner import run_sampling

SOT, EOT, PAD = 49406, 49407, 0


@pytest.fixture(scope="module")
def coca_that_stops(tiny_checkpoints: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny CoCa with the end and pad tokens made likely, so captions end in all the ways they can
    (early end token, sampled pad token, forced end at the last position)."""
    source = Path(tiny_checkpoints["coca"].removeprefix("local-dir:"))
    folder = tmp_path_factory.mktemp("coca-that-stops")
    shutil.copy(source / "open_clip_config.json", folder)
    state = load_file(source / "open_clip_model.safetensors")
    state["text_decoder.text_projection"][:, EOT] *= 20
    state["text_decoder.text_projection"][:, PAD] *= 2
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


@pytest.fixture(scope="module")
def captioner(tiny_checkpoints: dict[str, str]) -> Captioner:
    # Shorter than the contract's 30 tokens only to keep the suite fast; nothing here depends on it.
    return Captioner.load(tiny_checkpoints["coca"], micro_batch=3, seq_len=12)


def _images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    shapes = [(int(rng.integers(40, 300)), int(rng.integers(40, 300))) for _ in range(count)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def _until_stop(row: list[int]) -> list[int]:
    end = next((i for i, t in enumerate(row[1:], start=1) if t in (EOT, PAD)), len(row) - 1)
    return row[: end + 1]


def test_greedy_is_token_identical_to_open_clip_generate(coca_that_stops: str) -> None:
    ours = Captioner.load(coca_that_stops, top_k=1)
    model, _, preprocess = open_clip.create_model_and_transforms(coca_that_stops)
    pixels = torch.stack([preprocess(image) for image in _images(8, seed=1)])
    with torch.no_grad():
        reference = model.eval().generate(pixels, generation_type="top_k", top_k=1, seq_len=30, min_seq_len=5)
    expected = [_until_stop(row) for row in reference.tolist()]
    got = [samples[0] for samples in ours.caption_tokens(pixels, list(range(8)), 1)]
    assert got == expected
    endings = {(len(seq) < 30, seq[-1]) for seq in got}
    assert {(True, PAD), (True, EOT), (False, EOT)} <= endings  # every way of stopping was exercised


def test_same_seed_same_captions_whatever_the_batch(captioner: Captioner) -> None:
    images, seeds = _images(7), list(range(100, 107))
    together = captioner.caption(images, seeds, 3)
    assert all(isinstance(c, list) and len(c) == 3 for c in together)
    alone = [captioner.caption([image], [seed], 3)[0] for image, seed in zip(images, seeds, strict=True)]
    reversed_ = captioner.caption(images[::-1], seeds[::-1], 3)[::-1]
    assert together == alone == reversed_


def test_seeds_and_sample_indices_give_different_captions(captioner: Captioner) -> None:
    image = _images(1, seed=3)[0]
    first, second = captioner.caption([image, image], [1, 2], 2)
    assert len(set(first) | set(second)) == 4
    assert captioner.caption([image], [1], 3)[0][:2] == first  # sample k does not depend on S


def test_sampled_captions_follow_the_stopping_rules(coca_that_stops: str) -> None:
    captioner = Captioner.load(coca_that_stops, seq_len=12, min_seq_len=4)
    pixels = torch.randn(6, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    for samples in captioner.caption_tokens(pixels, list(range(6)), 4):
        for seq in samples:
            assert seq[0] == SOT and 2 <= len(seq) <= 12 and seq[-1] in (EOT, PAD)
            assert EOT not in seq[1:-1] and PAD not in seq[1:-1]
            if seq[-1] == EOT:
                assert len(seq) >= 5  # the end token is banned until 4 tokens exist


def test_a_short_chunk_decodes_only_as_long_as_its_own_captions(coca_that_stops: str) -> None:
    """The blank images that fill a short chunk are never sampled and never keep the loop going."""
    captioner = Captioner.load(coca_that_stops, micro_batch=8)
    steps = []
    start = captioner.backend.start

    def counting_start(pixels: torch.Tensor, num_samples: int, max_len: int) -> object:
        decoder = start(pixels, num_samples, max_len)
        step = decoder.step

        def counted(tokens: torch.Tensor) -> torch.Tensor:
            steps.append(tokens.shape[0])
            return step(tokens)

        decoder.step = counted
        return decoder

    captioner.backend.start = counting_start
    pixels = captioner.backend.preprocess(_images(1, seed=11)[0]).unsqueeze(0)
    tokens = run_sampling(captioner.backend, pixels, [1], 2, captioner.settings, chunk_images=8)
    longest = max(len(seq) for seq in tokens[0])
    assert set(steps) == {16}  # the model still runs the chunk's fixed shape (8 images x 2 samples)
    assert longest < 30 and len(steps) == longest - 1  # no step after the real captions ended
    assert longest < 30


def test_text_is_cut_at_the_first_period_without_special_tokens(captioner: Captioner) -> None:
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    body = tokenizer.encode("a dog on the beach. it is sunny")
    decode = captioner.backend.decode
    assert decode([SOT, *body, EOT]) == "a dog on the beach"
    assert decode([SOT, *tokenizer.encode("two cats"), SOT, *tokenizer.encode("one bird"), EOT]) == "one bird"
    assert decode([SOT, *tokenizer.encode("wow"), PAD]) == "wow !"
    assert decode([SOT, EOT]) == ""


def test_a_bad_image_fails_alone(captioner: Captioner) -> None:
    good = _images(2, seed=7)
    results = captioner.caption([good[0], "not an image", Image.new("RGB", (0, 0)), good[1]], [1, 2, 3, 4], 2)
    assert isinstance(results[1], CaptionFailure) and results[1].reason == "not_an_image"
    assert isinstance(results[2], CaptionFailure) and results[2].reason == "unreadable_image"
    assert results[0] == captioner.caption([good[0]], [1], 2)[0]
    assert results[3] == captioner.caption([good[1]], [4], 2)[0]
    with pytest.raises(ValueError, match="seeds"):
        captioner.caption(good, [1], 2)


def test_bf16_captioner_runs_without_autocast(tiny_checkpoints: dict[str, str]) -> None:
    captioner = Captioner.load(tiny_checkpoints["coca"], precision="bf16", seq_len=12)
    results = captioner.caption(_images(2, seed=8), [1, 2], 2)
    assert all(isinstance(r, list) and len(r) == 2 for r in results)
    assert captioner.describe()["precision"] == "bf16"


def test_describe(captioner: Captioner, tiny_checkpoints: dict[str, str]) -> None:
    described = captioner.describe()
    assert described["spec"] == tiny_checkpoints["coca"]
    assert (described["method"], described["top_p"], described["seq_len"], described["min_seq_len"]) == (
        "top_p",
        0.9,
        12,
        5,
    )
    assert Captioner.load(tiny_checkpoints["coca"]).describe()["seq_len"] == 30  # the contract's default
    assert described["temperature"] == 1.0 and described["image_size"] == [224, 224]
    assert described["micro_batch"] == 3  # part of the run's identity: it fixes the tensor shapes
    assert described["sampler_version"] == 2  # a uniform picks another token than version 1 did


def test_blip_greedy_matches_transformers_generate(tiny_hf_models: dict[str, Path]) -> None:
    from transformers import BlipForConditionalGeneration

    ours = Captioner.load(str(tiny_hf_models["blip"]), top_k=1, seq_len=20, min_seq_len=5)
    model = BlipForConditionalGeneration.from_pretrained(tiny_hf_models["blip"]).eval()
    pixels = torch.stack([ours.backend.preprocess(image) for image in _images(4, seed=9)])
    with torch.no_grad():
        reference = model.generate(pixel_values=pixels, do_sample=False, max_length=20, min_length=5).tolist()
    got = [samples[0] for samples in ours.caption_tokens(pixels, [0, 1, 2, 3], 1)]
    for mine, theirs in zip(got, reference, strict=True):
        theirs = _until_stop_blip(theirs, ours.backend.eos_id)
        # transformers stops at max_length without an end token; we force one in the last position.
        assert mine == theirs or (len(theirs) == 20 and mine[:-1] == theirs[:-1])


def _until_stop_blip(row: list[int], eos: int) -> list[int]:
    end = next((i for i, t in enumerate(row[1:], start=1) if t == eos), len(row) - 1)
    return row[: end + 1]


def test_blip_sampling_is_seeded(tiny_hf_models: dict[str, Path]) -> None:
    captioner = Captioner.load(f"hf:{tiny_hf_models['blip']}", micro_batch=2)
    images = _images(3, seed=10)
    together = captioner.caption(images, [5, 6, 7], 2)
    assert together == [captioner.caption([im], [s], 2)[0] for im, s in zip(images, [5, 6, 7], strict=True)]
    assert all(isinstance(c, list) and len(c) == 2 for c in together)
    assert captioner.describe()["backend"] == "transformers"
