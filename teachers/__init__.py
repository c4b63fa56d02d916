"""CLIP teacher ensembles and captioners, loaded from open_clip or transformers specs."""

from teachers.captioner import Captioner, CaptionFailure
from teachers.ensemble import TeacherEnsemble
from teachers.specs import ModelLoadError, ModelSpec, parse_spec

__all__ = ["CaptionFailure", "Captioner", "ModelLoadError", "ModelSpec", "TeacherEnsemble", "parse_spec"]
