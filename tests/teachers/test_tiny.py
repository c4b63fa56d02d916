"""The tiny checkpoints are the foundation of every other test: they must load and embed like real ones."""

from __future__ import annotations

import hashlib
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from teachers.tiny import TINY_CAPTIONER, TINY_NAMES, TINY_TEACHERS, ensure_tiny_checkpoints


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    ensure_tiny_checkpoints(tmp_path / "one")
    ensure_tiny_checkpoints(tmp_path / "two")
    one, two = _digests(tmp_path / "one"), _digests(tmp_path / "two")
    assert len(one) == 2 * len(TINY_NAMES)
    assert one == two


def test_stale_or_partial_folder_is_rebuilt(tmp_path: Path) -> None:
    specs = ensure_tiny_checkpoints(tmp_path)
    folder = Path(specs["clip-a"].removeprefix("local-dir:"))
    good = _digests(tmp_path)
    (folder / "open_clip_model.safetensors").unlink()
    (tmp_path / "clip-b" / "open_clip_config.json").write_text("{}")
    ensure_tiny_checkpoints(tmp_path)
    assert _digests(tmp_path) == good


@pytest.mark.parametrize("name", TINY_TEACHERS)
def test_teacher_loads_through_open_clip_and_embeds(tiny_checkpoints: dict[str, str], name: str) -> None:
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_checkpoints[name])
    tokenizer = open_clip.get_tokenizer(tiny_checkpoints[name])
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (2, 300, 200, 3), dtype=torch.uint8, generator=generator).numpy()
    images = torch.stack([preprocess(Image.fromarray(p)) for p in pixels])
    assert images.shape[-2:] == model.visual.image_size
    with torch.no_grad():
        image_emb = model.encode_image(images, normalize=True)
        text_emb = model.encode_text(tokenizer(["a photo of a cat", "a dog"]), normalize=True)
    assert image_emb.shape == text_emb.shape == (2, model.text_projection.shape[1])
    assert torch.isfinite(image_emb).all() and torch.isfinite(text_emb).all()
    # Random init must still tell inputs apart, or ensemble tests would pass vacuously.
    assert not torch.allclose(image_emb[0], image_emb[1])
    assert not torch.allclose(text_emb[0], text_emb[1])


def test_teachers_differ_in_width_and_preprocessing(tiny_checkpoints: dict[str, str]) -> None:
    models = [open_clip.create_model(tiny_checkpoints[name]) for name in TINY_TEACHERS]
    widths = {m.text_projection.shape[1] for m in models}
    sizes = {m.visual.image_size for m in models}
    means = {tuple(m.visual.preprocess_cfg["mean"]) for m in models}
    assert len(widths) == len(sizes) == len(means) == len(TINY_TEACHERS)


def test_captioner_loads_and_generates(tiny_checkpoints: dict[str, str]) -> None:
    model = open_clip.create_model(tiny_checkpoints[TINY_CAPTIONER])
    assert isinstance(model, open_clip.CoCa)
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = model.generate(image, generation_type="top_k", top_k=1, seq_len=8)
    assert tokens.shape[0] == 1 and 1 < tokens.shape[1] <= 8
