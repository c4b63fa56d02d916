"""The teacher ensemble: per-teacher preprocessing and norm, declared order, batch-independent bits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from teachers import TeacherEnsemble
from teachers.ensemble import CPU_MICRO_BATCHES, CUDA_MICRO_BATCHES, fit_views


@pytest.fixture(scope="module")
def pair(tiny_checkpoints: dict[str, str]) -> TeacherEnsemble:
    return TeacherEnsemble.load(
        [tiny_checkpoints["clip-a"], tiny_checkpoints["clip-b"]], kd_logit_scales=[100.0, 70.0], micro_batch=4
    )


def _views(count: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


def test_describe_records_each_teacher_in_order(
    pair: TeacherEnsemble, tiny_checkpoints: dict[str, str]
) -> None:
    described = pair.describe()
    assert [d["spec"] for d in described] == [tiny_checkpoints["clip-a"], tiny_checkpoints["clip-b"]]
    assert [d["name"] for d in described] == ["clip-a", "clip-b"]
    assert [d["dim"] for d in described] == pair.dims == [32, 48] and pair.dim == 80
    assert [d["kd_logit_scale"] for d in described] == [100.0, 70.0]
    assert [d["image_size"] for d in described] == [[224, 224], [192, 192]]
    assert described[0]["mean"] == pytest.approx(list(open_clip.OPENAI_DATASET_MEAN))
    assert described[1]["mean"] == described[1]["std"] == [0.5, 0.5, 0.5]
    assert {d["precision"] for d in described} == {"fp32"}


def test_each_slice_is_that_teacher_alone_normalised(
    pair: TeacherEnsemble, tiny_checkpoints: dict[str, str]
) -> None:
    views = _views(3)
    texts = ["a photo of a dog", "a red car"]
    both_images, both_texts = pair.embed_images(views), pair.embed_texts(texts)
    assert both_images.shape == (3, 80) and both_texts.shape == (2, 80)
    for sl, name in ((slice(0, 32), "clip-a"), (slice(32, 80), "clip-b")):
        alone = TeacherEnsemble.load([tiny_checkpoints[name]], micro_batch=4)
        assert torch.equal(both_images[:, sl], alone.embed_images(views))
        assert torch.equal(both_texts[:, sl], alone.embed_texts(texts))
        assert torch.allclose(both_images[:, sl].norm(dim=1), torch.ones(3))
    flipped = TeacherEnsemble.load([tiny_checkpoints["clip-b"], tiny_checkpoints["clip-a"]], micro_batch=4)
    assert torch.equal(flipped.embed_images(views), torch.cat([both_images[:, 32:], both_images[:, :32]], 1))


def test_default_kd_logit_scale_is_the_teachers_own(tiny_checkpoints: dict[str, str]) -> None:
    ensemble = TeacherEnsemble.load([tiny_checkpoints["clip-a"]])
    model = open_clip.create_model(tiny_checkpoints["clip-a"])
    assert ensemble.kd_logit_scales == [pytest.approx(float(model.logit_scale.detach().exp()))]
    with pytest.raises(ValueError, match="KD logit scales"):
        TeacherEnsemble.load([tiny_checkpoints["clip-a"]], kd_logit_scales=[1.0, 2.0])


def test_views_are_preprocessed_like_the_teachers_own_eval_transform(
    pair: TeacherEnsemble, tiny_checkpoints: dict[str, str]
) -> None:
    """clip-b wants 192 px and 0.5/0.5: our tensor path must match open_clip's PIL transform."""
    views = _views(2)
    ours = pair.embed_images(views)[:, 32:]
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_checkpoints["clip-b"])
    pil = [Image.fromarray(v.permute(1, 2, 0).numpy()) for v in views]
    with torch.no_grad():
        reference = F.normalize(model.eval().encode_image(torch.stack([preprocess(p) for p in pil])), dim=-1)
    # Tensor and PIL bicubic resampling differ by at most a grey level here and there.
    assert F.cosine_similarity(ours, reference).min() > 0.999


def test_an_item_gets_the_same_bits_whatever_it_is_batched_with(pair: TeacherEnsemble) -> None:
    views = _views(11, seed=1)
    together = pair.embed_images(views)
    assert torch.equal(torch.cat([pair.embed_images(views[i : i + 1]) for i in range(11)]), together)
    order = torch.randperm(11, generator=torch.Generator().manual_seed(2))
    assert torch.equal(pair.embed_images(views[order]), together[order])
    texts = [f"a photo of {n} dogs" for n in range(37)]
    all_texts = pair.embed_texts(texts)
    assert torch.equal(torch.cat([pair.embed_texts(texts[i : i + 5]) for i in range(0, 37, 5)]), all_texts)


def test_odd_captions_never_break_the_batch(pair: TeacherEnsemble) -> None:
    texts = ["", "   ", "a dog " * 200_000, "bad \udcff surrogate", "multi\nline\tcaption", "a dog " * 100]
    embedded = pair.embed_texts(texts)
    assert embedded.shape == (6, 80) and torch.isfinite(embedded).all()
    # Beyond the context length nothing more is read: a huge caption embeds like its first tokens.
    assert torch.equal(embedded[2], embedded[5])
    assert pair.embed_texts([]).shape == (0, 80)


def test_views_of_other_sizes_are_resized_per_teacher(pair: TeacherEnsemble) -> None:
    small = pair.embed_images(_views(2, size=160))
    assert small.shape == (2, 80) and torch.isfinite(small).all()
    with pytest.raises(ValueError, match="uint8"):
        pair.embed_images(_views(2).float())


