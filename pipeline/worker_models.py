"""Load what one worker process needs for every shard: teacher ensemble, captioner, view augmenter.

Called in `DoFn.setup` (through Beam's `Shared`, once per process) and by the launcher, which
describes the loaded models in config.json. Only spec strings cross process boundaries.
"""

from __future__ import annotations

import logging
import os
import time

from pipeline.reinforce_shard import ShardModels
from pipeline.settings import ReinforceSettings

_LOG = logging.getLogger(__name__)


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
    start = time.monotonic()
    ensemble = TeacherEnsemble.load(
        list(settings.teachers),
        precision=settings.precision,
        device=device,
        kd_logit_scales=list(settings.kd_logit_scales),
    )
    captioner = Captioner.load(settings.captioner, precision=settings.precision, device=device)
    _LOG.info("models loaded in process %d on %s in %.1f s", os.getpid(), device, time.monotonic() - start)
    return ShardModels(
        ensemble=ensemble, captioner=captioner, augmenter=ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    )
