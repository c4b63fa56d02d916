"""Load what one worker process needs for every shard: teacher ensemble, captioner, view augmenter
(the reinforce job), the added teacher or captioner (the extend job), or the teachers (the score job).

Called in `DoFn.setup` (through Beam's `Shared`, once per process) and by the launcher, which
describes the loaded models in config.json. Only spec strings cross process boundaries.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

import torch

from pipeline.extend_settings import ExtendSettings
from pipeline.extend_shard import ExtendModels
from pipeline.reinforce_shard import ShardModels
from pipeline.score_settings import ScoreSettings
from pipeline.score_shard import EvalGeometry, ScoreModels
from pipeline.settings import ReinforceSettings
from shards.run_config import augmenter_from_config
from teachers.devices import device_facts, resolve_device

if TYPE_CHECKING:
    from teachers.ensemble import TeacherEnsemble

_LOG = logging.getLogger(__name__)


def run_device_kind(requested: str) -> str:
    """What config.json records as the run's device: cpu, cuda, or auto (each worker decides, and its
    shards' stats say what it found). It depends on the flags alone, so every runner writes the same."""
    if requested.startswith("cuda"):
        return "cuda"
    return "cpu" if requested == "cpu" else "auto"


def _device(requested: str, describe_only: bool) -> tuple[torch.device, dict[str, Any]]:
    """The device to load on and its facts; the launcher of a remote run never touches a GPU."""
    if describe_only:
        return torch.device("cpu"), {}
    device = resolve_device(requested)  # DeviceError at once when an explicit GPU cannot run
    facts = device_facts(device)
    _LOG.info("worker models on %s", facts)
    return device, facts


def _load_ensemble(
    settings: ReinforceSettings | ScoreSettings,
    device: torch.device,
    kd_logit_scales: list[float] | None = None,
) -> TeacherEnsemble:
    """The run's teachers on `device`, with the micro-batch sizes of the device kind the run asked for
    (a remote run's launcher, describing on its CPU, records the workers' sizes)."""
    from teachers.ensemble import CPU_MICRO_BATCHES, CUDA_MICRO_BATCHES, TeacherEnsemble

    kind = run_device_kind(settings.device)
    on_cuda = kind == "cuda" or (kind == "auto" and device.type == "cuda")
    images, texts = CUDA_MICRO_BATCHES if on_cuda else CPU_MICRO_BATCHES
    return TeacherEnsemble.load(
        list(settings.teachers),
        precision=settings.precision,
        device=str(device),
        kd_logit_scales=kd_logit_scales,
        micro_batch=images,
        text_micro_batch=texts,
    )


def load_models(settings: ReinforceSettings, *, describe_only: bool = False) -> ShardModels:
    """Raises teachers' ModelLoadError, with a message saying what to do, when a spec cannot load.

    `describe_only`: load on the CPU just to describe the models (the launcher of a remote run), with
    the micro-batch sizes of the device the workers will use, so config.json records theirs.
    """
    from teachers.captioner import Captioner
    from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter

    start = time.monotonic()
    device, facts = _device(settings.device, describe_only)
    ensemble = _load_ensemble(settings, device, list(settings.kd_logit_scales))
    captioner = Captioner.load(settings.captioner, precision=settings.precision, device=str(device))
    _LOG.info("models loaded in process %d on %s in %.1f s", os.getpid(), device, time.monotonic() - start)
    return ShardModels(
        ensemble=ensemble,
        captioner=captioner,
        augmenter=ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION),
        device=facts,
    )


def load_extend_models(settings: ExtendSettings, *, describe_only: bool = False) -> ExtendModels:
    """The input run's view recipe, plus the added teacher, or the added captioner and the input's
    teachers (loaded as the input config describes them, to embed the new captions)."""
    from teachers.captioner import Captioner
    from teachers.clip_teachers import load_teacher
    from teachers.ensemble import TeacherEnsemble

    device = str(_device(settings.device, describe_only)[0])
    augmenter = augmenter_from_config(settings.input_config)
    if settings.add_teacher is not None:
        new_teacher = TeacherEnsemble.load(
            [settings.add_teacher],
            precision=settings.precision,
            device=device,
            kd_logit_scales=[settings.kd_logit_scale],
        )
        return ExtendModels(augmenter=augmenter, new_teacher=new_teacher)
    described = settings.input_config["teachers"]
    teachers = TeacherEnsemble(
        [load_teacher(t["spec"], precision=t.get("precision", "fp32"), device=device) for t in described],
        [float(t["kd_logit_scale"]) for t in described],
        micro_batch=int(described[0].get("micro_batch", 8)),
    )
    captioner = Captioner.load(settings.add_captioner, precision=settings.precision, device=device)
    return ExtendModels(augmenter=augmenter, teachers=teachers, captioner=captioner)


def load_score_models(settings: ScoreSettings, *, describe_only: bool = False) -> ScoreModels:
    """The teachers as the reinforce job loads them (same device rules and micro-batch sizes), and
    each one alone, for its own evaluation views."""
    from teachers.ensemble import TeacherEnsemble

    device, facts = _device(settings.device, describe_only)
    ensemble = _load_ensemble(settings, device)
    images, texts = ensemble.micro_batch, ensemble.text_micro_batch
    alone = [
        TeacherEnsemble([teacher], [scale], micro_batch=images, text_micro_batch=texts)
        for teacher, scale in zip(ensemble.teachers, ensemble.kd_logit_scales, strict=True)
    ]
    geometries = [EvalGeometry.of(teacher) for teacher in ensemble.teachers]
    return ScoreModels(ensemble=ensemble, teachers=alone, geometries=geometries, device=facts)
