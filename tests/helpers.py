"""Tiny learnable datasets for training tests."""

from __future__ import annotations

import numpy as np

from augment.data.codec import class_pixels, encode_image, encode_mask
from augment.data.dataset import DatasetInfo, PartWriter, StagedOutput, make_row

PALETTE = [
    [128, 128, 128], [200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40], [40, 220, 220],
    [220, 40, 220], [120, 60, 0], [0, 120, 60], [60, 0, 120], [250, 150, 150], [150, 250, 150],
]


def blob_sample(rng: np.random.Generator, size: tuple[int, int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Background class 0 with a few rectangles and discs of other classes; a pixel's colour is its class's
    palette colour plus noise, and a one-pixel frame is unlabelled (255)."""
    h, w = size
    mask = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(2, 5))):
        c = int(rng.integers(1, num_classes))
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        r = rng.integers(max(h, w) // 8, max(h, w) // 3)
        if rng.random() < 0.5:
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = c
        else:
            mask[max(cy - r, 0): cy + r, max(cx - r, 0): cx + r] = c
    palette = np.array(PALETTE[:num_classes], np.int16)
    image = palette[mask] + rng.integers(-20, 21, (h, w, 3))
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 255
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_dataset(
    path, n: int, size: tuple[int, int] = (32, 32), num_classes: int = 4, seed: int = 0,
    classes: list[str] | None = None, split: str = "train", overwrite: bool = False,
) -> str:
    """Write a dataset of `n` blob samples to `path` (replacing one there with `overwrite`); returns its URI."""
    if not 2 <= num_classes <= len(PALETTE):
        raise ValueError(f"num_classes must be 2..{len(PALETTE)}")
    classes = classes or [f"class{i}" for i in range(num_classes)]
    rng = np.random.default_rng(seed)
    uri = str(path)
    with StagedOutput(uri, overwrite=overwrite) as staged:
        writer = PartWriter(staged.fs, staged.staging, "part-00000", "sample", num_classes)
        for i in range(n):
            image, mask = blob_sample(rng, size, num_classes)
            writer.write(make_row(f"{split}/{seed}-{i}", encode_image(image), encode_mask(mask), size[0], size[1],
                                  split, class_pixels(mask, num_classes, 255)))
        stats = writer.close()
        info = DatasetInfo(classes=list(classes), palette=PALETTE[:num_classes], lineage={"source": "tests.helpers"})
        info.apply_stats(stats)
        staged.commit(info, stats.quarantine)
    return uri
