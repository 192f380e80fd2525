"""Label-map edits that make a target class better represented: paste, scale + crop, flip (pure numpy).

`apply_edits` applies, in this order:
    paste  for each {"from": id, "dy": fy, "dx": fx, "flip": bool}: the target-class pixels of that map (resized to
           this map's size, nearest; flipped if asked) are shifted by (round(fy * H), round(fx * W)) and written over
           this map; what falls outside is dropped.
    scale  s with crop [fy, fx]: the map is resized by s (nearest) and an H x W window is cut back out. With s > 1
           the window's top-left corner ranges over the positions that keep one anchor pixel of the target class
           inside (the middle target pixel in raster order; the whole map when the class is absent), and fy/fx pick
           a position within that range (0 = first, 1 = last). With s < 1 the shrunk map is placed at (fy, fx) of the
           free space and the border is `ignore_index`.
    flip   horizontal flip.
The output has the input's shape and dtype and only labels that occur in the input or the pasted maps.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from augment.data.codec import resize_mask


def _shift_into(dst: np.ndarray, region: np.ndarray, dy: int, dx: int, value: int) -> None:
    h, w = dst.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    dst[yd, xd][region[ys, xs]] = value


def paste_regions(
    mask: np.ndarray, donor: np.ndarray, target_class: int, dy: float, dx: float, flip: bool = False
) -> np.ndarray:
    """`mask` with the `target_class` pixels of `donor` shifted by (dy*H, dx*W) pasted over it."""
    out = mask.copy()
    donor = resize_mask(np.ascontiguousarray(donor, dtype=np.uint8), mask.shape)
    if flip:
        donor = donor[:, ::-1]
    h, w = mask.shape
    oy, ox = int(round(dy * h)), int(round(dx * w))
    if abs(oy) < h and abs(ox) < w:
        _shift_into(out, donor == target_class, oy, ox, target_class)
    return out


def _window_start(size: int, scaled: int, anchor: int | None, frac: float) -> int:
    lo, hi = 0, scaled - size
    if anchor is not None:
        lo, hi = max(lo, anchor - size + 1), min(hi, anchor)
    return lo + int(round(min(max(frac, 0.0), 1.0) * (hi - lo)))


def scale_crop(
    mask: np.ndarray, scale: float, crop: tuple[float, float], target_class: int, ignore_index: int
) -> np.ndarray:
    """Zoom by `scale` (nearest) and cut back to the input size, as described in the module docstring."""
    h, w = mask.shape
    sh, sw = max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)
    scaled = resize_mask(mask, (sh, sw))
    fy, fx = crop
    if sh >= h and sw >= w:
        ys, xs = np.nonzero(scaled == target_class)
        anchor = (int(ys[len(ys) // 2]), int(xs[len(xs) // 2])) if len(ys) else (None, None)
        y0 = _window_start(h, sh, anchor[0], fy)
        x0 = _window_start(w, sw, anchor[1], fx)
        return scaled[y0 : y0 + h, x0 : x0 + w].copy()
    out = np.full_like(mask, ignore_index)
    y0 = int(round(min(max(fy, 0.0), 1.0) * max(h - sh, 0)))
    x0 = int(round(min(max(fx, 0.0), 1.0) * max(w - sw, 0)))
    window = scaled[: h - y0, : w - x0]
    out[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
    return out


def apply_edits(
    mask: np.ndarray,
    edits: dict[str, Any],
    lookup_mask: Callable[[str], np.ndarray],
    target_class: int,
    ignore_index: int,
) -> np.ndarray:
    """The edited copy of `mask` (H x W uint8); `lookup_mask(id)` returns another source's label map for pastes."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {mask.shape}")
    unknown = set(edits) - {"flip", "scale", "crop", "paste"}
    if unknown:
        raise ValueError(f"unknown edit(s) {sorted(unknown)}")
    out = np.ascontiguousarray(mask, dtype=np.uint8).copy()
    for item in edits.get("paste", []):
        out = paste_regions(out, lookup_mask(item["from"]), target_class, item["dy"], item["dx"], item.get("flip", False))
    scale = float(edits.get("scale", 1.0))
    if scale != 1.0:
        out = scale_crop(out, scale, tuple(edits.get("crop", (0.5, 0.5))), target_class, ignore_index)
    if edits.get("flip"):
        out = np.ascontiguousarray(out[:, ::-1])
    return out
