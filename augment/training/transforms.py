"""Joint image + mask transforms on uint8 tensors (torchvision.transforms.v2), and input normalisation.

Transforms keep images uint8 (3×H×W) and masks uint8 (H×W) so that batches travel through Ray's object store
at a quarter of float size; `normalize` turns a batch into model input on the training device.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "tanh")

JointTransform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]


def train_transform(
    size: tuple[int, int],
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip: float = 0.5,
    color_jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.02),
    ignore_index: int = 255,
) -> v2.Compose:
    """The segmentation training recipe: random scale, random crop to `size` (H, W), flip, colour jitter.

    The scale is relative to `size`: an image is first fitted into `size` (aspect kept), then scaled by a factor
    drawn from `scale_range`. Crops of a smaller image are padded: image with 0, mask with `ignore_index`.
    """
    h, w = size
    steps: list[v2.Transform] = [
        v2.ScaleJitter(target_size=(w, h), scale_range=scale_range, antialias=True),
        v2.RandomCrop((h, w), pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}),
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if color_jitter is not None:
        steps.append(v2.ColorJitter(*color_jitter))
    return v2.Compose(steps)


class CoverCrop:
    """Resize (aspect kept) so the image just covers `size` (H, W), then crop to `size`.

    `random`: a random crop, then a horizontal flip with probability `hflip` (training); otherwise the centre
    crop (deterministic, e.g. for sample sheets). Masks are resized nearest. Unlike `train_transform` there is no
    scale jitter and no padding, so every output pixel is image content (what a GAN should learn from).
    """

    def __init__(self, size: tuple[int, int], hflip: float = 0.0, random: bool = True) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.hflip = hflip
        self.random = random

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        h, w = image.shape[-2:]
        th, tw = self.size
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        if (nh, nw) != (h, w):
            image, mask = TF.resize(image, [nh, nw], antialias=True), TF.resize(mask, [nh, nw])
        if self.random:
            top = int(torch.randint(0, nh - th + 1, ()))
            left = int(torch.randint(0, nw - tw + 1, ()))
        else:
            top, left = (nh - th) // 2, (nw - tw) // 2
        image, mask = TF.crop(image, top, left, th, tw), TF.crop(mask, top, left, th, tw)
        if self.random and self.hflip > 0 and float(torch.rand(())) < self.hflip:
            image, mask = TF.horizontal_flip(image), TF.horizontal_flip(mask)
        return image, mask


def apply_joint(transform: JointTransform | None, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a joint transform on an H×W×3 uint8 image and H×W mask; returns (3×h×w uint8, h×w uint8) tensors."""
    img = tv_tensors.Image(torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).permute(2, 0, 1))
    msk = tv_tensors.Mask(torch.from_numpy(np.require(mask, np.uint8, ["C", "W"])))
    if transform is not None:
        img, msk = transform(img, msk)
    return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)


def normalize(images: torch.Tensor, mode: str = "imagenet") -> torch.Tensor:
    """uint8 B×3×H×W (or 3×H×W) -> float32 model input: 'imagenet' mean/std, or 'tanh' for [-1, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize takes uint8 images, got {images.dtype}")
    x = images.float().div_(255.0)
    if mode == "tanh":
        return x.mul_(2.0).sub_(1.0)
    if mode != "imagenet":
        raise ValueError(f"normalisation must be one of {NORMALIZATIONS}, got {mode!r}")
    shape = (3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(shape)
    return x.sub_(mean).div_(std)
