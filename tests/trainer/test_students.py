"""Students: MobileCLIP architectures build offline with their published preprocessing; no downloads."""

from __future__ import annotations

import time

import pytest
import torch

from trainer.students import StudentError, create_student


def test_mobileclip_students_use_256_px_and_their_published_normalisation() -> None:
    student = create_student("MobileCLIP2-S0", seed=0)
    assert student.image_size == 256
    assert student.mean == (0.0, 0.0, 0.0) and student.std == (1.0, 1.0, 1.0)
    assert student.preprocess_cfg["interpolation"] == "bilinear"
    assert student.model.visual.trunk.__class__.__module__.startswith("timm")


def test_random_init_is_seeded_and_leaves_the_global_generator_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = create_student("tiny", seed=1), create_student("tiny", seed=1), create_student("tiny", seed=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb, sc = (s.model.state_dict() for s in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_unknown_names_and_unreachable_weights_fail_fast_with_a_clear_message() -> None:
    with pytest.raises(StudentError, match="unknown student") as unknown:
        create_student("mobileclip2-s9")
    # the nearest names, not open_clip's whole list of ~150
    assert "MobileCLIP2-S4" in str(unknown.value) and len(str(unknown.value)) < 300
    began = time.perf_counter()
    with pytest.raises(StudentError, match="MobileCLIP2-S0@dfndr2b"):
        create_student("MobileCLIP2-S0", pretrained="dfndr2b")  # HF_HUB_OFFLINE=1 in tests
    assert time.perf_counter() - began < 30
