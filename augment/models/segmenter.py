"""torchvision segmenters, built randomly initialised (augment.models.pretrained loads pretrained backbones or
another run's weights into them); augment.models.store loads them from a train-seg run."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import segmentation as tvseg

from augment.core.errors import AugmentError
from augment.models import SEGMENTERS

SEGMENTER_KIND = "segmenter"

_BUILDERS: dict[str, Callable[..., nn.Module]] = {name: getattr(tvseg, name) for name in SEGMENTERS}


BN_MOMENTUM = 0.1


def build_segmenter(name: str, num_classes: int, aux_loss: bool = False, bn_momentum: float | None = BN_MOMENTUM) -> nn.Module:
    """A randomly initialised torchvision segmenter (`weights=None, weights_backbone=None`).

    `aux_loss` adds the auxiliary FCN head (not available for LR-ASPP). `bn_momentum` is set on every BatchNorm:
    torchvision's MobileNetV3 uses 0.01, tuned for long ImageNet schedules; trained from scratch, its running
    statistics then lag so far behind the weights that eval-mode predictions collapse for the first thousand
    or so steps (LR-ASPP on the blob test data: val mIoU 0.22 in eval mode vs 0.69 with batch statistics after
    300 steps). 0.1, PyTorch's default, keeps them current. None keeps torchvision's values.
    """
    if name not in _BUILDERS:
        raise AugmentError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
    if num_classes < 1:
        raise AugmentError(f"a segmenter needs at least one class, got {num_classes}")
    kwargs: dict[str, object] = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
    if name.startswith("lraspp"):
        if aux_loss:
            raise AugmentError(f"{name} has no auxiliary head; aux_loss is only for DeepLabV3 and FCN")
    else:
        kwargs["aux_loss"] = aux_loss
    model = _BUILDERS[name](**kwargs)
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    return model


def predict_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class logits B×C×H×W at the input's size (`out["out"]` of a torchvision segmenter)."""
    out = model(images)
    logits = out["out"] if isinstance(out, dict) else out
    if logits.shape[-2:] != images.shape[-2:]:
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def segment(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Float class logits of normalised images as the augmentation filter runs the segmenter: channels_last inputs
    (give the model `memory_format=torch.channels_last` too: oneDNN's faster layout on CPUs, cuDNN's on GPUs), bf16 autocast on
    CUDA. fp32 on CPUs, so the filter's decisions do not depend on whether the CPU has bf16."""
    x = images.contiguous(memory_format=torch.channels_last)
    if x.device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return predict_logits(model, x).float()
    return predict_logits(model, x)


def segmenter_config(name: str, num_classes: int, aux_loss: bool = False, normalize: str = "imagenet") -> dict:
    """The card's `model_config` for a segmenter: what `load_segmenter` rebuilds it from."""
    return {"name": name, "num_classes": num_classes, "aux_loss": aux_loss, "normalize": normalize}
