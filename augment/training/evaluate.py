"""Evaluating a segmenter: per-class IoU, mIoU and pixel accuracy on a dataset.

The model sees every image resized to its training size (the card's `size`); its logits are upsampled
(bilinear) back to the mask's native resolution and compared there, so the numbers do not depend on the training
resolution's rounding of thin structures and match the usual CamVid/Cityscapes protocol. Ignore pixels are
excluded; see `augment.training.metrics` for the IoU conventions.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from augment.data.dataset import Dataset, open_dataset
from augment.core.device import pick_device
from augment.models.segmenter import predict_logits
from augment.models.store import check_compatible, load_segmenter
from augment.training.data import iter_eval_batches
from augment.training.metrics import ConfusionMatrix
from augment.training.transforms import normalize


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def confusion_on(
    model: nn.Module,
    ds: Dataset,
    size: tuple[int, int],
    batch: int,
    device: torch.device,
    norm: str = "imagenet",
    rank: int = 0,
    world_size: int = 1,
) -> ConfusionMatrix:
    """This rank's share of the confusion matrix of `model` on `ds` (call `reduce_from_all_processes` under DDP)."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(ds.info.num_classes, ds.info.ignore_index, device=device)
    channels_last = device.type == "cuda"
    for b in iter_eval_batches(ds, batch, size, rank=rank, world_size=world_size):
        images = normalize(b.images.to(device, non_blocking=True), norm)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            logits = predict_logits(model, images)
        masks = b.masks.to(device)
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
        cm.update(masks, logits.argmax(1))
    model.train(was_training)
    return cm


def evaluate_segmenter(run: str, data_uri: str, batch: int = 8, device: torch.device | str | None = None) -> dict[str, Any]:
    """Metrics of the segmenter in `run` on the dataset at `data_uri` (see the module doc for the protocol).

    Returns `ConfusionMatrix.to_dict` (pixel_accuracy, miou, iou per class, pixel counts) plus model, data, size.
    """
    device = pick_device(str(device) if device is not None else None)
    ds = open_dataset(data_uri)
    model, card = load_segmenter(run, device)
    check_compatible(card, ds.info, f"segmenter {run}")
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    size = (int(card.size[0]), int(card.size[1]))
    cm = confusion_on(model, ds, size, batch, device, norm=card.model_config.get("normalize", "imagenet"))
    result = cm.to_dict(ds.info.classes)
    result.update(model=run, data=data_uri, size=list(size), rows=ds.info.num_rows, model_name=card.model_config["name"])
    return result


def format_table(metrics: dict[str, Any]) -> str:
    """Per-class IoU table with mIoU and pixel accuracy underneath."""
    iou = metrics["iou"]
    width = max([len("pixel accuracy")] + [len(c) for c in iou])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'pixels':>10}"]
    for name, value in iou.items():
        shown = "     -" if value is None else f"{value * 100:6.2f}"
        lines.append(f"{name:<{width}}  {shown}  {metrics['target_pixels'][name]:>10}")
    lines.append("-" * len(lines[0]))
    lines.append(f"{'mIoU':<{width}}  {_pct(metrics['miou'])}")
    lines.append(f"{'pixel accuracy':<{width}}  {_pct(metrics['pixel_accuracy'])}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "     -" if value is None or math.isnan(value) else f"{value * 100:6.2f}"
