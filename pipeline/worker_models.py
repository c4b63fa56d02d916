"""Load what one worker process needs for every shard: teacher ensemble, captioner, view augmenter.

Called in `DoFn.setup` (through Beam's `Shared`, once per process) and by the launcher, which
describes the loaded models in config.json. Only spec strings cross process boundaries.
"""

from __future__ import annotations

from pipeline.reinforce_shard import ShardModels
from pipeline.run_config import ReinforceSettings


def load_models(settings: ReinforceSettings) -> ShardModels:
    """Raises teachers' ModelLoadError, with a message saying what to do, when a spec cannot load."""
    from teachers.captioner import Captioner
    from teachers.ensemble import TeacherEnsemble
    from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter

    ensemble = TeacherEnsemble.load(
        list(settings.teachers), precision=settings.precision, kd_logit_scales=list(settings.kd_logit_scales)
    )
    captioner = Captioner.load(settings.captioner, precision=settings.precision)
    return ShardModels(
        ensemble=ensemble, captioner=captioner, augmenter=ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    )
