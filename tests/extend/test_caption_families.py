"""The trainer picks which synthetic caption families it learns from (an extended run holds several)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from tests.support import identity_image, reinforced_sample, unit_rows
from trainer.data import SampleReplayer, UnusableSample
from trainer.settings import parse_caption_families, resolve_data_settings
from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter
from transforms.decode import decode_image

DIMS = (8, 12)


def _sample():
    image = identity_image(0, 0, (96, 80))
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    sample = reinforced_sample("k0", image, "a red circle", dims=DIMS, views=2, captions=3,
                               family="syn_text_coca", augmenter=augmenter)  # fmt: skip
    sample.syn_captions["syn_text_blip"] = ["blip 0", "blip 1"]
    sample.syn_emb["syn_text_blip"] = unit_rows(np.random.default_rng(1), 2, DIMS)
    assert decode_image(sample.image).size == (96, 80)
    return sample


def _replayer(families):
    settings = resolve_data_settings(
        None, teacher_dims=DIMS, kd_logit_scales=[100.0, 100.0], caption_families=families
    )
    seen: list[list[str]] = []

    def tokenizer(texts):
        seen.append(list(texts))
        return torch.zeros(len(texts), 4, dtype=torch.long)

    return SampleReplayer(settings, 32, tokenizer, seed=0), seen


@pytest.mark.parametrize(
    ("families", "allowed"),
    [(None, {"syn_text_coca", "syn_text_blip"}), (("syn_text_blip",), {"syn_text_blip"})],
)
def test_synthetic_captions_and_targets_come_from_the_chosen_families(families, allowed):
    sample = _sample()
    replayer, seen = _replayer(families)
    drawn = set()
    for epoch in range(40):
        out = replayer.replay(sample, epoch)
        caption = seen[-1][1]
        family = next(f for f, caps in sample.syn_captions.items() if caption in caps)
        drawn.add(family)
        row = sample.syn_captions[family].index(caption)
        np.testing.assert_array_equal(out.teacher_synthetic, sample.syn_emb[family][row])
    assert drawn == allowed


def test_a_sample_without_a_chosen_family_is_unusable_and_the_flag_is_checked():
    replayer, _ = _replayer(("syn_text_other",))
    with pytest.raises(UnusableSample) as error:
        replayer.replay(_sample(), 0)
    assert error.value.reason == "no_synthetic_captions"
    assert parse_caption_families("all") is None
    assert parse_caption_families("syn_text_coca, syn_text_blip") == ("syn_text_coca", "syn_text_blip")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_caption_families("coca")


def test_a_family_the_data_lacks_is_refused_naming_those_it_has(tmp_path):
    """From the run's config.json at once; from the first samples for shards that come without one."""
    from shards.reinforced import write_shard
    from trainer.data import DataError, probe
    from trainer.settings import SettingsError

    teachers = [{"dim": 8, "kd_logit_scale": 100.0}, {"dim": 12, "kd_logit_scale": 100.0}]
    families = {"syn_text_coca": {}, "syn_text_blip": {}}
    config = {"layout": "v2", "caption_families": families, "teachers": teachers}
    refusal = "syn_text_nope: the data has no such family; it has syn_text_blip, syn_text_coca"
    with pytest.raises(SettingsError, match=refusal):
        resolve_data_settings(config, caption_families=("syn_text_nope",))
    shard = tmp_path / "00000000.tar"
    write_shard(str(shard), [_sample()], "v2", "fp32")
    replayer, _ = _replayer(("syn_text_nope",))
    with pytest.raises(DataError, match="caption families are syn_text_blip, syn_text_coca"):
        probe([str(shard)], replayer.settings, lambda texts: torch.zeros(len(texts), 4, dtype=torch.long), 32)


def test_caption_families_without_the_synthetic_term_is_a_usage_error(capsys):
    from trainer.train import parse_args

    argv = ["--data", "x/*.tar", "--model", "tiny", "--steps", "1", "--batch-size", "1", "--output", "r",
            "--families", "original", "--caption-families", "syn_text_blip"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert "--caption-families picks the synthetic captions" in capsys.readouterr().err
