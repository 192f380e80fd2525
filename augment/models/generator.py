"""OASIS generator: SPADE residual blocks conditioned on the label map concatenated with 3D noise.

Noise is always an input. ``sample_noise`` draws one ``z_dim`` vector per image and broadcasts it to
every pixel (OASIS's 3D noise); because the noise lives per pixel, ``resample_noise_in_region`` can
redraw it inside one region (e.g. one class) and change that part of the image.

One deliberate difference from OASIS: ``noise_stages`` (default 2) limits the noise to the SPADE
conditioning of the last, finest blocks; the head and the coarser blocks see the label map alone.
With noise in every block (``noise_stages=None``, exactly OASIS), a region's noise also enters the
4x4..16x16 stages, whose 3x3 convs spread it over most of the image; with ``noise_stages=2``, resampling
one region leaves pixels far from it nearly unchanged (tests/test_gan_models.py checks this; the figures are in
docs/results.md). Per-class synthesis needs such local edits, and the label map alone fixes the layout anyway.
Locality holds in eval mode; in train mode BatchNorm's batch statistics couple all pixels.

Crop mode (``context=True``, see augment.models.context): the label map is joined by the context, the
real crop with the hole blanked and the hole mask, in the head's input and every SPADE's conditioning, and the
output is ``fill_hole``'s composite: generated pixels inside the hole, the real crop's outside. A guided one
(``guide=True``) reads the appearance guide too (GUIDE_CHANNELS more context channels) and paints a correction of
it: its output is tanh(atanh(guide) + its last layer's output), the guide bounded to +-GUIDE_BOUND, so at
initialisation (OASIS's near-zero last layer) it is the guide itself on the object and grey on the rest of the hole,
and training teaches it what to change, with gradients everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from augment.models.context import CONTEXT_CHANNELS, GUIDE_CHANNELS, fill_hole
from augment.data.codec import MIN_SIDE
from augment.models.spade import SPADEResBlock, conv2d

__all__ = ["OASISGenerator", "num_upsamples", "resample_noise_in_region", "sample_noise"]

MAX_CHANNEL_MULT = 16
GUIDE_BOUND = 0.999
"""A guided generator's guide is clipped to +-GUIDE_BOUND before atanh (finite, within half a grey level)."""


def num_upsamples(size: tuple[int, int], max_upsamples: int = 5) -> int:
    """Up-sampling stages for an output ``size``: the start map keeps its short side >= 4.

    Capped at ``max_upsamples`` (5 as in OASIS, whose 256x512 generator starts from 8x16). Sizes below
    augment.data.codec.MIN_SIDE (what the discriminator needs) are refused.
    """
    short = min(size)
    if short < MIN_SIDE:
        raise ValueError(f"image size {tuple(size)} too small: the short side must be >= {MIN_SIDE}")
    return min(int(math.floor(math.log2(short / 4))), max_upsamples)


def _stage_sizes(size: tuple[int, int], n_up: int) -> list[tuple[int, int]]:
    h, w = size
    return [(math.ceil(h / 2**k), math.ceil(w / 2**k)) for k in range(n_up, -1, -1)]


