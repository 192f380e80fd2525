"""SPADE normalisation and the SPADE residual block of the OASIS generator.

SPADE (Park et al., CVPR 2019) normalises activations without learned affine parameters and then
modulates them per pixel with ``gamma`` and ``beta`` maps predicted from the conditioning map
(for OASIS: the one-hot label map concatenated with 3D noise), resized to the activation's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["SPADE", "SPADEResBlock", "conv2d"]

INIT_GAIN = 0.02


def conv2d(in_ch: int, out_ch: int, kernel_size: int = 3, *, bias: bool = True, sn: bool = False) -> nn.Module:
    """A same-padding conv initialised as OASIS's convs effectively are.

    Plain convs: Xavier normal (gain 0.02), zero bias. Spectrally normalised convs
    (``sn=True``, ``torch.nn.utils.parametrizations``) keep PyTorch's default init: OASIS's
    re-initialisation never reaches their ``weight_orig``, and a 0.02-scale weight under spectral
    norm would turn every Adam step into a large change of the normalised weight.
    """
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=bias)
    if sn:
        return spectral_norm(conv)
    nn.init.xavier_normal_(conv.weight, gain=INIT_GAIN)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def _param_free_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    raise ValueError(f"unknown SPADE norm {kind!r}; expected 'batch' or 'instance'")


class SPADE(nn.Module):
    """``norm(x) * (1 + gamma(cond)) + beta(cond)`` with ``cond`` resized (nearest) to ``x``.

    Args:
        norm_channels: channels of the normalised activation.
        label_channels: channels of the conditioning map.
        hidden: channels of the shared conv that reads the conditioning map.
        norm: ``"batch"`` (OASIS default; per-pixel affine in eval mode, so local edits stay local)
            or ``"instance"``.
    """

    def __init__(self, norm_channels: int, label_channels: int, hidden: int = 128, norm: str = "batch") -> None:
        super().__init__()
        self.norm = _param_free_norm(norm, norm_channels)
        self.shared = nn.Sequential(conv2d(label_channels, hidden), nn.ReLU(inplace=True))
        self.gamma = conv2d(hidden, norm_channels)
        self.beta = conv2d(hidden, norm_channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cond = F.interpolate(cond, size=x.shape[-2:], mode="nearest")
        h = self.shared(cond)
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class SPADEResBlock(nn.Module):
    """Residual block: two SPADE -> LeakyReLU(0.2) -> 3x3 conv steps plus a shortcut.

    The shortcut is the identity when ``in_ch == out_ch``, else SPADE -> 1x1 conv. All convs are
    spectrally normalised, as in OASIS.
    """

    def __init__(
        self, in_ch: int, out_ch: int, label_channels: int, hidden: int = 128, norm: str = "batch"
    ) -> None:
        super().__init__()
        mid = min(in_ch, out_ch)
        self.norm_0 = SPADE(in_ch, label_channels, hidden, norm)
        self.conv_0 = conv2d(in_ch, mid, sn=True)
        self.norm_1 = SPADE(mid, label_channels, hidden, norm)
        self.conv_1 = conv2d(mid, out_ch, sn=True)
        self.learned_shortcut = in_ch != out_ch
        if self.learned_shortcut:
            self.norm_s = SPADE(in_ch, label_channels, hidden, norm)
            self.conv_s = conv2d(in_ch, out_ch, 1, bias=False, sn=True)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, cond)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, cond), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, cond), 0.2))
        return shortcut + dx
