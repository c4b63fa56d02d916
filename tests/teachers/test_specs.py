"""Model specs: every form a user can write parses, and an unreachable hub fails fast and helpfully."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from teachers import Captioner, ModelLoadError, TeacherEnsemble, parse_spec

# Not a speed target: a guard that a missing network makes loading fail instead of hang.
_HANG_GUARD_S = 30.0


def test_open_clip_forms(tmp_path: Path) -> None:
    tagged = parse_spec("ViT-L-14@openai")
    assert (tagged.backend, tagged.model_id, tagged.pretrained) == ("open_clip", "ViT-L-14", "openai")
    hub = parse_spec("hf-hub:apple/DFN2B-CLIP-ViT-L-14")
    assert (hub.backend, hub.model_id, hub.pretrained) == (
        "open_clip",
        "hf-hub:apple/DFN2B-CLIP-ViT-L-14",
        None,
    )
    local = parse_spec(f"local-dir:{tmp_path}")
    assert (local.backend, local.model_id, local.is_local) == ("open_clip", f"local-dir:{tmp_path}", True)
    (tmp_path / "open_clip_config.json").write_text("{}")
    bare = parse_spec(str(tmp_path))
    assert (bare.backend, bare.model_id) == ("open_clip", f"local-dir:{tmp_path}")


def test_transformers_forms(tmp_path: Path) -> None:
    hub = parse_spec("hf:openai/clip-vit-base-patch32")
    assert (hub.backend, hub.model_id, hub.is_local) == (
        "transformers",
        "openai/clip-vit-base-patch32",
        False,
    )
    (tmp_path / "config.json").write_text("{}")
    for spec in (str(tmp_path), f"hf:{tmp_path}"):
        parsed = parse_spec(spec)
        assert (parsed.backend, parsed.model_id, parsed.name, parsed.is_local) == (
            "transformers",
            str(tmp_path),
            tmp_path.name,
            True,
        )


@pytest.mark.parametrize(
    "spec", ["", "ViT-L-14", "@openai", "ViT-L-14@", "hf-hub:justaname", "hf:", "local-dir:"]
)
def test_malformed_specs_are_rejected(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_spec(spec)


@pytest.mark.parametrize(
    "spec", ["ViT-L-14@openai", "hf-hub:apple/DFN2B-CLIP-ViT-L-14", "hf:openai/clip-vit-base-patch32"]
)
def test_offline_hub_teacher_fails_fast_with_a_way_out(spec: str) -> None:
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        TeacherEnsemble.load([spec])
    assert time.monotonic() - started < _HANG_GUARD_S
    assert spec in str(err.value)
    assert "local-dir:" in str(err.value) or "save_pretrained" in str(err.value)


def test_offline_hub_captioner_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="local-dir:PATH"):
        Captioner.load("coca_ViT-L-14@mscoco_finetuned_laion2B-s13B-b90k")
    assert time.monotonic() - started < _HANG_GUARD_S


@pytest.mark.parametrize(
    ("load", "spec", "meant"),
    [
        (lambda spec: TeacherEnsemble.load([spec]), "ViT-L-41@openai", "ViT-L-14"),
        (Captioner.load, "coca_ViT-L14@mscoco_finetuned_laion2B-s13B-b90k", "coca_ViT-L-14"),
    ],
)
def test_unknown_architecture_names_the_closest_ones(load, spec: str, meant: str) -> None:
    with pytest.raises(ModelLoadError) as err:
        load(spec)
    message = str(err.value)
    assert spec in message and meant in message
    assert len(message) < 400  # a few names, not open_clip's whole list


def test_unreachable_hub_without_offline_flag_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="unreachable"):
        TeacherEnsemble.load(["hf-hub:apple/DFN2B-CLIP-ViT-L-14"])
    assert time.monotonic() - started < _HANG_GUARD_S


def test_missing_or_broken_local_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="complete checkpoint"):
        TeacherEnsemble.load([f"local-dir:{tmp_path / 'nowhere'}"])
    (tmp_path / "open_clip_config.json").write_text("not json")
    with pytest.raises(ModelLoadError):
        TeacherEnsemble.load([f"local-dir:{tmp_path}"])


def test_wrong_kind_of_model_is_a_load_error(
    tiny_checkpoints: dict[str, str], tiny_hf_models: dict[str, Path]
) -> None:
    with pytest.raises(ModelLoadError, match="CoCa"):
        Captioner.load(tiny_checkpoints["clip-a"])
    with pytest.raises(ModelLoadError, match="CLIPModel or SiglipModel"):
        TeacherEnsemble.load([str(tiny_hf_models["blip"])])
    with pytest.raises(ModelLoadError, match="BLIP"):
        Captioner.load(str(tiny_hf_models["clip"]))
