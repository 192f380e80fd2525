"""OASIS discriminator: a U-Net of residual blocks that segments images into N real classes + fake.

Output channel 0 is the *fake* class and channel ``c + 1`` is real class ``c`` (OASIS's order).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from augment.data.codec import MIN_SIDE
from augment.models.spade import conv2d

__all__ = ["FAKE_INDEX", "OASISDiscriminator", "num_downsamples"]

FAKE_INDEX = 0
MAX_CHANNEL_MULT = 4


def num_downsamples(size: tuple[int, int], max_downsamples: int = 6) -> int:
    """Encoder depth for an input ``size``: the bottleneck keeps its short side >= 4 (OASIS: 6 at 256), at least
    two stages deep, hence augment.data.codec.MIN_SIDE."""
    short = min(size)
    if short < MIN_SIDE:
        raise ValueError(f"image size {tuple(size)} too small for the discriminator: the short side must be >= "
                         f"{MIN_SIDE}")
    return min(int(math.floor(math.log2(short / 4))), max_downsamples)


class _DownBlock(nn.Module):
    """[LReLU] -> conv -> LReLU -> conv -> avg-pool, plus a pooled (1x1-conv) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, first: bool) -> None:
        super().__init__()
        layers = [] if first else [nn.LeakyReLU(0.2)]
        layers += [conv2d(in_ch, out_ch, sn=True), nn.LeakyReLU(0.2), conv2d(out_ch, out_ch, sn=True)]
        self.body = nn.Sequential(*layers)
        self.shortcut = conv2d(in_ch, out_ch, 1, sn=True) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.body(x), 2) + self.shortcut(F.avg_pool2d(x, 2))


class _UpBlock(nn.Module):
    """LReLU -> upsample -> conv -> LReLU -> conv, plus an upsampled (1x1-conv) shortcut."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv_0 = conv2d(in_ch, out_ch, sn=True)
        self.conv_1 = conv2d(out_ch, out_ch, sn=True)
        self.shortcut = conv2d(in_ch, out_ch, 1, sn=True) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        dx = F.interpolate(F.leaky_relu(x, 0.2), size=size, mode="nearest")
        dx = self.conv_1(F.leaky_relu(self.conv_0(dx), 0.2))
        return dx + F.interpolate(self.shortcut(x), size=size, mode="nearest")


class OASISDiscriminator(nn.Module):
    """Image B x 3 x H x W -> logits B x (num_classes + 1) x H x W (channel 0 = fake).

    Args:
        num_classes: real semantic classes.
        width: channels of the first encoder block; encoder block ``i`` has
            ``width * min(2**(i // 2), 4)`` channels (OASIS: width 128 -> 128,128,256,256,512,512).
        depth: encoder blocks (each halves the resolution), >= 2; the decoder mirrors it with skip
            connections and ends at full resolution with ``width // 2`` channels.

    ``forward(x, return_features=True)`` also returns every encoder and decoder block's output,
    for feature matching.
    """

    def __init__(self, num_classes: int, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"discriminator depth must be >= 2, got {depth}")
        self.num_classes = num_classes
        enc = [3] + [width * min(2 ** (i // 2), MAX_CHANNEL_MULT) for i in range(depth)]
        self.down = nn.ModuleList(_DownBlock(enc[i], enc[i + 1], first=i == 0) for i in range(depth))
        dec_in = [enc[depth]] + [2 * enc[depth - i] for i in range(1, depth)]
        dec_out = [enc[depth - 1 - i] for i in range(depth - 1)] + [max(width // 2, 1)]
        self.up = nn.ModuleList(_UpBlock(c_in, c_out) for c_in, c_out in zip(dec_in, dec_out))
        self.classifier = conv2d(dec_out[-1], num_classes + 1, 1)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for block in self.down:
            skips.append(x)
            x = block(x)
        features = [*skips[1:], x]
        for i, block in enumerate(self.up):
            skip = skips[-1 - i]
            x = block(x, skip.shape[-2:])
            features.append(x)
            if i + 1 < len(self.up):
                x = torch.cat([skip, x], dim=1)
        logits = self.classifier(x)
        return (logits, features) if return_features else logits
