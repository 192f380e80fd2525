"""Scoring synthetic images by how well the segmenter recovers the label map they were generated from.

Per image, over the pixels whose conditioning label is not `ignore_index`:
    miou            mean IoU over the classes present in the conditioning mask (a class only predicted counts
                    against the present classes through their unions, not as a term of its own)
    target_iou      IoU of the target class (0 when the mask lacks it)
    pixel_accuracy  fraction of pixels predicted as labelled (0 when no pixel is labelled)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

@dataclass(frozen=True)
class FilterConfig:
    """Acceptance thresholds (a sample passes when it reaches all three) and the pixel-level ignore mode.

    No defaults here: a job's filter comes from its job file over the job schema's defaults and ranges
    (augment.runner.jobfile.filter_config), which are the one home of those values."""

    min_miou: float
    min_target_iou: float
    min_pixel_accuracy: float
    pixel_ignore: bool
    ignore_confidence: float


def confusion_matrices(pred: torch.Tensor, masks: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """B x C x C counts, [b, true, predicted], over pixels whose mask label is a class (not ignore).

    Counted with scatter_add into a spare last bin for the other pixels: no boolean indexing or bincount, which
    would each wait for the GPU to learn an output size.
    """
    b = masks.shape[0]
    masks = masks.long()
    size = b * num_classes * num_classes
    valid = (masks >= 0) & (masks < num_classes) & (masks != ignore_index)
    batch_idx = torch.arange(b, device=masks.device).view(b, 1, 1).expand_as(masks)
    flat = (batch_idx * num_classes + masks) * num_classes + pred.long().clamp(0, num_classes - 1)
    flat = torch.where(valid, flat, size).reshape(-1)
    counts = torch.zeros(size + 1, dtype=torch.long, device=masks.device).scatter_add_(0, flat, torch.ones_like(flat))
    return counts[:size].view(b, num_classes, num_classes)


def score_batch(
    logits: torch.Tensor,
    masks: torch.Tensor,
    target_classes: list[int] | torch.Tensor,
    num_classes: int,
    ignore_index: int,
) -> dict[str, torch.Tensor]:
    """{"miou", "target_iou", "pixel_accuracy"}: float32 tensors of length B on the logits' device."""
    if logits.dim() != 4 or logits.shape[1] != num_classes or logits.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"logits {tuple(logits.shape)} do not fit masks {tuple(masks.shape)} with {num_classes} classes")
    conf = confusion_matrices(logits.argmax(1), masks.to(logits.device), num_classes, ignore_index).double()
    inter = conf.diagonal(dim1=1, dim2=2)
    true = conf.sum(2)
    union = true + conf.sum(1) - inter
    iou = inter / union.clamp(min=1)
    present = true > 0
    miou = (iou * present).sum(1) / present.sum(1).clamp(min=1)
    target = torch.as_tensor(target_classes, device=logits.device, dtype=torch.long).view(-1, 1)
    target_iou = (iou * present).gather(1, target).squeeze(1)
    pixel_accuracy = inter.sum(1) / true.sum(1).clamp(min=1)
    return {
        "miou": miou.float(),
        "target_iou": target_iou.float(),
        "pixel_accuracy": pixel_accuracy.float(),
    }


THRESHOLDS = {"min_miou": "miou", "min_target_iou": "target_iou", "min_pixel_accuracy": "pixel_accuracy"}
"""Each threshold of FilterConfig (a job file's `filter` key) and the score it bounds from below."""


def accept(scores: dict[str, torch.Tensor], cfg: FilterConfig) -> torch.Tensor:
    """Bool tensor: the samples reaching every threshold (>=)."""
    ok = torch.ones_like(scores["miou"], dtype=torch.bool)
    for key, score in THRESHOLDS.items():
        ok &= scores[score] >= getattr(cfg, key)
    return ok


def below_thresholds(scores: dict[str, torch.Tensor], cfg: FilterConfig) -> dict[str, torch.Tensor]:
    """{threshold key: bool tensor, True for the samples scoring below it} (a sample may be below several)."""
    return {key: scores[score] < getattr(cfg, key) for key, score in THRESHOLDS.items()}


def pixel_ignore_masks(
    logits: torch.Tensor, masks: torch.Tensor, cfg: FilterConfig, ignore_index: int
) -> torch.Tensor:
    """A copy of `masks` where the segmenter confidently disagrees set to `ignore_index`.

    Confident: softmax probability of the predicted class >= cfg.ignore_confidence. Applied regardless of
    cfg.pixel_ignore (callers check that flag); labelled pixels the segmenter agrees with are never changed.
    """
    prob, pred = torch.softmax(logits.float(), dim=1).max(1)
    masks_dev = masks.to(logits.device)
    drop = (prob >= cfg.ignore_confidence) & (pred != masks_dev.long()) & (masks_dev.long() != ignore_index)
    return masks_dev.masked_fill(drop, ignore_index).to(masks.device)
