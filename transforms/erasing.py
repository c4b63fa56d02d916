"""Random erasing on a rendered view, split into sampling a box and zeroing it.

Erasing happens after RandAugment on the uint8 view, with zeros, as the public DataCompDR
transforms do (they zero the box whatever ``value`` says). The box is in pixels of the view at
the size it was sampled for and is applied unscaled at replay, like translate magnitudes; a box
that does not fit the rendered view is refused rather than clipped.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from transforms.crop import Box
from transforms.errors import InvalidParamsError
from transforms.seeding import draw_int, draw_uniform

_MAX_TRIES = 10


def sample_erase(
    rng: np.random.Generator, view_size: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> Box | None:
    """Draw an ``(i, j, h, w)`` box in a square view of side ``view_size``; None after 10 misses."""
    area = view_size * view_size
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_MAX_TRIES):
        erase_area = area * draw_uniform(rng, scale[0], scale[1])
        aspect = math.exp(draw_uniform(rng, log_ratio[0], log_ratio[1]))
        h = round(math.sqrt(erase_area * aspect))
        w = round(math.sqrt(erase_area / aspect))
        if 0 < h < view_size and 0 < w < view_size:
            return (draw_int(rng, 0, view_size - h + 1), draw_int(rng, 0, view_size - w + 1), h, w)
    return None


def erase(view: torch.Tensor, box: Box) -> torch.Tensor:
    """Zero ``box`` of a ``[3, H, W]`` view in place and return it."""
    i, j, h, w = box
    height, width = view.shape[-2:]
    if h < 1 or w < 1 or i < 0 or j < 0 or i + h > height or j + w > width:
        raise InvalidParamsError(
            f"erase box (i={i}, j={j}, h={h}, w={w}) is not inside the {width}x{height} view",
            "erase_outside_view",
        )
    view[..., i : i + h, j : j + w] = 0
    return view