def test_bf16_weights_stay_close_to_fp32(pair: TeacherEnsemble, tiny_checkpoints: dict[str, str]) -> None:
    bf16 = TeacherEnsemble.load([tiny_checkpoints["clip-a"], tiny_checkpoints["clip-b"]], precision="bf16")
    assert {d["precision"] for d in bf16.describe()} == {"bf16"}
    views = _views(4, seed=3)
    ours, exact = bf16.embed_images(views), pair.embed_images(views)
    for sl in (slice(0, 32), slice(32, 80)):
        assert F.cosine_similarity(ours[:, sl], exact[:, sl]).min() > 0.99
    texts = bf16.embed_texts(["a dog on the beach"])
    assert F.cosine_similarity(texts, pair.embed_texts(["a dog on the beach"])).min() > 0.98
    with pytest.raises(ValueError, match="precision"):
        TeacherEnsemble.load([tiny_checkpoints["clip-a"]], precision="fp16")


def test_transformers_clip_and_siglip_teachers(
    tiny_hf_models: dict[str, Path], tiny_checkpoints: dict[str, str]
) -> None:
    specs = [f"hf:{tiny_hf_models['clip']}", str(tiny_hf_models["siglip"]), tiny_checkpoints["clip-a"]]
    ensemble = TeacherEnsemble.load(specs, micro_batch=4)
    described = ensemble.describe()
    assert [d["backend"] for d in described] == ["transformers", "transformers", "open_clip"]
    assert [d["image_size"] for d in described] == [[64, 64], [48, 48], [224, 224]]
    assert [d["resize_mode"] for d in described] == ["shortest", "squash", "shortest"]
    assert ensemble.dims == [24, 32, 32]
    views = _views(5, seed=4)
    images = ensemble.embed_images(views)
    texts = ensemble.embed_texts(["a dog", "", "cat " * 10_000])
    assert images.shape == (5, 88) and texts.shape == (3, 88)
    for sl in (slice(0, 24), slice(24, 56), slice(56, 88)):
        assert torch.allclose(images[:, sl].norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.equal(torch.cat([ensemble.embed_images(views[i : i + 1]) for i in range(5)]), images)


def _before_device_work(ensemble: TeacherEnsemble, views: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """The CPU path as it was before views moved to the teachers' device (main at cb70d53): per chunk,
    normalise on the CPU, encode, `.cpu()`; then L2-norm each teacher's slice. Kept as the reference."""
    image_parts, text_parts = [], []
    size, text_size = ensemble.micro_batch, ensemble.text_micro_batch
    for teacher in ensemble.teachers:
        mean = torch.tensor(teacher.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(teacher.std, dtype=torch.float32).view(1, 3, 1, 1)
        chunks = []
        for start in range(0, len(views), size):
            chunk = views[start : start + size]
            padded = torch.cat([chunk, torch.zeros((size - len(chunk), *chunk.shape[1:]), dtype=torch.uint8)])
            pixels = (fit_views(padded, teacher).to(torch.float32) / 255.0 - mean) / std
            chunks.append(teacher.encode_pixels(pixels).cpu()[: len(chunk)])
        image_parts.append(F.normalize(torch.cat(chunks), dim=-1))
        chunks = []
        for start in range(0, len(texts), text_size):
            chunk = texts[start : start + text_size]
            chunks.append(teacher.encode_texts(chunk + [""] * (text_size - len(chunk)))[: len(chunk)])
        text_parts.append(F.normalize(torch.cat(chunks).cpu(), dim=-1))
    return torch.cat([torch.cat(image_parts, dim=1), torch.cat(text_parts, dim=1)])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_embeddings_are_the_bytes_of_the_code_before_the_device_work(
    precision: str, tiny_checkpoints: dict[str, str], tiny_hf_models: dict[str, Path]
) -> None:
    specs = [tiny_checkpoints["clip-a"], tiny_checkpoints["clip-b"], f"hf:{tiny_hf_models['siglip']}"]
    ensemble = TeacherEnsemble.load(specs, precision=precision)
    views = _views(11, size=200, seed=5)
    texts = [f"a photo of {n} red dogs" for n in range(37)] + ["", "cat " * 500]
    ours = torch.cat([ensemble.embed_images(views), ensemble.embed_texts(texts)])
    assert ours.device.type == "cpu"
    assert ours.numpy().tobytes() == _before_device_work(ensemble, views, texts).numpy().tobytes()


def test_micro_batches_follow_the_device_and_are_recorded(pair: TeacherEnsemble) -> None:
    cpu_default = TeacherEnsemble(pair.teachers, [1.0, 1.0])
    assert (cpu_default.micro_batch, cpu_default.text_micro_batch) == CPU_MICRO_BATCHES
    on_gpu = [dataclasses.replace(t, device=torch.device("cuda", 0)) for t in pair.teachers]
    gpu_default = TeacherEnsemble(on_gpu, [1.0, 1.0])
    assert (gpu_default.micro_batch, gpu_default.text_micro_batch) == CUDA_MICRO_BATCHES
    assert gpu_default.device == torch.device("cuda", 0)
    assert CUDA_MICRO_BATCHES[0] > CPU_MICRO_BATCHES[0] and CUDA_MICRO_BATCHES[1] > CPU_MICRO_BATCHES[1]
    described = TeacherEnsemble(on_gpu, [1.0, 1.0], micro_batch=128).describe()
    assert {(d["micro_batch"], d["text_micro_batch"]) for d in described} == {(128, CUDA_MICRO_BATCHES[1])}
    assert {(d["micro_batch"], d["text_micro_batch"]) for d in pair.describe()} == {(4, 32)}
    with pytest.raises(ValueError, match="one device"):
        TeacherEnsemble([pair.teachers[0], on_gpu[1]], [1.0, 1.0])
