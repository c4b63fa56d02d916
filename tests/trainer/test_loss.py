"""The loss of contract §5 against a slow, literal reference: loops, explicit exp/sum/log."""

from __future__ import annotations

import math

import pytest
import torch

from shards.teacher_slices import slices_from_dims
from trainer.loss import reinforced_loss


def _normalised(rng: torch.Generator, rows: int, dim: int) -> torch.Tensor:
    x = torch.randn(rows, dim, generator=rng, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def _softmax_row(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _log_softmax_row(values: list[float]) -> list[float]:
    top = max(values)
    log_total = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - log_total for v in values]


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def _reference_family(img, txt, scale, t_img, t_txt, dims, kd_scales) -> tuple[float, float]:
    """(CLIP, KD) for one caption family, straight from the contract's definitions."""
    b = img.shape[0]
    s = [[scale * _dot(img[i], txt[j]) for j in range(b)] for i in range(b)]
    s_t = [[s[j][i] for j in range(b)] for i in range(b)]
    clip = 0.0
    for rows in (s, s_t):
        clip += -sum(_log_softmax_row(rows[i])[i] for i in range(b)) / b
    clip /= 2
    p_i2t = [[0.0] * b for _ in range(b)]
    p_t2i = [[0.0] * b for _ in range(b)]
    start = 0
    for dim, sigma in zip(dims, kd_scales, strict=True):
        u = t_img[:, start : start + dim]
        v = t_txt[:, start : start + dim]
        start += dim
        for i in range(b):
            row = _softmax_row([sigma * _dot(u[i], v[j]) for j in range(b)])
            col = _softmax_row([sigma * _dot(u[j], v[i]) for j in range(b)])
            for j in range(b):
                p_i2t[i][j] += row[j] / len(dims)
                p_t2i[i][j] += col[j] / len(dims)
    kd = 0.0
    for target, rows in ((p_i2t, s), (p_t2i, s_t)):
        ce = 0.0
        for i in range(b):
            log_q = _log_softmax_row(rows[i])
            ce -= sum(target[i][j] * log_q[j] for j in range(b))
        kd += ce / b
    kd /= 2
    return clip, kd


@pytest.mark.parametrize("lam", [0.0, 0.75, 1.0])
def test_loss_matches_a_literal_reference_with_teachers_of_different_widths_and_scales(lam: float) -> None:
    rng = torch.Generator().manual_seed(7)
    b, student_dim, dims, kd_scales = 5, 6, (4, 3, 5), (100.0, 20.0, 60.0)
    width = sum(dims)
    img, orig, syn = (_normalised(rng, b, student_dim) for _ in range(3))
    t_img = torch.cat([_normalised(rng, b, d) for d in dims], dim=1)
    t_orig = torch.cat([_normalised(rng, b, d) for d in dims], dim=1)
    t_syn = torch.cat([_normalised(rng, b, d) for d in dims], dim=1)
    scale = 14.3
    assert t_img.shape[1] == width

    parts = reinforced_loss(
        img.float(),
        orig.float(),
        syn.float(),
        torch.tensor(scale),
        t_img.float(),
        t_orig.float(),
        t_syn.float(),
        slices_from_dims(dims, kd_scales),
        lam,
    )
    clip_o, kd_o = _reference_family(img, orig, scale, t_img, t_orig, dims, kd_scales)
    clip_s, kd_s = _reference_family(img, syn, scale, t_img, t_syn, dims, kd_scales)
    expected_total = (1 - lam) * (clip_o + clip_s) + lam * (kd_o + kd_s)
    got = parts.as_floats()
    assert got["clip_original"] == pytest.approx(clip_o, rel=1e-5)
    assert got["kd_original"] == pytest.approx(kd_o, rel=1e-5)
    assert got["clip_synthetic"] == pytest.approx(clip_s, rel=1e-5)
    assert got["kd_synthetic"] == pytest.approx(kd_s, rel=1e-5)
    assert got["total"] == pytest.approx(expected_total, rel=1e-5)


def test_kd_is_asymmetric_in_teachers_so_swapping_scales_changes_the_target() -> None:
    """Each teacher's softmax uses its own scale: swapping the scales must change KD."""
    rng = torch.Generator().manual_seed(3)
    b, dims = 4, (3, 3)
    img, txt = _normalised(rng, b, 5).float(), _normalised(rng, b, 5).float()
    t_img = torch.cat([_normalised(rng, b, 3) for _ in dims], dim=1).float()
    t_txt = torch.cat([_normalised(rng, b, 3) for _ in dims], dim=1).float()
    args = (img, txt, txt, torch.tensor(10.0), t_img, t_txt, t_txt)
    a = reinforced_loss(*args, slices_from_dims(dims, (100.0, 5.0)), 1.0).as_floats()["kd_original"]
    b_ = reinforced_loss(*args, slices_from_dims(dims, (5.0, 100.0)), 1.0).as_floats()["kd_original"]
    assert a != pytest.approx(b_, rel=1e-3)


def test_gradient_flows_to_the_student_and_its_logit_scale_only() -> None:
    rng = torch.Generator().manual_seed(1)
    img = _normalised(rng, 4, 5).float().requires_grad_()
    txt = _normalised(rng, 4, 5).float().requires_grad_()
    scale = torch.tensor(10.0, requires_grad=True)
    t = torch.cat([_normalised(rng, 4, 3), _normalised(rng, 4, 2)], dim=1).float().requires_grad_()
    parts = reinforced_loss(img, txt, txt, scale, t, t, t, slices_from_dims((3, 2), (50.0, 50.0)), 0.5)
    parts.total.backward()
    assert img.grad is not None and txt.grad is not None and scale.grad is not None
    assert t.grad is None  # teacher targets are constants


def test_slices_refuse_mismatched_lists() -> None:
    with pytest.raises(ValueError, match="KD logit scales"):
        slices_from_dims((768, 768), (100.0,))
    with pytest.raises(ValueError):
        slices_from_dims((768,), (0.0,))
