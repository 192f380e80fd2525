"""The filter for insertions: score an object placed into a real image by the segmenter, in the object's region.

An inserted object (pasted or painted) changes a region of a real host image; the rest is the host's own pixels,
which the real-data segmenter scores well whatever the object looks like. So the whole-image scores of
`augment.filtering.quality` say little about the object, and the filter scores its region instead:

    region_iou      IoU of the target class between the written mask and the segmenter's prediction, over the
                    pixels of the object's box grown by `margin` pixels on every side (clipped to the image) whose
                    mask label is not the ignore index (the feathered band around an object is ignore in the
                    written mask, so it is left out). 0 when neither mask nor prediction holds the class there.
    accept_regions  the insertions whose region IoU reaches a threshold.

FreeMask's pixel rule (Yang et al., NeurIPS 2023) as an option on the written mask:

    class_mean_losses   the mean per-pixel cross-entropy of each class under the real-data segmenter on real
                        training images (computed once; None for a class with no labelled pixel there);
    pixel_rule          a synthetic pixel labelled c becomes the ignore index when its cross-entropy exceeds
                        k x the mean of class c. A class without a real mean (None) cannot be judged: its pixels
                        are kept (ignoring them would erase exactly the classes the real data lacks, which the
                        region IoU still filters); ignore pixels and labels outside the classes are never changed.

Boxes are B x 4 integer tensors (top, left, bottom, right), bottom and right exclusive, as
`ObjectComponent.bbox`; `augment.synthesis.composite.insertion_box` gives that box for a `Placement`. Everything is batched torch on the
tensors' device, with no host synchronisation until a caller reads a result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from augment.core.errors import AugmentError
from augment.models.segmenter import segment

DEFAULT_K = 1.25


@dataclass(frozen=True)
class RegionFilterConfig:
    """The insertion filter of a job (modes paste and insert): accept when `region_iou` with `margin` reaches
    `min_iou`; with `pixel_rule`, `pixel_rule` with `k` edits the written mask. No defaults here: a job's come from
    its job file over the job schema's (augment.runner.jobfile.region_filter_config)."""

    min_iou: float
    margin: int
    pixel_rule: bool
    k: float