class OASISGenerator(nn.Module):
    """Label map + 3D noise -> RGB image in [-1, 1].

    Args:
        num_classes: label channels (ignored pixels are all-zero one-hot columns).
        size: output (H, W); sets the number of up-sampling stages via :func:`num_upsamples`.
        z_dim: noise channels.
        width: channels of the last block; block ``k`` from the output has
            ``width * min(2**k, 16)`` channels (OASIS: width 64 -> 1024 ... 64).
        spade_hidden: hidden channels of each SPADE.
        norm: SPADE's param-free norm, ``"batch"`` or ``"instance"``.
        max_upsamples: cap on the number of up-sampling stages.
        noise_stages: how many of the last blocks get the noise in their SPADE conditioning;
            ``None`` feeds it to the head and every block, as OASIS does.
        context: paint in context (crop mode): ``forward`` also takes the context input (``context_channels``:
            CONTEXT_CHANNELS, plus GUIDE_CHANNELS when guided) and returns the composite.
        guide: crop mode with an appearance guide (augment.models.context): GUIDE_CHANNELS more context channels.

    ``forward`` accepts any input size whose short side is >= 2**n_up; stage sizes are computed
    from the input, so odd sizes work too.
    """

    def __init__(
        self,
        num_classes: int,
        size: tuple[int, int],
        z_dim: int = 64,
        width: int = 64,
        spade_hidden: int = 128,
        norm: str = "batch",
        max_upsamples: int = 5,
        noise_stages: int | None = 2,
        context: bool = False,
        guide: bool = False,
    ) -> None:
        super().__init__()
        if noise_stages is not None and noise_stages < 1:
            raise ValueError(f"noise_stages must be >= 1 or None, got {noise_stages}")
        if guide and not context:
            raise ValueError("an appearance guide is a crop-mode input: guide needs context")
        self.num_classes = num_classes
        self.size = (int(size[0]), int(size[1]))
        self.z_dim = z_dim
        self.context_channels = (CONTEXT_CHANNELS + GUIDE_CHANNELS * guide) if context else 0
        self.guided = bool(guide)
        self.n_up = num_upsamples(self.size, max_upsamples)
        channels = [width * min(2**k, MAX_CHANNEL_MULT) for k in range(self.n_up + 1, -1, -1)]
        n_blocks = self.n_up + 1
        self.noise_stages = n_blocks if noise_stages is None else min(noise_stages, n_blocks)
        self.first_noise_block = n_blocks - self.noise_stages
        self.noise_in_head = self.first_noise_block == 0
        cond_channels = num_classes + self.context_channels
        self.head = conv2d(cond_channels + z_dim * self.noise_in_head, channels[0])
        self.blocks = nn.ModuleList(
            SPADEResBlock(c_in, c_out, cond_channels + z_dim * (i >= self.first_noise_block), spade_hidden, norm)
            for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:]))
        )
        self.to_rgb = conv2d(channels[-1], 3)
        self.channels = channels

    def forward(self, label: torch.Tensor, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``label``: B x num_classes x H x W float one-hot; ``z``: B x z_dim x H x W noise; ``context``
        (crop mode only): B x ``context_channels`` x H x W, ``augment.models.context.context_input``."""
        if label.dim() != 4 or label.shape[1] != self.num_classes:
            raise ValueError(f"label must be B x {self.num_classes} x H x W, got {tuple(label.shape)}")
        b, _, h, w = label.shape
        if tuple(z.shape) != (b, self.z_dim, h, w):
            raise ValueError(f"z must be {(b, self.z_dim, h, w)} (3D noise), got {tuple(z.shape)}")
        if (context is None) != (self.context_channels == 0):
            raise ValueError("a crop-mode generator paints in context: pass its context input" if context is None
                             else "this generator takes no context (it was not trained in crop mode)")
        if context is not None:
            if tuple(context.shape) != (b, self.context_channels, h, w):
                raise ValueError(f"context must be {(b, self.context_channels, h, w)}, got {tuple(context.shape)}")
            label = torch.cat([label, context.to(label.dtype)], dim=1)
        cond = torch.cat([label, z.to(label.dtype)], dim=1)
        sizes = _stage_sizes((h, w), self.n_up)
        x = self.head(F.interpolate(cond if self.noise_in_head else label, size=sizes[0], mode="nearest"))
        for i, block in enumerate(self.blocks):
            if i:
                x = F.interpolate(x, size=sizes[i], mode="nearest")
            x = block(x, cond if i >= self.first_noise_block else label)
        pre = self.to_rgb(F.leaky_relu(x, 0.2))
        if self.guided:  # a correction of the guide (0 off the object) in tanh's domain: no clipped gradients
            pre = pre + torch.atanh(context[:, CONTEXT_CHANNELS:].to(pre.dtype).clamp(-GUIDE_BOUND, GUIDE_BOUND))
        out = torch.tanh(pre)
        return out if context is None else fill_hole(out, context)


def _draw_vectors(
    batch: int, z_dim: int, generator: torch.Generator | None, device: torch.device | str | None
) -> torch.Tensor:
    draw_device = generator.device if generator is not None else device
    return torch.randn(batch, z_dim, generator=generator, device=draw_device).to(device)


def sample_noise(
    batch: int,
    z_dim: int,
    size: tuple[int, int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """OASIS 3D noise: one N(0, 1) vector per image, broadcast to B x z_dim x H x W (a real copy).

    Drawn on ``generator``'s device (so a CPU generator gives the same noise for any ``device``),
    then moved to ``device``.
    """
    vectors = _draw_vectors(batch, z_dim, generator, device)
    return vectors[:, :, None, None].expand(-1, -1, *size).contiguous()


def resample_noise_in_region(
    z: torch.Tensor, region: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Return a copy of ``z`` with a fresh noise vector per image inside ``region`` (B x H x W bool)."""
    b, z_dim, h, w = z.shape
    if region.dtype != torch.bool or tuple(region.shape) != (b, h, w):
        raise ValueError(f"region must be a bool tensor of shape {(b, h, w)}, got {region.dtype} {tuple(region.shape)}")
    vectors = _draw_vectors(b, z_dim, generator, z.device).to(z.dtype)
    return torch.where(region[:, None].to(z.device), vectors[:, :, None, None], z)
