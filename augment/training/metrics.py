"""Segmentation metrics from a confusion matrix: pixel accuracy, per-class IoU, mIoU.

Conventions:
- Target pixels equal to `ignore_index` (or outside 0..num_classes-1) are excluded everywhere.
- IoU of class c = TP / (TP + FP + FN) over all pixels seen. A class that occurs in neither the targets nor the
  predictions has no IoU (NaN, `None` in `to_dict`) and is left out of mIoU; a class that occurs in only one of
  them has IoU 0 and counts. mIoU is therefore the mean over the classes present in target or prediction.
- Everything is accumulated over the whole dataset (not averaged per image).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """Accumulates `mat[target, pred]` pixel counts (int64), on `device` or else that of the first update.

    Under DDP give `device` (the rank's device), so a rank that saw no data can still join the reduction.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat: torch.Tensor | None = None
        if device is not None:
            self.mat = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Add a batch: `target` and `pred` are integer tensors of the same shape (any layout)."""
        n = self.num_classes
        if self.mat is None:
            self.mat = torch.zeros((n, n), dtype=torch.int64, device=target.device)
        target = target.reshape(-1).long()
        pred = pred.reshape(-1).long().to(target.device)
        keep = (target >= 0) & (target < n) & (target != self.ignore_index)
        if pred.numel() and (pred.min() < 0 or pred.max() >= n):
            raise ValueError(f"predictions must lie in 0..{n - 1}")
        idx = target[keep] * n + pred[keep]
        self.mat += torch.bincount(idx, minlength=n * n).reshape(n, n)

    def reduce_from_all_processes(self) -> None:
        """Sum the matrix over the ranks of the default process group (no-op without one)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.mat is None:
            self.mat = torch.zeros((self.num_classes,) * 2, dtype=torch.int64)
        dist.all_reduce(self.mat)

    def compute(self) -> tuple[float, torch.Tensor, float]:
        """(pixel accuracy, per-class IoU float64 with NaN for absent classes, mIoU over present classes)."""
        n = self.num_classes
        h = self.mat.double().cpu() if self.mat is not None else torch.zeros((n, n), dtype=torch.float64)
        tp = h.diag()
        total = h.sum()
        acc = (tp.sum() / total).item() if total > 0 else math.nan
        union = h.sum(0) + h.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        present = ~iou.isnan()
        miou = iou[present].mean().item() if present.any() else math.nan
        return acc, iou, miou

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        """JSON-ready metrics: pixel_accuracy, miou, per-class IoU (None for absent classes), pixel counts."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        acc, iou, miou = self.compute()
        h = self.mat.cpu() if self.mat is not None else torch.zeros((self.num_classes,) * 2, dtype=torch.int64)
        return {
            "pixel_accuracy": _num(acc),
            "miou": _num(miou),
            "iou": {name: _num(v) for name, v in zip(class_names, iou.tolist())},
            "target_pixels": {name: int(v) for name, v in zip(class_names, h.sum(1).tolist())},
            "pixels": int(h.sum()),
        }


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
