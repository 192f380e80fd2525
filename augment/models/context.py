"""Painting in context (crop mode): the generator's context input, the composite of its output, the hole's L1.

A *hole* is a float B x 1 x H x W map, 1 where the generator paints (an object's shape, dilated) and 0 where the
real crop is kept. The context a crop-mode generator reads besides the label map is `context_input`: the real crop
(in [-1, 1]) with the hole blanked to 0, then the hole itself, CONTEXT_CHANNELS channels in all. Its output is
`fill_hole`: generated pixels inside the hole, the real crop's outside, which is also what the discriminator judges.
"""

from __future__ import annotations

import torch

__all__ = ["CONTEXT_CHANNELS", "context_input", "fill_hole", "hole_l1_loss", "split_context"]

CONTEXT_CHANNELS = 4
"""The blanked real crop (3) and the hole mask (1)."""


def _check_hole(image: torch.Tensor, hole: torch.Tensor) -> None:
    b, _, h, w = image.shape
    if tuple(hole.shape) != (b, 1, h, w):
        raise ValueError(f"hole must be {(b, 1, h, w)} for images of {tuple(image.shape)}, got {tuple(hole.shape)}")


def context_input(real: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """B x 4 x H x W: `real` (B x 3 x H x W) times 1 - `hole`, then `hole` (B x 1 x H x W, 1 = paint here)."""
    _check_hole(real, hole)
    hole = hole.to(real.dtype)
    return torch.cat([real * (1 - hole), hole], dim=1)


def split_context(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(blanked real crop B x 3 x H x W, hole B x 1 x H x W) of a `context_input`."""
    if context.dim() != 4 or context.shape[1] != CONTEXT_CHANNELS:
        raise ValueError(f"context must be B x {CONTEXT_CHANNELS} x H x W, got {tuple(context.shape)}")
    return context[:, :3], context[:, 3:]


def fill_hole(generated: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """hole * `generated` + (1 - hole) * real crop, with the real crop and hole read from `context`: the real
    pixels exactly outside the hole (the blanked crop is the real one there)."""
    blanked, hole = split_context(context)
    _check_hole(generated, hole)
    hole = hole.to(generated.dtype)
    return hole * generated + (1 - hole) * blanked.to(generated.dtype)


def hole_l1_loss(fake: torch.Tensor, real: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of `fake` and `real` over the pixels (and channels) inside `hole`; 0 for a batch
    without hole pixels."""
    _check_hole(real, hole)
    weight = hole.float().expand_as(real)
    return ((fake.float() - real.float()).abs() * weight).sum() / weight.sum().clamp_min(1)
