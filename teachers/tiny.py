"""Tiny, seeded, random-init open_clip checkpoints for tests and the demo.

No pretrained weights can be downloaded here, so tests and `make demo` use these instead. They are
written in open_clip's own `local-dir:` layout and loaded by the same code path as a real
checkpoint, so the loaders are exercised for real. Each build writes byte-identical files.

Usage: `python -m teachers.tiny --out checkpoints/tiny`
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import save

from teachers.specs import LOCAL_DIR, OPEN_CLIP_CONFIG_FILE, OPEN_CLIP_WEIGHTS_FILE

# The CLIP tokenizer's ids go up to 49407, so every text tower needs the full vocabulary; the widths
# are what keeps these models small.
_VOCAB = 49408

# Two CLIP teachers with different embedding widths (so ensemble concatenation is real) and different
# preprocessing (so each teacher's own resize and mean/std are exercised), plus a CoCa captioner.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "clip-a": {
        "seed": 1001,
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
            "text_cfg": {"context_length": 77, "vocab_size": _VOCAB, "width": 32, "heads": 2, "layers": 2},
        },
        "preprocess_cfg": {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD)},
    },
    "clip-b": {
        "seed": 1002,
        "model_cfg": {
            "embed_dim": 48,
            "vision_cfg": {"image_size": 192, "layers": 2, "width": 48, "head_width": 24, "patch_size": 32},
            "text_cfg": {"context_length": 77, "vocab_size": _VOCAB, "width": 32, "heads": 2, "layers": 2},
        },
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    },
    "coca": {
        "seed": 1003,
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {
                "image_size": 224,
                "layers": 2,
                "width": 64,
                "head_width": 32,
                "patch_size": 32,
                "attentional_pool": True,
                "attn_pooler_heads": 2,
                "output_tokens": True,
            },
            "text_cfg": {
                "context_length": 76,
                "vocab_size": _VOCAB,
                "width": 32,
                "heads": 2,
                "layers": 2,
                "embed_cls": True,
                "output_tokens": True,
            },
            "multimodal_cfg": {
                "context_length": 76,
                "vocab_size": _VOCAB,
                "width": 32,
                "heads": 2,
                "layers": 2,
                "attn_pooler_heads": 2,
            },
            "custom_text": True,
        },
        "preprocess_cfg": {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD)},
    },
}

# The tiny CoCa's vocabulary projection is drawn this much wider than open_clip's init, so that its
# next-token distributions are peaked (a nucleus of tens of tokens) like a trained captioner's instead
# of flat over all 49,408 tokens: tests and the demo then exercise the realistic sampling path.
PEAKED_DECODER_LOGIT_GAIN = 6.0

TINY_NAMES: tuple[str, ...] = tuple(TINY_CONFIGS)
TINY_TEACHERS: tuple[str, ...] = ("clip-a", "clip-b")
TINY_CAPTIONER = "coca"


def local_dir_spec(path: str | Path) -> str:
    """The spec string that open_clip (and `teachers.parse_spec`) accepts for a checkpoint folder."""
    return f"{LOCAL_DIR}{Path(path).resolve()}"


def _random_state_dict(
    model_cfg: dict[str, Any], seed: int, decoder_logit_gain: float
) -> dict[str, torch.Tensor]:
    """open_clip's own initialisation, drawn from a seeded RNG that is restored afterwards.

    Module constructors only draw from torch's global generator, so it is forked: nothing outside
    this function sees the seed or loses its own random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with tempfile.TemporaryDirectory() as scratch:
            # Build through a config-only local-dir so the architecture comes from the same loader.
            Path(scratch, OPEN_CLIP_CONFIG_FILE).write_text(json.dumps({"model_cfg": model_cfg}))
            model = open_clip.create_model(f"{LOCAL_DIR}{scratch}", pretrained_text=False)
        # CoCa's constructor leaves the decoder's output projection as uninitialised memory (a real
        # checkpoint overwrites it, and open_clip's own init_parameters for it is broken in 3.3.0);
        # without this the bytes would differ from build to build.
        decoder = getattr(model, "text_decoder", None)
        if decoder is not None:
            torch.nn.init.normal_(decoder.text_projection, std=decoder_logit_gain * decoder.width**-0.5)
    # safetensors refuses aliased storage; each tensor gets its own contiguous copy.
    return {name: t.detach().clone().contiguous() for name, t in model.state_dict().items()}


def _config_text(
    model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any], recipe: dict[str, Any] | None
) -> str:
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    if recipe is not None:
        config["tiny_recipe"] = recipe
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _write_atomic(path: Path, data: bytes) -> None:
    # The temporary name must not end in .safetensors, or open_clip could pick up a half-written file.
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def write_random_checkpoint(
    out_dir: str | Path,
    model_cfg: dict[str, Any],
    preprocess_cfg: dict[str, Any],
    *,
    seed: int,
    decoder_logit_gain: float = 1.0,
    recipe: dict[str, Any] | None = None,
) -> Path:
    """Writes a seeded random-init open_clip checkpoint in `local-dir:` layout (byte-identical per seed).

    Each file appears under its final name only when complete. `recipe` is stored next to the
    configs (open_clip ignores it) to tell how the folder was made.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / OPEN_CLIP_CONFIG_FILE, _config_text(model_cfg, preprocess_cfg, recipe).encode())
    state = _random_state_dict(model_cfg, seed, decoder_logit_gain)
    # No metadata: safetensors writes it from a hash map, whose key order changes from run to run.
    _write_atomic(out / OPEN_CLIP_WEIGHTS_FILE, save(state))
    return out


def _recipe(name: str) -> dict[str, Any]:
    """Recorded in the config, so that a folder built by an older recipe is recognised and rebuilt."""
    seed = TINY_CONFIGS[name]["seed"]
    return {"name": name, "seed": seed, "decoder_logit_gain": PEAKED_DECODER_LOGIT_GAIN, "revision": 2}


def _is_current(folder: Path, name: str) -> bool:
    """A folder is reused only if it holds weights and exactly today's config (else it is stale)."""
    config = folder / OPEN_CLIP_CONFIG_FILE
    spec = TINY_CONFIGS[name]
    expected = _config_text(spec["model_cfg"], spec["preprocess_cfg"], _recipe(name))
    return (folder / OPEN_CLIP_WEIGHTS_FILE).is_file() and config.is_file() and config.read_text() == expected


def build_checkpoint(name: str, out_dir: str | Path) -> Path:
    """Writes tiny checkpoint `name` into `out_dir`."""
    spec = TINY_CONFIGS[name]
    return write_random_checkpoint(
        out_dir,
        spec["model_cfg"],
        spec["preprocess_cfg"],
        seed=spec["seed"],
        decoder_logit_gain=PEAKED_DECODER_LOGIT_GAIN,
        recipe=_recipe(name),
    )


def ensure_tiny_checkpoints(root: str | Path) -> dict[str, str]:
    """Builds whichever tiny checkpoints are missing under `root`; returns name -> `local-dir:` spec."""
    root = Path(root)
    specs: dict[str, str] = {}
    for name in TINY_NAMES:
        folder = root / name
        if not _is_current(folder, name):
            build_checkpoint(name, folder)
        specs[name] = local_dir_spec(folder)
    return specs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder that receives one sub-folder per checkpoint")
    args = parser.parse_args(argv)
    for name, spec in ensure_tiny_checkpoints(args.out).items():
        print(f"{name}: {spec}")


if __name__ == "__main__":
    main()
