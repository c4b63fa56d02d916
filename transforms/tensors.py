"""PIL views to uint8 tensors, and normalisation that matches ``ToTensor`` + ``Normalize``.

Views stay uint8 until a model needs them: a view is 4x smaller than its float copy, and each
teacher or student normalises it with its own mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a contiguous uint8 tensor ``[3, H, W]``."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def normalize(views: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 views ``[..., 3, H, W]`` to float32 ``(x / 255 - mean) / std``.

    The operations and their order are torchvision's ``ToTensor`` then ``Normalize``, so the
    result is bit-identical to what a torchvision preprocessing pipeline feeds a model.
    """
    if views.dtype != torch.uint8:
        raise TypeError(f"normalize takes uint8 views, got {views.dtype}")
    if views.ndim < 3 or views.shape[-3] != len(mean) or len(mean) != len(std):
        raise ValueError(f"views {tuple(views.shape)} do not match mean {list(mean)} and std {list(std)}")
    if any(float(s) == 0 for s in std):  # checked on the host: no wait for a GPU
        raise ValueError(f"std {list(std)} contains a zero")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=views.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=views.device).view(-1, 1, 1)
    return views.to(torch.float32).div(255).sub(mean_t).div(std_t)