def region_masks(boxes: torch.Tensor, size: tuple[int, int], margin: int) -> torch.Tensor:
    """B x H x W bool: the pixels of each box (B x 4, top, left, bottom, right; exclusive) grown by `margin`."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be B x 4 (top, left, bottom, right), got {tuple(boxes.shape)}")
    b = boxes.long().view(-1, 4, 1, 1)
    rows = torch.arange(size[0], device=boxes.device).view(1, -1, 1)
    cols = torch.arange(size[1], device=boxes.device).view(1, 1, -1)
    inside_rows = (rows >= b[:, 0] - margin) & (rows < b[:, 2] + margin)
    inside_cols = (cols >= b[:, 1] - margin) & (cols < b[:, 3] + margin)
    return inside_rows & inside_cols


def region_iou(
    pred: torch.Tensor,
    mask: torch.Tensor,
    box: torch.Tensor,
    target_class: int | Sequence[int] | torch.Tensor,
    margin: int,
    ignore_index: int,
) -> torch.Tensor:
    """float32 B: IoU of `target_class` (one for all, or one per sample) between `mask` and `pred` (both B x H x W
    class indices) within each sample's `box` (B x 4) grown by `margin`, over pixels whose mask is not
    `ignore_index`; 0 where the union there is empty."""
    if pred.shape != mask.shape or pred.dim() != 3 or box.shape[0] != pred.shape[0]:
        raise ValueError(f"pred {tuple(pred.shape)}, mask {tuple(mask.shape)} and boxes {tuple(box.shape)} "
                         "do not fit (B x H x W, B x H x W, B x 4)")
    device = pred.device
    mask = mask.to(device).long()
    target = torch.as_tensor(target_class, device=device, dtype=torch.long).view(-1, 1, 1)
    counted = region_masks(box.to(device), tuple(mask.shape[-2:]), margin) & (mask != ignore_index)
    in_mask = (mask == target) & counted
    in_pred = (pred.long() == target) & counted
    inter = (in_mask & in_pred).sum((1, 2))
    union = (in_mask | in_pred).sum((1, 2))
    return (inter.double() / union.clamp(min=1)).float()


def accept_regions(ious: torch.Tensor, min_iou: float) -> torch.Tensor:
    """Bool tensor: the insertions whose region IoU reaches `min_iou` (>=), a number in [0, 1]."""
    if isinstance(min_iou, bool) or not isinstance(min_iou, (int, float)) or not 0.0 <= min_iou <= 1.0:
        raise AugmentError(f"region filter: min_iou must be a number in [0, 1], got {min_iou!r}")
    return ious >= min_iou


def _pixel_losses(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, ...]:
    """(loss, labels, counted), each B x H x W: the cross-entropy of every pixel against its label (0 where not
    counted), the labels clamped into the classes, and whether the pixel is labelled with a class."""
    num_classes = logits.shape[1]
    if logits.dim() != 4 or logits.shape[-2:] != masks.shape[-2:] or masks.shape[0] != logits.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} do not fit masks {tuple(masks.shape)}")
    masks = masks.to(logits.device).long()
    counted = (masks >= 0) & (masks < num_classes) & (masks != ignore_index)
    labels = masks.clamp(0, num_classes - 1)
    log_p = torch.log_softmax(logits.float(), dim=1)
    loss = -log_p.gather(1, labels.unsqueeze(1)).squeeze(1)
    return torch.where(counted, loss, 0.0), labels, counted


@torch.no_grad()
def class_mean_losses(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    ignore_index: int,
) -> list[float | None]:
    """Per class, the mean cross-entropy of `model` over the real pixels labelled with it; None for a class with
    no labelled pixel. A JSON-able list of `num_classes` entries.

    `batches` yields (images, masks): normalised float images B x 3 x h x w (as the segmenter was trained on,
    `augment.training.transforms.normalize`) and masks B x H x W of class indices; logits are upsampled
    (bilinear) to the masks' size when they differ, as evaluation does. The model runs in eval mode through
    `segment` (its mode is restored); sums and counts stay on the model's device until the end. A dataset's
    batches: `((normalize(b.images, norm), b.masks) for b in iter_eval_batches(ds, batch, size))`.
    """
    device = next(model.parameters()).device
    sums = torch.zeros(num_classes + 1, dtype=torch.float64, device=device)
    counts = torch.zeros(num_classes + 1, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        for images, masks in batches:
            logits = segment(model, images.to(device, non_blocking=True))
            if logits.shape[1] != num_classes:
                raise AugmentError(f"segmenter predicts {logits.shape[1]} classes, the data has {num_classes}")
            masks = masks.to(device, non_blocking=True)
            if logits.shape[-2:] != masks.shape[-2:]:
                logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
            loss, labels, counted = _pixel_losses(logits, masks, ignore_index)
            bins = torch.where(counted, labels, num_classes).reshape(-1)  # the spare last bin: not counted
            sums.scatter_add_(0, bins, loss.reshape(-1).double())
            counts.scatter_add_(0, bins, torch.ones_like(bins))
    finally:
        model.train(was_training)
    means = (sums[:num_classes] / counts[:num_classes].clamp(min=1)).tolist()
    return [m if n > 0 else None for m, n in zip(means, counts[:num_classes].tolist())]


def pixel_rule(
    logits: torch.Tensor,
    mask: torch.Tensor,
    class_means: Sequence[float | None],
    k: float = DEFAULT_K,
    ignore_index: int = 255,
) -> torch.Tensor:
    """A copy of `mask` (B x H x W, on its own device and dtype) with every pixel labelled c whose cross-entropy
    under `logits` (B x C x H x W) exceeds `k` x `class_means[c]` set to `ignore_index`. Pixels of a class whose
    mean is None are kept, as are ignore pixels and labels outside the C classes."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
        raise AugmentError(f"pixel rule: k must be a positive number, got {k!r}")
    if len(class_means) != logits.shape[1]:
        raise AugmentError(f"pixel rule: {len(class_means)} class means for {logits.shape[1]} classes")
    loss, labels, counted = _pixel_losses(logits, mask, ignore_index)
    limits = torch.tensor([float("inf") if m is None else k * float(m) for m in class_means],
                          dtype=loss.dtype, device=loss.device)
    drop = counted & (loss > limits[labels])
    return mask.masked_fill(drop.to(mask.device), ignore_index)
