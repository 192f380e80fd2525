"""Painting in context (crop mode): the generator's context input, the composite of its output, the hole's L1.

A *hole* is a float B x 1 x H x W map, 1 where the generator paints (an object's shape, dilated) and 0 where the
real crop is kept. The context a crop-mode generator reads besides the label map is `context_input`: the real crop
(in [-1, 1]) with the hole blanked to 0, then the hole itself, CONTEXT_CHANNELS channels in all. Its output is
`fill_hole`: generated pixels inside the hole, the real crop's outside, which is also what the discriminator judges.

A *guided* crop-mode generator (GANConfig.guide) also reads an appearance guide, GUIDE_CHANNELS more: an object's
pixels (in [-1, 1]) where the object is and 0 elsewhere. In training the guide is the crop's own object `recolour`ed
(a random brightness, contrast and colour change), so the generator learns to repaint an object to fit the light and
colours around it, the real pixels being its target; at synthesis it is the source object's pixels, placed.
"""

from __future__ import annotations

import torch

__all__ = ["CONTEXT_CHANNELS", "GUIDE_CHANNELS", "context_input", "fill_hole", "hole_l1_loss", "recolour",
           "split_context"]

CONTEXT_CHANNELS = 4
"""The blanked real crop (3) and the hole mask (1)."""
GUIDE_CHANNELS = 3
"""A guided generator's appearance guide (RGB), after the context."""
RECOLOUR_SD = (0.25, 0.25, 0.08)
"""s.d. of the log brightness gain, the log contrast gain and each channel's log colour gain of `recolour`."""


def _check_hole(image: torch.Tensor, hole: torch.Tensor) -> None:
    b, _, h, w = image.shape
    if tuple(hole.shape) != (b, 1, h, w):
        raise ValueError(f"hole must be {(b, 1, h, w)} for images of {tuple(image.shape)}, got {tuple(hole.shape)}")


def context_input(real: torch.Tensor, hole: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
    """B x 4 x H x W: `real` (B x 3 x H x W) times 1 - `hole`, then `hole` (B x 1 x H x W, 1 = paint here); with a
    `guide` (B x 3 x H x W, a guided generator's), B x 7 x H x W with the guide last."""
    _check_hole(real, hole)
    hole = hole.to(real.dtype)
    parts = [real * (1 - hole), hole]
    if guide is not None:
        if guide.shape != real.shape:
            raise ValueError(f"guide must be {tuple(real.shape)}, got {tuple(guide.shape)}")
        parts.append(guide.to(real.dtype))
    return torch.cat(parts, dim=1)


def split_context(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(blanked real crop B x 3 x H x W, hole B x 1 x H x W) of a `context_input`, guided or not."""
    if context.dim() != 4 or context.shape[1] not in (CONTEXT_CHANNELS, CONTEXT_CHANNELS + GUIDE_CHANNELS):
        raise ValueError(f"context must be B x {CONTEXT_CHANNELS} (or {CONTEXT_CHANNELS + GUIDE_CHANNELS} with a "
                         f"guide) x H x W, got {tuple(context.shape)}")
    return context[:, :3], context[:, 3:4]


def recolour(real: torch.Tensor, obj: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A training guide: `real` (B x 3 x H x W in [-1, 1]) where `obj` (B x 1 x H x W, 1 on the object) holds,
    recoloured per image, 0 elsewhere. Per image, with gains exp(N(0, s.d.)) drawn from `generator` (RECOLOUR_SD):
    the object's pixels (in [0, 1]) are scaled about their mean by the contrast gain, then by the brightness gain and
    a colour gain per channel, and clipped to [0, 1]."""
    _check_hole(real, obj)
    b = real.shape[0]
    sd = torch.tensor(RECOLOUR_SD, dtype=torch.float32)
    draw = torch.randn(b, 5, generator=generator, device=generator.device if generator is not None else None)
    draw = draw.to(real.device, torch.float32)
    brightness, contrast = (draw[:, 0] * sd[0]).exp(), (draw[:, 1] * sd[1]).exp()
    colour = (draw[:, 2:] * sd[2]).exp()
    weight = obj.float()
    x = (real.float() + 1) / 2
    mean = (x * weight).sum((2, 3), keepdim=True) / weight.sum((2, 3), keepdim=True).clamp_min(1)
    x = (mean + (x - mean) * contrast[:, None, None, None]) * brightness[:, None, None, None] * colour[:, :, None, None]
    return ((x.clamp(0, 1) * 2 - 1) * weight).to(real.dtype)


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
