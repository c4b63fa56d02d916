"""The settings of one extend run, read against the input run's `config.json`, and the grown config.

An extend grows a finished run by one thing: a teacher (its L2-normalised slice appended to every
`image_emb`/`text_emb` row) or a caption family (`syn_text_<tag>` with embeddings from every existing
teacher, v2 layout). Everything else (views, seed, captions, dtype) is the input run's, so the
output equals what a fresh run with the grown setup writes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from pipeline.settings import DEFAULT_BATCH_SIZE, DEVICES, PRECISIONS
from shards import storage
from shards.reinforced import V1_FAMILY
from shards.run_config import ConfigError, library_versions
from shards.run_folder import CONFIG_FILE
from shards.run_inputs import find_input_shards
from shards.teacher_slices import slices_from_config

DEFAULT_KD_LOGIT_SCALE = 100.0  # what the reinforce job gives a teacher named without a scale
DEFAULT_V1_CAPTION_TAG = "coca"  # the reinforce job's --caption-tag default


@dataclasses.dataclass(frozen=True)
class ExtendSettings:
    input_pattern: str
    output_dir: str
    input_config: dict[str, Any]  # the input run's config.json
    add_teacher: str | None = None
    kd_logit_scale: float = DEFAULT_KD_LOGIT_SCALE
    add_captioner: str | None = None
    caption_tag: str | None = None
    v1_caption_tag: str = DEFAULT_V1_CAPTION_TAG
    precision: str = "fp32"
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "auto"

    def validate(self) -> None:
        problems = []
        if (self.add_teacher is None) == (self.add_captioner is None):
            problems.append("give exactly one of --add-teacher and --add-captioner (extend twice for both)")
        if self.add_captioner is not None and not self.caption_tag:
            problems.append("--add-captioner needs --caption-tag")
        for flag, tag in (("--caption-tag", self.caption_tag), ("--v1-caption-tag", self.v1_caption_tag)):
            if tag is not None and not tag.replace("_", "").isalnum():
                problems.append(f"{flag} must be letters, digits and underscores")
        if self.kd_logit_scale <= 0:
            problems.append("--kd-logit-scale must be positive")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {PRECISIONS}")
        if self.batch_size < 1:
            problems.append("--batch-size must be at least 1")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            problems.append(f"--device must be one of {DEVICES} or cuda:N")
        if self.output_dir.rstrip("/") == storage.dirname(self.input_pattern).rstrip("/"):
            problems.append("--output must be a new folder, not the input's")
        problems += _input_problems(self.input_config)
        known = {t.get("spec") for t in self.input_config.get("teachers") or [] if isinstance(t, dict)}
        if self.add_teacher is not None and self.add_teacher in known:
            problems.append(f"the input already has teacher {self.add_teacher}; add another one")
        if self.add_captioner is not None and self.new_family in self.input_families:
            problems.append(f"the input already holds {self.new_family}; pick another --caption-tag")
        if problems:
            raise ConfigError("; ".join(problems))

    # -- what the input run says -------------------------------------------------------------------------

    @property
    def input_layout(self) -> str:
        return str(self.input_config.get("layout", "v1"))

    @property
    def layout(self) -> str:
        """A caption family needs the v2 layout; a v1 input is converted."""
        return "v2" if self.add_captioner is not None else self.input_layout

    @property
    def embedding_dtype(self) -> str:
        return str(self.input_config.get("embedding_dtype", "fp32"))

    @property
    def seed(self) -> int:
        return int(self.input_config["seed"])

    @property
    def max_image_pixels(self) -> int:
        return int(self.input_config["max_image_pixels"])

    @property
    def param_aug_version(self) -> int:
        return int(self.input_config.get("param_aug_version", 1))

    @property
    def input_dims(self) -> list[int]:
        return [int(t["dim"]) for t in self.input_config["teachers"]]

    @property
    def input_dim(self) -> int:
        return sum(self.input_dims)

    @property
    def input_families(self) -> list[str]:
        """The input's families as the output names them (a v1 input's `syn_text` renamed when converted)."""
        if self.input_layout == "v1":
            return [self.renamed(V1_FAMILY)]
        return list(self.input_config.get("caption_families") or [self.input_config["caption_family"]])

    def renamed(self, family: str) -> str:
        if family == V1_FAMILY and self.layout == "v2":
            return f"{V1_FAMILY}_{self.v1_caption_tag}"
        return family

    @property
    def new_family(self) -> str:
        return f"{V1_FAMILY}_{self.caption_tag}"

    @property
    def num_captions(self) -> int:
        """Captions per image of the new family: the run's S, which every family shares."""
        return int(self.input_config["num_captions"])

    @property
    def caption_group(self) -> int:
        return max(1, self.batch_size // self.num_captions)


def _input_problems(config: dict[str, Any]) -> list[str]:
    try:
        slices = slices_from_config(config)
    except ValueError as error:
        return [f"the input config's teachers: {error}"]
    problems = [] if slices else ["the input config lists no teachers"]
    missing = [key for key in ("seed", "max_image_pixels", "num_captions") if key not in config]
    if missing:
        problems.append(f"the input config has no {', '.join(missing)}")
    if config.get("layout", "v1") == "v2" and not (
        config.get("caption_families") or config.get("caption_family")
    ):
        problems.append("the input config (v2 layout) names no caption family")
    if any(not isinstance(t, dict) or not t.get("spec") for t in config.get("teachers") or []):
        problems.append("the input config's teachers have no spec to load them from")
    return problems


def read_input_config(input_pattern: str, explicit: str | None = None) -> dict[str, Any]:
    """The input run's config.json: `explicit`, else the one beside the shards."""
    if explicit is None:
        find_input_shards(input_pattern)  # no shard there: say so, not that the config is missing
    path = explicit or storage.join(storage.dirname(input_pattern), CONFIG_FILE)
    try:
        config = json.loads(storage.read_text(path))
    except Exception as error:  # missing, unreadable, not JSON: the extend cannot know the run
        raise ConfigError(
            f"cannot read the input run's config {path} ({type(error).__name__}: {error}); an extend "
            "grows a run of ours: pass --input-config PATH when it lives elsewhere"
        ) from error
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is not a JSON object")
    return config


def build_extended_config(
    settings: ExtendSettings,
    *,
    teacher: dict[str, Any] | None = None,
    captioner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The input's config grown by the new teacher (appended: teachers order = slice order) or caption
    family, with one `extended` entry recording what was added, and from where."""
    config = copy.deepcopy(settings.input_config)
    # `versions` are this run's (a resume may differ there only); the input's stay in its step.
    step: dict[str, Any] = {"input": settings.input_pattern, "input_versions": config.get("versions")}
    config["versions"] = library_versions()
    if teacher is not None:
        config["teachers"] = [*config["teachers"], teacher]
        step["added_teacher"] = teacher["spec"]
    if captioner is not None:
        families = dict(config.get("caption_families") or {settings.input_families[0]: config["captioner"]})
        families[settings.new_family] = {**captioner, "num_captions": settings.num_captions}
        config["layout"] = "v2"
        config["caption_family"] = settings.input_families[0]
        config["caption_families"] = families
        step["added_caption_family"] = settings.new_family
    config["extended"] = [*config.get("extended", []), step]
    return config
