"""Load what one worker process needs for every shard: teacher ensemble, captioner, view augmenter
(the reinforce job), or the added teacher or captioner (the extend job).

Called in `DoFn.setup` (through Beam's `Shared`, once per process) and by the launcher, which
describes the loaded models in config.json. Only spec strings cross process boundaries.
"""

from __future__ import annotations

from pipeline.extend_settings import ExtendSettings
from pipeline.extend_shard import ExtendModels
from pipeline.reinforce_shard import ShardModels
from pipeline.settings import ReinforceSettings
from shards.run_config import augmenter_from_config


def worker_device(requested: str) -> str:
    """`auto` is decided on the worker itself: its GPU when it has one, else its CPU."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_models(settings: ReinforceSettings) -> ShardModels:
    """Raises teachers' ModelLoadError, with a message saying what to do, when a spec cannot load."""
    from teachers.captioner import Captioner
    from teachers.ensemble import TeacherEnsemble
    from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter

    device = worker_device(settings.device)
    ensemble = TeacherEnsemble.load(
        list(settings.teachers),
        precision=settings.precision,
        device=device,
        kd_logit_scales=list(settings.kd_logit_scales),
    )
    captioner = Captioner.load(settings.captioner, precision=settings.precision, device=device)
    return ShardModels(
        ensemble=ensemble, captioner=captioner, augmenter=ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    )


def load_extend_models(settings: ExtendSettings) -> ExtendModels:
    """The input run's view recipe, plus the added teacher, or the added captioner and the input's
    teachers (loaded as the input config describes them, to embed the new captions)."""
    from teachers.captioner import Captioner
    from teachers.clip_teachers import load_teacher
    from teachers.ensemble import TeacherEnsemble

    device = worker_device(settings.device)
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
