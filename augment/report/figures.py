"""Figures for reports: per-class IoU bar charts."""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def iou_bar_chart(
    classes: Sequence[str],
    series: dict[str, Sequence[float]],
    path: str,
    title: str = "Per-class IoU",
    highlight: Sequence[str] = (),
) -> str:
    """Grouped bars, one group per class, one bar per series (e.g. baseline vs augmented); NaN bars are left out.

    Classes in `highlight` (the targeted ones) get bold tick labels.
    """
    n = len(series)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(classes) + 2), 4.0), dpi=120)
    for i, (name, values) in enumerate(series.items()):
        xs = [k + (i - (n - 1) / 2) * width for k in range(len(classes))]
        ys = [0.0 if v is None or math.isnan(v) else v for v in values]
        bars = ax.bar(xs, ys, width=width, label=name)
        for bar, v in zip(bars, values):
            if v is None or math.isnan(v):
                bar.set_alpha(0.0)
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=40, ha="right")
    for label in ax.get_xticklabels():
        if label.get_text() in highlight:
            label.set_fontweight("bold")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
