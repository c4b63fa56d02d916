"""Named settings of contract §4 (teachers, KD logit scales, captioner, views, captions), flags on top.

`tiny` stands in for the real presets where no pretrained weights can be downloaded: seeded
random-init open_clip checkpoints built on first use (see `teachers.tiny`), loaded through the same
`local-dir:` code path as any real checkpoint. Its specs are local paths, so it suits local runners
and workers that share this machine's disk; a cluster run uses a real preset or explicit specs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

TINY = "tiny"
_DATACOMP_TEACHERS = ("ViT-L-14@openai", "ViT-L-14@datacomp_xl_s13b_b90k")
_DATACOMP_CAPTIONER = "coca_ViT-L-14@mscoco_finetuned_laion2B-s13B-b90k"
# MobileCLIP2's captioner, the DFN-2B CoCa ViT-L-14 fine-tuned on MSCOCO-38k, is published in this hub
# repo next to other fine-tunes; its layout could not be checked from here. If it does not load as an
# open_clip hub model, download the MSCOCO-38k checkpoint and pass `--captioner local-dir:PATH`.
_MOBILECLIP2_CAPTIONER = "hf-hub:apple/mobileclip2_coca_dfn2b_s13b_context77"


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    teachers: tuple[str, ...]
    kd_logit_scales: tuple[float, ...]
    captioner: str
    num_views: int
    num_captions: int


_DATACOMPDR12M = Preset(
    name="datacompdr12m",
    summary="DataCompDR-12M: 2x ViT-L-14 (openai, datacomp_xl), CoCa ViT-L-14, 30 views, 5 captions",
    teachers=_DATACOMP_TEACHERS,
    kd_logit_scales=(100.0, 100.0),
    captioner=_DATACOMP_CAPTIONER,
    num_views=30,
    num_captions=5,
)


PRESETS: dict[str, Preset] = {
    TINY: Preset(
        name=TINY,
        summary="random-init tiny CLIP-a + CLIP-b teachers and a tiny CoCa, built locally (demo, tests)",
        teachers=(),  # filled in by resolve_preset(): the checkpoints are built on demand
        kd_logit_scales=(100.0, 100.0),
        captioner="",
        num_views=4,
        num_captions=2,
    ),
    "datacompdr12m": _DATACOMPDR12M,
    # DataCompDR-1B differs from 12M only in the number of views.
    "datacompdr1b": dataclasses.replace(
        _DATACOMPDR12M,
        name="datacompdr1b",
        summary="DataCompDR-1B: the 12M teachers and captioner, 10 views, 5 captions",
        num_views=10,
    ),
    "mobileclip2": Preset(
        name="mobileclip2",
        summary="MobileCLIP2 (DFNDR): 2x DFN2B ViT-L-14 (KD scales 70, 60), DFN CoCa ViT-L-14, 10 views",
        teachers=("hf-hub:apple/DFN2B-CLIP-ViT-L-14", "hf-hub:apple/DFN2B-CLIP-ViT-L-14-39B"),
        kd_logit_scales=(70.0, 60.0),
        captioner=_MOBILECLIP2_CAPTIONER,
        num_views=10,
        num_captions=5,
    ),
}


def tiny_checkpoint_root() -> Path:
    """Where the tiny checkpoints live: the repo's `checkpoints/tiny` if built, else a user cache."""
    local = Path("checkpoints") / TINY
    if local.is_dir():
        return local.resolve()
    cache = os.environ.get("DCDR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "datacompdr-reinforce"
    )
    return Path(cache) / TINY


def resolve_preset(name: str) -> Preset:
    """The preset with every spec concrete; `tiny` builds its checkpoints first if they are missing."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if name != TINY:
        return preset
    from teachers.tiny import ensure_tiny_checkpoints  # imports torch + open_clip: only when needed

    specs = ensure_tiny_checkpoints(tiny_checkpoint_root())
    return dataclasses.replace(preset, teachers=(specs["clip-a"], specs["clip-b"]), captioner=specs["coca"])
