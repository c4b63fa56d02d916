"""Model specs a user can write, and failing fast and clearly when one cannot be loaded.

Accepted forms:
  - `ARCH@PRETRAINED`   open_clip built-in architecture and pretrained tag (or a weights file path)
  - `hf-hub:ORG/NAME`   an open_clip model published on the Hugging Face Hub
  - `local-dir:PATH`    an open_clip folder (`open_clip_config.json` + weights)
  - `hf:ORG/NAME`, `hf:PATH`, or a bare path to a folder holding a transformers `config.json`:
                        a transformers model (CLIPModel / SiglipModel teacher, BLIP captioner)
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch

Backend = Literal["open_clip", "transformers"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

# open_clip's own checkpoint-folder layout: the spec prefix and the two files such a folder holds.
LOCAL_DIR = "local-dir:"
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
OPEN_CLIP_WEIGHTS_FILE = "open_clip_model.safetensors"

_HUB_PROBE_TIMEOUT_S = 3.0
_SUGGESTIONS = 5


class ModelLoadError(RuntimeError):
    """A model spec could not be turned into a model; the message says what to do instead."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. `name` is what config.json records; `spec` is what the user wrote."""

    spec: str
    backend: Backend
    name: str
    # open_clip: the `model_name` for open_clip.create_model (may carry hf-hub: / local-dir:).
    # transformers: the model id or folder for from_pretrained.
    model_id: str
    pretrained: str | None = None

    @property
    def is_local(self) -> bool:
        """True when loading needs no network at all."""
        if self.backend == "open_clip":
            if self.model_id.startswith(LOCAL_DIR):
                return True
            return self.pretrained is not None and os.path.isfile(self.pretrained)
        return Path(self.model_id).is_dir()


def parse_spec(spec: str) -> ModelSpec:
    """Parses one model spec (see the module docstring); raises ValueError for a malformed one."""
    text = spec.strip()
    if not text:
        raise ValueError("empty model spec")
    if text.startswith(LOCAL_DIR):
        path = text.removeprefix(LOCAL_DIR)
        if not path:
            raise ValueError(f"{spec!r}: no path after 'local-dir:'")
        return ModelSpec(spec=spec, backend="open_clip", name=Path(path).name or path, model_id=text)
    if text.startswith("hf-hub:"):
        repo = text.removeprefix("hf-hub:")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ValueError(f"{spec!r}: expected 'hf-hub:ORG/NAME'")
        return ModelSpec(spec=spec, backend="open_clip", name=text, model_id=text)
    if text.startswith("hf:"):
        target = text.removeprefix("hf:")
        if not target:
            raise ValueError(f"{spec!r}: expected 'hf:ORG/NAME' or 'hf:PATH'")
        name = Path(target).name if Path(target).is_dir() else target
        return ModelSpec(spec=spec, backend="transformers", name=name, model_id=target)
    if "@" in text:
        arch, _, pretrained = text.partition("@")
        if not arch or not pretrained:
            raise ValueError(f"{spec!r}: expected 'ARCH@PRETRAINED', e.g. 'ViT-L-14@openai'")
        return ModelSpec(spec=spec, backend="open_clip", name=text, model_id=arch, pretrained=pretrained)
    folder = Path(text)
    if (folder / OPEN_CLIP_CONFIG_FILE).is_file():
        return ModelSpec(spec=spec, backend="open_clip", name=folder.name, model_id=f"{LOCAL_DIR}{text}")
    if (folder / "config.json").is_file():
        return ModelSpec(spec=spec, backend="transformers", name=folder.name, model_id=text)
    raise ValueError(
        f"{spec!r} is not a model spec: write 'ARCH@PRETRAINED' (e.g. 'ViT-L-14@openai'), "
        "'hf-hub:ORG/NAME', 'local-dir:PATH', 'hf:ORG/NAME', or a path to a model folder"
    )


def torch_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _offline() -> bool:
    flags = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


def _download_host(spec: ModelSpec) -> tuple[str, int] | None:
    """The host a load of `spec` would contact first, or None when it needs no network."""
    if spec.is_local:
        return None
    if spec.backend == "open_clip" and spec.pretrained is not None:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.model_id.replace("/", "-"), spec.pretrained)
        if cfg and not cfg.get("hf_hub") and cfg.get("url"):
            url = urlparse(cfg["url"])
            return url.hostname or "", url.port or 443
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)


def _unreachable(host: str, port: int) -> str | None:
    """Why `host` cannot be reached within a few seconds, or None if it can."""
    try:
        with socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def _advice(spec: ModelSpec) -> str:
    if spec.backend == "open_clip":
        return (
            "Download the checkpoint where a network is available and point at it with "
            "'local-dir:PATH' (a folder with open_clip_config.json and open_clip_model.safetensors), "
            "or set HF_HUB_OFFLINE=1 to use a copy already in the Hugging Face cache."
        )
    return (
        "Save the model with save_pretrained() where a network is available and pass the folder "
        "('hf:PATH' or just PATH), or set HF_HUB_OFFLINE=1 to use a copy already in the Hugging Face cache."
    )


def closest_architectures(name: str) -> list[str]:
    """The few open_clip architecture names nearest to `name` (case aside), best first."""
    import open_clip

    by_lower = {model.lower(): model for model in open_clip.list_models()}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=_SUGGESTIONS, cutoff=0.5)
    return [by_lower[model] for model in close]


def unknown_architecture(name: str) -> str | None:
    """Why `name` is no open_clip architecture (naming the closest ones), or None when it is one.

    open_clip's own error lists all of its ~150 names; a user wants the two or three they meant.
    """
    import open_clip

    if open_clip.get_model_config(name.replace("/", "-")) is not None:
        return None
    close = closest_architectures(name)
    hint = f"closest: {', '.join(close)}" if close else "see open_clip.list_models()"
    return f"{name!r} is not an open_clip architecture ({hint})"


def check_reachable(spec: ModelSpec) -> None:
    """Fails within seconds when `spec` names an unknown architecture or needs a host that cannot be
    reached (instead of listing every model name, or hanging).

    With HF_HUB_OFFLINE set, nothing is probed: the hub libraries then fail fast by themselves or
    load from their cache.
    """
    if spec.backend == "open_clip" and spec.pretrained is not None:
        unknown = unknown_architecture(spec.model_id)
        if unknown is not None:
            raise ModelLoadError(f"cannot load {spec.spec!r}: {unknown}")
    if _offline():
        return
    target = _download_host(spec)
    if target is None:
        return
    reason = _unreachable(*target)
    if reason is not None:
        raise ModelLoadError(
            f"cannot load {spec.spec!r}: {target[0]} is unreachable ({reason}). {_advice(spec)}"
        )


@contextlib.contextmanager
def load_errors(spec: ModelSpec) -> Iterator[None]:
    """Turns whatever a loader raises into a ModelLoadError that names the spec and the way out."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as e:
        hint = _advice(spec) if not spec.is_local else "Check that the folder holds a complete checkpoint."
        raise ModelLoadError(f"cannot load {spec.spec!r}: {type(e).__name__}: {e}. {hint}") from e
